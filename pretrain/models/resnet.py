"""ResNet-18/50 with torchvision's parameter names, slimmable or static at a width.

torchvision's own classes tie a bottleneck's output to 4x its inner width, which the width rule
breaks at most ratios (R-50 at 0.3x: inner 24, output 80), so the per-layer channel plan is
explicit here; at width 1.0 the state dict loads into ``torchvision.models.resnet18/50`` as is.
Strides sit in the 3x3 conv (torchvision v1.5 = detectron2 STRIDE_IN_1X1 False = mmdet 'pytorch').
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from pretrain import slim
from pretrain.models.common import Layers

ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
STEM_CHANNELS = 64
INNER = (64, 128, 256, 512)


def stage_out_full(arch: str) -> tuple[int, ...]:
    block, _ = ARCHS[arch]
    return tuple(c * (4 if block == "bottleneck" else 1) for c in INNER)


def channel_plan(arch: str, width: float) -> dict:
    """Per-stage channels of ``arch`` at ``width`` (what the engines' backbones are built from)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown ResNet '{arch}'; expected one of {sorted(ARCHS)}")
    block, depths = ARCHS[arch]
    return {
        "arch": arch,
        "block": block,
        "depths": list(depths),
        "width": float(width),
        "stem": slim.channels_at(STEM_CHANNELS, width),
        "inner": [slim.channels_at(c, width) for c in INNER],
        "out": [slim.channels_at(c, width) for c in stage_out_full(arch)],
    }


class BasicBlock(nn.Module):
    def __init__(self, L: Layers, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = L.conv(cin, cout, 3, stride, 1)
        self.bn1 = L.bn(cout)
        self.conv2 = L.conv(cout, cout, 3, 1, 1)
        self.bn2 = L.bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(L.conv(cin, cout, 1, stride), L.bn(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    def __init__(self, L: Layers, cin: int, inner: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = L.conv(cin, inner, 1)
        self.bn1 = L.bn(inner)
        self.conv2 = L.conv(inner, inner, 3, stride, 1)
        self.bn2 = L.bn(inner)
        self.conv3 = L.conv(inner, cout, 1)
        self.bn3 = L.bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(L.conv(cin, cout, 1, stride), L.bn(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Backbone only: ``forward`` returns pooled features; ``forward_stages`` the C2..C5 maps."""

    def __init__(self, arch: str = "resnet50", stem: str = "imagenet", layers: Layers | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet '{arch}'; expected one of {sorted(ARCHS)}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"unknown stem '{stem}'; expected 'imagenet' or 'cifar'")
        L = layers or Layers.slim()
        self.arch, self.stem_type, self.layers_kind = arch, stem, L
        block, depths = ARCHS[arch]
        if stem == "imagenet":
            self.conv1 = L.conv(3, STEM_CHANNELS, 7, 2, 3, slim_in=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:  # CIFAR: 3x3 conv, no max-pool
            self.conv1 = L.conv(3, STEM_CHANNELS, 3, 1, 1, slim_in=False)
            self.maxpool = nn.Identity()
        self.bn1 = L.bn(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        cin = STEM_CHANNELS
        for i, (inner, cout, depth) in enumerate(zip(INNER, stage_out_full(arch), depths)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(L, cin, cout, stride) if block == "basic"
                              else Bottleneck(L, cin, inner, cout, stride))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = stage_out_full(arch)[-1]  # full width; at r: channels_at(.., r)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            stages.append(x)
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.forward_stages(x)[-1]), 1)


def build_resnet(arch: str = "resnet50", stem: str = "imagenet", width: float | None = None
                 ) -> ResNet:
    """Slimmable ResNet (``width=None``) or the plain one at ``width``."""
    return ResNet(arch, stem, Layers.slim() if width is None else Layers.static(width))


def stage_channels(model: nn.Module, width: float) -> Sequence[int]:
    return channel_plan(model.arch, width)["out"]


from pretrain.models import register  # noqa: E402


@register("resnet18", "resnet50")
def _build(arch: str, layers: Layers, stem: str = "imagenet", bn_widths: list | None = None
           ) -> ResNet:
    """``bn_widths``: S-Net's switchable BN over that width list (the static build ignores it:
    its plain BN takes the listed width's own statistics, slim.switched_state_dict)."""
    model = ResNet(arch, stem, layers)
    return slim.make_switchable(model, bn_widths) if bn_widths and layers.slimmable else model
