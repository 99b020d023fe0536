"""Layer kinds shared by every backbone: one class builds the slimmable network or its static twin.

A backbone is written once against ``Layers``. With ``Layers.slim()`` it holds full-width weights
in slimmable layers; with ``Layers.static(r)`` it is a plain torch network whose every channel
count is ``channels_at(C, r)``. Both have the same parameter names, so the static twin loads the
prefix-sliced weights of the slimmable one strictly (``static_twin``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from pretrain import slim


@dataclass(frozen=True)
class Layers:
    slimmable: bool
    width: float = 1.0

    @classmethod
    def slim(cls) -> "Layers":
        return cls(True, 1.0)

    @classmethod
    def static(cls, width: float) -> "Layers":
        return cls(False, slim.check_width(width))

    def ch(self, full: int, groups: int = 1) -> int:
        """Channels this build allocates for a layer of ``full`` channels."""
        if self.slimmable:
            return full
        return slim.grouped_channels_at(full, self.width, groups)

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
             bias: bool = False, slim_out: bool = True, depthwise: bool = False,
             out_groups: int = 1, slim_in: bool = True) -> nn.Conv2d:
        if self.slimmable:
            return slim.SlimConv2d(cin, cout, kernel, stride, padding, bias=bias,
                                   groups=cout if depthwise else 1, slim_out=slim_out,
                                   depthwise=depthwise, out_groups=out_groups)
        cin_r = self.ch(cin) if slim_in else cin
        cout_r = self.ch(cout, out_groups) if slim_out else cout
        return nn.Conv2d(cin_r, cout_r, kernel, stride, padding, bias=bias,
                         groups=cout_r if depthwise else 1)

    def bn(self, channels: int, groups: int = 1) -> nn.Module:
        if self.slimmable:
            return slim.SlimBatchNorm(channels)
        return nn.BatchNorm2d(self.ch(channels, groups))

    def linear(self, fin: int, fout: int, bias: bool = True, slim_in: bool = True,
               slim_out: bool = True, in_groups: int = 1, out_groups: int = 1) -> nn.Linear:
        if self.slimmable:
            return slim.SlimLinear(fin, fout, bias=bias, slim_out=slim_out, out_groups=out_groups)
        fin_r = self.ch(fin, in_groups) if slim_in else fin
        fout_r = self.ch(fout, out_groups) if slim_out else fout
        return nn.Linear(fin_r, fout_r, bias=bias)

    def layernorm(self, dim: int, groups: int = 1, eps: float = 1e-6) -> nn.Module:
        if self.slimmable:
            return slim.SlimLayerNorm(dim, eps=eps)
        return nn.LayerNorm(self.ch(dim, groups), eps=eps)


def static_twin(slimmable: nn.Module, build_static, width: float) -> nn.Module:
    """The plain network at ``width`` holding the slimmable network's sliced weights (OFA's
    ``get_active_subnet``). ``build_static(width)`` builds the plain network; loading is strict."""
    static = build_static(width)
    static.load_state_dict(slim.slice_state_dict(slimmable.state_dict(), static.state_dict()),
                           strict=True)
    return static.train(slimmable.training)
