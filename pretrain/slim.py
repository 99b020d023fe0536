"""The width rule and the universally slimmable layers.

One set of weights serves every width r in [0.25, 1.0]: a layer of C channels runs with its first
``channels_at(C, r)`` channels. Layers read their input width from the tensor they receive and their
output width from the rule, so a whole network switches width with ``set_width(model, r)``.

Every rule about widths lives here: the rounding (``make_divisible``/``channels_at``), the prefix
slicing of a full-width tensor to a narrower shape (``slice_to``/``slice_state_dict``), and the
layers' static twins. Everything else (export, detector configs, MACs tables) calls these.

S-Net (Yu et al., slimmable networks) trains a fixed list of widths with switchable BatchNorm:
``SwitchableBatchNorm`` holds one private ``nn.BatchNorm2d`` (affine parameters and running
statistics) per listed width, while conv/linear weights stay shared and prefix-sliced. Its static
twin at a listed width takes that width's own BN (``slice_state_dict`` picks it).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_WIDTH = 0.25
MAX_WIDTH = 1.0
WIDTH_RULE = "make_divisible(C*r, 8): nearest multiple of 8, +8 if >10% below C*r, min 8"


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round to the nearest multiple of ``divisor``, never more than 10% below ``value``.

    The rule of MobileNet/US-Net and of the US3L code; the single owner of channel rounding.
    """
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def channels_at(full_channels: int, width: float) -> int:
    """Channels a layer of ``full_channels`` channels has at width ``width``."""
    check_width(width)
    if width == 1.0:
        return full_channels
    return min(full_channels, make_divisible(full_channels * width))


def check_width(width: float, low: float = MIN_WIDTH, high: float = MAX_WIDTH) -> float:
    if not isinstance(width, (int, float)) or math.isnan(width) or not low <= width <= high:
        raise ValueError(f"width {width!r} is outside the trained range [{low}, {high}]; "
                         f"pass a ratio such as 0.25, 0.5 or 1.0")
    return float(width)


