#!/usr/bin/env python
"""Fine-tune and evaluate one export in detectron2 (DefaultTrainer + detectron2's ``launch``).

Usually run by ``tools/train_det.sh detectron2 TASK EXPORT``. Writes the engine's own logs,
config.yaml, events and checkpoints to OUT/detectron2/ and the project's metrics.json to OUT/.

    python tools/train_detectron2.py --task voc --export EXPORT --out OUT [--config FILE]
        [--num-gpus N --num-machines M --machine-rank R --dist-url tcp://HOST:PORT]
        [--eval-only] [--resume] [KEY VALUE ...]
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transfer.detection.preflight import PreflightError, arch_of, check, default_config  # noqa: E402

ENGINE = "detectron2"


def trainer_class():
    """DefaultTrainer with the engines' own evaluators for VOC07 and COCO (built after the
    preflight check, so that bad input is reported before detectron2 is imported)."""
    import transfer.detectron2.compat as compat
    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            kind = MetadataCatalog.get(dataset_name).evaluator_type
            if kind == "pascal_voc":
                return PascalVOCDetectionEvaluator(dataset_name)
            if kind == "coco":
                folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
                return COCOEvaluator(dataset_name, output_dir=folder,
                                     use_fast_impl=compat.HAS_COMPILED_OPS)
            raise NotImplementedError(f"no evaluator for {dataset_name} ({kind})")

    return Trainer


def _setup_logging(cfg, args) -> logging.Logger:
    """detectron2's default_setup minus collect_env_info (it needs the compiled _C)."""
    import transfer.detectron2.compat as compat
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger
    rank = comm.get_rank()
    if comm.is_main_process():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="fvcore")
    logger = setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank)
    logger.info(f"rank {rank} of {comm.get_world_size()}; compiled detectron2 ops: "
                f"{compat.HAS_COMPILED_OPS}; command line: {args}")
    if comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as fh:
            fh.write(cfg.dump())
    from detectron2.utils.env import seed_all_rng
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    return logger


def main(args) -> int:
    import transfer.detectron2.compat  # noqa: F401  (before detectron2)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils import comm

    from transfer.detection import metrics
    from transfer.detectron2.config import build_cfg, check_backbone_loaded
    from transfer.detectron2.data import register_datasets

    Trainer = trainer_class()
    out = Path(args.out)
    world = comm.get_world_size()
    register_datasets(args.task, check=False)  # checked once before launch
    cfg, meta, degraded = build_cfg(args.config, args.export, args.opts, world_size=world,
                                    output_dir=out / ENGINE)
    logger = _setup_logging(cfg, args)
    if degraded:
        logger.info(f"one process: SyncBN -> BN in {', '.join(degraded)}")
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        if not args.resume:
            logger.info(f"backbone: {check_backbone_loaded(model, cfg.MODEL.WEIGHTS)} tensors "
                        f"equal to {cfg.MODEL.WEIGHTS}")
        results, iterations = Trainer.test(cfg, model), 0
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        if trainer.start_iter == 0:
            logger.info(f"backbone: {check_backbone_loaded(trainer.model, cfg.MODEL.WEIGHTS)} "
                        f"tensors equal to {cfg.MODEL.WEIGHTS}")
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None) or Trainer.test(cfg, trainer.model)
        iterations = cfg.SOLVER.MAX_ITER
    if comm.is_main_process():
        values, notes = metrics.from_detectron2(results, args.task)
        record = metrics.make_record(ENGINE, args.task, meta, values, notes, run={
            "config": str(args.config), "export": str(Path(args.export).resolve()),
            "logs": str(Path(cfg.OUTPUT_DIR).resolve()), "iterations": iterations,
            "eval_only": bool(args.eval_only), "world_size": world,
            "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH, "device": cfg.MODEL.DEVICE})
        path = metrics.write(out, record)
        logger.info(f"metrics: {path}: " + ", ".join(
            f"{k}={record[k]}" for k in metrics.metric_keys(args.task)))
    return 0


def parse_args(argv=None):
    """detectron2's default_argument_parser flags (same names and defaults), plus the run's."""
    import argparse
    port = 2 ** 15 + 2 ** 14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2 ** 14
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=("voc", "coco"))
    parser.add_argument("--export", required=True, help="folder written by tools/convert_width.py")
    parser.add_argument("--out", required=True, help="run folder: metrics.json + detectron2/ logs")
    parser.add_argument("--config", "--config-file", dest="config", default="",
                        help="default: configs/detectron2/*_us3l.yaml for the export's arch")
    parser.add_argument("--resume", action="store_true", help="resume from OUT/detectron2")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate without training (heads untrained: the baseline)")
    parser.add_argument("--num-gpus", type=int, default=1, help="number of gpus *per machine*")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's rank")
    parser.add_argument("--dist-url", default=f"tcp://127.0.0.1:{port}",
                        help="initialization URL for pytorch distributed backend")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="detectron2 config options: KEY VALUE pairs")
    return parser.parse_args(argv)


def cli(argv=None) -> int:
    args = parse_args(argv)
    try:
        meta = check(ENGINE, args.task, args.export, gpus=args.num_gpus)
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import transfer.detectron2.compat  # noqa: F401  (before detectron2)
    from detectron2.engine import launch

    from transfer.detectron2.config import ConfigError, build_cfg
    try:
        args.config = args.config or str(
            default_config(ENGINE, args.task, arch_of(meta)))
        build_cfg(args.config, args.export, args.opts)  # fail here, once, not in N workers
    except (PreflightError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
