#!/usr/bin/env python
"""Where one US3L iteration spends its time, per stage of Algorithm 1, plain and with speed-ups.

torch.profiler records one iteration (after warm-up) of ``Trainer.step`` per stage: stage 1 the
base network only, stages 2-4 the base network, R_min (0.75, 0.5, 0.25) and one random width
(drawn by bench/pretrain_cost.py ``schedule_samples``). Two tables:

- by phase: the named scopes of ``Trainer.step`` (forward, momentum encoder, losses, backward,
  regularizer, host sync, optimizer, momentum update), wall time in each;
- by kind of work: the operators' own (self) CPU time, grouped into convolutions, BatchNorm,
  slicing and copies, matrix products, element-wise, and the rest (on CUDA: the kernels' time).

Each column is one profiled iteration, so small entries are noisy; ``bench/vs_official.py`` and
``bench/pretrain_cost.py`` give the averaged timings.

    python bench/pretrain_profile.py                  # plain and fast (all of pretrain/speed.py)
    python bench/pretrain_profile.py --fast speed.channels_last=true   # one switch at a time
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench.pretrain_cost import add_run_args, schedule_samples, trainer_for  # noqa: E402

PHASES = ("forward", "momentum encoder", "losses", "backward", "regularizer", "host sync",
          "optimizer", "momentum update")
# operator name -> kind; the first matching fragment wins (aten names, CPU and CUDA)
KINDS = (("convolution", ("conv", "mkldnn_convolution")),
         ("batch norm", ("batch_norm",)),
         ("slicing and copies", ("slice", "copy_", "clone", "contiguous", "zero_", "zeros",
                                 "fill_", "empty_strided", "_to_copy", "as_strided",
                                 "index", "narrow", "select", "cat", "stack")),
         ("matrix products", ("addmm", "::mm", "matmul", "linear", "bmm")),
         ("element-wise", ("relu", "threshold", "add", "mul", "div", "sub", "sqrt", "norm",
                           "exp", "log", "softmax", "pow", "sum", "mean", "neg",
                           "max_pool", "avg_pool", "adaptive", "sigmoid", "where")))
FAST = ["speed.channels_last=true", "speed.bf16=true", "speed.cached_slices=true"]


def kind_of(name: str) -> str:
    lower = name.lower()
    for kind, fragments in KINDS:
        if any(f in lower for f in fragments):
            return kind
    return "other"


def stage_widths(trainer) -> list[list[float]]:
    """One width list per stage, drawn as the schedule draws them (same for every row)."""
    lists = schedule_samples(dict(trainer.cfg["sampling"]), 400, 1, 7)
    return [[round(w, 4) for w in widths] for widths in lists]


def profile_step(trainer, x1, x2, widths, device) -> tuple[dict, dict, float]:
    """(phase -> ms, kind -> ms, iteration ms) of one profiled ``step``."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    trainer.step(x1, x2, widths=widths)  # warm-up at these widths
    with profile(activities=activities) as prof:
        trainer.step(x1, x2, widths=widths)
        if device.type == "cuda":
            torch.cuda.synchronize()
    phases, kinds = defaultdict(float), defaultdict(float)
    total = 0.0
    for event in prof.events():
        if event.name in PHASES:
            phases[event.name] += event.cpu_time_total / 1e3
    for avg in prof.key_averages():
        if avg.key in PHASES or avg.key.startswith("ProfilerStep"):
            continue
        own = (getattr(avg, "self_device_time_total", 0.0) if device.type == "cuda"
               else avg.self_cpu_time_total) / 1e3
        kinds[kind_of(avg.key)] += own
        total += own
    return dict(phases), dict(kinds), total


def print_table(title: str, rows: list[str], columns: list[dict], total: list[float]) -> None:
    print(f"\n{title}")
    print("| | " + " | ".join(f"stage {i + 1}" for i in range(len(columns))) + " |")
    print("|---|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{c.get(row, 0.0):.0f}" for c in columns]
        print(f"| {row} | " + " | ".join(cells) + " |")
    print("| **total** | " + " | ".join(f"**{t:.0f}**" for t in total) + " |")


def run(label: str, overrides: list[str], args, device) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="us3l-profile-"))
    trainer = trainer_for(args, tmp, "method.name=us3l", *overrides)
    x1, x2, _ = next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=args.batch)))
    per_phase, per_kind, totals, iteration = [], [], [], []
    for stage, widths in enumerate(stage_widths(trainer), 1):
        print(f"  {label}: stage {stage}, widths {widths}", flush=True)
        phases, kinds, total = profile_step(trainer, x1, x2, widths, device)
        per_phase.append(phases)
        per_kind.append(kinds)
        totals.append(total)
        iteration.append(sum(phases.values()))
    what = ", ".join(overrides) if overrides else "no speed switch"
    print_table(f"{label} ({what}): ms per phase of one iteration", list(PHASES), per_phase,
                iteration)
    kinds = [k for k, _ in KINDS] + ["other"]
    unit = "kernel" if device.type == "cuda" else "own CPU"
    print_table(f"{label} ({what}): ms of {unit} time per kind of work", kinds, per_kind, totals)


def main() -> None:
    parser = argparse.ArgumentParser(description="per-stage profile of a US3L iteration")
    add_run_args(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fast", action="append", default=None, metavar="KEY=VALUE",
                        help=f"config override of the fast rows (repeat); default {FAST}")
    parser.add_argument("--only-fast", action="store_true", help="skip the plain rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"profile of one US3L iteration per stage: {args.arch}/{args.stem}, {args.image_size}px, "
          f"batch {args.batch} per view, {args.threads} threads, {name}, torch {torch.__version__}")
    if not args.only_fast:
        run("plain", [], args, device)
    run("fast", args.fast if args.fast is not None else FAST, args, device)


if __name__ == "__main__":
    main()
