"""The name a report gives a checkpoint: its source label (issue #15, item 4).

One rule for every report (``tools/run_all.py --compare``, ``tools/collect_results.py``): an
explicit label wins; else the label ``tools/import_checkpoint.py`` recorded (``--label``, default
``FORMAT METHOD``), which the converter copies into ``meta.json`` as
``source.imported_from.label``; else the pretraining method (``config.method.name``, in
``meta.json`` as ``source.method``); else the checkpoint's sha256 prefix.

Labels go into Markdown/HTML table cells, so ``check_label`` refuses the characters that would
break a table row (``|``, control characters).
"""
from __future__ import annotations

from typing import Mapping

MAX_LABEL = 80


def _text(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def checkpoint_label(ckpt: Mapping) -> str | None:
    """The default label of a loaded US3L checkpoint (``pretrain.checkpoint.load_checkpoint``)."""
    source = ckpt.get("source") if isinstance(ckpt.get("source"), Mapping) else {}
    config = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else {}
    method = config.get("method") if isinstance(config.get("method"), Mapping) else {}
    return _text(source.get("label")) or _text(method.get("name"))


def meta_label(meta: Mapping) -> str | None:
    """The default label of an export, from its ``meta.json`` (the same rule as
    ``checkpoint_label``: the converter copies the checkpoint's source record there)."""
    source = meta.get("source") if isinstance(meta.get("source"), Mapping) else {}
    imported = source.get("imported_from") if isinstance(source.get("imported_from"), Mapping) \
        else {}
    return _text(imported.get("label")) or _text(source.get("method"))


def sha_label(sha256: str | None) -> str:
    """The last resort: ``checkpoint 1a2b3c4d``."""
    return f"checkpoint {(sha256 or 'unknown')[:8]}"


def check_label(label: str) -> str | None:
    """Why ``label`` cannot name a report column (None: it can)."""
    if any(ch == "|" or ord(ch) < 32 or ord(ch) == 127 for ch in label):
        return (f"label {label!r} holds '|' or a control character, which would break the "
                f"report's tables")
    if len(label) > MAX_LABEL:
        return f"label {label[:20]!r}... is longer than {MAX_LABEL} characters"
    return None
