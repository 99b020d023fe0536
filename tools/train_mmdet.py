#!/usr/bin/env python
"""Fine-tune and evaluate one export in MMDetection (mmengine ``Runner`` from a config).

Usually run by ``tools/train_det.sh mmdet TASK EXPORT``; distributed through torchrun
(``--launcher pytorch``), which train_det.sh starts for --gpus > 1, --nnodes > 1 or
--cpu-procs N (gloo on the CPU). Writes mmengine's logs, config and checkpoints to OUT/mmdet/, the
run's identity to OUT/run.json and the project's metrics.json to OUT/ (rank 0, once).

    python tools/train_mmdet.py --task voc --export EXPORT [--out OUT] [--config FILE]
        [--launcher none|pytorch] [--total-batch B] [--ims-per-gpu M] [--eval-only] [--resume]
        [--max-iters N] [--img-scale W H] [--cfg-options key=value ...]

Bad input (options, export, data root, run folder, config options): one line on stderr, exit 2,
checked before mmengine's runner starts and before the run folder is claimed (nothing written).
A ``--config`` is a Python file that MMDetection executes (the engine's format): pass only
configs you trust; the project's own are in configs/mmdet/. Exit statuses: pretrain/cli.py.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain import cli  # noqa: E402
from transfer.detection import metrics  # noqa: E402
from transfer.detection.datasets import data_root  # noqa: E402
from transfer.detection.preflight import (PreflightError, add_run_arguments, arch_of,  # noqa: E402
                                          check, check_engine_device, check_eval_only, check_out,
                                          claim_run_dir, default_config,
                                          quiet_engine_warnings, run_dir)

ENGINE = "mmdet"
PROG = "train_mmdet.py"


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, lr_key="optim_wrapper.optimizer.lr")
    parser.add_argument("--out", default="", help="run folder: metrics.json, run.json + mmdet/ "
                        "logs (default runs/det/mmdet_TASK_<sha8>_wW)")
    parser.add_argument("--config", default="", help="default: configs/mmdet/*_us3l.py for the "
                                                     "export's arch and the task (a Python file "
                                                     "that runs: pass only configs you trust)")
    parser.add_argument("--launcher", choices=("none", "pytorch", "slurm", "mpi"), default="none")
    parser.add_argument("--max-iters", type=cli.int_at_least(1), default=None,
                        help="replace the schedule by N iterations (warm-up, step at 3/4)")
    parser.add_argument("--img-scale", type=cli.int_at_least(32), nargs=2, default=None,
                        metavar=("W", "H"), help="resize every image to fit W x H (small-image "
                                                 "runs)")
    parser.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                        help="override config keys: key=value (mmengine's DictAction syntax)")
    parser.add_argument("--local_rank", "--local-rank", type=cli.int_at_least(0), default=0)
    args = parser.parse_args(argv)
    if args.config and not Path(args.config).is_file():
        parser.error(f"--config {args.config} does not exist")
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def cfg_options(items: list[str] | None) -> dict | None:
    """key=value strings parsed as mmengine's DictAction does (after the preflight check, so
    that bad input is reported before mmengine is imported). An explicit lr must be a finite
    number > 0."""
    if not items:
        return None
    from mmengine.config import DictAction

    from transfer.mmdet.config import LR_KEY
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PreflightError(f"--cfg-options {item!r} is not key=value")
        options[key] = DictAction._parse_iterable(value)
    lr = options.get(LR_KEY)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))
                           or not math.isfinite(lr) or lr <= 0):
        raise PreflightError(f"--cfg-options {LR_KEY}={lr!r}: pass a finite number > 0")
    return options


def build(args):
    """(config, export meta, paths whose SyncBN was replaced, lr note) for this process."""
    from transfer.mmdet.config import ConfigError, build_config
    world = int(os.environ.get("WORLD_SIZE", "1")) if args.launcher != "none" else 1
    options = cfg_options(args.cfg_options)
    try:
        return build_config(
            args.config, args.export, args.task, data_root(), Path(args.out) / ENGINE,
            world_size=world, device=args.device, max_iters=args.max_iters, cfg_options=options,
            img_scale=args.img_scale, total_batch=args.total_batch,
            ims_per_gpu=args.ims_per_gpu), world
    except ConfigError:
        raise
    except (SyntaxError, NameError, ImportError, KeyError, TypeError, ValueError, AttributeError,
            OSError) as err:  # a --config or --cfg-options mmengine cannot build from
        raise ConfigError(f"cannot build the MMDetection config from {args.config} "
                          f"({type(err).__name__}: {cli.one_line(err, 200)})") from None


def _init_cpu_group(args) -> None:
    """mmengine's init_dist calls torch.cuda.set_device; on the CPU the gloo group is joined
    here first (mmengine then sees it initialised and only uses it)."""
    import torch.distributed as dist
    if args.launcher == "pytorch" and args.device == "cpu" and not dist.is_initialized():
        dist.init_process_group("gloo", init_method="env://")


def run(args, built) -> int:
    from mmengine.dist import get_world_size, is_main_process
    from mmengine.runner import Runner

    from transfer.detection import protocol
    from transfer.mmdet.config import BackboneLoadedCheck, check_backbone_loaded, describe

    out = Path(args.out)
    (cfg, meta, degraded, lr_note), world = built
    cfg.launcher = args.launcher
    cfg.resume = bool(args.resume)
    _init_cpu_group(args)
    runner = Runner.from_cfg(cfg)
    if degraded:
        target = protocol.norm_for(world, args.device)
        runner.logger.info(f"{world} process(es) on {args.device}: SyncBN -> {target} in "
                           f"{', '.join(degraded)}")
    resolved = describe(cfg, world)
    runner.logger.info(protocol.summary(resolved) + f"; {lr_note}")
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
    if not is_main_process():
        return 0
    log = next(Path(runner.log_dir).glob("*.log"), Path(runner.log_dir))
    try:
        values, notes = metrics.from_mmdet(results, args.task)
        record = metrics.make_record(ENGINE, args.task, meta, values, notes, run={
            "config": str(args.config), "export": str(Path(args.export).resolve()),
            "logs": str(Path(runner.log_dir).resolve()), "iterations": int(iterations),
            "eval_only": bool(args.eval_only), "world_size": get_world_size(),
            "ims_per_batch": resolved["total_batch"], "device": args.device,
            "protocol": resolved | {"lr_note": lr_note},
            "detections": {"count": results.get("detections/count"),
                           "images": results.get("detections/images")}})
    except metrics.MetricsError as err:
        print(f"{PROG}: error: {out}: {cli.one_line(err)}; see {log}", file=sys.stderr)
        return 2
    path = metrics.write(out, record)
    runner.logger.info(f"metrics: {path}: " + ", ".join(
        f"{k}={record[k]}" for k in metrics.metric_keys(args.task)))
    return 0


def _fail(err: BaseException) -> int:
    print(f"{PROG}: error: {cli.one_line(err, 600)}", file=sys.stderr)
    return cli.EXIT_BAD_INPUT


def main(argv=None) -> int:
    """Check everything and build the config, claim the run folder, then train and evaluate."""
    quiet_engine_warnings()
    args = parse_args(argv)
    from pretrain.device import default_device
    args.device = args.device or default_device().type
    try:
        if args.out:
            check_out(args.out)
        meta = check(ENGINE, args.task, args.export)
        check_engine_device(ENGINE, args.device)
        args.out = str(run_dir(ENGINE, args.task, meta, args.export, args.out))
        args.config = args.config or str(default_config(ENGINE, args.task, arch_of(meta)))
        check_eval_only(ENGINE, args.out, args.eval_only, args.resume)
    except PreflightError as err:
        return _fail(err)
    from transfer.mmdet.config import ConfigError
    try:  # the whole config before the run folder is claimed: a bad option writes nothing
        built = build(args)
        # torchrun's workers: train_det.sh recorded run.json before starting them
        claim_run_dir(ENGINE, args.task, meta, args.export, Path(args.out), args.resume,
                      record=args.launcher == "none")
    except (PreflightError, ConfigError) as err:
        return _fail(err)
    try:
        code = run(args, built)
    except (PreflightError, ConfigError) as err:
        code = _fail(err)
    _finish_distributed(code)
    return code


def _finish_distributed(code: int) -> None:
    """Every rank waits for rank 0's metrics.json, then exits at once with ``code``. Letting the
    interpreter tear down a process that holds a gloo group and mmengine's DDP-wrapped runner
    sometimes aborts in a C++ destructor ("terminate called without an active exception", seen
    in about 1 of 10 two-process runs under load), after the run's work is done."""
    import logging

    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
