"""MMPretrain / mmselfsup checkpoints with a ResNet-18/50 backbone (a fixed-width source).

What mmengine's runner writes: ``{"meta", "state_dict", "message_hub", "optimizer",
"param_schedulers"}`` (a published model keeps ``meta`` and ``state_dict``). ``meta`` gives the
epoch/iteration and the config text (``cfg``). ``message_hub`` holds mmengine ``HistoryBuffer``
objects and numpy arrays: they are read as inert stand-ins (nothing of mmengine runs) and dropped.

``state_dict`` (mmpretrain/models/selfsup/*.py): ``backbone.*`` is the online ResNet, whose names
are torchvision's (mmpretrain/models/backbones/resnet.py: ``conv1``, ``bn1`` from build_norm_layer,
``layerN.M.convK/bnK``, ``downsample.0/1``; ``style='pytorch'`` puts the stride in the 3x3 conv).
Dropped by name: ``neck`` (projector), ``head`` (predictor, prototypes or classifier),
``target_net`` (BYOL), ``encoder_k`` (MoCo v2, DenseCL), ``momentum_encoder`` (MoCo v3) and the
queues. mmselfsup 0.x also registered the backbone a second time inside ``online_net``/``encoder_q``
(``Sequential(backbone, neck)``): those aliases are dropped after checking they equal
``backbone``. ``style='caffe'`` (stride in the 1x1 conv) and ``deep_stem`` (ResNetV1c/d) networks
are other networks and are refused.

Verification: mmpretrain is not a dependency here; the reference is mmdet's ``ResNet`` (the same
OpenMMLab ResNet with the same names, installed with the detection engine), else torchvision's.
"""
from __future__ import annotations

import re
import warnings

import torch
import torch.nn as nn

from transfer.imports import core
from transfer.imports.from_torchvision import torchvision_model, unwrap

NAME = "mmpretrain"
ARCHS = ("resnet18", "resnet50")
EXPECTED = ("an MMPretrain/mmselfsup checkpoint ({'meta', 'state_dict', ...} written by "
            "mmengine's runner)")
OPAQUE = ("mmengine.logging.", "numpy.", "builtins.getattr", "collections.defaultdict")
DROPS = [("neck.", "neck (projector)"), ("head.", "head (predictor / classifier)"),
         ("target_net.", "momentum encoder (target_net)"),
         ("encoder_k.", "momentum encoder (encoder_k)"),
         ("momentum_encoder.", "momentum encoder (momentum_encoder)"),
         ("queue", "queue"), ("queue_ptr", "queue"), ("queue2", "queue"), ("queue2_ptr", "queue"),
         ("data_preprocessor.", "data preprocessor"),
         ("online_net.", "mmselfsup 0.x alias of backbone+neck"),
         ("encoder_q.", "mmselfsup 0.x alias of backbone+neck")]
ENTRIES = {"message_hub": "mmengine message hub (logs)", "optimizer": "optimizer state",
           "param_schedulers": "scheduler state", "ema_state_dict": "EMA copy of the weights",
           "amp": "AMP scaler state", "author": "publisher note"}
ALIASES = ("online_net.0.", "encoder_q.0.")


def _identity(meta) -> dict:
    meta = meta if isinstance(meta, dict) else {}
    out = {k: core.plain(meta[k]) for k in ("epoch", "iter", "experiment_name", "seed",
                                            "mmengine_version", "mmpretrain_version",
                                            "mmselfsup_version") if k in meta}
    if isinstance(meta.get("cfg"), str):
        out["config_text"] = meta["cfg"]
    return out


def _method(cfg: str) -> str | None:
    match = re.search(r"model\s*=\s*dict\(\s*type\s*=\s*['\"](\w+)['\"]", cfg or "")
    return match.group(1).lower() if match else None


def reference_model(arch: str) -> tuple[nn.Module, str]:
    """An OpenMMLab ResNet (mmdet's, same names and forward as mmpretrain's) returning pooled
    C5 features; torchvision's when mmdet is absent."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mmdet.models.backbones import ResNet
    except Exception:  # noqa: BLE001 - absent or broken engine: the documented fallback
        return torchvision_model(arch), f"torchvision.models.{arch} (mmdet not importable)"

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = ResNet(depth=int(arch[6:]), out_indices=(3,), style="pytorch")

        def forward(self, x):
            return torch.flatten(nn.functional.adaptive_avg_pool2d(self.net(x)[-1], 1), 1)

        def load_state_dict(self, state, strict=True):
            return self.net.load_state_dict(state, strict=strict)

    return Pooled(), f"mmdet.models.backbones.ResNet(depth={arch[6:]}, style='pytorch')"


def extract(obj, *, arch: str, path, stem: str | None, config: dict | None) -> core.Extracted:
    state, found, dropped = unwrap(obj, NAME, EXPECTED, containers=("state_dict",),
                                   entries=ENTRIES, identity_keys=("meta",))
    identity = _identity(obj.get("meta") if isinstance(obj, dict) else None)
    if not found and not any(k.startswith("backbone.") for k in state):
        raise core.ImportFailed(f"{path} has neither 'meta'/'state_dict' nor backbone.* keys; "
                                f"pass {EXPECTED}")
    cfg = identity.get("config_text", "")
    if re.search(r"style\s*=\s*['\"]caffe['\"]", cfg):
        raise core.ImportFailed("the config builds a caffe-style ResNet (stride in the 1x1 conv),"
                                " a different network from this suite's (stride in the 3x3 "
                                "conv); it cannot be imported")
    if re.search(r"deep_stem\s*=\s*True", cfg):
        raise core.ImportFailed("the config builds a deep-stem ResNet (ResNetV1c/d), a different "
                                "stem from this suite's; it cannot be imported")
    if stem not in (None, "imagenet"):
        raise core.ImportFailed("MMPretrain's ResNets have the ImageNet stem here; pass --stem "
                                "imagenet or leave it out")
    state = core.strip_prefix(state, "module.")
    take = "backbone." if any(k.startswith("backbone.") for k in state) else ""
    split = core.split_keys(state, take, DROPS, NAME, fix=f"pass {EXPECTED}")
    for key, why in split.dropped.items():  # aliases must be the backbone itself
        for alias in ALIASES:
            if key.startswith(alias):
                twin = split.taken.get(key[len(alias):])
                if twin is None or not torch.equal(twin, state[key]):
                    raise core.ImportFailed(f"{key} is not a copy of backbone."
                                            f"{key[len(alias):]}; the file is not an mmselfsup "
                                            f"checkpoint this tool knows")
    source_weights = dict(split.taken)
    _model, name = reference_model(arch)
    del _model

    def reference(width: float) -> nn.Module:
        assert width == 1.0, "a fixed-width network has one width"
        net, _ = reference_model(arch)
        return core.load_reference(net, source_weights)

    if config is not None:
        identity["config"] = config
    return core.Extracted(weights=split.taken, dropped={**dropped, **split.dropped},
                          stem="imagenet", slimmable=False, width_range=(1.0, 1.0),
                          identity=identity, reference=reference, reference_name=name,
                          method=_method(cfg))
