"""What every source format shares: safe reading, strict key accounting, verification, writing.

Why one core: the promises of an import are the same whatever wrote the source file, so they are
kept in one place and each format module (``from_*.py``) only says where its backbone lives, what
its other keys are, how its names map to ours and what reference network its weights run in.

* Reading runs no code from the file: ``torch.load(weights_only=True)``. A format whose files are
  known to carry library objects in their *metadata* (mmengine's ``HistoryBuffer`` in a training
  checkpoint's message hub, timm's and torchvision's ``argparse.Namespace`` of training arguments,
  numpy arrays) names those classes by module prefix in ``OPAQUE``; they are then read as inert
  stand-ins that keep only their plain state (``Opaque``): the real class is never imported or
  called. Any other global fails the read with one line naming the format expected.
* Nothing is skipped silently: every source key is either taken (the online backbone), dropped by
  name with a reason (momentum encoders, projectors, predictors, queues, classifier heads), or the
  import fails naming it. Every key of our backbone must be filled from the source, except the
  BatchNorm buffers a format declares may be absent (they are filled with BatchNorm's initial
  values and listed: the converter and the probe recalibrate BN at every width anyway).
* Verification: the imported slimmable backbone and a reference network built in the source's own
  layout (the installed library where there is one, else the layout as written in its code) must
  give the same pooled features within ``TOLERANCE`` at every width the reference can run.
* The checkpoint is this suite's format (pretrain/checkpoint.py) plus a top-level ``source`` dict
  (format, file, sha256, epoch/config found inside, dropped keys, verification):
  ``load_checkpoint`` ignores extra top-level keys, so every downstream tool takes it unchanged.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from pretrain import safe_io, slim
from pretrain.checkpoint import file_sha256, save_checkpoint

TOLERANCE = 1e-5
BN_STATS = ("running_mean", "running_var")
BN_COUNTER = "num_batches_tracked"
SOURCE_KEY = "source"  # the top-level checkpoint key holding the source identity


class ImportFailed(ValueError):
    """The source cannot be imported as asked (one line for the user; exit code 2)."""


class VerificationFailed(RuntimeError):
    """Imported features differ from the source network's (exit code 1; nothing written)."""


