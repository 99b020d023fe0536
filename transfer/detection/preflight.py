"""Checks before a detection run starts, shared by both engines and tools/train_det.sh.

Why here: a wrong export folder or data root should fail once, in one line, before an engine
spawns N workers that each fail deep inside a data loader. Also picks the project config for
(engine, task, arch) so that train_det.sh needs no knowledge of file names.

Also owns the run folder: its default name (``identity.default_run_dir``) and the check that
a folder (``--resume`` or not) belongs to this engine, task and export (``identity.claim``).

CLI (used by tools/train_det.sh before torchrun starts N workers): ``python -m
transfer.detection.preflight ENGINE TASK EXPORT --out DIR [--gpus N | --cpu-procs N]
[--resume]`` checks, records DIR/run.json, prints nothing and exits 0, or prints one error line
and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transfer.detection import identity
from transfer.detection.datasets import TASKS, DatasetLayoutError, check_layout

REPO = Path(__file__).resolve().parents[2]
ENGINES = ("detectron2", "mmdet")
EXPORT_FILES = {"detectron2": "detectron2.pkl", "mmdet": "mmdet.pth"}
_ARCH_TAG = {"resnet50": ("R_50", "r50"), "resnet18": ("R_18", "r18")}
_CONFIGS = {
    ("detectron2", "voc"): "configs/detectron2/faster_rcnn_{d2}_FPN_voc0712_us3l.yaml",
    ("detectron2", "coco"): "configs/detectron2/mask_rcnn_{d2}_FPN_1x_coco_us3l.yaml",
    ("mmdet", "voc"): "configs/mmdet/faster-rcnn_{mm}_fpn_voc0712_us3l.py",
    ("mmdet", "coco"): "configs/mmdet/mask-rcnn_{mm}_fpn_1x_coco_us3l.py",
}


class PreflightError(ValueError):
    """Something the run cannot start with (one line)."""


def read_export(export_dir: str | Path, engine: str) -> dict:
    """The export's meta.json (checked to describe a detector-ready ResNet) and its engine file."""
    from transfer.export.meta import MetaError, detector_plan, read_meta

    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise PreflightError(f"export folder {export_dir} does not exist; pass the folder "
                             f"tools/convert_width.py wrote (e.g. exports/w0.50)")
    try:
        meta = read_meta(export_dir)
        detector_plan(meta)
    except MetaError as err:
        raise PreflightError(str(err)) from None
    weights = export_dir / EXPORT_FILES[engine]
    if not weights.is_file():
        raise PreflightError(f"{weights} is missing; re-run tools/convert_width.py for this "
                             f"width (it writes {', '.join(EXPORT_FILES.values())})")
    check_weights(engine, weights)
    return meta


def check_weights(engine: str, weights: Path) -> None:
    """The engine file holds plain data only, BEFORE the engine reads it: detectron2's
    checkpointer unpickles a .pkl with plain ``pickle`` (code in it would run), mmengine's
    loader would stop a hostile .pth only with a traceback."""
    from pretrain import safe_io
    try:
        if engine == "detectron2":
            state = safe_io.load_pickle(weights, "detectron2 export")
            key = "model"
        else:
            state = safe_io.load_torch(weights, "mmdet export")
            key = "state_dict"
    except safe_io.UnsafeFileError as err:
        raise PreflightError(str(err)) from None
    if not isinstance(state, dict) or not isinstance(state.get(key), dict):
        raise PreflightError(f"{weights} has no '{key}' dict: not an export of "
                             f"tools/convert_width.py; re-run it for this width")


def arch_of(meta: dict) -> str:
    model = meta.get("model") or {}
    return model.get("arch") or meta.get("arch") or meta.get("channel_plan", {}).get("arch")


def default_config(engine: str, task: str, arch: str) -> Path:
    """The project config for an engine, task and architecture."""
    if arch not in _ARCH_TAG:
        raise PreflightError(f"no detector config for {arch!r}; detectors take "
                             f"{sorted(_ARCH_TAG)} exports")
    d2, mm = _ARCH_TAG[arch]
    return REPO / _CONFIGS[(engine, task)].format(d2=d2, mm=mm)


