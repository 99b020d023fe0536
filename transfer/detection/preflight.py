"""Checks before a detection run starts, shared by both engines and tools/train_det.sh.

Why here: a wrong export folder or data root should fail once, in one line, before an engine
spawns N workers that each fail deep inside a data loader. Also picks the project config for
(engine, task, arch) so that train_det.sh needs no knowledge of file names.

CLI (used by tools/train_det.sh): ``python -m transfer.detection.preflight ENGINE TASK EXPORT
[--gpus N]`` prints nothing and exits 0, or prints one error line and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    return meta


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
          data_root: str | Path | None = None) -> dict:
    """Everything a run needs; returns the export's meta."""
    if engine not in ENGINES:
        raise PreflightError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    if task not in TASKS:
        raise PreflightError(f"unknown task {task!r}; expected one of {TASKS}")
    if gpus < 1:
        raise PreflightError(f"--gpus {gpus}: pass at least 1")
    if gpus > 1:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check a detection run before it starts")
    parser.add_argument("engine")
    parser.add_argument("task")
    parser.add_argument("export")
    parser.add_argument("--gpus", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        check(args.engine, args.task, args.export, args.gpus)
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
