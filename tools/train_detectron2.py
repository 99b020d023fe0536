#!/usr/bin/env python
"""Fine-tune and evaluate one export in detectron2 (DefaultTrainer + detectron2's ``launch``).

Usually run by ``tools/train_det.sh detectron2 TASK EXPORT``. Writes the engine's own logs,
config.yaml, events and checkpoints to OUT/detectron2/, the run's identity to OUT/run.json and
the project's metrics.json to OUT/ (rank 0, once).

    python tools/train_detectron2.py --task voc --export EXPORT [--out OUT] [--config FILE]
        [--num-gpus N --num-machines M --machine-rank R --dist-url tcp://HOST:PORT]
        [--total-batch B] [--ims-per-gpu M] [--eval-only] [--resume] [KEY VALUE ...]

Processes: ``--num-gpus N`` spawns N GPU workers with detectron2's ``launch``; started by torchrun
(``tools/train_det.sh --cpu-procs N``) every process is one worker of a gloo group on the CPU
(detectron2's ``launch`` insists on CUDA), set up by ``torchrun_worker``.

Bad input (options, export, data root, run folder, KEY VALUE options out of range): one line on
stderr, exit 2, checked before the engine starts and before the run folder is claimed (nothing
written). Exit statuses: pretrain/cli.py.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain import cli  # noqa: E402
from transfer.detection.preflight import (PreflightError, add_run_arguments, arch_of,  # noqa: E402
                                          check, check_eval_only, check_out, claim_run_dir,
                                          default_config, quiet_engine_warnings, run_dir)

ENGINE = "detectron2"
PROG = "train_detectron2.py"


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("WORLD_SIZE" in os.environ
                                                   and "LOCAL_RANK" in os.environ)


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


def train(args) -> int:
    """One worker: fine-tune (or only evaluate) and, on rank 0, write metrics.json."""
    import transfer.detectron2.compat  # noqa: F401  (before detectron2)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils import comm

    from transfer.detection import metrics, protocol
    from transfer.detectron2.config import build_cfg, check_backbone_loaded, describe
    from transfer.detectron2.data import register_datasets
    from transfer.detectron2.trainer import Trainer

    out = Path(args.out)
    world = comm.get_world_size()
    register_datasets(args.task, check=False)  # checked once before launch
    cfg, meta, degraded, lr_note = build_cfg(
        args.config, args.export, args.opts, world_size=world, output_dir=out / ENGINE,
        device=args.device, total_batch=args.total_batch, ims_per_gpu=args.ims_per_gpu)
    logger = _setup_logging(cfg, args)
    if degraded:
        target = "BN" if world == 1 else "naiveSyncBN"
        logger.info(f"{world} process(es) on {cfg.MODEL.DEVICE}: SyncBN -> {target} in "
                    f"{', '.join(degraded)}")
    resolved = describe(cfg, world)
    logger.info(protocol.summary(resolved) + f"; {lr_note}")
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
        else:
            logger.info(f"resumed at iteration {trainer.start_iter} from {cfg.OUTPUT_DIR}")
        trainer.train()
        # The EvalHook evaluates once after the last iteration on every rank (rank 0 holds the
        # results, the others {}): no second evaluation here.
        results, iterations = getattr(trainer, "_last_eval_results", None), cfg.SOLVER.MAX_ITER
    if not comm.is_main_process():
        return 0
    log = Path(cfg.OUTPUT_DIR) / "log.txt"
    try:
        values, notes = metrics.from_detectron2(results or {}, args.task)
        record = metrics.make_record(ENGINE, args.task, meta, values, notes, run={
            "config": str(args.config), "export": str(Path(args.export).resolve()),
            "logs": str(Path(cfg.OUTPUT_DIR).resolve()), "iterations": iterations,
            "eval_only": bool(args.eval_only), "world_size": world,
            "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH, "device": cfg.MODEL.DEVICE,
            "protocol": resolved | {"lr_note": lr_note},
            "detections": ((results or {}).get("detections") or next(
                (v.get("detections") for v in (results or {}).values()
                 if isinstance(v, dict) and "detections" in v), None))})
    except metrics.MetricsError as err:
        print(f"{PROG}: error: {out}: {cli.one_line(err)}; see {log}", file=sys.stderr)
        return 2
    path = metrics.write(out, record)
    logger.info(f"metrics: {path}: " + ", ".join(
        f"{k}={record[k]}" for k in metrics.metric_keys(args.task)))
    return 0


def torchrun_worker(fn, args) -> int:
    """detectron2's ``launch`` for a process that torchrun started: join the process group (gloo
    on the CPU, nccl on GPUs), give detectron2's ``comm`` its per-machine group, run ``fn``."""
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    backend = "nccl" if args.device == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    for machine in range(world // local_world):
        group = dist.new_group(list(range(machine * local_world, (machine + 1) * local_world)))
        if machine == rank // local_world:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        code = fn(args)
    except BaseException:
        dist.destroy_process_group()  # no barrier: the other ranks may be inside a collective
        raise
    comm.synchronize()  # every rank waits for rank 0's metrics.json, then exits at once:
    # tearing down a process that holds a gloo group and a DDP model can abort in a C++
    # destructor after the work is done (seen with MMDetection's runs; tools/train_mmdet.py)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def parse_args(argv=None):
    """detectron2's default_argument_parser flags (same names and defaults), plus the run's."""
    import argparse
    port = 2 ** 15 + 2 ** 14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2 ** 14
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, lr_key="SOLVER.BASE_LR")
    parser.add_argument("--out", default="", help="run folder: metrics.json, run.json + "
                        "detectron2/ logs (default runs/det/detectron2_TASK_<sha8>_wW)")
    parser.add_argument("--config", "--config-file", dest="config", default="",
                        help="default: configs/detectron2/*_us3l.yaml for the export's arch")
    parser.add_argument("--num-gpus", type=cli.int_at_least(1), default=1,
                        help="number of gpus *per machine*")
    parser.add_argument("--num-machines", type=cli.int_at_least(1), default=1,
                        help="total number of machines")
    parser.add_argument("--machine-rank", type=cli.int_at_least(0), default=0,
                        help="this machine's rank")
    parser.add_argument("--dist-url", default=f"tcp://127.0.0.1:{port}",
                        help="initialization URL for pytorch distributed backend")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="detectron2 config options: KEY VALUE pairs")
    args = parser.parse_args(argv)
    if args.machine_rank >= args.num_machines:
        parser.error(f"--machine-rank {args.machine_rank} must be below --num-machines "
                     f"{args.num_machines}")
    if args.config and not Path(args.config).is_file():
        parser.error(f"--config {args.config} does not exist")
    return args


