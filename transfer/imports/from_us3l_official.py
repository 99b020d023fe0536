"""Checkpoints of the official US3L code (megvii-research/US3L-CVPR2023): a slimmable source.

What the official code writes (workers/ssl.py): ``{"epoch", "arch", "state_dict", "optimizer"}``,
``state_dict`` from the DDP-wrapped SSL model, so every key starts with ``module.``. The online
backbone is ``encoder_q`` minus ``encoder_q.fc`` (its projector replaced the classifier);
``encoder_k`` (BYOL/MoCo momentum encoder, SEED's teacher), ``predictor``, ``predictor_new``
(distillation head), ``proj_conv`` (feature distillation) and ``queue``/``queue_ptr`` are dropped.
workers/calibrate.py writes ``{"arch", "state_dict"}`` with ``encoder_q`` and BN statistics at one
width; a linear-evaluation checkpoint holds the bare backbone plus the ``fc`` classifier.

Networks (models/OFA/): ``us_resnet18/50`` (torchvision layout, ImageNet stem),
``us_cifar_resnet18/50`` (3x3 stride-1 stem, no max-pool, 4x4 average pool = global at 32 px) and
``us_mobilenetv2`` / ``us_cifar_mobilenetv2`` (blocks as ``features.K.body.J``). Their parameter
names match ours for the ResNets and are renamed for MobileNetV2.

The official width rule (models/OFA/slimmable_ops.py) against ours (pretrain/slim.py):

* rounding: both ``make_divisible(C*r, 8)`` (nearest multiple of 8, +8 if more than 10% below);
  the official minimum is 1 instead of 8 and it rounds at r = 1.0 too. Neither matters for these
  networks in [0.25, 1.0]: every channel count is a multiple of 8 and >= 16, so C*r >= 4 rounds
  to >= 8, and C*1.0 rounds to C. The ResNets' channels are therefore identical at every width
  (tests check every layer on a fine grid), and so are their features.
* MobileNetV2's expanded (hidden) layers: official ``t * make_divisible(C_in*r)`` (a ``ratio``
  of t), ours ``make_divisible(t*C_in*r)``. Equal at 1.0 only: on a 0.005 grid over
  [0.25, 1.0) some block differs at every width (at 0.5 features.3 has 96 hidden channels
  officially, 72 here; see ``mobilenetv2_differences``). Both are prefix
  slices of the same weights, so the import is exact at 1.0 and the narrower networks here keep
  fewer (or more) of the trained hidden channels than the official subnetworks did; the import
  says so in a note and records it.
* BatchNorm: trained with ``track_running_stats=False`` when several widths are sampled (no
  running statistics in the file); the import stores BN's initial values and the converter and
  the probe recalibrate at each width, as the official workers/calibrate.py does.
* The width range is not stored in the file: it comes from ``--source-config`` (the run's YAML,
  ``MODEL.OFA.WIDTH_MULT_RANGE``; a run with ``NUM_SAMPLE_TRAINING: 1`` trained the single width
  ``MODEL.OFA.WIDTH_MULT``), else the official configs' [0.25, 1.0], with a note.

Verification builds a faithful port of the official layers (``USConv2d``, ``USBatchNorm2d`` and
the three networks below, same module names, same forward) and compares features at several
widths (ResNets) or at 1.0 (MobileNetV2: below it the rules differ by design, see above).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain import slim
from transfer.imports import core

NAME = "us3l-official"
ARCHS = ("resnet18", "resnet50", "mobilenetv2")
EXPECTED = ("a checkpoint.pth.tar written by the official US3L code ({'epoch', 'arch', "
            "'state_dict', 'optimizer'})")
OPAQUE = ()
OFFICIAL_ARCHS = {  # the official model name -> (our arch, stem)
    "us_resnet18": ("resnet18", "imagenet"), "us_resnet50": ("resnet50", "imagenet"),
    "us_cifar_resnet18": ("resnet18", "cifar"), "us_cifar_resnet50": ("resnet50", "cifar"),
    "us_mobilenetv2": ("mobilenetv2", "imagenet"),
    "us_cifar_mobilenetv2": ("mobilenetv2", "cifar"),
}
DEFAULT_RANGE = (0.25, 1.0)  # MODEL.OFA.WIDTH_MULT_RANGE of every official config
SSL_DROPS = [("encoder_q.fc.", "projector (encoder_q.fc)"),
             ("encoder_k.", "momentum encoder / teacher (encoder_k)"),
             ("predictor.", "predictor"), ("predictor_new.", "distillation predictor"),
             ("proj_conv.", "feature-distillation projection"),
             ("queue", "negative queue"), ("queue_ptr", "negative queue")]
TRAINING_ENTRIES = {"optimizer": "optimizer state"}


# ------------------------------------------------------------------------------ the official rule
def official_make_divisible(v: float, divisor: int = 8, min_value: int = 1) -> int:
    """slimmable_ops.make_divisible as the official layers call it (min_value=1)."""
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def official_channels(full: int, width: float, ratio: int = 1) -> int:
    """Channels an official USConv2d/USBatchNorm2d of ``full`` channels uses at ``width``."""
    return official_make_divisible(full * width / ratio) * ratio


def hidden_channels(inp: int, t: int, width: float) -> tuple[int, int]:
    """A MobileNetV2 block's hidden channels at ``width``: (official, ours)."""
    return official_channels(inp * t, width, t), slim.channels_at(inp * t, width)


