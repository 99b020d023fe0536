"""torchvision ResNet-18/50 and MobileNetV2 weights (a fixed-width source).

Accepted files: a bare ``state_dict`` (``torch.save(model.state_dict())``, the model-zoo files), or
a training checkpoint holding it under ``model``/``state_dict`` (torchvision's reference
``train.py`` saves ``{"model", "model_ema", "optimizer", "lr_scheduler", "epoch", "args"}``).
Our networks use torchvision's parameter names, so the backbone maps one to one; the classifier
(``fc.*`` / ``classifier.*``) and the EMA copy are dropped by name. The reference for verification
is torchvision's own model, built live from the installed library.
"""
from __future__ import annotations

import torch.nn as nn

from transfer.imports import core

NAME = "torchvision"
ARCHS = ("resnet18", "resnet50", "mobilenetv2")
EXPECTED = ("a torchvision state_dict (.pth) or a torchvision references train.py checkpoint "
            "{'model': ...}")
# train.py's ``args`` is an argparse.Namespace: kept as its plain fields, never instantiated
OPAQUE = ("argparse.Namespace",)
CLASSIFIER = {"resnet18": "fc.", "resnet50": "fc.", "mobilenetv2": "classifier."}
# whole entries of a training checkpoint that are not weights, or not the online weights
TRAINING_ENTRIES = {"optimizer": "optimizer state", "lr_scheduler": "scheduler state",
                    "scaler": "AMP scaler state", "amp_scaler": "AMP scaler state",
                    "model_ema": "EMA copy of the weights", "state_dict_ema": "EMA copy of the weights"}
IDENTITY = ("epoch", "arch", "args", "version", "metric")


def unwrap(obj, fmt: str, expected: str, containers=("model", "state_dict"),
           entries: dict | None = None, identity_keys=IDENTITY) -> tuple[dict, dict, dict]:
    """(the weights dict, the identity found beside it, {entry: reason} of the other entries).

    A dict of tensors is a bare state dict; a dict holding one of ``containers`` is a training
    checkpoint whose other entries must each be identity or a known training entry."""
    if not isinstance(obj, dict):
        raise core.ImportFailed(f"the file holds a {type(obj).__name__}, not a {fmt} checkpoint; "
                                f"pass {expected}")
    entries = TRAINING_ENTRIES if entries is None else entries
    for key in containers:
        if isinstance(obj.get(key), dict):
            identity = {("arch_in_file" if k == "arch" else k): core.plain(obj[k])
                        for k in identity_keys if k in obj}
            others = {}
            for k in obj:
                if k == key or k in identity_keys:
                    continue
                if k not in entries:
                    raise core.ImportFailed(f"entry {k!r} beside {key!r} is not part of a {fmt} "
                                            f"checkpoint (nothing is skipped silently); pass "
                                            f"{expected}")
                others[f"<{k}>"] = f"{entries[k]} (whole entry)"
            return obj[key], identity, others
    return obj, {}, {}


def torchvision_model(arch: str) -> nn.Module:
    """torchvision's network without its classifier (its state dict = our backbone's names)."""
    import torchvision
    if arch == "mobilenetv2":
        model = torchvision.models.mobilenet_v2(weights=None)
        model.classifier = nn.Identity()
    else:
        model = getattr(torchvision.models, arch)(weights=None)
        model.fc = nn.Identity()
    return model


def torchvision_reference(arch: str, weights: dict):
    """Reference builder: torchvision's model holding ``weights`` (torchvision names)."""
    def build(width: float) -> nn.Module:
        assert width == 1.0, "a fixed-width network has one width"
        return core.load_reference(torchvision_model(arch), weights)
    return build


def tv_name(arch: str) -> str:
    return "mobilenet_v2" if arch == "mobilenetv2" else arch


def extract(obj, *, arch: str, path, stem: str | None, config: dict | None) -> core.Extracted:
    state, identity, dropped = unwrap(obj, NAME, EXPECTED)
    state = core.strip_prefix(state, "module.")
    split = core.split_keys(state, "", [(CLASSIFIER[arch], "classifier head")], NAME,
                            fix=f"pass a torchvision {arch} state_dict")
    if stem not in (None, "imagenet"):
        raise core.ImportFailed("torchvision networks have the ImageNet stem; pass --stem "
                                "imagenet or leave it out")
    return core.Extracted(
        weights=split.taken, dropped={**dropped, **split.dropped}, stem="imagenet",
        slimmable=False, width_range=(1.0, 1.0), identity=identity,
        reference=torchvision_reference(arch, split.taken),
        reference_name=f"torchvision.models.{tv_name(arch)} (installed)")
