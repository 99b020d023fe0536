"""detectron2 format and the torchvision -> detectron2 key renaming (its one owner).

The file is detectron2's pickle ``{"model": {name: numpy array}, "__author__": "us3l",
"matching_heuristics": True}`` with the names of ``detectron2.modeling.backbone.resnet``
(design.md §3, as detectron2's own tools/convert-torchvision-to-d2.py does)::

    conv1 / bn1               -> stem.conv1 / stem.conv1.norm
    layer{i}                  -> res{i+1}
    bn{j}                     -> conv{j}.norm
    downsample.0 / .1         -> shortcut / shortcut.norm
    *.num_batches_tracked     -> dropped

Pickles are detectron2's design; the project reads back only files it has just written.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from pretrain.safe_io import atomic_write

FILENAME = "detectron2.pkl"
AUTHOR = "us3l"


def rename_key(key: str) -> str | None:
    """detectron2's name for a torchvision ResNet key (None: not exported)."""
    if key.endswith("num_batches_tracked"):
        return None
    if key.startswith("fc."):
        raise ValueError(f"{key} is a classifier key, not a backbone key")
    new = key
    new = re.sub(r"^conv1\.", "stem.conv1.", new)
    new = re.sub(r"^bn1\.", "stem.conv1.norm.", new)
    new = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", new)
    new = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", new)
    new = re.sub(r"\.downsample\.0\.", ".shortcut.", new)
    new = re.sub(r"\.downsample\.1\.", ".shortcut.norm.", new)
    if not re.match(r"^(stem\.conv1|res[2-5]\.\d+\.(conv[1-3]|shortcut))\.", new):
        raise ValueError(f"{key} is not a torchvision ResNet key; detectron2 export takes ResNets")
    return new


def rename_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray],
                                                                 list[tuple[str, str | None]]]:
    """The renamed weights (numpy) and the list of (old, new or None if dropped)."""
    model, renames = {}, []
    for key, value in state.items():
        new = rename_key(key)
        renames.append((key, new))
        if new is not None:
            if new in model:
                raise ValueError(f"two keys map to {new}")
            model[new] = value.detach().cpu().numpy()
    return model, renames


def write(path: str | Path, model: dict[str, np.ndarray]) -> Path:
    payload = {"model": model, "__author__": AUTHOR, "matching_heuristics": True}

    def dump(tmp):
        with open(tmp, "wb") as fh:
            pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return atomic_write(path, dump)


def format_renames(renames: list[tuple[str, str | None]]) -> str:
    width = max(len(old) for old, _ in renames)
    return "\n".join(f"  {old:<{width}} -> {new if new is not None else '(dropped)'}"
                     for old, new in renames)