def mobilenetv2_differences(width: float) -> list[str]:
    """The blocks whose hidden width differs between the two rules at ``width``."""
    from pretrain.models.mobilenetv2 import SETTING, STEM
    out, cin, k = [], STEM, 1
    for t, c, n, _s in SETTING:
        for _ in range(n):
            if t != 1:
                official, ours = hidden_channels(cin, t, width)
                if official != ours:
                    out.append(f"features.{k} {official} vs {ours}")
            cin, k = c, k + 1
    return out


# ------------------------------------------------------------------------------ official layers
class USConv2d(nn.Conv2d):
    """Port of slimmable_ops.USConv2d: channels from the rule, depthwise groups = in_channels."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, groups=1, depthwise=False,
                 bias=False, us=(True, True), ratio=(1, 1)):
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, groups=groups,
                         bias=bias)
        self.cin_max, self.cout_max = cin, cout
        self.depthwise, self.us, self.ratio = depthwise, us, ratio
        self.width_mult = 1.0

    def forward(self, x):
        cin = (official_channels(self.cin_max, self.width_mult, self.ratio[0]) if self.us[0]
               else self.cin_max)
        cout = (official_channels(self.cout_max, self.width_mult, self.ratio[1]) if self.us[1]
                else self.cout_max)
        groups = cin if self.depthwise else 1
        weight = self.weight[:cout, :cin]
        bias = self.bias[:cout] if self.bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class USBatchNorm2d(nn.BatchNorm2d):
    """Port of slimmable_ops.USBatchNorm2d (running statistics only when tracked)."""

    def __init__(self, num_features, ratio=1, track_running_stats=False):
        super().__init__(num_features, affine=True, track_running_stats=track_running_stats)
        self.ratio, self.width_mult = ratio, 1.0

    def forward(self, x):
        c = official_channels(self.num_features, self.width_mult, self.ratio)
        return F.batch_norm(x, self.running_mean[:c] if self.track_running_stats else None,
                            self.running_var[:c] if self.track_running_stats else None,
                            self.weight[:c], self.bias[:c],
                            self.training or not self.track_running_stats, self.momentum,
                            self.eps)


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, track):
        super().__init__()
        self.conv1 = USConv2d(cin, planes, 3, stride, 1)
        self.bn1 = USBatchNorm2d(planes, track_running_stats=track)
        self.conv2 = USConv2d(planes, planes, 3, 1, 1)
        self.bn2 = USBatchNorm2d(planes, track_running_stats=track)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(USConv2d(cin, planes, 1, stride),
                                            USBatchNorm2d(planes, track_running_stats=track))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, track):
        super().__init__()
        self.conv1 = USConv2d(cin, planes, 1)
        self.bn1 = USBatchNorm2d(planes, track_running_stats=track)
        self.conv2 = USConv2d(planes, planes, 3, stride, 1)  # v1.5: stride in the 3x3
        self.bn2 = USBatchNorm2d(planes, track_running_stats=track)
        self.conv3 = USConv2d(planes, planes * 4, 1)
        self.bn3 = USBatchNorm2d(planes * 4, track_running_stats=track)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(USConv2d(cin, planes * 4, 1, stride),
                                            USBatchNorm2d(planes * 4, track_running_stats=track))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


class OfficialResNet(nn.Module):
    """us_resnet18/50 (ImageNet stem) and us_cifar_resnet18/50 (CIFAR stem), without ``fc``."""

    def __init__(self, arch: str, stem: str, track: bool):
        super().__init__()
        block, depths = ((_Basic, (2, 2, 2, 2)) if arch == "resnet18"
                         else (_Bottleneck, (3, 4, 6, 3)))
        self.cifar = stem == "cifar"
        self.conv1 = (USConv2d(3, 64, 3, 1, 1, us=(False, True)) if self.cifar
                      else USConv2d(3, 64, 7, 2, 3, us=(False, True)))
        self.bn1 = USBatchNorm2d(64, track_running_stats=track)
        cin = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1, track))
                cin = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if not self.cifar:
            x = F.max_pool2d(x, 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        if self.cifar:  # us_cifar_resnet: F.avg_pool2d(out, 4)
            return torch.flatten(F.avg_pool2d(x, 4), 1)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class _InvertedResidual(nn.Module):
    def __init__(self, inp, outp, stride, t, track):
        super().__init__()
        self.residual_connection = stride == 1 and inp == outp
        hidden = inp * t
        layers = []
        if t != 1:
            layers += [USConv2d(inp, hidden, 1, ratio=(1, t)),
                       USBatchNorm2d(hidden, ratio=t, track_running_stats=track), nn.ReLU6()]
        layers += [USConv2d(hidden, hidden, 3, stride, 1, groups=hidden, depthwise=True,
                            ratio=(t, t)),
                   USBatchNorm2d(hidden, ratio=t, track_running_stats=track), nn.ReLU6(),
                   USConv2d(hidden, outp, 1, ratio=(t, 1)),
                   USBatchNorm2d(outp, track_running_stats=track)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x) + x if self.residual_connection else self.body(x)


class OfficialMobileNetV2(nn.Module):
    """us_mobilenetv2 / us_cifar_mobilenetv2 (input_size 32: stride 1 in the stem and the first
    stride-2 stage), without ``fc``; the last conv keeps 1280 outputs, plain BatchNorm."""

    def __init__(self, stem: str, track: bool):
        super().__init__()
        s = 1 if stem == "cifar" else 2
        setting = [(1, 16, 1, 1), (6, 24, 2, s), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                   (6, 160, 3, 2), (6, 320, 1, 1)]
        features = [nn.Sequential(USConv2d(3, 32, 3, s, 1, us=(False, True)),
                                  USBatchNorm2d(32, track_running_stats=track), nn.ReLU6())]
        cin = 32
        for t, c, n, stride in setting:
            for i in range(n):
                features.append(_InvertedResidual(cin, c, stride if i == 0 else 1, t, track))
                cin = c
        features.append(nn.Sequential(USConv2d(cin, 1280, 1, us=(True, False)),
                                      nn.BatchNorm2d(1280), nn.ReLU6()))
        self.features = nn.Sequential(*features)

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)


def official_network(arch: str, stem: str, track: bool) -> nn.Module:
    return (OfficialMobileNetV2(stem, track) if arch == "mobilenetv2"
            else OfficialResNet(arch, stem, track))


def set_official_width(model: nn.Module, width: float) -> nn.Module:
    """What the official training loop does: ``model.apply(setattr(m, 'width_mult', r))``."""
    for m in model.modules():
        if isinstance(m, (USConv2d, USBatchNorm2d)):
            m.width_mult = width
    return model


# ------------------------------------------------------------------------------ key mapping
def to_ours(key: str) -> str | None:
    """Official name -> ours: identical for the ResNets; MobileNetV2's ``features.K.body.J``
    becomes torchvision's ``features.K.conv.*``."""
    parts = key.split(".")
    if parts[0] != "features" or len(parts) < 4 or parts[2] != "body":
        return key
    k, j = int(parts[1]), int(parts[3])
    expansions = core.mobilenetv2_expansions()
    if not 1 <= k <= len(expansions):
        return None
    # official body indices: t=1: dw 0, bn 1, (relu 2), project 3, bn 4;
    # t>1: expand 0, bn 1, (relu 2), dw 3, bn 4, (relu 5), project 6, bn 7
    table = dict(zip((0, 1, 3, 4), core.MNV2_OURS_T1)) if expansions[k - 1] == 1 \
        else dict(zip((0, 1, 3, 4, 6, 7), core.MNV2_OURS))
    if j not in table:
        return None
    return ".".join(["features", str(k), table[j], *parts[4:]])


