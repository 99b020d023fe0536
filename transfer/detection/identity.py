"""What a detection run folder holds: engine, task, and the export it was started from.

Why: a run folder named only after the export folder (``..._w0.50``) was shared by every source
checkpoint at that width, and ``--resume`` then continued another checkpoint's run and stamped
the new export's identity on its metrics. The default folder now names the source checkpoint and
the width, and ``RUN_DIR/run.json`` records the identity when the run starts; a run that does
not match it (resumed or not) stops with one line naming both, and so does ``--resume`` of a
folder that holds no run.
"""
from __future__ import annotations

import json
from pathlib import Path

from pretrain.safe_io import atomic_write

FILENAME = "run.json"
KEYS = ("engine", "task", "arch", "width", "source_sha256")


class IdentityError(ValueError):
    """A run folder that belongs to another run (one line)."""


def identity(engine: str, task: str, meta: dict, export_dir: str | Path) -> dict:
    """The identity of a run of ``engine``/``task`` on the export described by ``meta``."""
    model = meta.get("model") or {}
    source = meta.get("source") or {}
    return {"engine": engine, "task": task, "arch": model.get("arch") or meta.get("arch"),
            "width": float(meta["width"]),
            "source_sha256": meta.get("source_sha256") or source.get("sha256"),
            "export": str(Path(export_dir).resolve())}


def describe(ident: dict) -> str:
    sha = (ident.get("source_sha256") or "unknown")[:8]
    return (f"{ident.get('engine')}/{ident.get('task')} of {ident.get('arch')} "
            f"{ident.get('width')}x from checkpoint {sha} (export {ident.get('export')})")


def default_run_dir(root: str | Path, ident: dict) -> Path:
    """``root/ENGINE_TASK_<sha8>_w0.50``: one folder per engine, task, checkpoint and width."""
    sha = (ident["source_sha256"] or "nosha")[:8]
    return Path(root) / f"{ident['engine']}_{ident['task']}_{sha}_w{ident['width']:.2f}"


def read(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IdentityError(f"{path} is not readable ({err}); pass a new --out") from None
    if not isinstance(data, dict):
        raise IdentityError(f"{path} does not hold a run identity; pass a new --out")
    return data


def check(run_dir: str | Path, ident: dict, resume: bool) -> None:
    """Raise unless ``run_dir`` is new, or was started by the same engine, task and export."""
    run_dir = Path(run_dir)
    found = read(run_dir)
    engine_dir = run_dir / ident["engine"]
    if found is None:
        if resume and engine_dir.is_dir() and any(engine_dir.iterdir()):
            raise IdentityError(f"--resume: {run_dir} has no {FILENAME}, so what it was started "
                                f"from is unknown; pass a new --out")
        if resume:
            raise IdentityError(f"--resume: {run_dir} holds no run to resume (no {FILENAME}); "
                                f"drop --resume to start a new run there")
        return
    if any(found.get(k) != ident[k] for k in KEYS):
        action = "--resume of" if resume else "--out"
        raise IdentityError(f"{action} {run_dir}: it holds a run of {describe(found)}, not "
                            f"{describe(ident)}; pass another --out (or the matching export)")


def claim(run_dir: str | Path, ident: dict, resume: bool) -> Path:
    """``check``, then record ``ident`` in ``run_dir/run.json`` (call once, before workers)."""
    check(run_dir, ident, resume)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(ident, indent=2) + "\n"
    return atomic_write(run_dir / FILENAME, lambda tmp: Path(tmp).write_text(text))
