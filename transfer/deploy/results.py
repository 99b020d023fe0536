"""Reading what the deploy tools and the transfer steps measured, per width.

* ``read_latency(width_folder)``: a width folder's latency.json (written by
  tools/bench_widths.py), or None when it has not been measured;
* ``figure(latency, backend, batch, key)``: one number out of it (None when absent);
* ``accuracy_by_width(run_folder, metric)``: the metric's value at each measured width, from the
  run folder's ``probe/results.json`` and ``det/*/metrics.json`` (read by
  transfer/report/summary.collect, as the report does);
* ``interpolate(known, width)``: linear in width between the two nearest measured widths, None
  outside the measured range (never extrapolated).
"""
from __future__ import annotations

import math
from pathlib import Path

from pretrain.safe_io import UnsafeFileError, read_json
from transfer.deploy.exports import LATENCY_NAME

# --metric names: probe datasets by their results.json name; detection by task and metric
DETECTION_METRICS = {"voc_ap50": "voc", "coco_ap": "coco"}  # summary.collect: VOC AP50, COCO AP
PROBE_METRICS = ("cifar10", "cifar100", "flowers102", "pets", "dtd", "digits")  # tables.SHORT
METRICS = PROBE_METRICS + tuple(DETECTION_METRICS)


def read_latency(width_folder: str | Path) -> dict | None:
    """The width folder's latency.json (plain JSON), or None when absent. A file that is not a
    latency record is one ``UnsafeFileError`` line."""
    path = Path(width_folder) / LATENCY_NAME
    if not path.is_file():
        return None
    data = read_json(path, "latency record")
    if not isinstance(data, dict) or not isinstance(data.get("backends"), dict):
        raise UnsafeFileError(f"latency record {path} has no backends; re-run "
                              f"tools/bench_widths.py")
    return data


def figure(latency: dict | None, backend: str, batch: int, key: str = "median_ms"):
    """``key`` (median_ms, p90_ms, throughput_ips, or peak_memory_mb) for one backend and batch."""
    entry = ((latency or {}).get("backends") or {}).get(backend) or {}
    if key == "peak_memory_mb":
        value = (entry.get("peak_memory_mb") or {}).get(str(batch))
    else:
        value = ((entry.get("batches") or {}).get(str(batch)) or {}).get(key)
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    return float(value) if ok else None


def metric_column(metric: str, columns) -> str | None:
    """The report column (``probe:NAME`` / ``det:ENGINE:TASK``) holding ``metric``."""
    if metric in DETECTION_METRICS:
        task = DETECTION_METRICS[metric]
        found = sorted(c for c in columns if c.startswith("det:") and c.endswith(":" + task))
        return found[0] if found else None
    return f"probe:{metric}" if f"probe:{metric}" in columns else None


def accuracy_by_width(run_folder: str | Path | None, metric: str) -> tuple[dict[float, float], str]:
    """{width: value} for ``metric`` in ``run_folder`` and where it came from ({} when none)."""
    from transfer.report.summary import collect
    if run_folder is None or not Path(run_folder).is_dir():
        return {}, "no results folder"
    data = collect(Path(run_folder))
    columns = {k for row in data["widths"].values() for k in row}
    column = metric_column(metric, columns)
    if column is None:
        return {}, f"no {metric} results in {run_folder}"
    known = {w: row[column] for w, row in data["widths"].items() if row.get(column) is not None}
    return known, f"{column} from {run_folder}"


def interpolate(known: dict[float, float], width: float) -> float | None:
    """Linear interpolation in width between measured widths; exact where measured."""
    if width in known:
        return known[width]
    below = [w for w in known if w < width]
    above = [w for w in known if w > width]
    if not below or not above:
        return None
    lo, hi = max(below), min(above)
    return known[lo] + (known[hi] - known[lo]) * (width - lo) / (hi - lo)
