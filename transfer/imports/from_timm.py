"""timm ``resnet18``, ``resnet50`` and ``mobilenetv2_100`` weights (a fixed-width source).

Accepted files: a bare ``state_dict`` (the model-zoo ``pytorch_model.bin``), or a checkpoint of
timm's ``train.py`` (timm/utils/checkpoint_saver.py: ``{"epoch", "arch", "state_dict",
"state_dict_ema", "optimizer", "amp_scaler", "version", "args", "metric"}``; ``args`` is an
argparse.Namespace, read as its plain fields). The online ``state_dict`` is taken; the EMA copy,
the classifier (``fc`` / ``classifier``) and the training state are dropped by name.

Layouts (timm/models/resnet.py, efficientnet.py ``_gen_mobilenet_v2``, _efficientnet_blocks.py):
timm's ResNet-18/50 have torchvision's parameter names (conv1, bn1, layerN.M.convK/bnK,
downsample.0/1) and forward (stride in the 3x3 conv), so they map one to one. timm's
MobileNetV2 is an EfficientNet: ``conv_stem``/``bn1``, ``blocks.S.B`` (a DepthwiseSeparableConv
``conv_dw, bn1, conv_pw, bn2`` first, then InvertedResiduals ``conv_pw, bn1, conv_dw, bn2,
conv_pwl, bn3``), ``conv_head``/``bn2``: renamed to torchvision's ``features.*``.

Verification builds the model with the installed timm (``timm.create_model(name,
num_classes=0)``); without timm, the reference is the layout as written in timm's code: torchvision's
ResNet for the ResNets and ``TimmMobileNetV2`` below, a port of timm's blocks with its names.
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn as nn

from transfer.imports import core
from transfer.imports.from_torchvision import TRAINING_ENTRIES, torchvision_model, unwrap

NAME = "timm"
ARCHS = ("resnet18", "resnet50", "mobilenetv2")
TIMM_NAMES = {"resnet18": "resnet18", "resnet50": "resnet50", "mobilenetv2": "mobilenetv2_100"}
EXPECTED = ("a timm state_dict (pytorch_model.bin / .pth) or a timm train.py checkpoint "
            "{'state_dict': ...}")
OPAQUE = ("argparse.Namespace",)
CLASSIFIER = {"resnet18": "fc.", "resnet50": "fc.", "mobilenetv2": "classifier."}
ENTRIES = {**TRAINING_ENTRIES, "amp_scaler": "AMP scaler state"}
STAGES = (1, 2, 3, 4, 3, 3, 1)  # blocks per stage of mobilenetv2_100
DS_NAMES = ("conv_dw", "bn1", "conv_pw", "bn2")
IR_NAMES = ("conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3")


def _feature_index(stage: int, block: int) -> int:
    return 1 + sum(STAGES[:stage]) + block


def to_ours(key: str) -> str | None:
    """timm MobileNetV2 name -> ours (torchvision's); ResNet names are the same."""
    head, _, rest = key.partition(".")
    fixed = {"conv_stem": "features.0.0", "bn1": "features.0.1",
             "conv_head": "features.18.0", "bn2": "features.18.1"}
    if head in fixed:
        return f"{fixed[head]}.{rest}"
    parts = key.split(".")
    if head != "blocks" or len(parts) < 5:
        return None
    stage, block, layer = int(parts[1]), int(parts[2]), parts[3]
    if not (0 <= stage < len(STAGES) and 0 <= block < STAGES[stage]):
        return None
    names, ours = (DS_NAMES, core.MNV2_OURS_T1) if stage == 0 else (IR_NAMES, core.MNV2_OURS)
    if layer not in names:
        return None
    return ".".join(["features", str(_feature_index(stage, block)),
                     ours[names.index(layer)], *parts[4:]])


def to_timm(key: str) -> str:
    """Ours -> timm MobileNetV2 (the inverse of ``to_ours``; used to build sources in tests)."""
    for stage, count in enumerate(STAGES):
        for block in range(count):
            for layer in (DS_NAMES if stage == 0 else IR_NAMES):
                for leaf in ("weight", "bias", "running_mean", "running_var",
                             "num_batches_tracked"):
                    cand = f"blocks.{stage}.{block}.{layer}.{leaf}"
                    if to_ours(cand) == key:
                        return cand
    for head in ("conv_stem", "bn1", "conv_head", "bn2"):
        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if to_ours(f"{head}.{leaf}") == key:
                return f"{head}.{leaf}"
    raise KeyError(key)


# ------------------------------------------------------------------------------ reference layout
class _BNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: BatchNorm (same parameter names) then ReLU6 where applied."""

    def __init__(self, channels: int, act: bool = True):
        super().__init__(channels)
        self.apply_act = act

    def forward(self, x):
        x = super().forward(x)
        return torch.clamp(x, 0, 6) if self.apply_act else x


class _DS(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.has_skip = stride == 1 and cin == cout
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = _BNAct(cin)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = _BNAct(cout, act=False)

    def forward(self, x):
        y = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return y + x if self.has_skip else y


class _IR(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        mid = cin * t
        self.has_skip = stride == 1 and cin == cout
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = _BNAct(mid)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = _BNAct(mid)
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = _BNAct(cout, act=False)

    def forward(self, x):
        y = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return y + x if self.has_skip else y


class TimmMobileNetV2(nn.Module):
    """timm's mobilenetv2_100 with num_classes=0 (arch_def ds_r1_k3_s1_c16, ir_r2_k3_s2_e6_c24,
    ir_r3_k3_s2_e6_c32, ir_r4_k3_s2_e6_c64, ir_r3_k3_s1_e6_c96, ir_r3_k3_s2_e6_c160,
    ir_r1_k3_s1_e6_c320; stem 32, head 1280, ReLU6), same parameter names."""

    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self.bn1 = _BNAct(32)
        stages, cin = [], 32
        for i, (t, c, n, s) in enumerate(((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                                          (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                                          (6, 320, 1, 1))):
            blocks = []
            for j in range(n):
                stride = s if j == 0 else 1
                blocks.append(_DS(cin, c, stride) if i == 0 else _IR(cin, c, stride, t))
                cin = c
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self.bn2 = _BNAct(1280)

    def forward(self, x):
        x = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def timm_installed() -> bool:
    return importlib.util.find_spec("timm") is not None


def reference_model(arch: str) -> nn.Module:
    """The source network in timm's layout: live from timm when installed, else the port."""
    if timm_installed():
        import timm
        return timm.create_model(TIMM_NAMES[arch], pretrained=False, num_classes=0)
    return TimmMobileNetV2() if arch == "mobilenetv2" else torchvision_model(arch)


