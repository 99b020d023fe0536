#!/usr/bin/env python
"""The gain of each speed switch (pretrain/speed.py), alone and together, timed side by side.

One ``Trainer`` per switch set, the same batch, the same width lists (one per stage of Algorithm 1,
from bench/pretrain_cost.py ``schedule_samples``); the sets take turns iteration by iteration so
a change in machine load hits them alike. Printed: seconds per iteration per stage, the schedule
mean, and each set's speed-up over the plain path.

    python bench/speed_switches.py                 # ResNet-18, CIFAR stem, 32 px, batch 64
    python bench/speed_switches.py --iters 3 --batch 128
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.pretrain_cost import (  # noqa: E402
    add_run_args, schedule_samples, timed_step, trainer_for)
from pretrain.speed import bf16_available  # noqa: E402

SETS = {"plain": [],
        "channels_last": ["speed.channels_last=true"],
        "bf16": ["speed.bf16=true"],
        "cached_slices": ["speed.cached_slices=true"],
        "channels_last + bf16": ["speed.channels_last=true", "speed.bf16=true"],
        "all three": ["speed.channels_last=true", "speed.bf16=true", "speed.cached_slices=true"]}


def main() -> None:
    parser = argparse.ArgumentParser(description="gain of each pretraining speed switch")
    add_run_args(parser)
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per stage")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sets = {k: v for k, v in SETS.items() if "bf16" not in k or bf16_available(device)}
    tmp = Path(tempfile.mkdtemp(prefix="us3l-switches-"))
    trainers = {name: trainer_for(args, tmp / str(i), "method.name=us3l", *keys)
                for i, (name, keys) in enumerate(sets.items())}
    first = next(iter(trainers.values()))
    x1, x2, _ = next(iter(torch.utils.data.DataLoader(first.train_set, batch_size=args.batch)))
    widths = schedule_samples(dict(first.cfg["sampling"]), 400, args.iters, 3)
    print(f"{args.arch}/{args.stem}, {args.image_size}px, batch {args.batch} per view, "
          f"{args.threads} threads, {device}, torch {torch.__version__}; "
          f"{args.iters} iterations per stage", flush=True)

    def timed(trainer, w) -> float:
        return timed_step(trainer, x1, x2, w)

    for trainer in trainers.values():  # warm-up
        timed(trainer, [1.0, 0.25, 0.6])
    times = {name: [[] for _ in range(4)] for name in trainers}
    for i, w in enumerate(widths):
        stage = i // args.iters
        for name, trainer in trainers.items():
            times[name][stage].append(timed(trainer, w))
        print(f"  stage {stage + 1}, widths {[round(v, 3) for v in w]}: " + ", ".join(
            f"{name} {times[name][stage][-1]:.2f}s" for name in trainers), flush=True)
    mean = statistics.fmean
    plain = mean(mean(s) for s in times["plain"])
    print("\n| switches | stage 1 | stage 2 | stage 3 | stage 4 | mean s/iter | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, stages in times.items():
        m = mean(mean(s) for s in stages)
        print(f"| {name} | " + " | ".join(f"{mean(s):.2f}" for s in stages)
              + f" | {m:.3f} | {plain / m:.2f}x |")


if __name__ == "__main__":
    main()
