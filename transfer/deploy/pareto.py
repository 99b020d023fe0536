"""The accuracy-vs-latency Pareto plot (for tools/bench_widths.py and the run_all report).

``plot_pareto(rows, path)`` takes rows {width, accuracy, latency_ms, label} (label: the series,
e.g. "C-100 acc, onnxruntime b1"), draws every width as a point labelled with its width and the
Pareto front (no other width is both faster and at least as accurate) as a line per series.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pareto_front(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both axes (lower latency and higher-or-equal accuracy),
    fastest first."""
    front, best = [], float("-inf")
    for row in sorted(rows, key=lambda r: (r["latency_ms"], -r["accuracy"])):
        if row["accuracy"] > best:
            front.append(row)
            best = row["accuracy"]
    return front


def plot_pareto(rows: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Write the plot to ``path`` (PNG, atomically); None when no row has both figures."""
    from transfer.report.summary import save_figure  # here: the report may import this module
    series = defaultdict(list)
    for row in rows:
        if row.get("accuracy") is not None and row.get("latency_ms") is not None:
            series[row.get("label") or ""].append(row)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in sorted(series.items()):
        dots = ax.scatter([p["latency_ms"] for p in pts], [p["accuracy"] for p in pts], s=18)
        front = pareto_front(pts)
        ax.plot([p["latency_ms"] for p in front], [p["accuracy"] for p in front],
                color=dots.get_facecolor()[0], label=label or None)
        for p in pts:
            ax.annotate(f"{p['width']:g}x", (p["latency_ms"], p["accuracy"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("latency (ms, median, this machine)")
    ax.set_ylabel("accuracy / AP (%)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if any(series):
        ax.legend(fontsize=7)
    save_figure(fig, Path(path))
    return Path(path)
