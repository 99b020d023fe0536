"""Fixture checkpoints for the export tests, made without the pretrainer.

A slimmable backbone from ``pretrain.models.build_backbone`` with random BN affine parameters
(so a key loaded from the wrong place or not at all changes the features), saved with the
project's own ``save_checkpoint``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pretrain.checkpoint import save_checkpoint
from pretrain.models import build_backbone


def make_checkpoint(path: str | Path, arch: str = "resnet50", stem: str = "imagenet", seed: int = 0,
                    width_range=(0.25, 1.0), data: dict | None = None,
                    weights_arch: str | None = None) -> Path:
    """``weights_arch`` != ``arch`` writes a config that names one architecture and weights of
    another (the "mismatched architecture" case)."""
    torch.manual_seed(seed)
    model = build_backbone({"arch": weights_arch or arch, "stem": stem})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # BN affine: away from the (1, 0) initialisation
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) if name.endswith("weight")
                        else torch.empty_like(p).uniform_(-0.2, 0.2))
    config = {"model": {"arch": arch, "stem": stem},
              "data": data or {"name": "synthetic", "image_size": 64},
              "method": {"name": "us3l"}}
    return save_checkpoint(path, config=config, state={"backbone": model.state_dict()},
                           width_range=width_range)
