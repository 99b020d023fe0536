"""MobileNetV2 with torchvision's parameter names (``features.*``), slimmable or static at a width.

Every channel count follows the width rule except the last 1x1 conv (1280 outputs at every width,
as in torchvision for width <= 1 and in US-Net), so the pooled feature is always 1280-d. The hidden
width of a block is ``channels_at(inp * t, r)`` of its full-width count. The 'cifar' variant keeps
32x32 inputs large enough: stride 1 in the stem and in the first stride-2 stage (total stride 8).
At width 1.0 the state dict has exactly the keys and shapes of ``torchvision.models.mobilenet_v2``
without its classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from pretrain import slim
from pretrain.models import register
from pretrain.models.common import Layers

# t (expansion), c (channels), n (repeats), s (stride of the first block): torchvision's table.
SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))
STEM = 32
LAST = 1280


def _fixed_bn(L: Layers, channels: int) -> nn.Module:
    """BN of a layer whose channels never shrink (after the 1280-d conv)."""
    if not L.slimmable:
        return nn.BatchNorm2d(channels)
    bn = slim.SlimBatchNorm(channels)
    bn.fixed_channels = True  # slim.make_switchable keeps its channels at every width
    return bn


def conv_bn_act(L: Layers, cin: int, cout: int, kernel: int, stride: int = 1,
                depthwise: bool = False, slim_in: bool = True, slim_out: bool = True
                ) -> nn.Sequential:
    conv = L.conv(cin, cout, kernel, stride, (kernel - 1) // 2, depthwise=depthwise,
                  slim_in=slim_in, slim_out=slim_out)
    bn = L.bn(cout) if slim_out else _fixed_bn(L, cout)
    return nn.Sequential(conv, bn, nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, L: Layers, inp: int, oup: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(inp * expand))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(L, inp, hidden, 1))
        layers += [conv_bn_act(L, hidden, hidden, 3, stride, depthwise=True),
                   L.conv(hidden, oup, 1), L.bn(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """Backbone only: ``forward`` returns the pooled 1280-d feature."""

    def __init__(self, arch: str = "mobilenetv2", stem: str = "imagenet",
                 layers: Layers | None = None):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"unknown stem '{stem}'; expected 'imagenet' or 'cifar'")
        L = layers or Layers.slim()
        self.arch, self.stem_type, self.layers_kind = arch, stem, L
        features: list[nn.Module] = [conv_bn_act(L, 3, STEM, 3, 1 if stem == "cifar" else 2,
                                                 slim_in=False)]
        cin, first_stride2 = STEM, True
        for t, c, n, s in SETTING:
            for i in range(n):
                stride = s if i == 0 else 1
                if stride == 2 and first_stride2:
                    first_stride2 = False
                    stride = 1 if stem == "cifar" else 2
                features.append(InvertedResidual(L, cin, c, stride, t))
                cin = c
        features.append(conv_bn_act(L, cin, LAST, 1, slim_out=False))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = LAST
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)


@register("mobilenetv2")
def _build(arch: str, layers: Layers, stem: str = "imagenet", bn_widths: list | None = None
           ) -> MobileNetV2:
    """``bn_widths``: S-Net's switchable BN over that width list (the static build ignores it:
    its plain BN takes the listed width's own statistics, slim.switched_state_dict)."""
    model = MobileNetV2(arch, stem, layers)
    return slim.make_switchable(model, bn_widths) if bn_widths and layers.slimmable else model
