"""The one owner of how the suite reads files it did not just write, and how it writes files.

Why one module: a checkpoint, an export or a metrics file can come from anywhere, and a killed
writer can leave half a file. So:

* nothing read runs code: ``load_torch`` is ``torch.load(weights_only=True)``; ``load_pickle``
  (detectron2's ``.pkl`` is a pickle by that engine's design, and its checkpointer unpickles with
  plain ``pickle``) admits only dicts, lists, tuples, strings, bytes, numbers, booleans, None and
  numpy arrays/scalars; ``check_pickle`` runs it before an engine sees a file;
* every way a file can be wrong is one ``UnsafeFileError`` line naming the file and the fix;
* ``atomic_write`` writes to a hidden temp name in the same folder and renames, so readers never
  see half a file; readers skip hidden and temp entries (``published``), and each writer removes
  its own stale temps from earlier killed runs (``remove_stale``: its own name's pattern, in its
  own folder, not while the process that made one still runs), never anything else.
"""
from __future__ import annotations

import fnmatch
import glob
import io
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

TEMP_SUFFIX = ".tmp"


class UnsafeFileError(ValueError):
    """A file that cannot be read safely or is not what it claims (one line for the user)."""


def temp_prefix(name: str) -> str:
    """The hidden temp-name prefix of a writer of ``name``: ``.NAME.<pid>.`` (then random, then
    ``.tmp``); the pid tells a killed writer's leftovers from a live writer's file."""
    return f".{name}.{os.getpid()}."


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see half a file. Stale
    temps of ``path`` left by killed writers are removed first (``remove_stale``)."""
    from pretrain.cli import is_write_failure, write_error

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX,
                                   dir=path.parent)
    except OSError as err:  # a file where a folder should be, read-only disk, no permission
        raise write_error(path, err) from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, (OSError, RuntimeError)) and is_write_failure(err):
            raise write_error(path, err) from None  # full disk: one line naming the path
        raise
    return path


def is_partial(path: str | os.PathLike) -> bool:
    """A hidden or temporary entry: something a writer has not published (or a stale leftover)."""
    name = Path(path).name
    return name.startswith(".") or name.endswith(TEMP_SUFFIX)


def published(paths) -> list[Path]:
    """``paths`` without any that lies in (or is) a hidden or temporary entry."""
    return [Path(p) for p in paths if not any(is_partial(part) for part in Path(p).parts
                                              if part not in (".", ".."))]


def _writer_alive(entry_name: str, name: str) -> bool:
    """Whether the process named in ``.NAME.<pid>.*.tmp`` is running (and is not this one)."""
    pid = entry_name[len(name) + 2:].split(".", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temp entries writers of ``name`` left in ``folder`` (``.NAME.*.tmp``) when they
    were killed: only that pattern, only in that folder, never a running writer's."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if fnmatch.fnmatchcase(entry.name, f".{name}.*{TEMP_SUFFIX}") and \
                not _writer_alive(entry.name, name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def remove_own(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove this process's own temp entries of ``name`` in ``folder`` (``.NAME.<our pid>.*``):
    for an interrupt that lands between creating a temp entry and the code that owns it."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.glob(f"{glob.escape(temp_prefix(name))}*{TEMP_SUFFIX}"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def load_torch(path: str | os.PathLike, what: str = "file", map_location="cpu"):
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UnsafeFileError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeFileError(f"{what} {path} holds more than tensors and plain containers "
                              f"(refused, nothing from it ran: {first[:160]}); re-create it with "
                              f"this suite's tools") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeFileError(f"{what} {path} is not a readable torch file ({first[:160]}); "
                              f"re-create it") from None


# numpy's own pickling of arrays and scalars; the module moved from numpy.core to numpy._core
# (protocol 5 pickles arrays through numeric._frombuffer: bytes + dtype + shape, no code)
_NUMPY_GLOBALS = {(f"numpy{core}.multiarray", name) for core in (".core", "._core")
                  for name in ("_reconstruct", "scalar")} | \
    {(f"numpy{core}.numeric", "_frombuffer") for core in (".core", "._core")} | \
    {("numpy", "ndarray"), ("numpy", "dtype")}


class _Refused(pickle.UnpicklingError):
    """A global the restricted unpickler does not admit."""


class _PlainUnpickler(pickle.Unpickler):
    """Admits builtin containers and numbers (no global needed) and numpy arrays; any other
    global (a function, a class, ``os.system``) stops the load before it is called."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        if module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        raise _Refused(f"global '{module}.{name}' is not allowed")


def load_pickle(path: str | os.PathLike, what: str = "pickle"):
    """A pickle holding only plain data and numpy arrays (a detectron2 checkpoint), loaded
    without running anything from it."""
    path = Path(path)
    if not path.is_file():
        raise UnsafeFileError(f"{what} {path} does not exist")
    try:
        data = path.read_bytes()
        return _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as err:
        raise UnsafeFileError(f"{what} {path} holds more than plain data and arrays (refused, "
                              f"nothing from it ran: {err}); re-create it with "
                              f"tools/convert_width.py") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, OSError) as err:
        raise UnsafeFileError(f"{what} {path} is not a readable pickle ({type(err).__name__}: "
                              f"{str(err)[:120]}); re-create it with tools/convert_width.py") \
            from None


def check_pickle(path: str | os.PathLike, what: str = "pickle") -> None:
    """Raise ``UnsafeFileError`` unless ``load_pickle`` reads ``path`` (before an engine that
    unpickles with plain ``pickle`` sees it)."""
    load_pickle(path, what)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parsed JSON, or one ``UnsafeFileError`` line naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UnsafeFileError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnsafeFileError(f"{what} {path} is not readable JSON ({err})") from None


def non_finite(tensors: dict, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict holding NaN or Inf."""
    import torch

    bad = []
    for key, value in tensors.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            bad += non_finite(value, name + ".")
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and \
                not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def check_finite(tensors: dict, what: str) -> None:
    """One ``UnsafeFileError`` line when weights hold NaN or Inf (a diverged run's file): every
    tool says so instead of failing later with a meaningless error."""
    bad = non_finite(tensors)
    if bad:
        raise UnsafeFileError(f"{what} holds NaN or Inf in {len(bad)} tensor(s) (first: {bad[0]}): "
                              f"the run that wrote it diverged; use an earlier checkpoint or "
                              f"retrain with a lower lr")
