#!/usr/bin/env python
"""Does the fast path train the same? A plain (fp32) and a fast run, side by side, same everything.

Two ``Trainer``s with the same config and seed (so the same initial weights, batches and widths),
one plain and one with the speed switches (default: all of pretrain/speed.py), step
in turn through a short Algorithm 1 schedule (default 200 iterations: 50 per stage). Printed:

- iteration 1, where both start from the same weights: the fast loss against the fp32 loss;
- per stage: the mean loss of each run, and their mean difference (the offset) with its paired
  standard error. Two runs drift apart however little they differ: even float32 with another
  summation order (channels_last alone) ends up on another path. So the noise an offset is
  judged against is that float32 drift, measured by a run of its own (--drift-from): an offset
  is "within noise" when |offset| <= |float32 drift| + 2 standard errors, in that stage;
- seconds per iteration of each (timed in the same run, interleaved) and their ratio.

    python bench/fast_curve.py                                # 200 iterations (~25 min on 2 cores)
    python bench/fast_curve.py --iters 40 --out /tmp/curve    # + curve.csv and curve.png
    # the run-to-run noise of float32 itself: channels_last alone (same math, another summation
    # order) against the plain curve of an earlier run (a plain CPU run is deterministic)
    python bench/fast_curve.py --fast speed.channels_last=true --plain-from /tmp/curve/curve.csv \
        --out /tmp/drift
    python bench/fast_curve.py --table-from /tmp/curve/curve.csv --drift-from /tmp/drift/curve.csv
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pretrain import data as data_mod  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.engine import Trainer  # noqa: E402

FAST = ["speed.channels_last=true", "speed.bf16=true", "speed.cached_slices=true"]


def build(args, out: Path, extra: list[str]) -> Trainer:
    cfg = load_config(None, [
        f"model.arch={args.arch}", "model.stem=cifar", "method.name=us3l", "data.name=synthetic",
        f"data.batch_size={args.batch}", "data.num_workers=0",
        f"data.synthetic.train_size={args.batch * args.iters}", "data.synthetic.val_size=0",
        f"schedule.iters={args.iters}", f"output.dir={out}", "monitor.tensorboard=false",
        *extra])
    return Trainer(cfg, progress=False)


def batches(trainer: Trainer):
    d = trainer.cfg["data"]
    loader = data_mod.train_loader(trainer.train_set, d, int(trainer.cfg["seed"]), 0, 0, 0, 1)
    for x1, x2, _ in loader:
        yield x1, x2


def timed_step(trainer: Trainer, x1, x2) -> tuple[dict, float]:
    t0 = time.perf_counter()
    out = trainer.step(x1, x2)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description="plain vs fast pretraining loss curves")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fast", action="append", default=None, metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=None, help="write curve.csv and curve.png")
    parser.add_argument("--plain-from", type=Path, default=None, metavar="CSV",
                        help="take the plain run from an earlier curve.csv of the same settings "
                             "instead of running it again")
    parser.add_argument("--drift-from", type=Path, default=None, metavar="CSV",
                        help="curve.csv of a float32-only run (e.g. --fast "
                             "speed.channels_last=true) against the same plain run: the noise")
    parser.add_argument("--table-from", type=Path, default=None, metavar="CSV",
                        help="run nothing: print the tables of an earlier curve.csv")
    args = parser.parse_args()
    if args.table_from:
        print_tables(args, read_rows(args.table_from, args.iters))
        return
    torch.set_num_threads(args.threads)
    fast_keys = args.fast if args.fast is not None else FAST
    tmp = Path(tempfile.mkdtemp(prefix="us3l-curve-"))
    fast = build(args, tmp / "fast", fast_keys)
    recorded = read_plain(args.plain_from, args.iters) if args.plain_from else None
    plain = None if recorded else build(args, tmp / "plain", [])
    print(f"{args.iters} iterations, {args.arch}, batch {args.batch}, {args.threads} threads, "
          f"{fast.device}; fast = {', '.join(fast_keys)}"
          + (f"; plain from {args.plain_from}" if recorded else ""), flush=True)
    rows = []
    for t, (b1, b2) in enumerate(batches(fast), 1):
        out_f, sec_f = timed_step(fast, b1, b2)
        if recorded:
            row = dict(recorded[t - 1])
        else:
            a1, a2 = b1.clone(), b2.clone()
            out_p, sec_p = timed_step(plain, a1, a2)
            row = {"iteration": t, "widths": len(out_p["records"]), "plain": out_p["loss"],
                   "plain_base": out_p["records"][0]["loss"], "sec_plain": sec_p}
        assert row["widths"] == len(out_f["records"]), "not the same widths as the plain run"
        row.update(fast=out_f["loss"], fast_base=out_f["records"][0]["loss"], sec_fast=sec_f)
        rows.append(row)
        if t % 10 == 0 or t == 1:
            print(f"  iteration {t}/{args.iters}: loss plain {row['plain']:.4f} fast "
                  f"{row['fast']:.4f}; s/iter plain {row['sec_plain']:.2f} fast {sec_f:.2f}",
                  flush=True)
        if t >= args.iters:
            break
    print_tables(args, rows)
    if args.out is not None:
        write_outputs(args.out, rows)


def print_tables(args, rows: list[dict]) -> None:
    first = rows[0]
    print(f"\niteration 1 (same weights): loss fp32 {first['plain']:.5f}, fast {first['fast']:.5f}, "
          f"relative difference {abs(first['fast'] - first['plain']) / abs(first['plain']):.2e}")
    drift = stage_offsets(read_rows(args.drift_from, args.iters)) if args.drift_from else None
    print("\n| stage | iterations | loss plain | loss fast | offset | 2 std errors | float32 drift "
          "| within noise |")
    print("|---|---|---|---|---|---|---|---|")
    verdicts = []
    for q, (part, mean, err) in enumerate(stage_offsets(rows)):
        noise = abs(drift[q][1]) if drift else 0.0
        ok = abs(mean) <= noise + 2 * err
        verdicts.append(ok)
        print(f"| {q + 1} | {part[0]['iteration']}-{part[-1]['iteration']} | "
              f"{statistics.fmean(r['plain'] for r in part):.4f} | "
              f"{statistics.fmean(r['fast'] for r in part):.4f} | {mean:+.4f} | {2 * err:.4f} | "
              + (f"{drift[q][1]:+.4f}" if drift else "not measured") + f" | "
              f"{'yes' if ok else 'NO'} |")
    sp, sf = (statistics.fmean(r[k] for r in rows[1:] or rows) for k in ("sec_plain", "sec_fast"))
    print(f"\nseconds per iteration (schedule mean, iteration 1 left out): plain {sp:.3f}, fast "
          f"{sf:.3f}, plain/fast {sp / sf:.3f}"
          + (" (plain timed in the earlier run)" if args.plain_from else ""))
    print(f"loss curve of the fast run within noise of the fp32 one in every stage: "
          f"{'yes' if all(verdicts) else 'NO'}"
          + ("" if drift else " (noise = 2 std errors only: pass --drift-from)"))


def stage_offsets(rows: list[dict]) -> list[tuple[list[dict], float, float]]:
    """Per quarter of the run: (its rows, mean of fast - plain, standard error of that mean)."""
    quarter, out = max(1, len(rows) // 4), []
    for q in range(4):
        part = rows[q * quarter:(q + 1) * quarter] if q < 3 else rows[3 * quarter:]
        if len(part) >= 2:
            diffs = [r["fast"] - r["plain"] for r in part]
            out.append((part, statistics.fmean(diffs),
                        statistics.stdev(diffs) / math.sqrt(len(diffs))))
    return out


def read_rows(path: Path, iters: int) -> list[dict]:
    """An earlier run's curve.csv, as numbers."""
    with open(path, newline="") as f:
        rows = [{k: (int(v) if k in ("iteration", "widths") else float(v)) for k, v in r.items()}
                for r in csv.DictReader(f)]
    if len(rows) != iters:
        raise SystemExit(f"{path} has {len(rows)} iterations, not --iters {iters}; pass the "
                         f"settings it was made with")
    return rows


def read_plain(path: Path, iters: int) -> list[dict]:
    keys = ("iteration", "widths", "plain", "plain_base", "sec_plain")
    return [{k: r[k] for k in keys} for r in read_rows(path, iters)]


def write_outputs(out: Path, rows: list[dict]) -> None:
    import io

    from pretrain.safe_io import atomic_write
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    text = buf.getvalue()
    atomic_write(out / "curve.csv", lambda tmp: Path(tmp).write_text(text))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.5))
    its = [r["iteration"] for r in rows]
    ax.plot(its, [r["plain"] for r in rows], label="fp32 (plain)", lw=1)
    ax.plot(its, [r["fast"] for r in rows], label="fast", lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("iteration loss (all widths)")
    ax.legend()
    fig.tight_layout()
    atomic_write(out / "curve.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print(f"wrote {out / 'curve.csv'} and {out / 'curve.png'}")


if __name__ == "__main__":
    main()
