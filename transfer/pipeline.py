"""Resumable steps for the end-to-end job: a step re-runs only when its inputs changed.

Each step is a command line plus the files and settings it depends on. A finished step leaves
``<out>/.steps/<name>.json`` holding the fingerprint of its inputs and the command; a re-run
with the same fingerprint and all outputs present is skipped. A step that runs first loses its
old stamp (so a failed re-run never looks finished) and the folders it owns (``clean``: a
detection run folder belongs to one export). A failed step leaves no stamp, its log, and the
command's own partial output, which the next run replaces, and raises ``StepFailed`` (one line
naming the step, its exit status and its log). The pipeline calls the project's own CLIs as
subprocesses, so what it runs is exactly what a user would type (and is logged). A stamp that
cannot be read (a hand-edited or foreign file) counts as "not done": the step runs again.

While a step runs, its output goes line by line to its log (unbuffered: ``PYTHONUNBUFFERED=1``,
so ``tail -f OUT/logs/*.log`` follows it) and the lines that report progress (``progress_line``:
pretraining iteration/loss/ETA and kNN, conversion per width, probe per width and dataset,
detectron2's and mmdet's iteration/loss/ETA) are echoed to the console as ``[step] ...``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.safe_io import UnsafeFileError, atomic_write, read_json


# Lines worth a console line, from each tool's own output: (pattern, compact form).
_PROGRESS = [
    # pretrain/monitor.py, transfer/linear/runner.py: already compact, shown as they are
    (re.compile(r"^progress: (?P<text>.+)$"), "{text}"),
    # transfer/export/convert.py: one line per converted width ("w0.25: stem 16 | ... | params
    # 2.80M | MACs 0.15G@224 ...")
    (re.compile(r"^(?P<w>w\d+(?:\.\d+)?):.*?params (?P<params>\S+) \| MACs (?P<macs>\S+)"),
     "converted {w}: params {params}, MACs {macs}"),
    # detectron2's CommonMetricPrinter: "eta: 0:01:02  iter: 19  total_loss: 1.234 ..."
    (re.compile(r"(eta: (?P<eta>\S+)\s+)?iter: (?P<iter>\d+)\s+total_loss: (?P<loss>\S+)"),
     "iteration {iter_1}, loss {loss}, ETA {eta}"),
    # mmengine's LoggerHook: "Iter(train) [ 8/40]  ...  eta: 0:00:31 ... loss: 2.345 ..."
    (re.compile(r"Iter\(train\) \[\s*(?P<iter>\d+)/(?P<total>\d+)\].*?eta: (?P<eta>\S+)"
                r".*?\bloss: (?P<loss>\S+)"), "iteration {iter}/{total}, loss {loss}, ETA {eta}"),
]


def progress_line(line: str) -> str | None:
    """The compact console form of a tool's progress line, or None (not a progress line)."""
    for pattern, form in _PROGRESS:
        found = pattern.search(line)
        if found:
            fields = {k: (v if v is not None else "?") for k, v in found.groupdict().items()}
            if "iter" in fields and "total" not in fields:  # detectron2 counts from 0
                fields["iter_1"] = str(int(fields["iter"]) + 1)
            return form.format(**fields).replace(", ETA ?", "")  # the last iteration has none
    return None


class StepFailed(Exception):
    """A step exited non-zero or did not write its outputs (one line: step, status, log)."""


def output_folder_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be (or become) a folder this process writes into, or None: it, or a
    parent of it, is a regular file, or the nearest existing folder is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    existing = next((p for p in (path, *path.parents) if p.is_dir()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


@dataclass
class Step:
    name: str
    command: list[str]
    outputs: list[Path]
    inputs: list[Path] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    env: dict | None = None
    clean: list[Path] = field(default_factory=list)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps([self.command, self.settings], sort_keys=True,
                                           default=str).encode())
        for path in self.inputs:
            digest.update(str(path).encode())
            if Path(path).is_file():
                stat = Path(path).stat()
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]


class Pipeline:
    def __init__(self, out: Path, log=None):
        self.out = Path(out)
        self.state_dir = self.out / ".steps"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda line: print(line, flush=True))  # live, even into a pipe
        self.records: list[dict] = []

    def _stamp(self, step: Step) -> Path:
        return self.state_dir / f"{step.name}.json"

    def _read_stamp(self, step: Step) -> dict | None:
        try:
            record = read_json(self._stamp(step), "step stamp")
        except UnsafeFileError:
            return None
        return record if isinstance(record, dict) else None

    def is_done(self, step: Step) -> bool:
        stamp = self._stamp(step)
        if not stamp.is_file() or not all(Path(p).exists() for p in step.outputs):
            return False
        record = self._read_stamp(step)
        return record is not None and record.get("fingerprint") == step.fingerprint()

    def run(self, step: Step) -> dict:
        cmd_text = shlex.join(step.command)
        if self.is_done(step):
            record = dict(self._read_stamp(step) or {}) | {"skipped": True}
            self.log(f"[{step.name}] up to date, skipped  ({cmd_text})")
            self.records.append(record)
            return record
        self.log(f"[{step.name}] $ {cmd_text}")
        self._stamp(step).unlink(missing_ok=True)
        for folder in step.clean:
            if Path(folder).is_dir():
                shutil.rmtree(folder)
        start = time.time()
        logfile = self.out / "logs" / f"{step.name}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        returncode = self._stream(step, logfile)
        seconds = round(time.time() - start, 1)
        if returncode != 0:
            tail = logfile.read_text().strip().splitlines()[-15:]
            self.log("\n".join(f"    {line}" for line in tail))
            raise StepFailed(f"step '{step.name}' failed (exit {returncode}) after "
                             f"{seconds}s; full log: {logfile}")
        missing = [str(p) for p in step.outputs if not Path(p).exists()]
        if missing:
            raise StepFailed(f"step '{step.name}' finished but did not write {missing}; full "
                             f"log: {logfile}")
        record = {"name": step.name, "command": cmd_text, "seconds": seconds,
                  "fingerprint": step.fingerprint(), "log": str(logfile), "skipped": False}
        atomic_write(self._stamp(step), lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
        self.log(f"[{step.name}] done in {seconds}s")
        self.records.append(record)
        return record

    def _stream(self, step: Step, logfile: Path) -> int:
        """Run ``step``: every output line into ``logfile`` as it comes (flushed), its progress
        lines to the console. Returns the exit status."""
        env = dict(step.env if step.env is not None else os.environ, PYTHONUNBUFFERED="1")
        with open(logfile, "w", buffering=1, errors="replace") as fh, \
                subprocess.Popen(step.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 env=env, text=True, errors="replace", bufsize=1) as proc:
            for raw in proc.stdout:
                for line in raw.rstrip("\n").split("\r"):  # a bar's redraws: one line each
                    if not line.strip():
                        continue
                    fh.write(line + "\n")
                    shown = progress_line(line)
                    if shown:
                        self.log(f"[{step.name}] {shown}")
            return proc.wait()


def python() -> str:
    return sys.executable