def slice_to(tensor: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Prefix-slice a full-width tensor to ``shape`` (every slimmable layout here is prefix-sliced)."""
    if tensor.dim() != len(shape):
        raise ValueError(f"cannot slice a {tuple(tensor.shape)} tensor to {tuple(shape)}")
    if any(t < s for t, s in zip(tensor.shape, shape)):
        raise ValueError(f"cannot slice a {tuple(tensor.shape)} tensor up to {tuple(shape)}")
    return tensor[tuple(slice(0, s) for s in shape)].clone()


def slice_state_dict(full: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """Slice every tensor of ``full`` to the shape of the same key in ``target`` (exact key sets).
    Switchable BN entries of ``full`` become the plain BN of the width ``target`` was built at."""
    full = switched_state_dict(full, target)
    missing = sorted(set(target) - set(full))
    if missing:
        raise KeyError(f"the slimmable weights lack {len(missing)} keys of the static model, "
                       f"e.g. {missing[:3]}")
    out = {}
    for key, ref in target.items():
        value = full[key]
        out[key] = value.clone() if value.dim() == 0 else slice_to(value, ref.shape)
    return out


def grouped_channels_at(full_channels: int, width: float, groups: int = 1) -> int:
    """Channels at ``width`` for a layer made of ``groups`` equal parts (ViT heads): each part
    follows the width rule, so every head keeps the same size."""
    if full_channels % groups:
        raise ValueError(f"{full_channels} channels do not split into {groups} equal groups")
    return groups * channels_at(full_channels // groups, width)


class SlimMixin:
    """A layer whose output channels follow the network's current width."""

    width: float = 1.0
    slim_out: bool = True
    out_groups: int = 1
    slice_cache: dict | None = None  # set inside ``cached_slices``
    slice_grad: bool = False          # cached slices carry gradients (one training step)

    def out_at(self, full: int) -> int:
        if not self.slim_out:
            return full
        return grouped_channels_at(full, self.width, self.out_groups)

    def sliced(self, cout: int, cin: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the first ``cout`` outputs and ``cin`` inputs: views of the shared
        tensors; inside ``cached_slices``, dense copies kept per shape until the weights change
        (their version counter or storage), in the dtype autocast would cast them to."""
        weight, bias = self.weight, self.bias
        if cout == weight.shape[0] and cin == weight.shape[1]:
            return weight, bias
        cache = self.slice_cache
        tracked = torch.is_grad_enabled() and weight.requires_grad
        if cache is None or (tracked and not self.slice_grad):
            return weight[:cout, :cin], (bias[:cout] if bias is not None else None)
        kind = weight.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        key = (cout, cin, dtype, weight._version, weight.data_ptr(),
               None if bias is None else (bias._version, bias.data_ptr()))
        hit = cache.get(key)
        if hit is None:
            layout = (torch.channels_last if weight.dim() == 4 and not weight.is_contiguous()
                      and weight.is_contiguous(memory_format=torch.channels_last)
                      else torch.contiguous_format)
            with torch.set_grad_enabled(tracked):
                hit = (weight[:cout, :cin].to(dtype or weight.dtype, memory_format=layout,
                                              copy=True),
                       None if bias is None else bias[:cout].to(dtype or bias.dtype, copy=True))
            if len(cache) >= SLICE_CACHE_SIZE:
                cache.clear()
            cache[key] = hit
        return hit


class SlimConv2d(nn.Conv2d, SlimMixin):
    """Conv2d that uses the first in/out channels; ``depthwise`` keeps groups == channels."""

    def __init__(self, *args, slim_out: bool = True, depthwise: bool = False, out_groups: int = 1,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.slim_out = slim_out
        self.depthwise = depthwise
        self.out_groups = out_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        if self.depthwise:  # weight (C, 1, k, k): the first C filters, each of one channel
            cout, groups = cin, cin
            weight, bias = self.sliced(cout, 1)
        else:
            cout, groups = self.out_at(self.out_channels), 1
            weight, bias = self.sliced(cout, cin)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class SlimLinear(nn.Linear, SlimMixin):
    def __init__(self, *args, slim_out: bool = True, out_groups: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.slim_out = slim_out
        self.out_groups = out_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.sliced(self.out_at(self.out_features), x.shape[-1])
        return F.linear(x, weight, bias)


class SlimBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the first C channels of shared affine parameters and running statistics.

    Training uses batch statistics and leaves the buffers alone (they would mix widths). The
    buffers are written only inside ``calibrating(model)``: a cumulative average at ONE width,
    which is what the exported static model and eval mode then use (design.md §2).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 sync: bool = False):
        super().__init__(num_features, eps, momentum, affine=True, track_running_stats=True)
        self.calibrating = False
        self.sync = sync

    def _check_input_dim(self, x):  # any (N, C, ...) input
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight, bias = self.weight[:c], self.bias[:c]
        if not self.training:
            return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], weight, bias,
                                False, 0.0, self.eps)
        if self.calibrating:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], weight, bias,
                                True, factor, self.eps)
        if self.sync and torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            from torch.nn.modules._functions import SyncBatchNorm as SyncBNFunction
            return SyncBNFunction.apply(x, weight, bias, None, None, self.eps, 0.0,
                                        torch.distributed.group.WORLD,
                                        torch.distributed.get_world_size())
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)


class SlimLayerNorm(nn.LayerNorm):
    """LayerNorm over the first D features (statistics over the active features only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        return F.layer_norm(x, (d,), self.weight[:d], self.bias[:d], self.eps)


SLIM_TYPES = (SlimConv2d, SlimLinear)
BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
SLICE_CACHE_SIZE = 4  # shapes kept per layer (a few widths); more are rebuilt


@contextlib.contextmanager
def cached_slices(model: nn.Module, with_grad: bool = False) -> Iterator[nn.Module]:
    """Inside: each layer slices (and casts, under autocast) its weights once per width and
    reuses the dense copy while the weights do not change, instead of at every call. Same
    values, so the same outputs.

    ``with_grad=False`` (evaluation, BN calibration, the kNN monitor): only forwards without
    gradients use the cache; a training forward slices as usual. ``with_grad=True`` (one
    training step, ``speed.cached_slices``): the copies carry gradients, so a width's two views
    share one slice, and its backward runs once instead of once per view."""
    layers = [m for m in model.modules() if isinstance(m, SLIM_TYPES)]
    for m in layers:
        m.slice_cache, m.slice_grad = {}, with_grad
    try:
        yield model
    finally:
        for m in layers:
            m.slice_cache, m.slice_grad = None, False


def check_width_list(widths) -> tuple[float, ...]:
    """A width list, largest first, each in [MIN_WIDTH, MAX_WIDTH], no repeats (ValueError)."""
    if not isinstance(widths, (list, tuple)) or not widths:
        raise ValueError(f"a width list must be a non-empty list such as [1.0, 0.75, 0.5, 0.25], "
                         f"got {widths!r}")
    out = sorted({round(check_width(w), 6) for w in widths}, reverse=True)
    if len(out) != len(widths):
        raise ValueError(f"width list {list(widths)} repeats a width; list each width once")
    return tuple(out)


class SwitchableBatchNorm(nn.Module, SlimMixin):
    """S-Net's switchable (private) BatchNorm: one ``nn.BatchNorm2d`` per listed width, with its
    own affine parameters and running statistics, chosen by the network's current width.

    As the official ``models/OFA/slimmable_ops.py`` ``SwitchableBatchNorm2d`` (US3L-CVPR2023,
    after JiahuiYu/slimmable_networks ``models/slimmable_ops.py``): ``self.bn[i]`` serves
    ``width_list[i]``; training updates that width's running statistics (momentum 0.1), which are
    the ones evaluation and export use. Channels follow this suite's width rule (``channels_at``;
    the official ``int(C * w)`` gives the same counts for ResNet at 1.0/0.75/0.5/0.25). The
    ``widths`` buffer records the list in every checkpoint. Inside ``calibrating`` it normalises
    with its trained statistics and changes nothing (S-Net is not recalibrated).
    """

    def __init__(self, num_features: int, widths, eps: float = 1e-5, momentum: float = 0.1,
                 fixed: bool = False):
        super().__init__()
        listed = check_width_list(list(widths))
        self.num_features, self.slim_out = num_features, not fixed  # fixed: never shrinks
        self.register_buffer("widths", torch.tensor(listed, dtype=torch.float64))
        self.bn = nn.ModuleList(nn.BatchNorm2d(self.out_at_width(w), eps, momentum)
                                for w in listed)
        self.width = listed[0]
        self.calibrating = False

    def out_at_width(self, width: float) -> int:
        return channels_at(self.num_features, width) if self.slim_out else self.num_features

    def listed(self) -> tuple[float, ...]:
        return tuple(round(float(w), 6) for w in self.widths)

    def index(self, width: float) -> int:
        listed = self.listed()
        for i, w in enumerate(listed):
            if abs(w - width) < 1e-6:
                return i
        raise ValueError(f"width {width:g} is not in the trained width list "
                         f"{[float(w) for w in listed]}; pick one of them")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn[self.index(self.width)]
        if x.shape[1] != bn.num_features:
            raise ValueError(f"switchable BN at width {self.width:g} expects {bn.num_features} "
                             f"channels, got {x.shape[1]}")
        if self.calibrating:  # its statistics are the trained ones: normalise, update nothing
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                                0.0, bn.eps)
        return bn(x)


def make_switchable(model: nn.Module, widths) -> nn.Module:
    """Replace every ``SlimBatchNorm`` of ``model`` by a ``SwitchableBatchNorm`` over ``widths``
    (S-Net); the new BNs start like the replaced ones (weight 1, bias 0, fresh statistics). A
    BN marked ``fixed_channels`` (a layer that never shrinks) keeps its channels at every width."""
    listed = check_width_list(list(widths))
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SlimBatchNorm):
                setattr(module, child_name, SwitchableBatchNorm(
                    child.num_features, listed, child.eps, child.momentum,
                    fixed=getattr(child, "fixed_channels", False)))
    return model


def listed_widths(model: nn.Module) -> tuple[float, ...] | None:
    """The width list of a network with switchable BN (S-Net), else None (any width)."""
    for module in model.modules():
        if isinstance(module, SwitchableBatchNorm):
            return module.listed()
    return None


def _switchable_prefixes(state: Mapping[str, torch.Tensor]) -> list[str]:
    return [k[: -len(".widths")] for k in state
            if k.endswith(".widths") and f"{k[: -len('.widths')]}.bn.0.weight" in state]


def switched_state_dict(full: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
                        ) -> Mapping[str, torch.Tensor]:
    """``full`` with each switchable BN replaced by the plain BN entries of the one listed width
    whose channels fit ``target`` in every layer (OFA's ``get_active_subnet`` for S-Net BN).
    ``full`` itself when it has no switchable BN; ValueError when no listed width, or more than
    one, builds ``target``'s channels."""
    prefixes = _switchable_prefixes(full)
    if not prefixes:
        return full
    listed = [round(float(w), 6) for w in full[f"{prefixes[0]}.widths"]]
    fits = set(range(len(listed)))
    for p in prefixes:
        ref = target.get(f"{p}.weight")
        if ref is None:
            raise KeyError(f"the static model has no BatchNorm '{p}' for switchable BN '{p}'")
        fits &= {i for i in fits if full[f"{p}.bn.{i}.weight"].shape == ref.shape}
    if len(fits) != 1:
        which = "no width" if not fits else f"widths {[listed[i] for i in sorted(fits)]}"
        raise ValueError(f"{which} of the trained width list {listed} build(s) the static model's "
                         f"channels; export one of the listed widths")
    i = fits.pop()
    owned = tuple(p + "." for p in prefixes)
    out = {k: v for k, v in full.items() if not k.startswith(owned)}
    for p in prefixes:
        for leaf in BN_LEAVES:
            out[f"{p}.{leaf}"] = full[f"{p}.bn.{i}.{leaf}"]
    return out


def set_width(model: nn.Module, width: float) -> nn.Module:
    """Run ``model`` at ``width`` from now on (every slimmable layer in it)."""
    check_width(width)
    listed = listed_widths(model)
    if listed is not None and all(abs(width - w) >= 1e-6 for w in listed):
        raise ValueError(f"width {width:g} is not in the trained width list {list(listed)} "
                         f"(switchable BN); pick one of them")
    for module in model.modules():
        if isinstance(module, SlimMixin):
            module.width = width
    model.us3l_width = width
    return model


def get_width(model: nn.Module) -> float:
    return getattr(model, "us3l_width", 1.0)


@contextlib.contextmanager
def at_width(model: nn.Module, width: float) -> Iterator[nn.Module]:
    previous = get_width(model)
    set_width(model, width)
    try:
        yield model
    finally:
        set_width(model, previous)


def slim_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BN layers whose statistics calibration recomputes: not those of a switchable BN
    (S-Net keeps each listed width's trained statistics)."""
    private = {id(bn) for m in model.modules() if isinstance(m, SwitchableBatchNorm)
               for bn in m.bn}
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in private]


@contextlib.contextmanager
def calibrating(model: nn.Module) -> Iterator[nn.Module]:
    """Reset BN statistics and accumulate exact (momentum=None) averages while inside."""
    bns = slim_batchnorms(model)
    switchable = [m for m in model.modules() if isinstance(m, SwitchableBatchNorm)]
    for m in switchable:
        m.calibrating = True
    saved = [(bn.momentum, getattr(bn, "calibrating", None)) for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        if isinstance(bn, SlimBatchNorm):
            bn.calibrating = True
    model.train()
    try:
        yield model
    finally:
        for bn, (momentum, flag) in zip(bns, saved):
            bn.momentum = momentum
            if isinstance(bn, SlimBatchNorm):
                bn.calibrating = flag
        for m in switchable:
            m.calibrating = False
        model.train(was_training)
