"""The one place that picks the compute device when the caller does not name one.

``US3L_DEVICE`` overrides the automatic choice (CUDA when available, else CPU): ``cpu``, ``cuda``
or ``cuda:N``; ``auto`` or unset keeps the automatic choice. The test suite sets ``cpu`` so that
results do not depend on whether the machine has a GPU (tests about the GPU name their device).
"""
from __future__ import annotations

import os

import torch

ENV = "US3L_DEVICE"


def default_device(index: int | None = None) -> torch.device:
    """The device to run on; ``index`` (e.g. LOCAL_RANK) picks the GPU when the choice is CUDA."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise ValueError(f"{ENV}={choice!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and device.index is None and index is not None:
        device = torch.device("cuda", index)
    return device


def uses_cuda() -> bool:
    """Whether the default device is a GPU (pinned memory, loader workers)."""
    return default_device().type == "cuda"
