#!/usr/bin/env python
"""Pretrain a universally slimmable backbone (US3L and its baselines); writes ONE checkpoint.

    python tools/pretrain.py                                     # demo: synthetic data, a few CPU minutes
    python tools/pretrain.py --config configs/pretrain/us3l_r18_cifar100.yaml data.root=/data
    python tools/pretrain.py --config configs/pretrain/us3l_r18_cifar100.yaml --resume
    torchrun --nproc_per_node=8 tools/pretrain.py --config configs/pretrain/us3l_r50_folder.yaml

Overrides are ``section.key=value`` (YAML values). The resolved config, the checkpoint
(``checkpoint.pth``) and CSV/TensorBoard logs go to ``output.dir``. ``--resume`` continues from
``output.dir/checkpoint.pth`` (or the path given), on any number of processes (the data order
is the same; see pretrain/engine.py). ``--stop-after N`` ends after iteration N with a checkpoint
(e.g. a cluster time slot). Bad input: one line on stderr, exit status 2; under torchrun a config
error is printed once, by rank 0, and every rank exits 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named like the package: drop tools/ from the path so `import pretrain` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_CONFIG = ROOT / "configs" / "pretrain" / "demo.yaml"
RANK0_GRACE_S = 1.0  # seconds a rank > 0 waits before exiting on a config error (see main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="a YAML file under configs/pretrain/ (default: demo.yaml)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue a run (default: OUTPUT_DIR/checkpoint.pth)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stop-after", type=int, default=None, metavar="ITER",
                        help="stop after iteration ITER with a checkpoint (continue with --resume)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. data.batch_size=64 method.table7_case=1")
    args = parser.parse_args(argv)
    if args.stop_after is not None and args.stop_after < 1:
        parser.error(f"--stop-after {args.stop_after}: give an iteration >= 1")

    from pretrain.checkpoint import CheckpointError
    from pretrain.config import ConfigError, load_config
    from pretrain.data import DataError
    from pretrain.monitor import CollapseError
    try:
        cfg = load_config(args.config, args.overrides)
        resume = None
        if args.resume is not None:
            resume = Path(cfg["output"]["dir"]) / "checkpoint.pth" if args.resume == "auto" \
                else Path(args.resume)
        from pretrain.engine import Trainer
        trainer = Trainer(cfg, resume=resume, progress=not args.no_progress)
        summary = trainer.train(stop_after=args.stop_after)
    except (ConfigError, DataError, CheckpointError, CollapseError) as err:
        rank = int(os.environ.get("RANK", "0"))
        # Every rank reads the same config: its error is printed once. Other errors (a file one
        # machine cannot read) may be rank-specific: each rank says so, naming itself.
        if isinstance(err, ConfigError):
            if rank == 0:
                print(f"error: {err}", file=sys.stderr)
            else:  # torchrun stops the other ranks once one exits: let rank 0 print first
                time.sleep(RANK0_GRACE_S)
        else:
            where = f"rank {rank}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
            print(f"error: {where}{err}", file=sys.stderr)
        return 2
    if summary["checkpoint"]:
        last = "" if summary["last_loss"] is None else f", last loss {summary['last_loss']:.4f}"
        stopped = summary["iteration"] < summary["total"]
        print(f"{'stopped' if stopped else 'done'}: {summary['iteration']}/{summary['total']} "
              f"iterations{last}; checkpoint {summary['checkpoint']}"
              + (" (continue with --resume)" if stopped else ""))
        if summary["collapsed_at"] is not None:
            print(f"warning: embeddings collapsed at iteration {summary['collapsed_at']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
