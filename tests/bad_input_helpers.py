"""What every bad-input case asserts, in one place (tests/test_bad_inputs_*.py).

The promise (pretrain/cli.py): one line on stderr naming the problem, the documented exit status,
no traceback, and the output folder unchanged (or still absent). In-process cases call a tool's
``main`` through ``pretrain.cli.run`` exactly as its ``__main__`` does (an exception escaping it
is the traceback a user would see); subprocess cases run the real command line.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from pretrain import cli

ROOT = Path(__file__).resolve().parents[1]


def interruptible() -> None:
    """``preexec_fn`` for a child the test interrupts with SIGINT: a shell starts background jobs
    with SIGINT ignored, and a Python started so never turns SIGINT into KeyboardInterrupt, so
    a suite run from a background job would not test the interrupt at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def snapshot(folder: str | os.PathLike | None) -> dict | None:
    """Every entry under ``folder`` (relative path -> size, mtime), or None when it is absent."""
    if folder is None:
        return None
    folder = Path(folder)
    if not folder.exists():
        return None
    if folder.is_file():
        st = folder.stat()
        return {".": (st.st_size, st.st_mtime_ns)}
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (None if p.is_dir() else st.st_size,
                                           None if p.is_dir() else st.st_mtime_ns)
    return out


def check_one_line(stderr: str, code: int, want_code: int, must_mention: Sequence[str] = ()) -> str:
    """The shared assertion on a finished call: status, one line, no traceback, key words."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == want_code, f"exit {code}, expected {want_code}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    for word in must_mention:
        assert word.lower() in lines[0].lower(), f"{word!r} not in: {lines[0]}"
    return lines[0]


def call_main(main: Callable, argv: Sequence[str], prog: str, capsys,
              want_code: int = cli.EXIT_BAD_INPUT, must_mention: Sequence[str] = (),
              unchanged: str | os.PathLike | None = None) -> str:
    """Run ``main(argv)`` as the tool's ``__main__`` does; assert the promise; return the line."""
    before = snapshot(unchanged)
    capsys.readouterr()
    try:
        code = cli.run(main, prog, list(argv))
    except SystemExit as err:  # argparse
        code = err.code if isinstance(err.code, int) else 1
    err = capsys.readouterr().err
    line = check_one_line(err, code, want_code, must_mention)
    if unchanged is not None:
        assert snapshot(unchanged) == before, f"{unchanged} changed: {line}"
    return line


def run_cmd(cmd: Sequence[str], want_code: int = cli.EXIT_BAD_INPUT,
            must_mention: Sequence[str] = (), unchanged: str | os.PathLike | None = None,
            env: dict | None = None, timeout: float = 300, cwd: str | os.PathLike = ROOT) -> str:
    """Run a real command line; assert the promise; return the stderr line."""
    before = snapshot(unchanged)
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)
    line = check_one_line(proc.stderr, proc.returncode, want_code, must_mention)
    if unchanged is not None:
        assert snapshot(unchanged) == before, f"{unchanged} changed: {line}"
    return line


PYTHON = sys.executable