def to_official(key: str) -> str:
    """Ours -> official (the inverse of ``to_ours``; used to build sources in tests)."""
    parts = key.split(".")
    if parts[0] != "features" or parts[2] != "conv":
        return key
    k = int(parts[1])
    t = core.mobilenetv2_expansions()[k - 1]
    ours = core.MNV2_OURS_T1 if t == 1 else core.MNV2_OURS
    official = (0, 1, 3, 4) if t == 1 else (0, 1, 3, 4, 6, 7)
    rest = ".".join(parts[2:])
    for name, j in zip(ours, official):
        if rest.startswith(name + "."):
            return f"features.{k}.body.{j}.{rest[len(name) + 1:]}"
    raise KeyError(key)


# ------------------------------------------------------------------------------ extraction
def _config_value(config: dict | None, *path: str):
    node = config
    for name in path:
        if not isinstance(node, dict) or name not in node:
            return None
        node = node[name]
    return node


def extract(obj, *, arch: str, path, stem: str | None, config: dict | None) -> core.Extracted:
    from transfer.imports.from_torchvision import unwrap
    state, identity, dropped = unwrap(obj, NAME, EXPECTED, containers=("state_dict",),
                                      entries=TRAINING_ENTRIES, identity_keys=("epoch", "arch"))
    if not identity and not any(k.startswith(("module.", "encoder_q.")) for k in state):
        raise core.ImportFailed(f"{path} has no 'state_dict' entry; pass {EXPECTED}")
    notes = []
    file_arch = identity.get("arch_in_file") or _config_value(config, "MODEL", "ARCH")
    cfg_arch = _config_value(config, "MODEL", "ARCH")
    if cfg_arch and identity.get("arch_in_file") and cfg_arch != identity["arch_in_file"]:
        raise core.ImportFailed(f"--source-config names MODEL.ARCH {cfg_arch!r} but the file was "
                                f"written by {identity['arch_in_file']!r}; pass the run's config")
    if file_arch is not None:
        if file_arch not in OFFICIAL_ARCHS:
            raise core.ImportFailed(f"the file holds the official {file_arch!r}, not a "
                                    f"universally slimmable network "
                                    f"({', '.join(OFFICIAL_ARCHS)})")
        want_arch, file_stem = OFFICIAL_ARCHS[file_arch]
        if want_arch != arch:
            raise core.ImportFailed(f"the file holds the official {file_arch} (a {want_arch}), "
                                    f"not {arch} as --arch says; pass --arch {want_arch}")
        if stem is not None and stem != file_stem:
            raise core.ImportFailed(f"the file holds {file_arch} ({file_stem} stem), not the "
                                    f"{stem} stem --stem asks for; leave --stem out")
        stem = file_stem

    state = core.strip_prefix(state, "module.")
    if any(k.startswith("encoder_q.") for k in state):
        split = core.split_keys(state, "encoder_q.", SSL_DROPS, NAME, fix=f"pass {EXPECTED}")
    else:  # a linear-evaluation checkpoint: the bare backbone plus its classifier
        split = core.split_keys(state, "", [("fc.", "classifier head")], NAME,
                                fix=f"pass {EXPECTED}")
    if stem is None:
        if arch == "mobilenetv2":
            raise core.ImportFailed("the file does not name its network (no 'arch'), and a "
                                    "MobileNetV2's stem stride is not in its weights; pass "
                                    "--stem imagenet (us_mobilenetv2) or --stem cifar "
                                    "(us_cifar_mobilenetv2)")
        conv1 = split.taken.get("conv1.weight")
        stem = core.stem_of_resnet(conv1) if conv1 is not None else "imagenet"
    source_weights = dict(split.taken)
    ours = core.rename(split.taken, to_ours, NAME)

    width_range = DEFAULT_RANGE
    cfg_range = _config_value(config, "MODEL", "OFA", "WIDTH_MULT_RANGE")
    samples = _config_value(config, "MODEL", "OFA", "NUM_SAMPLE_TRAINING")
    if samples == 1 and _config_value(config, "MODEL", "OFA", "WIDTH_MULT") is not None:
        w = float(_config_value(config, "MODEL", "OFA", "WIDTH_MULT"))
        width_range = (w, w)
        notes.append(f"the run trained the single width {w:g} (NUM_SAMPLE_TRAINING 1)")
    elif isinstance(cfg_range, list) and len(cfg_range) == 2:
        width_range = (float(cfg_range[0]), float(cfg_range[1]))
    else:
        notes.append("the file does not store its width range: assumed the official configs' "
                     "[0.25, 1.0] (pass --source-config or --width-range to state it)")
    track = any(k.endswith(".running_mean") for k in source_weights if not
                k.startswith("features.18."))
    ref_widths = (1.0,)
    if arch == "mobilenetv2":
        diffs = mobilenetv2_differences(0.5)
        notes.append(f"MobileNetV2 hidden widths follow make_divisible(t*C*r) here but "
                     f"t*make_divisible(C*r) in the official code: equal at 1.0, not below "
                     f"(at 0.5: {len(diffs)} blocks differ, e.g. {diffs[0]}); verified at 1.0")
    else:
        ref_widths = (1.0, 0.75, 0.5, 0.37, 0.25)

    def reference(width: float) -> nn.Module:
        net = official_network(arch, stem, track)
        core.load_reference(net, source_weights)
        return set_official_width(net, width)

    method = _config_value(config, "SSL", "TYPE")
    return core.Extracted(
        weights=ours, dropped={**dropped, **split.dropped}, stem=stem, slimmable=True,
        width_range=width_range, identity=identity,
        may_lack=(core.BN_COUNTER, *core.BN_STATS), reference=reference,
        reference_widths=ref_widths,
        reference_name=f"a port of the official {'us_cifar_' if stem == 'cifar' else 'us_'}"
                       f"{arch} (models/OFA/, slimmable_ops.py)",
        notes=notes, method=str(method).lower() if method else None)
