#!/usr/bin/env python
"""Pretrain a universally slimmable backbone (US3L and its baselines); writes ONE checkpoint.

    python tools/pretrain.py                                     # demo: synthetic data, a few CPU minutes
    python tools/pretrain.py --config configs/pretrain/us3l_r18_cifar100.yaml data.root=/data
    python tools/pretrain.py --config configs/pretrain/us3l_r18_cifar100.yaml --resume
    torchrun --nproc_per_node=8 tools/pretrain.py --config configs/pretrain/us3l_r50_folder.yaml

Overrides are ``section.key=value`` (YAML values), each checked against its typed rule
(pretrain/schema.py). The resolved config, the checkpoint (``checkpoint.pth``) and CSV/TensorBoard
logs go to ``output.dir``; nothing is written there before every input (config, data, resume
checkpoint, the output path itself) has been checked. ``--resume`` continues from
``output.dir/checkpoint.pth`` (or the path given), on any number of processes (the data order is
the same; see pretrain/engine.py); a config that changes what the run means (data, model, method,
sampling, schedule, optimizer, ...) is refused unless ``--resume-changed`` is given, which
records the change in the checkpoint's history. ``--stop-after N`` ends after iteration N with a
checkpoint (e.g. a cluster time slot).

Exit status: 0 done (or stopped by ``--stop-after``); 2 bad input (one line on stderr, nothing
written), or a path that cannot be written (one line naming it); 3 training failed: a loss or
weight became NaN/Inf (one line naming the iteration and the width; the last good checkpoint is
kept, never overwritten with NaN weights) or, with ``monitor.stop_on_collapse``, the embeddings
collapsed; 130/143 interrupted by SIGINT/SIGTERM (one line; no temp file left, the last
checkpoint intact). Under torchrun a config error or a divergence (on which all ranks agree) is
printed once, by rank 0, and every rank exits with the same status.
"""
from __future__ import annotations

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
    from pretrain import cli
    parser = cli.ArgumentParser(prog="pretrain.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="a YAML file under configs/pretrain/ (default: demo.yaml)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue a run (default: OUTPUT_DIR/checkpoint.pth)")
    parser.add_argument("--resume-changed", action="store_true",
                        help="with --resume: continue although the config changes what the run "
                             "means; the change is recorded in the checkpoint's history")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it is drawn only when stderr is a terminal)")
    parser.add_argument("--stop-after", type=cli.int_at_least(1), default=None, metavar="ITER",
                        help="stop after iteration ITER with a checkpoint (continue with --resume)")
    parser.add_argument("--init-only", action="store_true",
                        help="write the untrained network (iteration 0, the config's seed) as the "
                             "checkpoint and stop: the random-init baseline of tools/run_all.py")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. data.batch_size=64 method.table7_case=1")
    args = parser.parse_args(argv)
    if args.resume_changed and args.resume is None:
        parser.error("--resume-changed continues a run: give it with --resume")
    if args.init_only and (args.resume is not None or args.stop_after is not None):
        parser.error("--init-only writes an untrained network: drop --resume and --stop-after")

    from pretrain.checkpoint import CheckpointError
    from pretrain.config import ConfigError, load_config
    from pretrain.data import DataError
    from pretrain.engine import DivergedError, Trainer
    from pretrain.monitor import CollapseError
    from pretrain.safe_io import UnsafeFileError
    rank = int(os.environ.get("RANK", "0"))
    try:
        cfg = load_config(args.config, args.overrides)
        resume = None
        if args.resume is not None:
            resume = Path(cfg["output"]["dir"]) / "checkpoint.pth" if args.resume == "auto" \
                else Path(args.resume)
        trainer = Trainer(cfg, resume=resume, progress=not args.no_progress,
                          resume_changed=args.resume_changed)
        if args.init_only:
            trainer.out_dir.mkdir(parents=True, exist_ok=True)
            print(f"random init (seed {cfg['seed']}, not trained): checkpoint {trainer.save()}")
            return cli.EXIT_OK
        summary = trainer.train(stop_after=args.stop_after)
    except (ConfigError, DataError, CheckpointError, UnsafeFileError) as err:
        # Every rank reads the same config: its error is printed once. Other errors (a file one
        # machine cannot read) may be rank-specific: each rank says so, naming itself.
        if isinstance(err, ConfigError):
            _print_once(rank, f"error: {cli.one_line(err, 1000)}")
        else:
            where = f"rank {rank}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
            print(f"error: {where}{cli.one_line(err, 1000)}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    except (DivergedError, CollapseError) as err:  # every rank reaches it alike
        _print_once(rank, f"error: {cli.one_line(err, 1000)}")
        return cli.EXIT_DIVERGED
    if summary["checkpoint"]:
        last = "" if summary["last_loss"] is None else f", last loss {summary['last_loss']:.4f}"
        stopped = summary["iteration"] < summary["total"]
        print(f"{'stopped' if stopped else 'done'}: {summary['iteration']}/{summary['total']} "
              f"iterations{last}; checkpoint {summary['checkpoint']}"
              + (" (continue with --resume)" if stopped else ""))
        if summary["collapsed_at"] is not None:
            print(f"warning: embeddings collapsed at iteration {summary['collapsed_at']}")
    return cli.EXIT_OK


def _print_once(rank: int, line: str) -> None:
    """An error every rank reaches alike: rank 0 prints it; the others give it time to."""
    if rank == 0:
        print(line, file=sys.stderr)
    else:  # torchrun stops the other ranks once one exits: let rank 0 print first
        time.sleep(RANK0_GRACE_S)


if __name__ == "__main__":
    from pretrain import cli as _cli
    sys.exit(_cli.run(main, "pretrain.py"))
