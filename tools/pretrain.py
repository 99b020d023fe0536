#!/usr/bin/env python
"""Pretrain a universally slimmable backbone (US3L and its baselines); writes ONE checkpoint.

    python tools/pretrain.py                                     # demo: synthetic data, a few CPU minutes
    python tools/pretrain.py --config configs/pretrain/us3l_r18_cifar100.yaml data.root=/data
    python tools/pretrain.py --config configs/pretrain/us3l_r18_cifar100.yaml --resume
    torchrun --nproc_per_node=8 tools/pretrain.py --config configs/pretrain/us3l_r50_folder.yaml

Overrides are ``section.key=value`` (YAML values). The resolved config, the checkpoint
(``checkpoint.pth``) and CSV/TensorBoard logs go to ``output.dir``. ``--resume`` continues from
``output.dir/checkpoint.pth`` (or the path given). Bad input: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named like the package: drop tools/ from the path so `import pretrain` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_CONFIG = ROOT / "configs" / "pretrain" / "demo.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="a YAML file under configs/pretrain/ (default: demo.yaml)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue a run (default: OUTPUT_DIR/checkpoint.pth)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. data.batch_size=64 method.table7_case=1")
    args = parser.parse_args(argv)

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
        summary = trainer.train()
    except (ConfigError, DataError, CheckpointError, CollapseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary["checkpoint"]:
        last = "" if summary["last_loss"] is None else f", last loss {summary['last_loss']:.4f}"
        print(f"done: {summary['iteration']}/{summary['total']} iterations{last}; checkpoint "
              f"{summary['checkpoint']}")
        if summary["collapsed_at"] is not None:
            print(f"warning: embeddings collapsed at iteration {summary['collapsed_at']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
