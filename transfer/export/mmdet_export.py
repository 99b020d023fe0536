"""MMDetection format: torchvision key names under ``backbone.``, in mmengine's checkpoint dict.

mmdet's ResNet keeps torchvision's parameter names, so no renaming: the file is
``{"state_dict": {"backbone.<torchvision name>": tensor}, "meta": {...}}``. It is read by a
backbone's ``init_cfg=dict(type='Pretrained', checkpoint=FILE, prefix='backbone.')`` (mmengine
``_load_checkpoint_with_prefix`` takes ``state_dict`` and strips the prefix) and equally by a
whole detector's ``load_from=FILE`` (the heads are then reported missing, the backbone is not).
"""
from __future__ import annotations

from pathlib import Path

import torch

from pretrain.safe_io import atomic_write

FILENAME = "mmdet.pth"
PREFIX = "backbone."


def mmdet_checkpoint(state: dict[str, torch.Tensor], meta: dict | None = None) -> dict:
    return {"state_dict": {PREFIX + k: v for k, v in state.items()},
            "meta": {k: v for k, v in (meta or {}).items()
                     if isinstance(v, (str, int, float, bool)) or v is None}}


def write(path: str | Path, checkpoint: dict) -> Path:
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
