"""A detectron2 ResNet (and ResNet-FPN) built from an export's explicit per-stage channels.

detectron2's stock ResNet doubles channels stage by stage and asserts RES2_OUT_CHANNELS == 64 for
R-18, so most widths cannot be expressed (design.md §2). This backbone reads the channel plan from
the export's meta.json (``MODEL.US3L.META``) and builds the stages from detectron2's own
``BasicStem`` / ``BottleneckBlock`` / ``BasicBlock`` with ``ResNet.make_stage``, so parameter
names are detectron2's (``stem.conv1.norm.weight``, ``res2.0.shortcut.weight`` ...) and
``detectron2.pkl`` loads with the usual ``MODEL.WEIGHTS``. FPN input channels follow the export;
FPN output stays ``MODEL.FPN.OUT_CHANNELS`` (256).

Config (after ``add_us3l_config(cfg)``)::

    MODEL.BACKBONE.NAME: build_us3l_resnet_fpn_backbone   # or build_us3l_resnet_backbone
    MODEL.US3L.META: /path/to/w0.30/meta.json
    MODEL.WEIGHTS: /path/to/w0.30/detectron2.pkl
    MODEL.RESNETS.NORM: SyncBN            # "BN" for verification
    MODEL.RESNETS.STRIDE_IN_1X1: False    # torchvision-style stride in the 3x3 conv
    MODEL.BACKBONE.FREEZE_AT: 0

``MODEL.RESNETS.DEPTH`` and the RES*_CHANNELS keys are ignored: the export decides.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import transfer.detectron2.compat  # noqa: F401  (before any detectron2 import)
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

from transfer.export.meta import detector_plan

STAGES = ("res2", "res3", "res4", "res5")
PIXEL_MEAN = [123.675, 116.28, 103.53]  # RGB, 0-255 (the export's ImageNet normalisation)
PIXEL_STD = [58.395, 57.12, 57.375]


def add_us3l_config(cfg: CN) -> CN:
    """Declare MODEL.US3L.META (call before merging a config file that sets it)."""
    if "US3L" not in cfg.MODEL:
        cfg.MODEL.US3L = CN()
        cfg.MODEL.US3L.META = ""
    return cfg


def build_us3l_resnet(plan: dict, norm: str = "BN", out_features: Sequence[str] = STAGES,
                      freeze_at: int = 0, in_channels: int = 3) -> ResNet:
    """detectron2 ``ResNet`` with the channels of ``plan`` (meta.json's ``channel_plan``)."""
    stem = BasicStem(in_channels=in_channels, out_channels=plan["stem"], norm=norm)
    stages, cin = [], plan["stem"]
    for i, (depth, inner, out) in enumerate(zip(plan["depths"], plan["inner"], plan["out"])):
        strides = [1 if i == 0 else 2] + [1] * (depth - 1)
        if plan["block"] == "bottleneck":
            blocks = ResNet.make_stage(BottleneckBlock, depth, in_channels=cin, out_channels=out,
                                       stride_per_block=strides, bottleneck_channels=inner,
                                       num_groups=1, norm=norm, stride_in_1x1=False, dilation=1)
        else:
            if inner != out:
                raise ValueError(f"a basic-block stage needs inner == out, got {inner} != {out}")
            blocks = ResNet.make_stage(BasicBlock, depth, in_channels=cin, out_channels=out,
                                       stride_per_block=strides, norm=norm)
        stages.append(blocks)
        cin = out
    return ResNet(stem, stages, out_features=list(out_features), freeze_at=freeze_at)


def _plan_from_cfg(cfg) -> dict:
    meta = cfg.MODEL.US3L.META if "US3L" in cfg.MODEL else ""
    if not meta:
        raise ValueError("MODEL.US3L.META is empty; set it to the meta.json of an export written by "
                         "tools/convert_width.py (and call add_us3l_config(cfg) first)")
    r = cfg.MODEL.RESNETS
    if r.STRIDE_IN_1X1 or r.NUM_GROUPS != 1 or r.RES5_DILATION != 1 or any(r.DEFORM_ON_PER_STAGE):
        raise ValueError("us3l exports are torchvision-style ResNets: set MODEL.RESNETS."
                         "STRIDE_IN_1X1 False, NUM_GROUPS 1, RES5_DILATION 1, no deformable conv")
    return detector_plan(meta)


@BACKBONE_REGISTRY.register()
def build_us3l_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    return build_us3l_resnet(_plan_from_cfg(cfg), norm=cfg.MODEL.RESNETS.NORM,
                             out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
                             freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
                             in_channels=input_shape.channels)


@BACKBONE_REGISTRY.register()
def build_us3l_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """FPN over the us3l ResNet: lateral in_channels come from the export, output 256."""
    bottom_up = build_us3l_resnet_backbone(cfg, input_shape)
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES,
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM,
               top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


def apply_us3l_backbone(cfg: CN, meta_path: str | Path, weights: str | Path | None = None,
                        norm: str = "SyncBN", fpn: bool = True) -> CN:
    """Point ``cfg`` at an export: backbone name, channels, weights, and the input convention the
    export was calibrated with (RGB, ImageNet mean/std, all stages fine-tuned)."""
    add_us3l_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_us3l_resnet_fpn_backbone" if fpn else "build_us3l_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.US3L.META = str(meta_path)
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = list(STAGES)
    if fpn:
        cfg.MODEL.FPN.IN_FEATURES = list(STAGES)
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = list(PIXEL_MEAN)
    cfg.MODEL.PIXEL_STD = list(PIXEL_STD)
    if weights is not None:
        cfg.MODEL.WEIGHTS = str(weights)
    return cfg


def us3l_cfg(meta_path: str | Path, norm: str = "SyncBN", fpn: bool = True) -> CN:
    """detectron2's default config pointed at an export (for the backbone alone, on CPU)."""
    from detectron2.config import get_cfg
    cfg = apply_us3l_backbone(get_cfg(), meta_path, norm=norm, fpn=fpn)
    cfg.MODEL.DEVICE = "cpu"
    return cfg
