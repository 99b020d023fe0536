"""Pretraining configuration: defaults, YAML files with ``_base_`` inheritance, key=value overrides.

A config file only states what differs from ``DEFAULTS`` (or from its ``_base_`` files, merged in
order, paths relative to the file). Overrides ``a.b=value`` are parsed as YAML scalars/lists.
Unknown keys are errors (a typo must not silently train the wrong model). Every value is checked
against its typed rule (pretrain/schema.py: type, range, finiteness, choices, null) when the config
is resolved, so a wrong value is one ``ConfigError`` line before anything is built or written. The
resolved config is what the checkpoint stores and what ``save_resolved`` writes next to the
outputs.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from pretrain.safe_io import atomic_write


class ConfigError(ValueError):
    """A config the user must fix (one line naming the key and what is expected)."""


DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "model": {"arch": "resnet18", "stem": "cifar"},
    "method": {
        # us3l (= Table 7 case 13) | simclr | simsiam | byol | mocov2 | mocov3 | custom: the preset
        # filling every switch below that is left null (pretrain/methods/).
        "name": "us3l",
        "table7_case": None,        # 1-17: takes the switches from Table 7 instead of the name
        "base_loss": None,          # mse | infonce
        "distill_loss": None,       # none | mse | infonce
        "aux_distill_head": None,   # bool: g(.) of Eq. 3
        "momentum_base": None,      # bool: base network's target from the momentum encoder
        "momentum_sub": None,       # bool: sub-networks' target from the momentum encoder
        "predictor": "auto",        # auto (= with mse base loss) | true | false
        "temperature": 0.5,
        "distill_temperature": None,  # null = temperature
        "momentum": 0.99,
        "momentum_schedule": "fixed",  # fixed | cosine (towards 1.0)
        "queue_size": 0,            # MoCo v2 negatives (0 = none)
        # InfoNCE negatives/targets from every process (true) or the local batch (false); null =
        # what the method's reference code does (pretrain/methods/__init__.py: GATHER_NEGATIVES).
        "gather_negatives": None,
        # InfoNCE against a detached target (momentum base loss, NCE distillation): simclr2b (Eq. 2
        # over [q; sg(k)], official nt_xentv2) | moco (MoCo v3's B form; Eq. 7 as printed); null =
        # the method's reference (pretrain/methods/__init__.py: INFONCE_FORM).
        "infonce_form": None,
    },
    # The frozen teacher of method.name seed | seed_mse (pretrain/teacher.py, methods/seed.py).
    "teacher": {
        "checkpoint": None,     # PATH: a checkpoint of tools/pretrain.py or tools/import_checkpoint.py
        "width": None,          # the teacher's width; null = the largest it was trained at
        # Recorded at the start of a run (the student's checkpoint stores them); when given, the
        # teacher file must match (a resumed run checks it is still the same teacher).
        "sha256": None,
        "arch": None,
        "calibration_batches": None,  # BN calibration at the teacher width: null = one epoch
        # SEED's queue and temperatures. Official US3L configs/cifar/us_resnet18_seed_cifar.yaml
        # (MOCO_K 32768, DISTILL_STUDENT_TEMP 0.5, DISTILL_TEACHER_TEMP 1e-4); SEED's own builder
        # (jacobswan1/SEED) uses K 65536, t 0.07, temp 1e-4 (configs/pretrain/_seed.yaml).
        "queue_size": 32768,
        "student_temperature": 0.5,
        "teacher_temperature": 1.0e-4,
    },
    "heads": {
        "projector": {"hidden": 2048, "out": 256, "layers": 3, "bn_last": True},
        # bn_last: MoCo v3's predictor ends in a BN without affine (facebookresearch/moco-v3
        # moco/builder.py _build_mlp(last_bn=False) -> BatchNorm1d(affine=False) after the last
        # linear; the official ViT g is a copy of that predictor); SimSiam/BYOL's does not.
        "predictor": {"hidden": 512, "bn_last": False},
        "distill_head": {"hidden": 2048, "bn_last": False},
    },
    "sampling": {
        "sandwich": True,       # max + min + random widths (US-Net)
        "dynamic": True,        # Algorithm 1 (first quarter: full width only; R_min 0.75/0.5/0.25)
        "num_random": 1,        # random widths per iteration besides max (and min)
        "min_width": 0.25,
        "max_width": 1.0,
        "fixed_width": None,    # train one width only (individually trained baselines)
        # S-Net's fixed list (e.g. [1.0, 0.75, 0.5, 0.25]): every listed width every iteration,
        # largest first; null = the range above (pretrain/methods/snet.py resolve_widths)
        "width_list": None,
    },
    "regularization": {
        "type": "group", "groups": 8, "alpha": 0.05, "lam": 5.0e-5,
        # alpha's schedule (official GroupReg.cal_lambda): plain L2 (alpha 0) for warmup_epochs,
        # then alpha ramps linearly to its value at ramp_until (a fraction of the schedule; 0.5 =
        # half of training, the official total_epochs // 2; 0 = the full alpha from the start).
        "warmup_epochs": 0.0,
        "ramp_until": 0.5,
    },
    "optim": {
        "name": "sgd",          # sgd | lars | adamw
        "lr": 0.5,
        "scale_lr": False,      # lr * batch_size / 256
        "momentum": 0.9,
        "weight_decay": 0.0,    # optimizer's own decay (group regularization is in the loss)
        "warmup_epochs": 10,
        "min_lr": 0.0,
        "lars_eta": 0.001,
        "betas": [0.9, 0.999],
    },
    "schedule": {"epochs": 400, "iters": None},  # iters (if set) overrides epochs
    "data": {
        "name": "synthetic",    # synthetic | cifar10 | cifar100 | folder
        "root": "data",
        "image_size": 32,
        "batch_size": 512,
        "num_workers": 4,
        "verify_md5": True,
        "augment": "cifar",     # cifar | imagenet | byol (asymmetric pair, the ViT runs)
        "synthetic": {"num_classes": 10, "train_size": 2048, "val_size": 512, "seed": 0},
    },
    "monitor": {
        "log_every": 10,
        "knn_every": 0,         # iterations between kNN checks (0 = off)
        "knn_widths": [1.0, 0.25],
        "knn_k": 20,
        "knn_batches": 8,       # batches used for BN calibration and the kNN bank
        "collapse_ratio": 0.1,  # warn when std * sqrt(dim) of normalised embeddings falls below
        "stop_on_collapse": False,
        "tensorboard": True,
    },
    "checkpoint": {"every_iters": 200},
    "output": {"dir": "runs/us3l"},
    "amp": True,                # fp16 mixed precision (CUDA only)
    # Switches that keep the math and make it run faster (pretrain/speed.py; measured in
    # bench/README.md). Off by default: a run is reproduced bit for bit only with the same ones.
    "speed": {"channels_last": False, "bf16": False, "cached_slices": False},
    "dist": {"sync_bn": True, "backend": None},
}


OPEN_SECTIONS = ("model",)  # options differ per architecture: any key, checked by the builder


def _restarts(key: str, old: Any, new: Any) -> bool:
    """A new ``model.arch`` starts the model section afresh (a ViT takes no ResNet ``stem``)."""
    return (key == "model" and isinstance(old, dict) and isinstance(new, dict)
            and "arch" in new and new["arch"] != old.get("arch"))


def deep_merge(base: dict, update: dict, path: str = "") -> dict:
    """``base`` updated by ``update`` recursively; keys unknown to ``base`` are errors."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if not path and key in OPEN_SECTIONS and isinstance(value, dict):
            out[key] = copy.deepcopy(value) if _restarts(key, out.get(key), value) \
                else {**out.get(key, {}), **copy.deepcopy(value)}
            continue
        if key not in out:
            known = ", ".join(sorted(out)) or "none"
            raise ConfigError(f"unknown config key '{where}'; known keys here: {known}")
        if isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = deep_merge(out[key], value, where + ".")
        elif isinstance(out[key], dict):
            raise ConfigError(f"config key '{where}' is a section; give its sub-keys "
                              f"({', '.join(sorted(out[key]))})")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_files(update: dict, base: dict) -> dict:
    """Merge without the unknown-key check (used to stack ``_base_`` files before validation)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if _restarts(key, out.get(key), value):
            out[key] = copy.deepcopy(value)
        elif isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge_files(value, out[key])
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """A YAML file with its ``_base_`` files (a path or list, relative to it) merged underneath."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config {path} inherits from itself via _base_")
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what}; pass one of configs/pretrain/*.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else \
            "not UTF-8 text"
        raise ConfigError(f"config {path} cannot be read ({reason}); pass a readable YAML "
                          f"file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a mapping of keys, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config {path}: _base_ must be a file name or a list of file names, "
                          f"got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = _merge_files(read_yaml(path.parent / base, _seen + (path,)), merged)
    return _merge_files(data, merged)


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}} with value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key=value (e.g. data.batch_size=64)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key; write e.g. optim.lr=0.1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """DEFAULTS <- file (with its bases) <- overrides, then validated and resolved."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = deep_merge(cfg, read_yaml(path))
    for text in overrides:
        cfg = deep_merge(cfg, parse_override(text))
    return resolve(cfg)


def resolve(cfg: dict) -> dict:
    """Check every value against its rule (pretrain/schema.py), fill derived values (method
    switches from Table 7 / presets, a fixed width) and check the relations between keys."""
    from pretrain import schema
    from pretrain.methods import resolve_method
    cfg = schema.validate(cfg)
    cfg["method"] = resolve_method(cfg["method"])
    from pretrain.teacher import check_section
    check_section(cfg)
    from pretrain.methods.snet import resolve_widths
    resolve_widths(cfg)  # sampling.width_list -> range, kNN widths, S-Net's switchable BN
    s = cfg["sampling"]
    if s["fixed_width"] is not None:
        s["min_width"] = s["max_width"] = float(s["fixed_width"])
    if s["min_width"] > s["max_width"]:
        raise ConfigError(f"sampling.min_width {s['min_width']} exceeds sampling.max_width "
                          f"{s['max_width']}; give min_width <= max_width")
    o = cfg["optim"]
    if not o["scale_lr"] and o["min_lr"] > o["lr"]:
        raise ConfigError(f"optim.min_lr={o['min_lr']:g} exceeds optim.lr={o['lr']:g}: the "
                          f"cosine schedule would raise the lr; give min_lr <= lr")
    r = cfg["regularization"]
    if r["type"] == "group" and r["alpha"] * (r["groups"] - 1) > 1:
        raise ConfigError(f"regularization.alpha={r['alpha']:g} with groups={r['groups']} gives "
                          f"the last groups a negative L2 coefficient (1 - group * alpha < 0); "
                          f"give alpha <= {1 / (r['groups'] - 1):.4g}")
    import inspect

    from pretrain.models import _BUILDERS
    model, image = cfg["model"], cfg["data"]["image_size"]
    params = inspect.signature(_BUILDERS[model["arch"]]).parameters
    if "image_size" in params:  # a ViT: its patch grid is fixed by its image size
        size = model.get("image_size", params["image_size"].default)
        patch = model.get("patch_size", params["patch_size"].default
                          if "patch_size" in params else 1)
        if size != image:
            raise ConfigError(f"model.image_size={size} differs from data.image_size={image}; "
                              f"{model['arch']} takes the images the data gives: set both alike")
        if size % patch:
            raise ConfigError(f"model.patch_size={patch} does not divide model.image_size={size}; "
                              f"pick a patch size that divides it")
    return cfg


def save_resolved(cfg: dict, out_dir: str | Path) -> Path:
    """Write the resolved config as ``config.yaml`` next to the outputs (atomically)."""
    text = yaml.safe_dump(cfg, sort_keys=False)
    return atomic_write(Path(out_dir) / "config.yaml", lambda tmp: Path(tmp).write_text(text))