def check(engine: str, task: str, export_dir: str | Path, gpus: int = 1,
          data_root: str | Path | None = None, cpu: bool = False) -> dict:
    """Everything a run needs; returns the export's meta. ``cpu``: the processes run on the CPU
    (gloo), so no CUDA device is needed."""
    if engine not in ENGINES:
        raise PreflightError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    if task not in TASKS:
        raise PreflightError(f"unknown task {task!r}; expected one of {TASKS}")
    if gpus < 1:
        raise PreflightError(f"--gpus {gpus}: pass at least 1")
    if gpus > 1 and not cpu:
        import torch
        have = torch.cuda.device_count()
        if have < gpus:
            raise PreflightError(f"--gpus {gpus} needs {gpus} CUDA devices; this machine has "
                                 f"{have} (run with --gpus 1 on a CPU)")
    meta = read_export(export_dir, engine)
    try:
        check_layout(task, data_root)
    except DatasetLayoutError as err:
        raise PreflightError(str(err)) from None
    return meta


def add_run_arguments(parser: argparse.ArgumentParser, lr_key: str) -> None:
    """The options both engines' entry points share (one text, one meaning)."""
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--export", required=True, help="folder written by tools/convert_width.py")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate without training (heads untrained: the baseline)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT (only a run of the same engine, task and "
                             "export)")
    parser.add_argument("--total-batch", type=int, default=None,
                        help=f"images per optimizer step (default: the config's 16); the lr "
                             f"scales linearly unless {lr_key} is given")
    parser.add_argument("--ims-per-gpu", type=int, default=None,
                        help="at most M images per process and forward: gradient accumulation")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: pretrain/device.py's choice (US3L_DEVICE, else cuda if "
                             "available)")


def check_engine_device(engine: str, device: str) -> None:
    """MMDetection's RoI ops on a GPU need mmcv compiled with its CUDA ops; say so in one line
    instead of failing mid-run (tools/setup_env.sh builds them on a machine with a GPU and nvcc)."""
    if engine != "mmdet" or not str(device).startswith("cuda"):
        return
    from mmcv.ops import get_compiling_cuda_version
    if get_compiling_cuda_version() == "not available":
        raise PreflightError("mmcv was built without its CUDA ops, so MMDetection cannot run on "
                             "the GPU: re-run tools/setup_env.sh on this machine with CUDA's nvcc "
                             "on PATH (or CUDA_HOME set), or run on the CPU (US3L_DEVICE=cpu)")


def run_dir(engine: str, task: str, meta: dict, export_dir: str | Path,
            out: str | Path | None) -> Path:
    """``out``, or the default folder named after the source checkpoint and the width."""
    if out:
        return Path(out)
    return identity.default_run_dir(REPO / "runs" / "det",
                                    identity.identity(engine, task, meta, export_dir))


def claim_run_dir(engine: str, task: str, meta: dict, export_dir: str | Path, out: Path,
                  resume: bool, record: bool = True) -> None:
    """The run folder belongs to this run (``record``: and say so in out/run.json; only the
    process that starts the workers records)."""
    ident = identity.identity(engine, task, meta, export_dir)
    try:
        if record:
            identity.claim(out, ident, resume)
        else:
            identity.check(out, ident, resume)
    except identity.IdentityError as err:
        raise PreflightError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check a detection run before torchrun starts "
                                     "its workers; prints the run folder")
    parser.add_argument("engine")
    parser.add_argument("task")
    parser.add_argument("export")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per machine")
    parser.add_argument("--cpu", action="store_true", help="the processes run on the CPU")
    parser.add_argument("--world", type=int, default=1, help="processes in all")
    parser.add_argument("--total-batch", type=int, default=None)
    parser.add_argument("--ims-per-gpu", type=int, default=None)
    parser.add_argument("--out", default="")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    from transfer.detection import protocol
    try:
        meta = check(args.engine, args.task, args.export, args.gpus, cpu=args.cpu)
        protocol.split_batch(args.total_batch or protocol.REFERENCE_BATCH, args.world,
                             args.ims_per_gpu)
        out = run_dir(args.engine, args.task, meta, args.export, args.out)
        claim_run_dir(args.engine, args.task, meta, args.export, out, args.resume)
    except (PreflightError, protocol.ProtocolError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
