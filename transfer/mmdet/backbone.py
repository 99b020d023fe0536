"""An MMDetection ResNet built from an export's explicit per-stage channels.

mmdet's ResNet ties a bottleneck's output to 4x its inner width and doubles widths per stage,
which the width rule breaks at most ratios (R-50 at 0.3x: inner 24/40/80/152, out 80/160/304/616).
``US3LResNet`` subclasses ``mmdet.models.backbones.ResNet`` and only replaces how a stage is made:
the blocks are mmdet's own ``BasicBlock``/``Bottleneck`` (a bottleneck's conv3/bn3 rebuilt at the
export's output width), so parameter names stay mmdet's = torchvision's and ``mmdet.pth`` loads
as is. Registered in mmdet's ``MODELS``; config::

    custom_imports = dict(imports=['transfer.mmdet.backbone'], allow_failed_imports=False)
    model = dict(
        backbone=dict(type='US3LResNet', meta='DIR/w0.30/meta.json', out_indices=(0, 1, 2, 3),
                      frozen_stages=-1, norm_eval=False, norm_cfg=dict(type='SyncBN', requires_grad=True),
                      init_cfg=dict(type='Pretrained', checkpoint='DIR/w0.30/mmdet.pth',
                                    prefix='backbone.')),
        neck=dict(type='FPN', in_channels=[80, 160, 304, 616], out_channels=256, num_outs=5))

(``us3l_backbone_cfg`` / ``neck_in_channels`` produce those two pieces from meta.json.)
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from mmdet.registry import MODELS
from mmengine.model import Sequential

from transfer.export.meta import detector_plan

DEPTHS = {"resnet18": 18, "resnet50": 50}
_UNSUPPORTED = ("deep_stem", "avg_down", "dcn", "plugins", "stem_channels", "base_channels")


class US3LBottleneck(Bottleneck):
    """mmdet's Bottleneck with an explicit output width (conv3/bn3 rebuilt when != 4 x inner)."""

    def __init__(self, inplanes: int, planes: int, out_channels: int, **kwargs):
        super().__init__(inplanes, planes, **kwargs)
        if out_channels != planes * self.expansion:
            self.conv3 = build_conv_layer(self.conv_cfg, planes, out_channels, kernel_size=1,
                                          bias=False)
            self.norm3_name, norm3 = build_norm_layer(self.norm_cfg, out_channels, postfix=3)
            self.add_module(self.norm3_name, norm3)


@MODELS.register_module()
class US3LResNet(ResNet):
    """``ResNet`` whose stem/stage channels come from ``meta`` (meta.json path) or ``channel_plan``."""

    def __init__(self, meta: str | None = None, channel_plan: dict | None = None, **kwargs):
        bad = [k for k in _UNSUPPORTED if kwargs.pop(k, None) not in (None, False)]
        if bad:
            raise ValueError(f"US3LResNet takes its structure from the export; remove {bad}")
        if (meta is None) == (channel_plan is None):
            raise ValueError("US3LResNet needs exactly one of meta='.../meta.json' or channel_plan")
        plan = detector_plan(meta if meta is not None else {"channel_plan": channel_plan})
        depth = kwargs.pop("depth", None)  # a base config's depth may stay if it agrees
        if depth is not None and depth != DEPTHS[plan["arch"]]:
            raise ValueError(f"depth={depth} but the export is {plan['arch']}; drop depth")
        self.us3l_plan = plan  # plain attribute, read by make_res_layer during ResNet.__init__
        self._us3l_next_stage = 0
        super().__init__(depth=DEPTHS[plan["arch"]], stem_channels=plan["stem"],
                         base_channels=plan["inner"][0], **kwargs)
        self.feat_dim = plan["out"][-1]

    def make_res_layer(self, **kwargs) -> Sequential:
        """Stage i from the plan: mmdet blocks, torchvision-style downsample (1x1 conv + norm)."""
        i = self._us3l_next_stage
        self._us3l_next_stage += 1
        plan = self.us3l_plan
        depth, inner, out = plan["depths"][i], plan["inner"][i], plan["out"][i]
        cin = plan["stem"] if i == 0 else plan["out"][i - 1]
        if kwargs["num_blocks"] != depth:
            raise ValueError(f"stage {i}: mmdet expects {kwargs['num_blocks']} blocks, the export "
                             f"has {depth}")
        stride, conv_cfg, norm_cfg = kwargs["stride"], kwargs["conv_cfg"], kwargs["norm_cfg"]
        common = dict(dilation=kwargs["dilation"], style=kwargs["style"], with_cp=kwargs["with_cp"],
                      conv_cfg=conv_cfg, norm_cfg=norm_cfg, init_cfg=kwargs.get("init_cfg"))
        layers = []
        for j in range(depth):
            block_in = cin if j == 0 else out
            block_stride = stride if j == 0 else 1
            downsample = None
            if j == 0 and (stride != 1 or cin != out):
                downsample = nn.Sequential(
                    build_conv_layer(conv_cfg, cin, out, kernel_size=1, stride=stride, bias=False),
                    build_norm_layer(norm_cfg, out)[1])
            if plan["block"] == "bottleneck":
                layers.append(US3LBottleneck(block_in, inner, out, stride=block_stride,
                                             downsample=downsample, **common))
            else:
                if inner != out:
                    raise ValueError(f"a basic-block stage needs inner == out ({inner} != {out})")
                layers.append(BasicBlock(block_in, out, stride=block_stride,
                                         downsample=downsample, **common))
        return Sequential(*layers)


def build_us3l_resnet(meta: str | Path, **kwargs) -> US3LResNet:
    """The registered backbone through mmdet's registry (what a config's ``type=`` does)."""
    cfg = dict(type="US3LResNet", meta=str(meta), out_indices=(0, 1, 2, 3), frozen_stages=-1,
               norm_eval=False, style="pytorch")
    cfg.update(kwargs)
    return MODELS.build(cfg)


def neck_in_channels(meta: str | Path) -> list[int]:
    return list(detector_plan(str(meta))["out"])


def us3l_backbone_cfg(meta: str | Path, checkpoint: str | Path | None = None,
                      norm_cfg: dict | None = None) -> dict:
    """The backbone section of an mmdet config for an export (SyncBN, every stage fine-tuned)."""
    cfg = dict(type="US3LResNet", meta=str(meta), out_indices=(0, 1, 2, 3), frozen_stages=-1,
               norm_eval=False, style="pytorch",
               norm_cfg=norm_cfg or dict(type="SyncBN", requires_grad=True))
    if checkpoint is not None:
        cfg["init_cfg"] = dict(type="Pretrained", checkpoint=str(checkpoint), prefix="backbone.")
    return cfg
