"""The probe's train/val/test of each dataset, as (torchvision split, indices) pairs.

Validation sets are held out of an official split where the dataset has none (design.md §3):
CIFAR val = 20% of train (seed 0); Flowers-102 official train/val/test; Pets val = 20% of
trainval (seed 0); DTD partition 1 train/val/test; digits val = 20% of its fixed train split.
The held-out 20% is ssl-transfer's (``get_train_valid_loader``): ``np.random.seed(0)``, shuffle
``list(range(n))``, the first ``floor(0.2 n)`` indices are val, the rest train.
Features are cached per torchvision split, so every probe split is an index set into one of them.
"""
from __future__ import annotations

import numpy as np

VAL_FRACTION = 0.2
VAL_SEED = 0

# probe split -> (torchvision split, part): part "all", or "fit"/"val" of a held-out split.
PLAN = {
    "cifar10": {"train": ("train", "fit"), "val": ("train", "val"), "test": ("test", "all")},
    "cifar100": {"train": ("train", "fit"), "val": ("train", "val"), "test": ("test", "all")},
    "flowers102": {"train": ("train", "all"), "val": ("val", "all"), "test": ("test", "all")},
    "pets": {"train": ("trainval", "fit"), "val": ("trainval", "val"), "test": ("test", "all")},
    "dtd": {"train": ("train", "all"), "val": ("val", "all"), "test": ("test", "all")},
    "digits": {"train": ("train", "fit"), "val": ("train", "val"), "test": ("test", "all")},
}


def held_out(n: int, fraction: float = VAL_FRACTION, seed: int = VAL_SEED
             ) -> tuple[np.ndarray, np.ndarray]:
    """(fit, val) indices of a split of n items, as ssl-transfer draws them: the legacy global
    RandomState stream seeded with ``seed`` shuffles ``list(range(n))``; the first
    ``floor(fraction * n)`` (at least 1, at most n - 1) are val."""
    if n < 2:
        raise ValueError(f"cannot hold out a validation set from {n} item(s)")
    order = list(range(n))
    np.random.RandomState(seed).shuffle(order)  # == np.random.seed(seed); np.random.shuffle
    order = np.asarray(order)
    n_val = min(n - 1, max(1, int(np.floor(fraction * n))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def source_splits(name: str) -> list[str]:
    """The torchvision splits whose features the probe needs."""
    return sorted({src for src, _ in PLAN[name].values()})


def indices(name: str, split: str, n_source: int) -> np.ndarray:
    """Indices of probe split ``split`` into its torchvision split of ``n_source`` items."""
    _, part = PLAN[name][split]
    if part == "all":
        return np.arange(n_source)
    fit, val = held_out(n_source)
    return fit if part == "fit" else val
