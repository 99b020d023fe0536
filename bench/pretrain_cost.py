#!/usr/bin/env python
"""Pretraining cost, measured side by side on the same batch in one run.

(a) The mean cost of a US3L iteration over the Algorithm 1 schedule (a quarter of the iterations
    base network only, then max + R_min + one random width with R_min 0.75, 0.5, 0.25) over the
    cost of a 4-width sandwich iteration (US-Net: max, min, two random widths) -- goal <= 0.60.
    Both use the same loss (US3L, Table 7 case 13) so the ratio isolates the sampling; the same
    ratio against the US+SimCLR configuration (case 14, no momentum encoder, no head g) is
    printed too. Iterations are drawn stratified from each schedule and timed interleaved.
(b) Forward time of the slimmable network at width r over the plain network built at r (same
    weights, eval mode), r in {0.25, 0.5, 0.75, 1.0} -- goal <= 1.10 -- slicing at every call and
    with ``slim.cached_slices`` (the dense slices kept while the weights do not change).

(c) A US3L iteration at width 1.0 only (stage 1 of Algorithm 1: both views, the momentum encoder,
    the heads, one optimizer step) over a plain torchvision-structured ResNet's forward and backward
    of both views with an SGD step, same batch, same precision and layout (--fast switches
    apply to both) -- GPU goal <= 1.15.

    python bench/pretrain_cost.py                     # ResNet-18, CIFAR stem, 32x32, batch 64
    python bench/pretrain_cost.py --arch resnet50 --batch 128 --iters 8
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pretrain import slim  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.engine import Trainer  # noqa: E402
from pretrain.models import backbone_twin, build_backbone  # noqa: E402
from pretrain.sampling import widths_for_iteration  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_step(trainer: Trainer, x1, x2, widths: list[float]) -> float:
    """Seconds of one ``Trainer.step`` at ``widths`` (the device synchronised on both ends)."""
    _sync(trainer.device)
    t0 = time.perf_counter()
    trainer.step(x1, x2, widths=widths)
    _sync(trainer.device)
    return time.perf_counter() - t0


def add_run_args(parser) -> None:
    """The run every pretraining bench times: model, image size, batch per view."""
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--stem", default="cifar")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)


def trainer_for(args, out: Path, *extra: str) -> Trainer:
    cfg = load_config(None, [
        f"model.arch={args.arch}", f"model.stem={args.stem}", "data.name=synthetic",
        f"data.image_size={args.image_size}", f"data.batch_size={args.batch}", "data.num_workers=0",
        f"data.synthetic.train_size={args.batch}", "data.synthetic.val_size=0",
        "schedule.iters=1000000", "optim.warmup_epochs=0", f"output.dir={out}",
        "monitor.tensorboard=false", *extra])
    return Trainer(cfg, progress=False)


def schedule_samples(cfg: dict, total: int, per_phase: int, seed: int) -> list[list[float]]:
    """``per_phase`` width lists from each quarter of a ``total``-iteration schedule."""
    rng = random.Random(seed)
    quarter = total // 4
    picks = []
    for q in range(4):
        starts = sorted(random.Random(seed + q).sample(range(q * quarter + 1, (q + 1) * quarter + 1),
                                                       per_phase))
        picks += [widths_for_iteration(t, total, cfg, rng) for t in starts]
    return picks


def cost_ratio(args, device: torch.device) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="us3l-bench-"))
    us3l = trainer_for(args, tmp / "a", "method.name=us3l")
    simclr = trainer_for(args, tmp / "b", "method.name=simclr")
    x1, x2, _ = next(iter(torch.utils.data.DataLoader(us3l.train_set, batch_size=args.batch)))
    dyn = dict(us3l.cfg["sampling"], sandwich=True, dynamic=True, num_random=1)
    sand = dict(us3l.cfg["sampling"], sandwich=True, dynamic=False, num_random=2)
    dyn_w = schedule_samples(dyn, 400, args.iters, 1)
    sand_w = schedule_samples(sand, 400, args.iters, 2)

    def timed(trainer, widths) -> float:
        return timed_step(trainer, x1, x2, widths)

    for trainer in (us3l, simclr):  # warm-up (allocator, kernels)
        timed(trainer, [1.0, 0.25, 0.6])
    t_dyn, t_sand, t_usnet = [], [], []
    for a, b in zip(dyn_w, sand_w):  # interleaved so load changes hit both alike
        t_dyn.append(timed(us3l, a))
        t_sand.append(timed(us3l, b))
        t_usnet.append(timed(simclr, b))
    mean = statistics.fmean
    print(f"(a) iteration cost on {device} ({args.arch}/{args.stem}, {args.image_size}px, batch "
          f"{args.batch}, {len(dyn_w)} iterations each, stratified over the 4 quarters)")
    print(f"    US3L, Algorithm 1 schedule (mean {mean(len(w) for w in dyn_w):.2f} widths): "
          f"{mean(t_dyn) * 1e3:8.1f} ms")
    print(f"    US3L loss, 4-width sandwich:                      {mean(t_sand) * 1e3:8.1f} ms")
    print(f"    US+SimCLR (US-Net), 4-width sandwich:             {mean(t_usnet) * 1e3:8.1f} ms")
    ratio = mean(t_dyn) / mean(t_sand)
    print(f"    ratio US3L schedule / 4-width sandwich (same loss): {ratio:.3f}  "
          f"(goal <= 0.60: {'met' if ratio <= 0.60 else 'NOT met'})")
    print(f"    ratio US3L / US+SimCLR 4-width sandwich:            {mean(t_dyn) / mean(t_usnet):.3f}")
    per_q = [mean(t_dyn[q * args.iters:(q + 1) * args.iters]) * 1e3 for q in range(4)]
    print("    US3L per quarter (ms): " + ", ".join(f"Q{q + 1} {v:.1f}" for q, v in enumerate(per_q)))


def forward_ratio(args, device: torch.device) -> None:
    cfg = {"arch": args.arch}
    if not args.arch.startswith("vit"):
        cfg["stem"] = args.stem
    model = build_backbone(cfg).to(device)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    print(f"(b) eval forward, slimmable at r / plain network at r (same weights), {args.arch}, "
          f"batch {args.batch}, median of {args.reps}")
    worst, worst_cached = 0.0, 0.0
    for width in (0.25, 0.5, 0.75, 1.0):
        slim.set_width(model, width)
        with torch.no_grad():
            with slim.calibrating(model):
                model(x)
            model.eval()
            plain = backbone_twin(model, cfg, width).to(device).eval()

            def run(net) -> float:
                _sync(device)
                t0 = time.perf_counter()
                net(x)
                _sync(device)
                return time.perf_counter() - t0

            ts, tc, tp = [], [], []
            for rep in range(2 + args.reps):  # 2 warm-up rounds, then interleaved
                sliced = run(model)
                with slim.cached_slices(model):
                    run(model)              # builds the dense slices
                    cached = run(model)     # uses them
                times = sliced, cached, run(plain)
                if rep >= 2:
                    for series, value in zip((ts, tc, tp), times):
                        series.append(value)
        model.train()
        med = statistics.median
        ratio, cached = med(ts) / med(tp), med(tc) / med(tp)
        worst, worst_cached = max(worst, ratio), max(worst_cached, cached)
        print(f"    r={width:<4}  slimmable {med(ts) * 1e3:8.2f} ms  cached slices "
              f"{med(tc) * 1e3:8.2f} ms  plain {med(tp) * 1e3:8.2f} ms  ratio {ratio:.3f} "
              f"(cached {cached:.3f})")
    for label, value in (("slicing per call", worst), ("cached slices", worst_cached)):
        print(f"    worst ratio, {label}: {value:.3f} (goal <= 1.10: "
              f"{'met' if value <= 1.10 else 'NOT met'})")


def stage1_ratio(args, device: torch.device) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="us3l-bench-"))
    trainer = trainer_for(args, tmp / "c", "method.name=us3l", *args.fast)
    cfg = {"arch": args.arch, "stem": args.stem}
    plain = trainer.speed.prepare_model(
        backbone_twin(trainer.method.online.backbone, cfg, 1.0).to(device).train())
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    x1, x2, _ = next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=args.batch)))
    v1, v2 = (trainer.speed.prepare_input(x.to(device)) for x in (x1, x2))

    def plain_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with trainer.speed.forward_context(trainer.amp):
            loss = plain(v1).float().mean() + plain(v2).float().mean()
        loss.backward()
        optimizer.step()

    def run(fn) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    ours, base = [], []
    for rep in range(2 + args.reps):  # 2 warm-up rounds, then interleaved
        a, b = run(lambda: trainer.step(x1, x2, widths=[1.0])), run(plain_step)
        if rep >= 2:
            ours.append(a)
            base.append(b)
    med = statistics.median
    ratio = med(ours) / med(base)
    print(f"(c) stage-1 US3L iteration / plain ResNet forward+backward of both views, {args.arch}, "
          f"batch {args.batch} per view, switches: {trainer.speed.describe()}, median of "
          f"{args.reps}")
    print(f"    US3L {med(ours) * 1e3:8.1f} ms  plain {med(base) * 1e3:8.1f} ms  ratio {ratio:.3f} "
          f"(goal <= 1.15 on a GPU: {'met' if ratio <= 1.15 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description="US3L pretraining cost ratios")
    add_run_args(parser)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per schedule quarter")
    parser.add_argument("--reps", type=int, default=10, help="timed forwards per width")
    parser.add_argument("--only", choices=("a", "b", "c"), default=None)
    parser.add_argument("--fast", action="append", default=[], metavar="KEY=VALUE",
                        help="speed switches for (c), e.g. speed.bf16=true (repeat)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if args.only in (None, "a"):
        cost_ratio(args, device)
    if args.only in (None, "b"):
        forward_ratio(args, device)
    if args.only in (None, "c"):
        stage1_ratio(args, device)


if __name__ == "__main__":
    main()
