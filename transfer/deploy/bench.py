"""tools/bench_widths.py: measure every exported width on this machine and write latency.json.

For each published ``EXPORT_DIR/w*`` folder and each backend it holds (torch eager from
torchvision.pth; onnxruntime from model.onnx), on the CPU and, when present, on CUDA: latency
at batch 1 and at ``--batch`` (warm-up, then median and p90 over ``--reps`` calls, progress bar),
throughput, and peak memory (memory.py: a fresh process per width and backend; on CUDA
torch.cuda.max_memory_allocated). Threads are set explicitly (``--threads``) and recorded.
Writes ``latency.json`` beside each meta.json (atomically), ``EXPORT_DIR/latency.md`` (the
table) and, where probe or detection results exist (``--results``, default the run folder
above EXPORT_DIR), ``EXPORT_DIR/pareto.png``.

Bad input (no such folder, no width exports, a meta.json or latency.json that is not one, a
CUDA backend asked for on a machine without CUDA): one line, exit 2, nothing written.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

from pretrain import cli, safe_io
from pretrain.safe_io import UnsafeFileError, atomic_write
from transfer.deploy import exports, latency, memory, pareto, results
from transfer.export import meta as meta_mod

PROG = "bench_widths.py"
DEFAULT_BATCH = 8      # a small server batch; batch 1 (a single request) is always measured too
DEFAULT_REPS = 50      # p90 of 50 calls: 5 calls above it, stable to a few % on an idle CPU
DEFAULT_WARMUP = 10


class BenchError(ValueError):
    """Bad input (one line, exit 2)."""


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] + " Exit status: 0 "
                           "done, 2 bad input (nothing written).")
    p.add_argument("export_dir", help="folder written by tools/convert_width.py")
    p.add_argument("--batch", type=cli.int_at_least(1), default=DEFAULT_BATCH,
                   help=f"the batch measured besides batch 1 ({DEFAULT_BATCH})")
    add_measure_options(p)
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory measurement (a fresh process per width/backend)")
    p.add_argument("--results", default=None,
                   help="run folder with probe/results.json or det/*/metrics.json for the Pareto "
                        "plot (default: the folder above EXPORT_DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def add_measure_options(p: cli.ArgumentParser) -> None:
    """Options shared with tools/pick_width.py."""
    p.add_argument("--threads", type=cli.int_at_least(1), default=default_threads(),
                   help="CPU threads for torch and onnxruntime (default: the CPUs this process "
                        "may use)")
    p.add_argument("--reps", type=cli.int_at_least(3), default=DEFAULT_REPS,
                   help=f"timed calls per width, backend and batch ({DEFAULT_REPS})")
    p.add_argument("--warmup", type=cli.int_at_least(0), default=DEFAULT_WARMUP,
                   help=f"untimed calls first ({DEFAULT_WARMUP})")
    p.add_argument("--cpu-only", action="store_true", help="do not measure CUDA even if present")


def machine(threads: int) -> dict:
    """What the figures depend on, recorded with them."""
    out = {"platform": platform.platform(), "processor": platform.processor() or None,
           "cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__,
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        out["onnxruntime"] = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        out["onnxruntime"] = None
    return out


def devices(cpu_only: bool) -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available()
                                    and not cpu_only else [])


def backend_key(backend: str, device: torch.device) -> str:
    """``torch``/``onnxruntime`` on the CPU, ``torch-cuda``/``onnxruntime-cuda`` on a GPU."""
    return backend if device.type == "cpu" else f"{backend}-{device.type}"


def measure_width(folder: Path, meta: dict, batches: list[int], args, backends=None,
                  on=None) -> dict:
    """The latency record of one width folder (every backend it holds, or ``backends``; every
    device, or those in ``on``)."""
    record = {"width": float(meta["width"]), "input_size": exports.input_size(meta),
              "machine": machine(args.threads), "backends": {}}
    for backend in backends or exports.backends_of(folder, meta):
        for device in on or devices(args.cpu_only):
            if backend == "onnxruntime" and device.type == "cuda":
                import onnxruntime as ort
                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    continue
            entry = latency.measure(folder, meta, backend, batches, args.threads, device,
                                    args.warmup, args.reps, progress=not args.quiet)
            if not args.no_memory and device.type == "cpu" and memory.available():
                entry["peak_memory_mb"] = memory.measure(folder, backend, args.threads, device,
                                                         batches)
                entry["memory_method"] = memory.METHOD
            record["backends"][backend_key(backend, device)] = entry
    return record


def write_latency(folder: Path, record: dict) -> Path:
    text = json.dumps(record, indent=2) + "\n"
    return atomic_write(folder / exports.LATENCY_NAME, lambda tmp: Path(tmp).write_text(text))


def latency_table(records: list[dict], batches: list[int]) -> str:
    head = ["width", "backend", "threads"]
    for b in batches:
        head += [f"b{b} median ms", f"b{b} p90 ms", f"b{b} img/s", f"b{b} peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rec in records:
        for name, entry in rec["backends"].items():
            cells = [f"{rec['width']:g}", f"{name} ({entry['device']})", str(entry["threads"])]
            for b in batches:
                f = [results.figure(rec, name, b, k)
                     for k in ("median_ms", "p90_ms", "throughput_ips", "peak_memory_mb")]
                cells += ["–" if v is None else f"{v:.{d}f}" for v, d in zip(f, (2, 2, 1, 0))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pareto_rows(records: list[dict], run_folder, batch: int = 1) -> list[dict]:
    """Rows {width, accuracy, latency_ms, label} for every metric with results and the first
    backend measured (onnxruntime preferred), at ``batch``."""
    rows = []
    names = [n for rec in records for n in rec["backends"]]
    backend = "onnxruntime" if "onnxruntime" in names else (names[0] if names else None)
    for metric in results.METRICS:
        known, _ = results.accuracy_by_width(run_folder, metric)
        for rec in records:
            acc, lat = known.get(rec["width"]), results.figure(rec, backend, batch)
            if acc is not None and lat is not None:
                rows.append({"width": rec["width"], "accuracy": acc, "latency_ms": lat,
                             "label": f"{metric}, {backend} b{batch}"})
    return rows


def prepare(args) -> list[tuple[Path, dict]]:
    export_dir = Path(args.export_dir)
    if not export_dir.is_dir():
        raise BenchError(f"{export_dir} is not a folder; pass the --out folder of "
                         f"tools/convert_width.py")
    found = [(f, exports.read_meta(f)) for f in exports.width_folders(export_dir)]
    found = [(f, m) for f, m in found if exports.backends_of(f, m)]
    if not found:
        raise BenchError(f"{export_dir} holds no width export with torchvision.pth or model.onnx; "
                         f"run tools/convert_width.py --out {export_dir} first")
    for f, _ in found:
        results.read_latency(f)  # an unreadable old record is reported before anything runs
    if args.results is not None and not Path(args.results).is_dir():
        raise BenchError(f"--results {args.results} is not a folder; pass a run folder")
    return found


def run(argv=None) -> int:
    args = parser().parse_args(argv)
    widths = prepare(args)
    torch.set_num_threads(args.threads)
    batches = sorted({1, args.batch})
    records = []
    for folder, meta in widths:
        record = measure_width(folder, meta, batches, args)
        write_latency(folder, record)
        records.append(record)
        if not args.quiet:
            print(f"{folder.name}: measured {', '.join(record['backends'])}", flush=True)
    export_dir = Path(args.export_dir)
    text = (f"# Latency per width ({export_dir})\n\n{len(widths)} widths, {args.threads} "
            f"threads, {args.warmup} warm-up + {args.reps} timed calls; peak memory: "
            f"{'not measured' if args.no_memory else memory.METHOD}\n\n"
            + latency_table(records, batches))
    atomic_write(export_dir / "latency.md", lambda tmp: Path(tmp).write_text(text))
    print(latency_table(records, batches), end="")
    run_folder = Path(args.results) if args.results else export_dir.resolve().parent
    plot = pareto.plot_pareto(pareto_rows(records, run_folder), export_dir / "pareto.png",
                              f"accuracy vs latency ({args.threads} threads)")
    print(f"wrote latency.json in {len(records)} width folder(s) and latency.md"
          + (f", {plot.name}" if plot else " (no probe/detection results: no Pareto plot)")
          + f" to {export_dir}")
    return 0


BAD_INPUT = (UnsafeFileError, meta_mod.MetaError, safe_io.UnsafeFileError)


def run_reporting(run_fn, argv, prog: str, bad_input: tuple) -> int:
    """``run_fn(argv)`` with argparse's exit and ``bad_input`` errors as one line, exit 2 (the
    deploy tools' ``main``; ``__main__`` wraps it in ``cli.run`` for signals and full disks)."""
    try:
        return run_fn(argv)
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 2)
    except bad_input as err:
        print(f"{prog}: error: {cli.one_line(err)}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT


def main(argv=None) -> int:
    return run_reporting(run, argv, PROG, (BenchError,) + BAD_INPUT)
