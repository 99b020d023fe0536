"""solo-learn checkpoints (vturrisi/solo-learn): ResNet-18/50 backbones, a fixed-width source.

What solo-learn writes (solo/utils/checkpointer.py -> Lightning ``trainer.save_checkpoint``): a
``.ckpt`` dict ``{"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops",
"callbacks", "optimizer_states", "lr_schedulers", ...}``, with ``args.json`` (the run's config)
beside it. solo-learn does not save hyper-parameters into the file. In ``state_dict``
(solo/methods/base.py and the methods): ``backbone.*`` is the online backbone, a torchvision
``resnet18``/``resnet50`` (solo/backbones/resnet/resnet.py) with ``fc`` replaced by Identity; dropped
by name: ``momentum_backbone``, ``projector``, ``momentum_projector``, ``predictor``,
``classifier`` / ``momentum_classifier`` (the online linear probes), ``prototypes`` (SwAV,
DeepCluster), ``head`` / ``momentum_head`` / ``dino_loss_func`` (DINO), and the queues
(``queue``, ``queue_y``, ``queue_ptr``, ``queue_index``).

The CIFAR variant is refused: solo-learn replaces ``conv1`` with a 3x3 conv of **padding 2**
(base.py, main_linear.py) and removes the max-pool, while this suite's CIFAR stem pads by 1; the
feature maps would differ in size, so no import could reproduce its features.

Verification: the backbone is torchvision's own class, so the reference is torchvision's model.
"""
from __future__ import annotations

from pathlib import Path

from transfer.imports import core
from transfer.imports.from_torchvision import torchvision_reference, unwrap

NAME = "solo-learn"
ARCHS = ("resnet18", "resnet50")
EXPECTED = "a solo-learn .ckpt (the Lightning checkpoint written by main_pretrain.py)"
# Lightning keeps these plain; listed in case a callback or loop state carries numpy values
OPAQUE = ("numpy.", "builtins.getattr")
DROPS = [("momentum_backbone.", "momentum encoder"), ("projector.", "projector"),
         ("momentum_projector.", "momentum projector"), ("predictor.", "predictor"),
         ("classifier.", "online linear classifier"),
         ("momentum_classifier.", "online linear classifier (momentum)"),
         ("prototypes.", "prototypes"), ("head.", "DINO head"), ("momentum_head.", "DINO head"),
         ("dino_loss_func.", "DINO loss centre"),
         ("queue", "queue"), ("queue_y", "queue"), ("queue_ptr", "queue"),
         ("queue_index", "queue")]
ENTRIES = {"loops": "Lightning loop state", "callbacks": "Lightning callback state",
           "optimizer_states": "optimizer state", "lr_schedulers": "scheduler state",
           "pytorch-lightning_version": "Lightning version", "hparams_name": "Lightning hparams",
           "hyper_parameters": "Lightning hparams", "MixedPrecision": "AMP scaler state",
           "native_amp_scaling_state": "AMP scaler state"}


def extract(obj, *, arch: str, path, stem: str | None, config: dict | None) -> core.Extracted:
    state, identity, dropped = unwrap(obj, NAME, EXPECTED, containers=("state_dict",),
                                      entries=ENTRIES, identity_keys=("epoch", "global_step"))
    if not identity:
        raise core.ImportFailed(f"{path} is not a Lightning checkpoint (no 'state_dict' with "
                                f"'epoch'/'global_step'); pass {EXPECTED}")
    if isinstance(obj.get("pytorch-lightning_version"), str):
        identity["lightning_version"] = obj["pytorch-lightning_version"]
    if config is None and (Path(path).parent / "args.json").is_file():
        config = core.read_config(Path(path).parent / "args.json")
        identity["config_file"] = "args.json (beside the checkpoint)"
    if config is not None:
        identity["config"] = config
    split = core.split_keys(state, "backbone.", DROPS, NAME, fix=f"pass {EXPECTED}")
    conv1 = split.taken.get("conv1.weight")
    if conv1 is not None and core.stem_of_resnet(conv1) == "cifar":
        raise core.ImportFailed("this is solo-learn's CIFAR ResNet (3x3 conv1 with padding 2, no "
                                "max-pool), whose features this suite's CIFAR stem (padding 1) "
                                "cannot reproduce; only ImageNet-stem solo-learn ResNets import")
    if stem not in (None, "imagenet"):
        raise core.ImportFailed("solo-learn's ImageNet ResNets have the ImageNet stem; pass "
                                "--stem imagenet or leave it out")
    method = (config or {}).get("method")
    backbone = ((config or {}).get("backbone") or {}).get("name") \
        if isinstance((config or {}).get("backbone"), dict) else None
    if backbone is not None and backbone != arch:
        raise core.ImportFailed(f"args.json names backbone {backbone!r}, not {arch} as --arch "
                                f"says; pass --arch {backbone}")
    return core.Extracted(
        weights=split.taken, dropped={**dropped, **split.dropped}, stem="imagenet",
        slimmable=False, width_range=(1.0, 1.0), identity=identity,
        reference=torchvision_reference(arch, split.taken),
        reference_name=f"torchvision.models.{arch} (solo-learn's backbone class, installed)",
        method=str(method) if method else None)
