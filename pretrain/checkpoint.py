"""The US3L checkpoint: one file, one copy of the weights for every width, safe to load.

Format (loadable with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists, dicts)::

    {
      "format": "us3l-checkpoint", "format_version": 1,
      "config": {...the full resolved config; config["model"] = {"arch": ..., "stem": ...}...},
      "width_rule": slim.WIDTH_RULE, "width_range": [min, max],
      "state": {"backbone": state_dict, "projector": ..., "predictor": ..., "distill_head": ...,
                "momentum_backbone": ..., "momentum_projector": ...},   # absent parts omitted
      "train_state": {...optimizer, scheduler, scaler, ema, epoch, iteration, rng...},
      "versions": {"torch": ..., "us3l": ...},
    }

``save_checkpoint`` writes atomically (temp file + rename); ``load_checkpoint`` turns every way a
file can be wrong into one ``CheckpointError`` line that names the problem.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from pretrain import slim
from pretrain.safe_io import atomic_write

FORMAT = "us3l-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable US3L checkpoint (the message is one line for the user)."""


def save_checkpoint(path: str | os.PathLike, *, config: dict, state: dict[str, dict],
                    train_state: dict | None = None,
                    width_range: tuple[float, float] = (slim.MIN_WIDTH, slim.MAX_WIDTH)) -> Path:
    import pretrain
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config,
        "width_rule": slim.WIDTH_RULE,
        "width_range": [float(width_range[0]), float(width_range[1])],
        "state": {k: v for k, v in state.items() if v is not None},
        "train_state": train_state or {},
        "versions": {"torch": str(torch.__version__), "us3l": pretrain.__version__},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the .pth written by "
                              f"tools/pretrain.py")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, not a torch file, or holds pickled objects
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable US3L checkpoint ({first[:160]}); "
                              f"pass the .pth written by tools/pretrain.py") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a US3L checkpoint (no '{FORMAT}' format tag); "
                              f"pass the .pth written by tools/pretrain.py")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {ckpt.get('format_version')}"
                              f", this us3l reads version {FORMAT_VERSION}")
    if "backbone" not in ckpt.get("state", {}) or "model" not in ckpt.get("config", {}):
        raise CheckpointError(f"{path} lacks the backbone weights or the model config")
    return ckpt


def model_config(ckpt: dict) -> dict:
    return dict(ckpt["config"]["model"])


def width_range(ckpt: dict) -> tuple[float, float]:
    low, high = ckpt.get("width_range", [slim.MIN_WIDTH, slim.MAX_WIDTH])
    return float(low), float(high)


def load_backbone(ckpt: dict, width: float | None = None) -> torch.nn.Module:
    """The slimmable backbone (``width=None``) or its static twin at ``width`` from a checkpoint.

    Loading is strict; a checkpoint whose weights do not fit the architecture it names is an error.
    """
    from pretrain.models import backbone_twin, build_backbone
    cfg = model_config(ckpt)
    try:
        model = build_backbone(cfg)
    except ValueError as err:
        raise CheckpointError(f"checkpoint names an unusable model: {err}") from None
    try:
        model.load_state_dict(ckpt["state"]["backbone"], strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint weights do not match architecture {cfg.get('arch')!r}"
                              f" ({first[:160]})") from None
    if width is not None:
        low, high = width_range(ckpt)
        slim.check_width(width, low, high)
        return backbone_twin(model, cfg, width)
    return model


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(ckpt: dict) -> dict[str, Any]:
    """A short summary for logs and meta files."""
    cfg = model_config(ckpt)
    return {"arch": cfg.get("arch"), "stem": cfg.get("stem"), "width_range": list(width_range(ckpt)),
            "method": ckpt["config"].get("method", {}).get("name"),
            "iteration": ckpt.get("train_state", {}).get("iteration")}
