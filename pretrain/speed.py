"""Speed switches of the pretrainer (config section ``speed``): each keeps the math, each is off by
default, and each is measured by bench/pretrain_profile.py and bench/vs_official.py (issue 17).

- ``channels_last``: the backbones and the input batches in NHWC memory format, the layout oneDNN
  (CPU) and cuDNN (tensor cores) run convolutions fastest in. Only the memory layout changes.
- ``cached_slices``: in a training step each layer slices (and, under autocast, casts) its
  weights once per width, shared by the width's two views (pretrain/slim.py ``cached_slices``),
  instead of once per view; the backward through the slice then runs once per width.
- ``bf16``: the forward passes of the online network and the momentum encoder under bfloat16
  autocast, on CUDA or on a CPU whose oneDNN has bf16 kernels (AVX512-BF16 or AMX). The losses,
  the group regularizer, the gradients' accumulation and the optimizer stay in float32: the losses
  are computed outside autocast (pretrain/losses.py casts its inputs to float32). bf16 has the
  range of float32, so no loss scaling is needed (``amp``'s fp16 GradScaler is off under it).

Not a switch: a fused optimizer. On the CPU the SGD step is 8 ms of a 3 s iteration (fused: 5 ms),
and torch's fused SGD fails when a parameter gets its first gradient after the first step (its
momentum buffers are then partly None), which the distillation head g does when stage 2 begins.

Where a switch cannot work on this machine, ``SpeedSettings`` raises one ``ConfigError`` line
naming the switch and the fix, before anything is built.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from pretrain import slim
from pretrain.config import ConfigError


def cpu_has_bf16() -> bool:
    """oneDNN runs bf16 convolutions natively here (AVX512-BF16 or AMX), not by emulation."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


class SpeedSettings:
    """The ``speed`` section, checked against ``device``; the engine asks it how to run."""

    def __init__(self, section: dict | None, device: torch.device):
        section = section or {}
        self.device = device
        self.channels_last = bool(section.get("channels_last", False))
        self.bf16 = bool(section.get("bf16", False))
        self.cached_slices = bool(section.get("cached_slices", False))
        if self.bf16 and not bf16_available(device):
            what = ("this GPU has no bf16" if device.type == "cuda" else
                    "this CPU has neither AVX512-BF16 nor AMX (oneDNN would emulate bf16, slower "
                    "than float32)")
            raise ConfigError(f"speed.bf16=true but {what}; set speed.bf16=false")

    def describe(self) -> str:
        on = [name for name in ("channels_last", "bf16", "cached_slices") if getattr(self, name)]
        return ", ".join(on) if on else "none"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def slices(self, model: nn.Module):
        """Around one width's training forward: its weight slices built once (or as usual)."""
        if self.cached_slices:
            return slim.cached_slices(model, with_grad=True)
        return contextlib.nullcontext()

    def forward_context(self, fp16_amp: bool):
        """The precision of the forward passes: bf16 autocast, CUDA fp16 (``amp``), or none."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if fp16_amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()
