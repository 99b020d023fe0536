"""Peak memory of one width and backend, measured in a fresh process.

Why a fresh process: a Python allocator (tracemalloc) does not see torch's or onnxruntime's
native buffers, and a process that already ran other widths keeps their pools. So the child
imports the libraries, reads its resident set size (``VmRSS``), loads the model, runs it at each
batch size (warm-up + a few calls) and reports the rise of the kernel's high-water mark
(``VmHWM``, reset to the current RSS through ``/proc/self/clear_refs`` first, minus the RSS
before loading) after each batch: model weights + activations + the
runtime's arenas, in MiB. On CUDA the torch backend's figure comes from
``torch.cuda.max_memory_allocated`` in the timing process instead (latency.py).

    python -m transfer.deploy.memory FOLDER BACKEND THREADS DEVICE BATCH [BATCH ...]

prints one JSON object {batch: MiB, ...}.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METHOD = ("process RSS high-water mark (VmHWM, reset before loading) minus the RSS before "
          "loading, in a fresh process per width and backend")
CALLS = 3  # after one warm-up call: the arenas reach their size on the first call


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Set VmHWM back to the current RSS (Linux >= 4.0, ``clear_refs`` value 5), so the imports'
    own peak does not hide the model's; without it the figure is an upper bound."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def available() -> bool:
    """Whether this system reports VmHWM (Linux)."""
    return Path("/proc/self/status").is_file()


def probe(folder: str, backend: str, threads: int, device: str, batches: list[int]) -> dict:
    """Runs in the child: the peak RSS rise per batch size (MiB)."""
    import torch

    from transfer.deploy import exports, latency
    folder_path = Path(folder)
    meta = exports.read_meta(folder_path)
    _reset_peak()
    base = _status_kib("VmRSS")
    make = latency.runner(folder_path, meta, backend, threads, torch.device(device))
    peaks = {}
    for batch in batches:
        call = make(batch)
        for _ in range(1 + CALLS):
            call()
        peaks[str(batch)] = (_status_kib("VmHWM") - base) / 1024
    return peaks


def measure(folder: Path, backend: str, threads: int, device, batches: list[int]) -> dict:
    """Start the child and return {batch: MiB}; raise RuntimeError with its last line on failure."""
    cmd = [sys.executable, "-m", "transfer.deploy.memory", str(folder), backend, str(threads),
           str(device), *map(str, batches)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe of {folder.name} ({backend}) failed: {last[:200]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    import warnings
    warnings.filterwarnings("ignore")
    path, backend_name, thread_count, device_name, *sizes = sys.argv[1:]
    print(json.dumps(probe(path, backend_name, int(thread_count), device_name,
                           [int(b) for b in sizes])))
