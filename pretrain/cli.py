"""The one owner of how every command line in the suite meets bad input, signals and full disks.

Why one module: a user who mistypes an option, presses Ctrl-C or fills a disk must get the same
thing from every tool: one line naming the problem and the fix, a documented exit status, no
traceback, nothing half-written. So:

* ``ArgumentParser``: argparse whose errors are one line (``PROG: error: MSG (see PROG --help)``)
  instead of a usage block, exit 2;
* typed argument checkers (``int_at_least``, ``finite_float``, ``float_in`` ...) so a range is
  checked where the option is declared, not scattered through the code;
* ``run``: calls a tool's ``main`` with SIGTERM turned into ``Interrupted`` (a ``KeyboardInterrupt``,
  so every ``finally``/``except BaseException`` cleanup runs, like Ctrl-C), then prints one line
  for an interrupt or a write failure (``WriteError``, an ``OSError`` such as ENOSPC/EACCES/EROFS).

Exit statuses (every tool): 0 done; 1 a step failed after others finished (converter: a width's
verification); 2 bad input (nothing written); 3 training diverged (a non-finite loss; the last good
checkpoint is kept); 130 interrupted by SIGINT; 143 terminated by SIGTERM.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import sys
import warnings
from typing import Callable, Sequence

EXIT_OK, EXIT_STEP_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM

# OSError numbers that mean "this path cannot be written/read as asked": one line, not a traceback
PATH_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
               errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.EFBIG}


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) arrived: unwinds like Ctrl-C so every cleanup runs."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class WriteError(OSError):
    """Writing PATH failed (full disk, read-only or missing folder, a file where a folder is
    expected): the message names the path and the reason in one line."""

    def __str__(self) -> str:
        return str(self.strerror)


def one_line(text: object, limit: int = 300) -> str:
    """``text`` squeezed onto one line (engines' messages often span several)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# ------------------------------------------------------------------------------ argument parsing
class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: MSG (see PROG --help)``, exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)} "
                                  f"(see {self.prog} --help)\n")


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer >= ``low`` (argparse ``type=``)."""
    def parse(text: str) -> int:
        value = _number(text, int, "an integer")
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def finite_float(text: str) -> float:
    """A finite float (no nan/inf)."""
    return _number(text, float, "a number")


def float_in(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high] (or (low, high] with ``low_open``)."""
    def parse(text: str) -> float:
        value = _number(text, float, "a number")
        if value < low or value > high or (low_open and value == low):
            lo = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{value:g} is outside {lo}{low:g}, {high:g}]")
        return value
    parse.__name__ = f"number in [{low:g}, {high:g}]"
    return parse


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = _number(text, float, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be > 0")
    return value


def nonnegative_float(text: str) -> float:
    """A finite float >= 0."""
    value = _number(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be >= 0")
    return value


# ------------------------------------------------------------------------------ write failures
def write_error(path: object, err: BaseException) -> WriteError:
    """A ``WriteError`` naming ``path`` for an ``OSError`` (or torch's RuntimeError on a full
    disk, which says "unexpected pos" / "file write failed" instead of ENOSPC)."""
    if isinstance(err, OSError) and err.errno is not None:
        reason = os.strerror(err.errno)
        code = err.errno
    else:
        code = errno.ENOSPC if _disk_full(path) else errno.EIO
        reason = os.strerror(code) if code == errno.ENOSPC else f"write failed ({one_line(err, 120)})"
    hint = {errno.ENOSPC: "free space or pass another output folder",
            errno.EDQUOT: "free space or pass another output folder",
            errno.EACCES: "pass a folder you can write", errno.EPERM: "pass a folder you can write",
            errno.EROFS: "pass a folder on a writable disk",
            errno.ENOTDIR: "a parent of it is a file, not a folder; pass another path",
            errno.EEXIST: "a parent of it is a file, not a folder; pass another path"}.get(
                code, "check the path")
    return WriteError(code, f"cannot write {path}: {reason}; {hint}")


def _disk_full(path: object) -> bool:
    import shutil
    folder = os.path.dirname(os.path.abspath(str(path))) or "."
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def is_write_failure(err: BaseException) -> bool:
    """An error that means a path could not be written (see ``write_error``)."""
    if isinstance(err, WriteError):
        return True
    if isinstance(err, OSError):
        return err.errno in PATH_ERRNOS
    text = str(err)
    return isinstance(err, RuntimeError) and ("unexpected pos" in text or
                                              "file write failed" in text or
                                              "PytorchStreamWriter failed" in text)


# ------------------------------------------------------------------------------ running a tool
def _raise_interrupted(signum, _frame):
    raise Interrupted(signum)


def _default_sigterm_in_child() -> None:
    """A forked worker (DataLoader, an evaluator's pool) must die on SIGTERM as usual: the parent
    stops its workers with SIGTERM, and ``Interrupted`` raised there would hang the pool."""
    if signal.getsignal(signal.SIGTERM) is _raise_interrupted:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_FORK_HOOK = []


def _install_fork_hook() -> None:
    if not _FORK_HOOK and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_default_sigterm_in_child)
        _FORK_HOOK.append(True)


def quiet_library_warnings() -> None:
    """Library warnings that would break the one-line rule and tell the user nothing actionable."""
    warnings.filterwarnings("ignore", message=r".*weights_only.*")
    warnings.filterwarnings("ignore", message=r".*pickle.*protocol.*")
    # the engines' import-time deprecations (torch.jit.script in mmcv/detectron2): not the user's
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def run(main: Callable[[Sequence[str] | None], int], prog: str,
        argv: Sequence[str] | None = None) -> int:
    """``main(argv)`` with SIGTERM as ``Interrupted``, and one line for interrupts and write
    failures (exit 130/143/2). Everything else a tool reports itself."""
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
        _install_fork_hook()
    except ValueError:  # not the main thread (tests calling main in a thread): leave it
        pass
    quiet_library_warnings()
    try:
        return main(argv)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        print(f"{prog}: interrupted by {name}; unfinished output was removed, finished output "
              f"kept", file=sys.stderr)
        return 128 + int(signum)
    except BrokenPipeError:  # `tool | head`: nothing to report
        return EXIT_OK
    except (OSError, RuntimeError) as err:
        if not is_write_failure(err):
            raise
        msg = str(err) if isinstance(err, WriteError) else \
            str(write_error(getattr(err, "filename", None) or "output", err))
        print(f"{prog}: error: {one_line(msg)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
