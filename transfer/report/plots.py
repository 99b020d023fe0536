"""Accuracy against width and against MACs, one line per dataset (matplotlib, Agg backend)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pretrain.safe_io import atomic_write  # noqa: E402
from transfer.report.tables import SHORT  # noqa: E402


def _plot(results: dict, x_key: str, xlabel: str, path: Path, log_x: bool = False) -> Path | None:
    rows = sorted((r for r in results["rows"] if r.get(x_key) is not None),
                  key=lambda r: r[x_key])
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in results["datasets"]:
        pts = [(r[x_key], r["datasets"][name]["value"]) for r in rows if name in r["datasets"]]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=SHORT.get(name, name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("linear probe accuracy (%)")
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{results.get('source', {}).get('model', {}).get('arch', '')} "
                 f"({results['protocol']})")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def accuracy_plots(results: dict, out_dir: str | os.PathLike) -> list[Path]:
    """``acc_vs_width.png`` and ``acc_vs_macs.png`` in ``out_dir`` (the latter when MACs are known)."""
    out_dir = Path(out_dir)
    written = [_plot(results, "width", "width multiplier", out_dir / "acc_vs_width.png"),
               _plot(results, "macs", "MACs", out_dir / "acc_vs_macs.png", log_x=True)]
    return [p for p in written if p is not None]
