"""Several checkpoints side by side: ``tools/run_all.py --compare LABEL=CKPT ...`` (#15 item 4).

Each compared checkpoint has its own folder under the run folder (``compare/<name>-<sha8>/``,
holding ``export/``, ``probe/`` and ``det/`` exactly as a single-checkpoint run does), read by
``summary.collect``: this module reads, never recomputes. The report shows one table per
measure (a probe dataset, a detection engine and task) with one row per width and one column
per checkpoint, headed by its label, in the order given; a checkpoint without a value at a
width (a fixed-width import at any width but its own, a width outside its trained range, a
network that cannot go to detectors) shows '–'. The plots draw each checkpoint as its own
series, one panel per measure, against width and against that checkpoint's own MACs.

An entry (as ``tools/run_all.py`` writes it to ``compare/compare.json``)::

    {"label": "US3L (ours)", "folder": "compare/checkpoint-1a2b3c4d", "checkpoint": "/abs/ckpt.pth",
     "sha256": "...", "arch": "resnet18", "stem": "imagenet", "width_range": [0.25, 1.0],
     "origin": "tools/pretrain.py (us3l, iteration 6)"}
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pretrain.safe_io import read_json  # noqa: E402
from transfer.report import labels as L  # noqa: E402
from transfer.report.summary import save_figure, style_axes  # noqa: E402
from transfer.report.tables import SHORT, human  # noqa: E402

MANIFEST = "compare.json"


def _cell(text: object) -> str:
    """A table cell: never a '|' (it would split the row) nor a line break."""
    return " ".join(str(text).split()).replace("|", "¦")


def _first_meta(folder: Path) -> dict:
    from transfer.report.summary import _found
    for path in _found(folder / "export", "w*/meta.json"):
        meta = read_json(path, "export meta")
        if isinstance(meta, dict):
            return meta
    return {}


def collect_compare(out: str | os.PathLike, entries: list[dict]) -> dict:
    """Every compared checkpoint's ``summary.collect`` data under its label, the measures (table
    columns of a single run) in the usual order, and the union of widths, widest first."""
    from transfer.report.summary import _columns, collect
    out = Path(out)
    rows = []
    for entry in entries:
        folder = out / entry["folder"]
        data = collect(folder)
        meta = _first_meta(folder)
        label = entry.get("label") or L.meta_label(meta) or L.sha_label(entry.get("sha256"))
        calibration = (meta.get("calibration") or {}).get("data") if isinstance(
            meta.get("calibration"), dict) else None
        rows.append({"entry": entry, "label": label, "data": data, "calibration": calibration})
    measures = []
    for row in rows:
        measures += [c for c in _columns(row["data"]) if c not in measures]
    measures = sorted(c for c in measures if c.startswith("probe:")) + \
        sorted(c for c in measures if c.startswith("det:"))
    widths = sorted({w for row in rows for w in row["data"]["widths"]}, reverse=True)
    return {"entries": rows, "measures": measures, "widths": widths}


def _value(row: dict, width: float, col: str):
    return row["data"]["widths"].get(width, {}).get(col)


def measure_table(cmp: dict, col: str) -> str:
    """``| Width | LABEL1 | LABEL2 | ...`` for one measure; widths where no checkpoint has a value
    are left out."""
    header = ["Width"] + [_cell(r["label"]) for r in cmp["entries"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for w in cmp["widths"]:
        values = [_value(r, w, col) for r in cmp["entries"]]
        if all(v is None for v in values):
            continue
        cells = [f"{w:g}x"] + ["–" if v is None else f"{v:.1f}" for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def costs_table(cmp: dict) -> str:
    """Params / MACs at 224 px of each checkpoint's network at each width it was exported at."""
    header = ["Width"] + [_cell(r["label"]) for r in cmp["entries"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for w in cmp["widths"]:
        cells = []
        for r in cmp["entries"]:
            row = r["data"]["widths"].get(w, {})
            known = row.get("params") is not None or row.get("macs") is not None
            cells.append(f"{human(row.get('params'))} / {human(row.get('macs'))}" if known
                         else "–")
        if all(c == "–" for c in cells):
            continue
        lines.append("| " + " | ".join([f"{w:g}x"] + cells) + " |")
    return "\n".join(lines) + "\n"


def _range_text(entry: dict) -> str:
    low, high = (float(v) for v in entry.get("width_range") or (math.nan, math.nan))
    return f"{low:g} (fixed)" if low == high else f"{low:g}..{high:g}"


def checkpoints_table(cmp: dict) -> str:
    header = ["Label", "Network", "Trained widths", "Evaluated widths", "Source", "sha256",
              "BN calibration", "Checkpoint"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in cmp["entries"]:
        e = r["entry"]
        evaluated = " ".join(f"{w:g}" for w in sorted(r["data"]["widths"])) or "–"
        cells = [r["label"], f"{e.get('arch', '?')} ({e.get('stem', '?')} stem)", _range_text(e),
                 evaluated, e.get("origin", "?"), (e.get("sha256") or "?")[:12],
                 r["calibration"] or "–", e.get("checkpoint", "?")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_compare(cmp: dict, x_key: str, xlabel: str, path: Path) -> Path | None:
    """One panel per measure, one series per checkpoint (its own colour in every panel)."""
    from transfer.report.summary import _label
    panels = []
    for col in cmp["measures"]:
        series = []
        for i, r in enumerate(cmp["entries"]):
            pts = []
            for w, row in r["data"]["widths"].items():
                x = w if x_key == "width" else row.get(x_key)
                if row.get(col) is not None and x:
                    pts.append((x, row[col]))
            if pts:
                series.append((i, r["label"], sorted(pts)))
        if series:
            panels.append((col, series))
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (col, series) in zip(axes.flat, panels):
        for i, label, pts in series:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{i % 10}",
                    label=label)
        ax.set_title(_label(col), fontsize=9)
        style_axes(ax, xlabel, x_key)
    save_figure(fig, path, dpi=110)
    return path


def report_parts(out: Path, entries: list[dict]) -> tuple[list[str], list[Path], dict]:
    """The Markdown lines of the side-by-side report, its plots, and the collected data."""
    from transfer.report.summary import _finite, _label
    cmp = collect_compare(out, entries)
    labels = [r["label"] for r in cmp["entries"]]
    plots = [p for p in (plot_compare(cmp, "width", "width multiplier",
                                      out / "accuracy_vs_width.png"),
                         plot_compare(cmp, "macs", "MACs at 224x224", out / "accuracy_vs_macs.png"))
             if p]
    parts = [f"{len(labels)} checkpoints side by side: " + " vs ".join(labels) + ".",
             "Each was converted (BN recalibrated at every width), linear-probed and, where the "
             "preset fine-tunes detectors and the network can go to them, fine-tuned at the "
             "preset's widths inside its own trained range; '–': not measured at that width.", "",
             "## Checkpoints", "", checkpoints_table(cmp)]
    for col in cmp["measures"]:
        unit = "linear probe, %" if col.startswith("probe:") else "AP, %"
        parts += [f"## {_label(col)} ({unit})", "", measure_table(cmp, col)]
    parts += ["## Params / MACs@224 of each network", "", costs_table(cmp)]
    probe = next((r["data"]["probe"] for r in cmp["entries"] if r["data"]["probe"]), None)
    if probe:
        names = probe.get("metrics") if isinstance(probe.get("metrics"), dict) else {}
        parts += ["Probe protocol: " + str(probe.get("protocol", "?")) + "; metrics: "
                  + ", ".join(f"{SHORT.get(k, k)} {v}" for k, v in names.items()), ""]
    det_lines = []
    for r in cmp["entries"]:
        for run in r["data"]["det"]:
            keys = [k for k in ("AP", "AP50", "AP75", "APm", "APm50", "APm75")
                    if _finite(run.get(k)) is not None]
            det_lines.append(f"- {r['label']}: {run['engine']} {run['task']} at "
                             f"{float(run['width']):g}x: "
                             + ", ".join(f"{k} {run[k]:.1f}" for k in keys))
    if det_lines:
        parts += det_lines + [""]
        if (out / "compare" / "det-report" / "detection_results.md").is_file():
            parts += ["Every detection metric, grouped by checkpoint: "
                      "`compare/det-report/detection_results.md` (tools/collect_results.py).", ""]
    return parts, plots, cmp


def tables_text(cmp: dict) -> str:
    """The measure tables for the terminal."""
    from transfer.report.summary import _label
    return "\n".join(f"{_label(col)}\n{measure_table(cmp, col)}" for col in cmp["measures"])

