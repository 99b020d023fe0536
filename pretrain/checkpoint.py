"""The US3L checkpoint: one file, one copy of the weights for every width, safe to load.

Format (loadable with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists, dicts)::

    {
      "format": "us3l-checkpoint", "format_version": 1,
      "config": {...the full resolved config; config["model"] = {"arch": ..., "stem": ...}...},
      "width_rule": slim.WIDTH_RULE, "width_range": [min, max],
      "state": {"backbone": state_dict, "projector": ..., "predictor": ..., "distill_head": ...,
                "momentum_backbone": ..., "momentum_projector": ...},   # absent parts omitted
      "train_state": {...optimizer, scheduler, scaler, ema, epoch, iteration, rng...},
      "history": [{"iteration": N, "changes": [{"key": ..., "old": ..., "new": ...}]}, ...],
      "versions": {"torch": ..., "us3l": ...},
    }

``history`` records each ``--resume-changed`` continuation: the iteration it resumed at and the
config keys that changed there (absent or empty when the run never changed its meaning).

``save_checkpoint`` writes atomically (temp file + rename) and refuses weights holding NaN/Inf
(a diverged run must not replace its last good checkpoint); ``load_checkpoint`` turns every way a
file can be wrong into one ``CheckpointError`` line that names the problem, NaN/Inf weights
included.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from pretrain import slim
from pretrain.safe_io import atomic_write, non_finite

FORMAT = "us3l-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable US3L checkpoint (the message is one line for the user)."""


def save_checkpoint(path: str | os.PathLike, *, config: dict, state: dict[str, dict],
                    train_state: dict | None = None,
                    width_range: tuple[float, float] = (slim.MIN_WIDTH, slim.MAX_WIDTH),
                    history: list | None = None, source: dict | None = None) -> Path:
    """Write the checkpoint atomically; ``NonFiniteWeights`` (nothing written) when a weight
    holds NaN or Inf. ``source``: where an imported checkpoint came from
    (tools/import_checkpoint.py; the converter copies it into meta.json)."""
    import pretrain
    state = {k: v for k, v in state.items() if v is not None}
    bad = non_finite(state)
    if bad:
        raise NonFiniteWeights(f"weights hold NaN or Inf in {len(bad)} tensor(s) (first: "
                               f"{bad[0]}); not saved to {path}", bad)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config,
        "width_rule": slim.WIDTH_RULE,
        "width_range": [float(width_range[0]), float(width_range[1])],
        "state": state,
        "train_state": train_state or {},
        "history": list(history or []),
        "versions": {"torch": str(torch.__version__), "us3l": pretrain.__version__},
    }
    if source is not None:
        payload["source"] = source
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


class NonFiniteWeights(ValueError):
    """Weights to be saved hold NaN/Inf (``names``: the tensors); nothing was written."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint at ``path``, loaded without running anything from it (weights_only) and
    checked: format tag and version, backbone weights and model config present, every weight
    finite. Any failure is one ``CheckpointError`` line."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}; pass the .pth written by "
                              f"tools/pretrain.py")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # pickled objects: refused before anything ran
        first = " ".join(str(err).split())[:120] or type(err).__name__
        raise CheckpointError(f"{path} is not a readable US3L checkpoint: it holds more than "
                              f"tensors and plain containers (refused, nothing from it ran: "
                              f"{first}); pass the .pth written by tools/pretrain.py") from None
    except Exception as err:  # truncated, not a torch file, unreadable
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable US3L checkpoint ({first[:160]}); "
                              f"pass the .pth written by tools/pretrain.py") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a US3L checkpoint (no '{FORMAT}' format tag); "
                              f"pass the .pth written by tools/pretrain.py")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {ckpt.get('format_version')}"
                              f", this us3l reads version {FORMAT_VERSION}")
    state, config = ckpt.get("state"), ckpt.get("config")
    if not isinstance(state, dict) or not isinstance(state.get("backbone"), dict) or \
            not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path} lacks the backbone weights or the model config")
    for name, part in state.items():
        if not isinstance(part, dict) or \
                not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise CheckpointError(f"{path}: state part '{name}' is not a mapping of tensors; "
                                  f"pass the .pth written by tools/pretrain.py")
    bad = non_finite(state)
    if bad:
        raise CheckpointError(f"checkpoint {path} holds NaN or Inf in {len(bad)} tensor(s) "
                              f"(first: {bad[0]}): the run that wrote it diverged; use an earlier "
                              f"checkpoint or retrain with a lower optim.lr")
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
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint names an unusable model {cfg!r}: {err}") from None
    bad = non_finite(ckpt["state"]["backbone"])
    if bad:  # a checkpoint dict built in memory (load_checkpoint checked the file's)
        raise CheckpointError(f"checkpoint holds NaN or Inf in {len(bad)} backbone tensor(s) "
                              f"(first: {bad[0]}): the run that wrote it diverged; use an earlier "
                              f"checkpoint")
    mismatch = state_mismatch(model.state_dict(), ckpt["state"]["backbone"])
    if mismatch:
        raise CheckpointError(f"checkpoint weights do not match architecture {cfg.get('arch')!r}"
                              f" that its config names ({mismatch}); the file was altered or "
                              f"mixed from two runs")
    try:
        model.load_state_dict(ckpt["state"]["backbone"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights do not match architecture {cfg.get('arch')!r}"
                              f" ({' '.join(str(err).split())[:160]})") from None
    if width is not None:
        low, high = width_range(ckpt)
        slim.check_width(width, low, high)
        slim.set_width(model, width)  # S-Net: a width outside its list is a ValueError naming it
        return backbone_twin(model, cfg, width)
    return model


def state_mismatch(expected: dict, given: dict) -> str:
    """'' when ``given`` has exactly ``expected``'s keys and shapes, else a one-line summary."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and hasattr(given[k], "shape")
              and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape, e.g. {k} {tuple(given[k].shape)} vs "
                     f"{tuple(expected[k].shape)}")
    return "; ".join(parts)


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
