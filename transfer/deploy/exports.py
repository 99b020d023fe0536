"""The width folders of an export (``DIR/w*/meta.json``) and the models they hold, for timing.

A width folder is what tools/convert_width.py publishes; hidden and temporary ones (a killed
writer's) are skipped (``safe_io.published``). Torch models are rebuilt as the static twin from
meta.json and loaded strictly from ``torchvision.pth`` (weights_only); the ONNX model is
``model.onnx`` when the folder has one.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pretrain.safe_io import UnsafeFileError, load_torch, published
from transfer.export import meta as meta_mod
from transfer.export import onnx_export, torchvision_export

LATENCY_NAME = "latency.json"


def width_folders(export_dir: str | Path) -> list[Path]:
    """Published ``w*`` folders holding a meta.json, narrowest first."""
    export_dir = Path(export_dir)
    metas = export_dir.glob("w*/" + meta_mod.META_NAME)
    found = published(p.relative_to(export_dir) for p in metas)
    folders = [export_dir / p.parent for p in found]
    return sorted(folders, key=lambda f: float(read_meta(f)["width"]))


def read_meta(folder: Path) -> dict:
    try:
        meta = meta_mod.read_meta(folder)
        float(meta["width"])
    except (KeyError, TypeError, ValueError) as err:
        raise UnsafeFileError(f"{folder / meta_mod.META_NAME} is not a width export's meta.json "
                              f"({err}); re-run tools/convert_width.py") from None
    return meta


def input_size(meta: dict) -> int:
    """The image side the width was exported (and calibrated) at."""
    onnx = meta.get("onnx") or {}
    if onnx.get("input_size"):
        return int(onnx["input_size"][-1])
    return int((meta.get("calibration") or {}).get("image_size") or 224)


def backends_of(folder: Path, meta: dict) -> list[str]:
    """``torch`` where a torchvision.pth exists, ``onnxruntime`` where a model.onnx exists."""
    files = meta.get("files") or {}
    out = []
    if "torchvision" in files and (folder / torchvision_export.FILENAME).is_file():
        out.append("torch")
    if "onnx" in files and (folder / onnx_export.FILENAME).is_file():
        out.append("onnxruntime")
    return out


def torch_model(folder: Path, meta: dict) -> torch.nn.Module:
    """The static twin at the folder's width with its exported weights (strict load)."""
    from pretrain.models import build_backbone
    model_cfg = {"arch": meta["arch"]}
    if meta.get("stem"):
        model_cfg["stem"] = meta["stem"]
    model = build_backbone(model_cfg, width=float(meta["width"]))
    model.load_state_dict(load_torch(folder / torchvision_export.FILENAME, "torchvision export"),
                          strict=True)
    return onnx_export.StageOutputs(model).eval()
