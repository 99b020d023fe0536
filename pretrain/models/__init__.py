"""Backbones that run at any width from one set of weights, each able to build its static twin.

``build_backbone(cfg)`` gives the slimmable network; ``build_backbone(cfg, width=r)`` the plain
network at r with the same parameter names; ``static_twin`` copies sliced weights across.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from pretrain.models.common import Layers, static_twin  # noqa: F401

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(*names: str):
    def wrap(fn):
        for name in names:
            _BUILDERS[name] = fn
        return fn
    return wrap


def known_archs() -> list[str]:
    _load_all()
    return sorted(_BUILDERS)


def _load_all() -> None:
    from pretrain.models import resnet  # noqa: F401
    for optional in ("mobilenetv2", "vit"):
        try:
            __import__(f"pretrain.models.{optional}")
        except ModuleNotFoundError as err:  # module not written yet
            if err.name != f"pretrain.models.{optional}":
                raise


def build_backbone(model_cfg: dict, width: float | None = None) -> nn.Module:
    """``model_cfg``: {"arch": ..., plus arch options such as "stem"}; ``width=None``: slimmable."""
    _load_all()
    arch = model_cfg.get("arch")
    if arch not in _BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(_BUILDERS)}")
    options = {k: v for k, v in model_cfg.items() if k != "arch"}
    layers = Layers.slim() if width is None else Layers.static(width)
    return _BUILDERS[arch](arch=arch, layers=layers, **options)


def backbone_twin(slimmable: nn.Module, model_cfg: dict, width: float) -> nn.Module:
    """The plain network at ``width`` carrying ``slimmable``'s sliced weights (and BN buffers)."""
    return static_twin(slimmable, lambda w: build_backbone(model_cfg, width=w), width)