def reference_name(arch: str) -> str:
    if timm_installed():
        return f"timm.create_model({TIMM_NAMES[arch]!r}) (installed)"
    if arch == "mobilenetv2":
        return "timm's mobilenetv2_100 layout (port; timm not installed)"
    return f"timm's {arch} layout = torchvision.models.{arch} (timm not installed)"


def extract(obj, *, arch: str, path, stem: str | None, config: dict | None) -> core.Extracted:
    state, identity, dropped = unwrap(obj, NAME, EXPECTED, containers=("state_dict",),
                                      entries=ENTRIES)
    file_arch = identity.get("arch_in_file")
    if isinstance(file_arch, str):
        base = file_arch.split(".")[0]
        if base != TIMM_NAMES[arch]:
            known = {v: k for k, v in TIMM_NAMES.items()}
            fix = (f"pass --arch {known[base]}" if base in known
                   else f"this tool imports {', '.join(TIMM_NAMES.values())}")
            raise core.ImportFailed(f"the file holds timm's {file_arch!r}, not "
                                    f"{TIMM_NAMES[arch]} (--arch {arch}); {fix}")
    if stem not in (None, "imagenet"):
        raise core.ImportFailed("timm's networks have the ImageNet stem; pass --stem imagenet "
                                "or leave it out")
    state = core.strip_prefix(state, "module.")
    split = core.split_keys(state, "", [(CLASSIFIER[arch], "classifier head")], NAME,
                            fix=f"pass a timm {TIMM_NAMES[arch]} state_dict")
    source_weights = dict(split.taken)
    ours = (core.rename(split.taken, to_ours, NAME) if arch == "mobilenetv2" else split.taken)

    def reference(width: float) -> nn.Module:
        assert width == 1.0, "a fixed-width network has one width"
        return core.load_reference(reference_model(arch), source_weights)

    return core.Extracted(weights=ours, dropped={**dropped, **split.dropped}, stem="imagenet",
                          slimmable=False, width_range=(1.0, 1.0), identity=identity,
                          reference=reference, reference_name=reference_name(arch))