def _fail(err: BaseException) -> int:
    print(f"{PROG}: error: {cli.one_line(err, 600)}", file=sys.stderr)
    return cli.EXIT_BAD_INPUT


def main(argv=None) -> int:
    """Check everything, claim the run folder, then run one worker or launch N."""
    quiet_engine_warnings()
    args = parse_args(argv)
    torchrun = under_torchrun()
    from pretrain.device import default_device
    args.device = args.device or default_device().type
    processes = int(os.environ["WORLD_SIZE"]) if torchrun else args.num_gpus * args.num_machines
    try:
        if args.out:
            check_out(args.out)
        meta = check(ENGINE, args.task, args.export, gpus=1 if torchrun else args.num_gpus)
        args.out = str(run_dir(ENGINE, args.task, meta, args.export, args.out))
        args.config = args.config or str(default_config(ENGINE, args.task, arch_of(meta)))
        check_eval_only(ENGINE, args.out, args.eval_only, args.resume)
    except PreflightError as err:
        return _fail(err)
    import transfer.detectron2.compat  # noqa: F401  (before detectron2)
    from detectron2.engine import launch

    from transfer.detectron2.config import ConfigError, build_cfg
    try:  # fail here, once, not in N workers
        build_cfg(args.config, args.export, args.opts, world_size=processes, device=args.device,
                  total_batch=args.total_batch, ims_per_gpu=args.ims_per_gpu)
        # torchrun's workers: train_det.sh recorded run.json before starting them
        claim_run_dir(ENGINE, args.task, meta, args.export, Path(args.out), args.resume,
                      record=not torchrun)
    except (PreflightError, ConfigError) as err:
        return _fail(err)
    if torchrun:
        return torchrun_worker(train, args)
    if processes == 1:
        return train(args)  # what detectron2's launch does for one process, with the exit code
    launch(train, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