# ------------------------------------------------------------------------------ safe reading
class Opaque:
    """Inert stand-in for a library object in a checkpoint's metadata: the real class is never
    imported or called; only plain state survives (``state``), for the record."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def plain(self):
        return plain(self.state) if self.state is not None else f"<{self.qualname}>"

    def __repr__(self) -> str:
        return f"<opaque {self.qualname}>"


def _opaque_globals(name: str) -> list[tuple[Any, str]]:
    """Stand-ins for global ``name`` (``safe_globals`` entries): a class for ``Class`` names, a
    function otherwise (numpy's ``_reconstruct``/``scalar``, ``builtins.getattr`` inside a
    dtype's pickle) returning an instance of an inert class, which is registered too so that
    the unpickler may set its state. None of them runs anything of the real global."""
    cls = type(f"Opaque[{name}]", (Opaque,), {"qualname": name})
    if name.rsplit(".", 1)[-1][:1].isupper():
        return [(cls, name)]
    return [(lambda *args, **kwargs: cls(), name), (cls, f"{name}.<opaque instance>")]


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-able data (for the checkpoint's ``source`` record and meta.json)."""
    if depth > 8:
        return "..."
    if isinstance(value, Opaque):
        return value.plain()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value if not (isinstance(value, float) and not math.isfinite(value)) else str(value)
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else f"<tensor {tuple(value.shape)}>"
    return str(value)


def read_source(path: str | os.PathLike, fmt: str, expected: str,
                opaque_prefixes: Iterable[str] = ()) -> Any:
    """The object in ``path``, read without running anything from it (see the module doc).

    ``expected`` names what a file of this format is, for the one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ImportFailed(f"source {path} does not exist; pass {expected}")
    prefixes = tuple(opaque_prefixes)
    try:
        return safe_io.load_torch(path, f"{fmt} source")
    except safe_io.UnsafeFileError as err:
        first = str(err)
    if prefixes and _holds_globals(first):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # not a zip checkpoint: the first error says why
            names = None
        if names:
            foreign = [n for n in names if not n.startswith(prefixes)]
            if not foreign:
                stand_ins = [entry for n in names for entry in _opaque_globals(n)]
                try:
                    with torch.serialization.safe_globals(stand_ins):
                        return torch.load(path, map_location="cpu", weights_only=True)
                except Exception as err2:  # noqa: BLE001 - any failure is the file's
                    first = f"{type(err2).__name__}: {str(err2).strip().splitlines()[0][:160]}"
            else:
                raise ImportFailed(
                    f"{path.name} holds {foreign[0]!r}, which a {fmt} checkpoint does not hold "
                    f"(refused, nothing from it ran); pass {expected}") from None
    raise ImportFailed(f"{path.name} cannot be read safely as a {fmt} checkpoint "
                       f"({_reason(first)}); pass {expected}") from None


def _reason(message: str) -> str:
    """The cause inside a safe_io message (``... (CAUSE); re-create it``), shortened."""
    inner = message[message.find("(") + 1: message.rfind(")")] if "(" in message else message
    return _squeeze(inner, 100)


def _holds_globals(message: str) -> bool:
    return "holds more than tensors" in message


def _squeeze(text: str, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# ------------------------------------------------------------------------------ key accounting
def strip_prefix(state: dict, prefix: str) -> dict:
    """DDP's ``module.`` (or any wrapper prefix) off every key that has it, when all have it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


@dataclass
class Split:
    """Source keys sorted into the backbone taken and the keys dropped by name (with reasons)."""
    taken: dict[str, torch.Tensor]
    dropped: dict[str, str]


def split_keys(state: dict, take: str, drop: list[tuple[str, str]], fmt: str,
               fix: str = "") -> Split:
    """Keys under ``take`` are the backbone (prefix removed); a key equal to or under one of the
    ``drop`` prefixes is dropped with its reason; any other key fails the import, naming it.

    ``take`` may be "" (a bare backbone state dict: everything not dropped is taken)."""
    taken, dropped, unknown = {}, {}, []
    for key, value in state.items():
        reason = next((why for prefix, why in drop if key == prefix.rstrip(".")
                       or (prefix.endswith(".") and key.startswith(prefix))), None)
        if reason is not None:
            dropped[key] = reason
        elif key.startswith(take):
            taken[key[len(take):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ImportFailed(f"{len(unknown)} source key(s) are neither the {fmt} backbone nor in "
                           f"the drop list, e.g. {unknown[0]!r} (nothing is skipped silently)"
                           f"{'; ' + fix if fix else ''}")
    if not taken:
        raise ImportFailed(f"no backbone weights found (expected keys under {take!r} in a {fmt} "
                           f"checkpoint){'; ' + fix if fix else ''}")
    for key, value in taken.items():
        if not isinstance(value, torch.Tensor):
            raise ImportFailed(f"backbone entry {key!r} is a {type(value).__name__}, not a tensor;"
                               f" the file is not a {fmt} checkpoint")
    return Split(taken, dropped)


def rename(state: dict[str, torch.Tensor], mapping: Callable[[str], str | None], fmt: str
           ) -> dict[str, torch.Tensor]:
    """Source names -> ours through ``mapping`` (None = a backbone key with no counterpart)."""
    out = {}
    for key, value in state.items():
        new = mapping(key)
        if new is None:
            raise ImportFailed(f"backbone key {key!r} has no counterpart in this suite's "
                               f"network; the file is not a {fmt} layout this tool knows")
        if new in out:
            raise ImportFailed(f"backbone keys map twice onto {new!r} ({fmt} layout)")
        out[new] = value
    return out


def guess_arch(ours: dict[str, torch.Tensor]) -> str | None:
    """Which of our architectures a (renamed) backbone is, from its keys alone."""
    if any(k.startswith("features.") for k in ours):
        return "mobilenetv2"
    if "layer1.0.conv3.weight" in ours:
        return "resnet50"
    if "layer1.0.conv2.weight" in ours:
        return "resnet18"
    return None


def stem_of_resnet(conv1: torch.Tensor) -> str:
    """'imagenet' (7x7 stem) or 'cifar' (3x3 stem) from a ResNet's first conv."""
    return "cifar" if tuple(conv1.shape[-2:]) == (3, 3) else "imagenet"


# ------------------------------------------------------------------------------ what a format gives
@dataclass
class Extracted:
    """What a format module found in a source (weights in OUR names)."""
    weights: dict[str, torch.Tensor]
    dropped: dict[str, str]
    stem: str
    slimmable: bool
    width_range: tuple[float, float]
    identity: dict = field(default_factory=dict)      # epoch, arch, config found inside
    may_lack: tuple[str, ...] = (BN_COUNTER,)          # buffer names allowed to be absent
    reference: Callable[[float], nn.Module] | None = None  # source-layout network at a width
    reference_widths: tuple[float, ...] = (1.0,)
    reference_name: str = ""
    notes: list[str] = field(default_factory=list)
    method: str | None = None


def complete(model: nn.Module, weights: dict[str, torch.Tensor], may_lack: tuple[str, ...],
             arch: str, fmt: str, src: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``weights`` checked against ``model``'s exact key set and shapes; the absent keys that
    ``may_lack`` allows (BatchNorm buffers) filled with BatchNorm's initial values.

    Returns the full state dict and the list of keys filled."""
    expected = model.state_dict()
    found = guess_arch(weights)
    if found is not None and found != arch:
        raise ImportFailed(f"{src} holds a {found} backbone, not {arch} as --arch says; pass "
                           f"--arch {found}")
    unknown = sorted(set(weights) - set(expected))
    if unknown:
        raise ImportFailed(f"{len(unknown)} backbone key(s) do not exist in this suite's {arch}, "
                           f"e.g. {unknown[0]!r}; check --arch (the file may hold another "
                           f"network)")
    missing = sorted(set(expected) - set(weights))
    bn_owners = {name for name, m in model.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    not_allowed = [k for k in missing
                   if k.rsplit(".", 1)[0] not in bn_owners or k.rsplit(".", 1)[-1] not in may_lack]
    if not_allowed:
        raise ImportFailed(f"the {fmt} source lacks {len(not_allowed)} weight(s) of {arch}, e.g. "
                           f"{not_allowed[0]!r}; check --arch and that the file is a whole "
                           f"{fmt} checkpoint")
    for key in sorted(set(weights) & set(expected)):
        if tuple(weights[key].shape) != tuple(expected[key].shape):
            raise ImportFailed(f"{key} is {tuple(weights[key].shape)} in the source but "
                               f"{tuple(expected[key].shape)} in this suite's {arch}; check "
                               f"--arch (a width multiplier other than 1.0 cannot be imported)")
    full = {}
    for key, ref in expected.items():
        if key in weights:
            full[key] = weights[key].detach().to(dtype=ref.dtype).clone()
        else:  # allowed by may_lack: BatchNorm's own initial values
            name = key.rsplit(".", 1)[-1]
            full[key] = (torch.zeros_like(ref) if name in ("running_mean", BN_COUNTER)
                         else torch.ones_like(ref))
    return full, missing


# ------------------------------------------------------------------------------ verification
def load_reference(model: nn.Module, weights: dict[str, torch.Tensor],
                   may_lack: tuple[str, ...] = (BN_COUNTER,)) -> nn.Module:
    """Load source-named ``weights`` into a reference network in the source's layout. Exactly
    the BatchNorm buffers named in ``may_lack`` may be absent (old files lack num_batches_tracked;
    they are left at their initial values); any other missing or unexpected key is an error."""
    result = model.load_state_dict(weights, strict=False)
    bad_missing = [k for k in result.missing_keys if k.rsplit(".", 1)[-1] not in may_lack]
    if result.unexpected_keys or bad_missing:
        raise VerificationFailed(f"the reference network does not take the source weights "
                                 f"(unexpected {result.unexpected_keys[:2]}, missing "
                                 f"{bad_missing[:2]}); nothing written")
    return model


def pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return torch.flatten(out, 1) if out.dim() > 2 else out


def compare(ours: nn.Module, ex: Extracted, stem: str, bn_stats: bool, seed: int = 0
            ) -> dict[str, float]:
    """Max relative error (max|a-b| / max|b|) of pooled features, ours vs the reference network
    in the source's layout, at each of ``ex.reference_widths``. BatchNorm runs on its stored
    statistics (eval) when the source has them, else on batch statistics (train mode, both sides,
    buffers of ours untouched)."""
    size = 32 if stem == "cifar" else 64
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, size, size, generator=gen)
    errors = {}
    for width in ex.reference_widths:
        ref = ex.reference(width)
        ref.train(not bn_stats)
        ours.train(not bn_stats)
        with torch.no_grad(), slim.at_width(ours, width):
            a, b = pooled(ours, x), pooled(ref, x)
        if a.shape != b.shape:
            raise VerificationFailed(f"features at width {width:g} have shape {tuple(a.shape)} "
                                     f"here but {tuple(b.shape)} in {ex.reference_name}")
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        errors[f"{width:g}"] = err
        if not err <= TOLERANCE:
            raise VerificationFailed(f"features at width {width:g} differ from "
                                     f"{ex.reference_name} (max rel error {err:.2e} > "
                                     f"{TOLERANCE:g}); nothing written")
    ours.eval()
    return errors


# ------------------------------------------------------------------------------ writing
def write_checkpoint(path: str | os.PathLike, *, arch: str, stem: str,
                     width_range: tuple[float, float], backbone: dict, method: str | None,
                     source: dict) -> Path:
    """The suite's checkpoint (``save_checkpoint``, the format's one owner) with the source's
    identity as its top-level ``source`` record; no training state (nothing to resume)."""
    config = {"model": {"arch": arch, "stem": stem},
              "method": {"name": method or source["format"]},
              "imported": {"format": source["format"], "file": source["file"],
                           "sha256": source["sha256"]}}
    return save_checkpoint(path, config=config, state={"backbone": backbone},
                           width_range=width_range, source=source)


def describe_file(path: Path) -> dict:
    return {"file": path.name, "path": str(path.resolve()), "sha256": file_sha256(path),
            "size_bytes": path.stat().st_size}


def group_dropped(dropped: dict[str, str]) -> dict[str, list[str]]:
    """Dropped keys by reason, each list sorted (what is printed and stored)."""
    groups: dict[str, list[str]] = {}
    for key, why in dropped.items():
        groups.setdefault(why, []).append(key)
    return {why: sorted(keys) for why, keys in sorted(groups.items())}


def common_prefixes(keys: list[str], depth: int = 2) -> list[str]:
    """Short ``a.b.* (N)`` summaries of a key list (a lone key is shown whole), for printing."""
    seen: dict[str, list[str]] = {}
    for k in keys:
        parts = k.split(".")
        head = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        seen.setdefault(head, []).append(k)
    return [f"{head} ({len(ks)})" if len(ks) > 1 else ks[0] for head, ks in seen.items()]


def read_config(path: str | os.PathLike) -> dict:
    """A source's training config beside it (``--source-config``, solo-learn's ``args.json``):
    JSON or YAML read as plain data (``yaml.safe_load``: no tags, no code)."""
    path = Path(path)
    if not path.is_file():
        raise ImportFailed(f"--source-config {path} does not exist; pass the source's JSON or "
                           f"YAML training config")
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # noqa: BLE001 - malformed config: the file's fault
        raise ImportFailed(f"source config {path} is not readable JSON/YAML "
                           f"({_squeeze(str(err), 120)})") from None
    if not isinstance(data, dict):
        raise ImportFailed(f"source config {path} is not a mapping of settings")
    return plain(data)


# MobileNetV2 blocks in this suite's (= torchvision's) numbering: features.1 .. features.17
def mobilenetv2_expansions() -> list[int]:
    """Expansion ratio t of features.1 .. features.17 (index 0 = features.1)."""
    from pretrain.models.mobilenetv2 import SETTING
    return [t for t, _c, n, _s in SETTING for _ in range(n)]


MNV2_OURS_T1 = ("conv.0.0", "conv.0.1", "conv.1", "conv.2")          # dw, bn, project, bn
MNV2_OURS = ("conv.0.0", "conv.0.1", "conv.1.0", "conv.1.1", "conv.2", "conv.3")
