"""meta.json: what an export is (architecture, width, per-stage channels, provenance).

The engines' backbones (transfer/detectron2/backbone.py, transfer/mmdet/backbone.py) are built
from the channel plan stored here, so a detector config only points at this file.
"""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from pretrain.safe_io import atomic_write

META_NAME = "meta.json"
META_VERSION = 1
_PLAN_KEYS = ("arch", "block", "depths", "stem", "inner", "out")


class MetaError(ValueError):
    """A meta.json the engine backbones cannot build from (one line for the user)."""


def versions() -> dict[str, str | None]:
    """Installed versions of everything an export depends on (None where not installed)."""
    out = {}
    for dist in ("us3l", "torch", "torchvision", "pb1-detectron2", "detectron2", "mmdet",
                 "mmengine", "mmcv", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if "us3l" not in out:
        import pretrain
        out["us3l"] = pretrain.__version__
    return out


def write_meta(path: str | Path, meta: dict) -> Path:
    text = json.dumps(dict(meta, meta_version=META_VERSION), indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / META_NAME
    if not path.is_file():
        raise MetaError(f"{path} does not exist; point the config at the meta.json written by "
                        f"tools/convert_width.py")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MetaError(f"{path} is not valid JSON ({err}); re-run tools/convert_width.py") from None
    if not isinstance(meta, dict) or meta.get("meta_version") != META_VERSION:
        raise MetaError(f"{path} is not a us3l export meta.json (version {META_VERSION})")
    return meta


def detector_plan(meta_or_path: dict | str | Path) -> dict:
    """The per-stage channel plan of a ResNet export usable by a detector (ImageNet stem only)."""
    meta = meta_or_path if isinstance(meta_or_path, dict) else read_meta(meta_or_path)
    plan = meta.get("channel_plan")
    if not isinstance(plan, dict) or any(k not in plan for k in _PLAN_KEYS):
        raise MetaError(f"export of {meta.get('arch')!r} has no ResNet channel plan; detectors "
                        f"take resnet18/resnet50 exports")
    if meta.get("stem", "imagenet") != "imagenet":
        raise MetaError(f"export has a {meta.get('stem')!r} stem (3x3 conv, no max-pool); "
                        f"detectors need the ImageNet stem (7x7/2 conv + max-pool)")
    if plan["block"] not in ("basic", "bottleneck") or len(plan["depths"]) != 4:
        raise MetaError(f"unsupported channel plan {plan}")
    return plan
