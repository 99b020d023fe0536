"""The typed schema of the pretraining config: one rule per key, checked in one place.

Why a schema and not scattered checks: a value that reaches the engine unchecked fails late and
badly (``data.batch_size=abc`` as a traceback after the output folder exists, ``optim.lr=nan`` as a
run that trains garbage and exits 0). ``validate(cfg)`` walks the merged config once, before
anything is built or written, and turns every wrong value into ONE ``ConfigError`` line::

    config key 'optim.lr': expected a finite number > 0, got 'abc'

Every key of ``pretrain.config.DEFAULTS`` has a rule in ``RULES`` (tests/test_bad_inputs_pretrain.py
fails when one has none, so a future key cannot skip the check). Numbers given as YAML strings
that Python reads as numbers (YAML 1.1 reads ``1e-4`` as a string) are converted; ``nan``/``inf``
never pass. ``model`` is an open section (each architecture takes its own options): ``arch`` must
name a registered architecture, every other key must be a parameter of that architecture's
builder, and the options this suite's builders take have rules here (``MODEL_OPTIONS``).
Relations between keys (``min_width <= max_width``, ...) are checked by ``pretrain.config.resolve``
right after.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any


def _config_error(message: str) -> Exception:
    from pretrain.config import ConfigError
    return ConfigError(message)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Rule:
    """One key's type and range; ``check`` returns the (possibly converted) value or raises."""

    nullable = False

    def expected(self) -> str:  # pragma: no cover - every rule overrides it
        raise NotImplementedError

    def convert(self, value: Any) -> Any:  # raises ValueError when the value does not fit
        raise NotImplementedError

    def check(self, key: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
        else:
            try:
                return self.convert(value)
            except (TypeError, ValueError):
                pass
        null = " (or null)" if self.nullable else ""
        raise _config_error(f"config key '{key}': expected {self.expected()}{null}, "
                            f"got {_show(value)}")


def _as_number(value: Any, integer: bool) -> float | int:
    """``value`` as an int (``integer``) or a finite float; strings that read as numbers pass."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if integer:
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise ValueError("not an integer")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        number = float(value.strip())
    else:
        raise ValueError("not a number")
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


@dataclass
class Number(Rule):
    """An integer (``integer=True``) or a finite float within [low, high] (ends optional/open)."""
    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False

    def expected(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        fmt = (lambda v: str(int(v))) if self.integer else (lambda v: f"{v:g}")
        lo = None if self.low is None else f"{'>' if self.low_open else '>='} {fmt(self.low)}"
        hi = None if self.high is None else f"{'<' if self.high_open else '<='} {fmt(self.high)}"
        if lo and hi:
            return f"{what} {lo} and {hi}"
        return f"{what} {lo or hi}" if (lo or hi) else what

    def convert(self, value: Any):
        number = _as_number(value, self.integer)
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            raise ValueError("below the range")
        if self.high is not None and (number > self.high or
                                      (self.high_open and number == self.high)):
            raise ValueError("above the range")
        return number


def Int(low: int | None = None, high: int | None = None, nullable: bool = False) -> Number:
    return Number(integer=True, low=low, high=high, nullable=nullable)


def Float(low: float | None = None, high: float | None = None, *, low_open: bool = False,
          high_open: bool = False, nullable: bool = False) -> Number:
    return Number(integer=False, low=low, high=high, low_open=low_open, high_open=high_open,
                  nullable=nullable)


@dataclass
class Bool(Rule):
    nullable: bool = False

    def expected(self) -> str:
        return "true or false"

    def convert(self, value: Any):
        if isinstance(value, bool):
            return value
        raise ValueError("not a boolean")


@dataclass
class Choice(Rule):
    """One of ``values`` (strings, or booleans such as method.predictor's true/false)."""
    values: tuple
    nullable: bool = False

    def expected(self) -> str:
        return "one of " + ", ".join("true" if v is True else "false" if v is False else str(v)
                                     for v in self.values)

    def convert(self, value: Any):
        for allowed in self.values:
            if type(value) is type(allowed) and value == allowed:
                return value
        raise ValueError("not a choice")


@dataclass
class Text(Rule):
    """A non-empty string (a path, a name)."""
    nullable: bool = False

    def expected(self) -> str:
        return "a non-empty string"

    def convert(self, value: Any):
        if isinstance(value, str) and value.strip():
            return value
        raise ValueError("not a string")


@dataclass
class List(Rule):
    """A list of ``item`` values with ``min_len``..``max_len`` entries."""
    item: Rule
    min_len: int = 1
    max_len: int | None = None
    nullable: bool = False

    def expected(self) -> str:
        if self.max_len == self.min_len:
            count = f"{self.min_len}"
        elif self.max_len is None:
            count = f"at least {self.min_len}"
        else:
            count = f"{self.min_len} to {self.max_len}"
        return f"a list of {count} value(s), each {self.item.expected()}"

    def convert(self, value: Any):
        if not isinstance(value, (list, tuple)):
            raise ValueError("not a list")
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            raise ValueError("wrong length")
        return [self.item.convert(v) for v in value]


WIDTH = Float(0.25, 1.0)  # slim.MIN_WIDTH .. slim.MAX_WIDTH: the widths one checkpoint covers
PROBABILITY = Float(0.0, 1.0)

# Every key of pretrain.config.DEFAULTS (dotted), except the open ``model`` section.
RULES: dict[str, Rule] = {
    "seed": Int(0, 2 ** 32 - 1),
    "method.name": Choice(("us3l", "simclr", "simsiam", "byol", "mocov2", "mocov3", "custom",
                           "seed", "seed_mse", "snet")),
    "method.table7_case": Int(1, 17, nullable=True),
    "method.base_loss": Choice(("mse", "infonce"), nullable=True),
    "method.distill_loss": Choice(("none", "mse", "infonce"), nullable=True),
    "method.aux_distill_head": Bool(nullable=True),
    "method.momentum_base": Bool(nullable=True),
    "method.momentum_sub": Bool(nullable=True),
    "method.predictor": Choice(("auto", True, False)),
    "method.temperature": Float(0.0, low_open=True),
    "method.distill_temperature": Float(0.0, low_open=True, nullable=True),
    "method.momentum": PROBABILITY,
    "method.momentum_schedule": Choice(("fixed", "cosine")),
    "method.queue_size": Int(0),
    "method.gather_negatives": Bool(nullable=True),
    "method.infonce_form": Choice(("simclr2b", "moco"), nullable=True),
    "teacher.checkpoint": Text(nullable=True),
    "teacher.width": Float(0.25, 1.0, nullable=True),
    "teacher.sha256": Text(nullable=True),
    "teacher.arch": Text(nullable=True),
    "teacher.calibration_batches": Int(0, nullable=True),
    "teacher.queue_size": Int(1),
    "teacher.student_temperature": Float(0.0, low_open=True),
    "teacher.teacher_temperature": Float(0.0, low_open=True),
    "heads.projector.hidden": Int(1),
    "heads.projector.out": Int(1),
    "heads.projector.layers": Int(1),
    "heads.projector.bn_last": Bool(),
    "heads.predictor.hidden": Int(1),
    "heads.predictor.bn_last": Bool(),
    "heads.distill_head.hidden": Int(1),
    "heads.distill_head.bn_last": Bool(),
    "sampling.sandwich": Bool(),
    "sampling.dynamic": Bool(),
    "sampling.num_random": Int(0, 64),
    "sampling.min_width": WIDTH,
    "sampling.max_width": WIDTH,
    "sampling.fixed_width": Float(0.25, 1.0, nullable=True),
    "sampling.width_list": List(WIDTH, 1, 16, nullable=True),  # S-Net (methods/snet.py)
    "regularization.type": Choice(("group", "none")),
    "regularization.groups": Int(1),
    "regularization.alpha": PROBABILITY,
    "regularization.lam": Float(0.0),
    "regularization.warmup_epochs": Float(0.0),
    "regularization.ramp_until": PROBABILITY,
    "optim.name": Choice(("sgd", "lars", "adamw")),
    "optim.lr": Float(0.0, low_open=True),
    "optim.scale_lr": Bool(),
    "optim.momentum": Float(0.0, 1.0, high_open=True),
    "optim.weight_decay": Float(0.0),
    "optim.warmup_epochs": Float(0.0),
    "optim.min_lr": Float(0.0),
    "optim.lars_eta": Float(0.0, low_open=True),
    "optim.betas": List(Float(0.0, 1.0, high_open=True), 2, 2),
    "schedule.epochs": Int(1),
    "schedule.iters": Int(1, nullable=True),
    "data.name": Choice(("synthetic", "cifar10", "cifar100", "folder")),
    "data.root": Text(),
    "data.image_size": Int(8, 4096),
    "data.batch_size": Int(2),
    "data.num_workers": Int(0, 256),
    "data.verify_md5": Bool(),
    "data.augment": Choice(("cifar", "imagenet", "byol")),  # pretrain/data.py AUGMENTS
    "data.synthetic.num_classes": Int(1, 100_000),
    "data.synthetic.train_size": Int(1, 10_000_000),
    "data.synthetic.val_size": Int(0, 10_000_000),
    "data.synthetic.seed": Int(0, 2 ** 32 - 1),
    "monitor.log_every": Int(1),
    "monitor.knn_every": Int(0),
    "monitor.knn_widths": List(WIDTH, 1, 16),
    "monitor.knn_k": Int(1),
    "monitor.knn_batches": Int(1),
    "monitor.collapse_ratio": Float(0.0),
    "monitor.stop_on_collapse": Bool(),
    "monitor.tensorboard": Bool(),
    "checkpoint.every_iters": Int(0),
    "output.dir": Text(),
    "amp": Bool(),
    "speed.channels_last": Bool(),
    "speed.bf16": Bool(),
    "speed.cached_slices": Bool(),
    "dist.sync_bn": Bool(),
    "dist.backend": Choice(("nccl", "gloo", "mpi", "ucc"), nullable=True),
}

OPEN_SECTIONS = ("model",)

# Options of this suite's architectures (pretrain/models/): any other option a builder takes is
# passed as given and checked by the builder.
MODEL_OPTIONS: dict[str, Rule] = {
    "stem": Choice(("imagenet", "cifar")),
    "image_size": Int(8, 4096),
    "patch_size": Int(1, 4096),
    "depth": Int(1, 1000, nullable=True),
    "heads": Int(1, 1024, nullable=True),   # ViT attention heads (null = pretrain/models/vit.py ARCHS)
    "stop_grad_conv1": Bool(),              # ViT: frozen random patch projection (MoCo v3)
}


def leaf_keys(cfg: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the values of ``cfg`` (sections recursed into; open sections left out)."""
    keys = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if not prefix and key in OPEN_SECTIONS:
            continue
        if isinstance(value, dict):
            keys += leaf_keys(value, name + ".")
        else:
            keys.append(name)
    return keys


def _set(cfg: dict, dotted: str, value: Any) -> None:
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _get(cfg: dict, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def check_model(model: Any) -> dict:
    """The open ``model`` section: a mapping whose ``arch`` is registered and whose other keys
    are options of that architecture's builder, typed where this suite knows them."""
    from pretrain.models import _BUILDERS, known_archs
    if not isinstance(model, dict):
        raise _config_error(f"config key 'model': expected a section with 'arch' (e.g. "
                            f"{{arch: resnet18, stem: cifar}}), got {_show(model)}")
    archs = known_archs()
    arch = model.get("arch")
    if arch not in archs:
        raise _config_error(f"config key 'model.arch': expected one of {', '.join(archs)}, "
                            f"got {_show(arch)}")
    params = inspect.signature(_BUILDERS[arch]).parameters
    takes = [p for p in params if p not in ("arch", "layers")]
    out = {"arch": arch}
    for key, value in model.items():
        if key == "arch":
            continue
        if key not in takes:
            raise _config_error(f"config key 'model.{key}': architecture {arch} takes no option "
                                f"'{key}' (it takes: {', '.join(takes) or 'none'})")
        rule = MODEL_OPTIONS.get(key)
        out[key] = rule.check(f"model.{key}", value) if rule is not None else value
    return out


def validate(cfg: dict) -> dict:
    """``cfg`` (merged: every DEFAULTS key present) with every value checked and converted;
    raises one ``ConfigError`` line at the first value that does not fit its rule."""
    import copy
    out = copy.deepcopy(cfg)
    for key in leaf_keys(out):
        if key not in RULES:  # DEFAULTS gained a key without a rule: refuse rather than skip it
            raise _config_error(f"config key '{key}' has no rule in pretrain/schema.py RULES; "
                                f"add one")
    for key, rule in RULES.items():
        try:
            value = _get(out, key)
        except (KeyError, TypeError):
            raise _config_error(f"config key '{key}' is missing") from None
        _set(out, key, rule.check(key, value))
    out["model"] = check_model(out.get("model"))
    return out
