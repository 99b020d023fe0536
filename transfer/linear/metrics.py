"""Metrics of the transfer protocol: top-1 for CIFAR/DTD/digits, mean per-class accuracy for
Flowers-102 and Pets (their test sets are class-imbalanced)."""
from __future__ import annotations

import torch

METRIC = {"cifar10": "top1", "cifar100": "top1", "dtd": "top1", "digits": "top1",
          "flowers102": "mean_per_class", "pets": "mean_per_class"}


def top1(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Percentage of correct predictions."""
    return 100.0 * (pred == target).float().mean().item()


def mean_per_class(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over the classes present in ``target`` of each class's accuracy (percent)."""
    _, inverse = torch.unique(target, return_inverse=True)
    hits = torch.bincount(inverse, weights=(pred == target).double())
    counts = torch.bincount(inverse).double()
    return 100.0 * (hits / counts).mean().item()


def score(metric: str, pred: torch.Tensor, target: torch.Tensor) -> float:
    if metric == "top1":
        return top1(pred, target)
    if metric == "mean_per_class":
        return mean_per_class(pred, target)
    raise ValueError(f"unknown metric {metric!r}; expected 'top1' or 'mean_per_class'")
