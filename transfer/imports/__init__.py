"""Import a self-supervised ResNet/MobileNetV2 from another codebase as a US3L checkpoint.

Why: the transfer tools (convert_width.py, linear_probe.py, train_det.sh) take this suite's
checkpoint format only; converting once, strictly and verifiably, lets any checkpoint a user
already has sit in the same tables as a US3L run. One module per source format says where the
backbone lives and what everything else in the file is; ``core`` keeps the promises common to all
(safe reading, no key skipped silently, features verified, atomic write). See docs/import.md.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from transfer.imports.core import ImportFailed, VerificationFailed  # noqa: F401

FORMATS = {
    "us3l-official": "from_us3l_official",
    "torchvision": "from_torchvision",
    "timm": "from_timm",
    "solo-learn": "from_solo_learn",
    "mmpretrain": "from_mmpretrain",
}
ARCHS = ("resnet18", "resnet50", "mobilenetv2")


def format_module(name: str) -> ModuleType:
    if name not in FORMATS:
        raise ImportFailed(f"unknown source format {name!r}; pass one of {', '.join(FORMATS)}")
    return importlib.import_module(f"transfer.imports.{FORMATS[name]}")


def import_checkpoint(src: str | os.PathLike, fmt: str, arch: str, out: str | os.PathLike, *,
                      stem: str | None = None, width_range: tuple[float, float] | None = None,
                      source_config: str | os.PathLike | None = None, label: str | None = None,
                      verify: bool = True, write: bool = True) -> dict:
    """Read ``src`` as ``fmt``, map it onto this suite's ``arch``, verify, write ``out``.

    Returns the ``source`` record stored in the checkpoint (plus ``"out"``). Raises
    ``ImportFailed`` (bad input) or ``VerificationFailed``; nothing is written in either case."""
    from pretrain import safe_io, slim
    from pretrain.models import build_backbone
    from transfer.imports import core

    mod = format_module(fmt)
    if arch not in mod.ARCHS:
        raise ImportFailed(f"--from {fmt} imports {', '.join(mod.ARCHS)}, not {arch!r}")
    src, out = Path(src), Path(out)
    if out.exists() and out.is_dir():
        raise ImportFailed(f"--out {out} is a folder; pass the checkpoint file to write")
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise ImportFailed("--out is the source file; pass another path")
    config = core.read_config(source_config) if source_config else None
    obj = core.read_source(src, fmt, mod.EXPECTED, getattr(mod, "OPAQUE", ()))
    ex = mod.extract(obj, arch=arch, path=src, stem=stem, config=config)

    # width range: a fixed-width source is exactly its width; a slimmable one its trained range
    low, high = ex.width_range
    if width_range is not None:
        w_low, w_high = width_range
        if not ex.slimmable and (w_low, w_high) != (1.0, 1.0):
            raise ImportFailed(f"a {fmt} {arch} is a fixed-width network: its only width is 1.0 "
                               f"(--width-range {w_low:g}:{w_high:g} asks for others); leave "
                               f"--width-range out")
        for w in (w_low, w_high):
            try:
                slim.check_width(w)
            except ValueError as err:
                raise ImportFailed(f"--width-range: {err}") from None
        if w_low > w_high:
            raise ImportFailed(f"--width-range {w_low:g}:{w_high:g}: LOW must not exceed HIGH")
        low, high = w_low, w_high
    if ex.slimmable and not (slim.MIN_WIDTH <= low <= high <= slim.MAX_WIDTH):
        raise ImportFailed(f"the source's trained width range [{low:g}, {high:g}] is outside "
                           f"this suite's [{slim.MIN_WIDTH}, {slim.MAX_WIDTH}]; pass "
                           f"--width-range inside both")

    model = build_backbone({"arch": arch, "stem": ex.stem})
    full, filled = core.complete(model, ex.weights, ex.may_lack, arch, fmt, str(src))
    safe_io.check_finite(full, f"{fmt} source {src}")
    model.load_state_dict(full, strict=True)
    bn_stats = not any(k.rsplit(".", 1)[-1] in core.BN_STATS for k in filled)
    errors = None
    if verify and ex.reference is not None:
        widths = tuple(w for w in ex.reference_widths if low - 1e-9 <= w <= high + 1e-9) or (high,)
        ex.reference_widths = widths
        errors = core.compare(model, ex, ex.stem, bn_stats)

    groups = core.group_dropped(ex.dropped)
    source = {
        "format": fmt,
        **core.describe_file(src),
        "label": label or " ".join(x for x in (fmt, ex.method) if x),
        "method": ex.method,
        "arch": arch, "stem": ex.stem,
        "slimmable": ex.slimmable,
        "width_range": [low, high],
        **{k: v for k, v in ex.identity.items() if v is not None},
        "dropped": groups,
        "dropped_count": len(ex.dropped),
        "taken_count": len(ex.weights),
        "filled": filled,
        "bn_statistics": ("from the source" if bn_stats else
                          "absent in the source (initial values stored): recalibrated at each "
                          "width by convert_width.py / linear_probe.py --ckpt"),
        "notes": list(ex.notes),
        "verification": ({"reference": ex.reference_name, "tolerance": core.TOLERANCE,
                          "bn": "stored statistics (eval)" if bn_stats
                          else "batch statistics (train mode)",
                          "max_rel_error": errors} if errors is not None else
                         {"skipped": "--no-verify" if not verify else "no reference"}),
        "tool": "tools/import_checkpoint.py",
    }
    if config is not None:
        source["config"] = config
    if write:
        core.write_checkpoint(out, arch=arch, stem=ex.stem, width_range=(low, high),
                              backbone={k: v.contiguous() for k, v in model.state_dict().items()},
                              method=source["label"], source=source)
    return dict(source, out=str(out))
