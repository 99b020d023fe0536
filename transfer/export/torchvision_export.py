"""torchvision format: the static twin's plain state_dict with torchvision's key names.

Backbone only -- no fc, projector, predictor, distillation head or momentum encoder. At width 1.0
a ResNet export loads into ``torchvision.models.resnet18/50`` with only ``fc.*`` missing.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from pretrain.safe_io import atomic_write

FILENAME = "torchvision.pth"
_NOT_BACKBONE = ("fc.", "head.", "projector.", "predictor.", "distill", "momentum")


def torchvision_state_dict(static_backbone: nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu().clone() for k, v in static_backbone.state_dict().items()}
    stray = [k for k in state if k.startswith(_NOT_BACKBONE)]
    if stray:
        raise ValueError(f"the backbone state holds non-backbone keys {stray[:3]}")
    return state


def write(path: str | Path, state: dict[str, torch.Tensor]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)
