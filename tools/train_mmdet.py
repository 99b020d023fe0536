#!/usr/bin/env python
"""Fine-tune and evaluate one export in MMDetection (mmengine ``Runner`` from a config).

Usually run by ``tools/train_det.sh mmdet TASK EXPORT``; distributed through torchrun
(``--launcher pytorch``), which train_det.sh starts for --gpus > 1 or --nnodes > 1. Writes
mmengine's logs, config and checkpoints to OUT/mmdet/ and the project's metrics.json to OUT/.

    python tools/train_mmdet.py --task voc --export EXPORT --out OUT [--config FILE]
        [--launcher none|pytorch] [--eval-only] [--resume] [--max-iters N] [--img-scale W H]
        [--cfg-options key=value ...]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transfer.detection import metrics  # noqa: E402
from transfer.detection.datasets import data_root  # noqa: E402
from transfer.detection.preflight import PreflightError, arch_of, check, default_config  # noqa: E402

ENGINE = "mmdet"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=("voc", "coco"))
    parser.add_argument("--export", required=True, help="folder written by tools/convert_width.py")
    parser.add_argument("--out", required=True, help="run folder: metrics.json + mmdet/ logs")
    parser.add_argument("--config", default="", help="default: configs/mmdet/*_us3l.py for the "
                                                     "export's arch and the task")
    parser.add_argument("--launcher", choices=("none", "pytorch", "slurm", "mpi"), default="none")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate without training (heads untrained: the baseline)")
    parser.add_argument("--resume", action="store_true", help="resume from OUT/mmdet's last "
                                                                "checkpoint")
    parser.add_argument("--max-iters", type=int, default=None,
                        help="replace the schedule by N iterations (warm-up, step at 3/4)")
    parser.add_argument("--img-scale", type=int, nargs=2, default=None, metavar=("W", "H"),
                        help="resize every image to fit W x H (small-image runs)")
    parser.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                        help="override config keys: key=value (mmengine's DictAction syntax)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def cfg_options(items: list[str] | None) -> dict | None:
    """key=value strings parsed as mmengine's DictAction does (after the preflight check, so
    that bad input is reported before mmengine is imported)."""
    if not items:
        return None
    from mmengine.config import DictAction
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise PreflightError(f"--cfg-options {item!r} is not key=value")
        options[key] = DictAction._parse_iterable(value)
    return options


def run(args) -> int:
    from mmengine.dist import get_world_size, is_main_process
    from mmengine.runner import Runner

    from transfer.mmdet.config import BackboneLoadedCheck, build_config, check_backbone_loaded

    out = Path(args.out)
    options = cfg_options(args.cfg_options)
    cfg, meta, degraded = build_config(
        args.config, args.export, args.task, data_root(), out / ENGINE,
        distributed=args.launcher != "none", max_iters=args.max_iters,
        cfg_options=options, img_scale=args.img_scale)
    cfg.launcher = args.launcher
    cfg.resume = bool(args.resume)
    runner = Runner.from_cfg(cfg)
    if degraded:
        runner.logger.info(f"one process: SyncBN -> BN in {', '.join(degraded)}")
    weights = Path(args.export) / "mmdet.pth"
    if args.eval_only:
        model = getattr(runner.model, "module", runner.model)
        model.init_weights()  # Runner.test() loads only load_from; the export is in init_cfg
        runner.logger.info(f"backbone: {check_backbone_loaded(model, weights)} tensors equal "
                           f"to {weights}")
        iterations = 0
    else:
        if not args.resume:
            runner.register_hook(BackboneLoadedCheck(weights))
        runner.train()
        iterations = runner.iter
    results = runner.test()
    if is_main_process():
        values, notes = metrics.from_mmdet(results, args.task)
        loader = cfg.train_dataloader
        record = metrics.make_record(ENGINE, args.task, meta, values, notes, run={
            "config": str(args.config), "export": str(Path(args.export).resolve()),
            "logs": str(Path(runner.log_dir).resolve()), "iterations": int(iterations),
            "eval_only": bool(args.eval_only), "world_size": get_world_size(),
            "ims_per_batch": int(loader.batch_size) * get_world_size(),
            "device": str(next(runner.model.parameters()).device.type)})
        path = metrics.write(out, record)
        runner.logger.info(f"metrics: {path}: " + ", ".join(
            f"{k}={record[k]}" for k in metrics.metric_keys(args.task)))
    return 0


def cli(argv=None) -> int:
    args = parse_args(argv)
    try:
        meta = check(ENGINE, args.task, args.export)
        args.config = args.config or str(default_config(ENGINE, args.task, arch_of(meta)))
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from transfer.mmdet.config import ConfigError
    try:
        return run(args)
    except (PreflightError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
