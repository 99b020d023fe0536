"""Timing one exported width on this machine: torch eager and onnxruntime, warm, median and p90.

Why it is done this way:
* threads are set explicitly (``torch.set_num_threads``; onnxruntime ``intra_op_num_threads``,
  ``inter_op_num_threads=1``) and recorded, because a latency without its thread count means
  nothing on a shared CPU;
* warm-up calls first (allocator, oneDNN/ORT kernel selection), then ``reps`` timed calls with
  ``time.perf_counter`` (CUDA: ``torch.cuda.synchronize`` around each call); median and p90 are
  reported, not the mean, so one preempted call does not move the figure;
* throughput = batch / median latency;
* peak memory is measured separately (``memory.py``: a fresh process per width and backend),
  since a process that has already run other widths keeps their allocator pools.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch

from transfer.deploy import exports

BACKENDS = ("torch", "onnxruntime")


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def onnx_session(path, threads: int, device: torch.device):
    """An onnxruntime session with an explicit thread count (CUDA provider when asked and
    installed, else CPU)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def runner(folder, meta: dict, backend: str, threads: int, device: torch.device
           ) -> Callable[[int], Callable[[], object]]:
    """A function batch -> a zero-argument call running the width once on a fixed input."""
    size = exports.input_size(meta)
    if backend == "torch":
        set_threads(threads)
        model = exports.torch_model(folder, meta).to(device)

        def make(batch: int):
            x = torch.randn(batch, 3, size, size, device=device)

            def call():
                with torch.inference_mode():
                    out = model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                return out
            return call
        return make
    session = onnx_session(folder / exports.onnx_export.FILENAME, threads, device)
    name = session.get_inputs()[0].name

    def make(batch: int):
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
        return lambda: session.run(None, {name: x})
    return make


def time_call(call: Callable[[], object], warmup: int, reps: int, desc: str = "",
              progress: bool = True) -> dict:
    """``warmup`` untimed calls, then ``reps`` timed ones: median, p90, min (ms)."""
    from tqdm import tqdm
    for _ in range(warmup):
        call()
    times = []
    for _ in tqdm(range(reps), desc=desc, unit="run", leave=False, disable=not progress or None):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    p90 = float(np.percentile(times, 90))
    return {"median_ms": statistics.median(times), "p90_ms": p90, "min_ms": min(times),
            "reps": reps, "warmup": warmup}


def measure(folder, meta: dict, backend: str, batches: list[int], threads: int,
            device: torch.device, warmup: int, reps: int, progress: bool = True) -> dict:
    """Latency and throughput of one width and backend at each batch size."""
    make = runner(folder, meta, backend, threads, device)
    if device.type == "cuda" and backend == "torch":
        torch.cuda.reset_peak_memory_stats(device)
    out = {"device": str(device), "threads": threads, "batches": {}}
    for batch in batches:
        stats = time_call(make(batch), warmup, reps,
                          desc=f"w{float(meta['width']):g} {backend} b{batch}", progress=progress)
        stats["throughput_ips"] = batch / (stats["median_ms"] / 1e3)
        out["batches"][str(batch)] = stats
    if device.type == "cuda" and backend == "torch":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["memory_method"] = "torch.cuda.max_memory_allocated (GPU tensors only)"
    return out
