"""The end-to-end report: one page per run folder, from the artefacts the steps wrote.

It reads, never recomputes: ``export/w*/meta.json`` (params, MACs), ``probe/results.json``
(linear-probe accuracy), ``det/*/metrics.json`` (AP per engine and task) and the pretraining
logs (``pretrain/widths.csv``: loss and embedding std per sampled width). It writes
``report.md``, ``report.html`` and PNG plots next to them. Reading is safe: plain JSON only,
hidden and temporary entries (a killed writer's) skipped, NaN shown as '–', and a file that is
not what it should be is one ``UnsafeFileError`` line naming it.
"""
from __future__ import annotations

import csv
import html
import math
import os
import shlex
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pretrain.safe_io import UnsafeFileError, atomic_write, published, read_json  # noqa: E402
from transfer.report.tables import SHORT, human  # noqa: E402


def _load_json(path: Path, what: str):
    """Parsed JSON (plain data only), None when absent, or one ``UnsafeFileError`` line."""
    return read_json(path, what) if path.is_file() else None


def _finite(value):
    """A finite number, else None (shown as '–'; a NaN never reaches a table or a plot)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def _found(folder: Path, pattern: str) -> list[Path]:
    """``folder.glob(pattern)`` without hidden or temporary entries (a killed writer's)."""
    if not folder.is_dir():
        return []
    found = sorted(folder.glob(pattern))
    keep = {folder / p for p in published(f.relative_to(folder) for f in found)}
    return [f for f in found if f in keep and f.is_file()]


def collect(out: Path) -> dict:
    """Everything the report shows, keyed by width. Hidden and temporary folders are skipped;
    a file that is not what it should be is one ``UnsafeFileError`` line naming it."""
    widths: dict[float, dict] = defaultdict(dict)
    for meta_path in _found(out / "export", "w*/meta.json"):
        meta = _load_json(meta_path, "export meta")
        try:
            w = float(meta["width"])
            widths[w]["params"] = _finite(meta.get("params"))
            widths[w]["macs"] = _finite(meta.get("macs_224"))
            widths[w]["channels"] = (meta.get("channel_plan") or {}).get("out")
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UnsafeFileError(f"export meta {meta_path} lacks a width or channel plan "
                                  f"({type(err).__name__}: {err})") from None
    probe = _load_json(out / "probe" / "results.json", "probe results")
    if probe is not None and not isinstance(probe, dict):
        raise UnsafeFileError(f"probe results {out / 'probe' / 'results.json'} do not hold a "
                              f"results record")
    if probe:
        try:
            for row in probe["rows"]:
                for name, entry in row["datasets"].items():
                    widths[float(row["width"])][f"probe:{name}"] = _finite(entry["value"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UnsafeFileError(f"probe results {out / 'probe' / 'results.json'} do not hold "
                                  f"rows of width and dataset values ({type(err).__name__}: "
                                  f"{err})") from None
    det_runs = []
    for metrics_path in _found(out / "det", "*/metrics.json"):
        m = _load_json(metrics_path, "detection metrics")
        try:
            key = f"det:{m['engine']}:{m['task']}"
            widths[float(m["width"])][key] = _finite(m.get("AP50") if m["task"] == "voc"
                                                     else m.get("AP"))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UnsafeFileError(f"detection metrics {metrics_path} lack engine, task or width "
                                  f"({type(err).__name__}: {err})") from None
        det_runs.append(m)
    return {"widths": dict(sorted(widths.items(), reverse=True)), "probe": probe, "det": det_runs}


def _columns(data: dict) -> list[str]:
    keys = {k for row in data["widths"].values() for k in row
            if k.startswith("probe:") or k.startswith("det:")}
    return sorted(k for k in keys if k.startswith("probe:")) + sorted(k for k in keys if k.startswith("det:"))


def _label(col: str) -> str:
    if col.startswith("probe:"):
        return f"{SHORT.get(col[6:], col[6:])} acc"
    _, engine, task = col.split(":")
    return f"{task.upper()} {'AP50' if task == 'voc' else 'box AP'} ({engine})"


def table(data: dict) -> str:
    cols = _columns(data)
    header = ["Width", "Channels (res2..res5)", "Params", "MACs@224"] + [_label(c) for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for w, row in data["widths"].items():
        cells = [f"{w:g}x", "/".join(map(str, row.get("channels") or [])) or "–",
                 human(row.get("params")), human(row.get("macs"))]
        cells += ["–" if row.get(c) is None else f"{row[c]:.1f}" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_vs(data: dict, x_key: str, xlabel: str, path: Path) -> Path | None:
    cols = _columns(data)
    series = {c: [(row[x_key] if x_key != "width" else w, row[c]) for w, row in data["widths"].items()
                  if row.get(c) is not None and (x_key == "width" or row.get(x_key))] for c in cols}
    series = {c: sorted(v) for c, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for c, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_label(c))
    style_axes(ax, xlabel, x_key)
    save_figure(fig, path)
    return path


def style_axes(ax, xlabel: str, x_key: str) -> None:
    """The report's plot style: accuracy/AP against width (linear) or MACs (log)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy / AP (%)")
    if x_key == "macs":
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """``fig`` as a PNG at ``path``, written atomically, then closed."""
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def plot_training_curves(out: Path, path: Path) -> Path | None:
    """Loss and embedding std of the base network and of the sandwich's min width over the run."""
    src = out / "pretrain" / "widths.csv"
    if not src.is_file():
        return None
    curves: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    try:
        with open(src, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("role") == "random":  # one point per random width: no curve to draw
                    continue
                label = f"{row['role']} {float(row['width']):g}x" if row.get("role") \
                    else row["width"]
                curves[label].append((int(row["iteration"]), float(row["loss"]),
                                      float(row["std"])))
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as err:
        raise UnsafeFileError(f"training log {src} is not a readable widths.csv "
                              f"({type(err).__name__}: {err})") from None
    if not curves:
        return None
    fig, (ax_loss, ax_std) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, pts in sorted(curves.items()):
        pts.sort()
        ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], label=label, lw=1)
        ax_std.plot([p[0] for p in pts], [p[2] for p in pts], label=label, lw=1)
    ax_loss.set_title("loss per sampled width")
    ax_std.set_title("std of L2-normalised embeddings (collapse -> 0)")
    for ax in (ax_loss, ax_std):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    ax_std.legend(fontsize=6, ncol=2)
    save_figure(fig, path)
    return path


def write_report(out: str | os.PathLike, preset_name: str, steps: list[dict], argv: list[str],
                 compare: list[dict] | None = None) -> Path:
    """``out/report.md`` (+ report.html and plots). ``compare``: the entries of
    ``tools/run_all.py --compare`` (see transfer/report/compare.py): the checkpoints side by side
    instead of the single checkpoint of ``out/export``."""
    out = Path(out)
    if compare is not None:
        return _write_compare_report(out, preset_name, steps, argv, compare)
    data = collect(out)
    plots = [p for p in (plot_vs(data, "width", "width multiplier", out / "accuracy_vs_width.png"),
                         plot_vs(data, "macs", "MACs at 224x224", out / "accuracy_vs_macs.png"),
                         plot_training_curves(out, out / "training_curves.png")) if p]
    config_path = out / "pretrain" / "config.yaml"
    parts = [f"# us3l report — preset `{preset_name}`", "",
             "One checkpoint, every width: linear-probe accuracy (%) and detection AP (%) per width.",
             "Detection numbers are per engine; the engines' schedules differ, so never compare "
             "them across engines.", "", table(data)]
    if data["probe"]:
        names = data["probe"].get("metrics")
        names = names if isinstance(names, dict) else {}
        parts += ["Probe protocol: " + str(data["probe"].get("protocol", "?")) + "; metrics: "
                  + ", ".join(f"{SHORT.get(k, k)} {v}" for k, v in names.items()),
                  ""]
    for run in data["det"]:
        keys = [k for k in ("AP", "AP50", "AP75", "APm", "APm50", "APm75")
                if _finite(run.get(k)) is not None]
        parts.append(f"- {run['engine']} {run['task']} at {float(run['width']):g}x: "
                     + ", ".join(f"{k} {run[k]:.1f}" for k in keys))
    if data["det"]:
        parts.append("")
    parts += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    parts += _how_produced(steps, argv)
    if config_path.is_file():
        parts += ["", "Pretraining config (`pretrain/config.yaml`):", "", "```yaml",
                  config_path.read_text().strip(), "```"]
    return _publish(out, parts)


def _how_produced(steps: list[dict], argv: list[str]) -> list[str]:
    parts = ["## How this was produced", "", "```", shlex.join(map(str, argv)), "```", "",
             "| step | seconds | command |", "|---|---|---|"]
    for rec in steps:
        secs = "skipped (up to date)" if rec.get("skipped") else f"{rec.get('seconds', 0):.0f}"
        command = str(rec["command"]).replace("|", "¦")  # a '|' would split the table row
        parts.append(f"| {rec['name']} | {secs} | `{command}` |")
    return parts


def _publish(out: Path, parts: list[str]) -> Path:
    text = "\n".join(parts) + "\n"
    report = out / "report.md"
    atomic_write(report, lambda tmp: Path(tmp).write_text(text))
    _write_html(out / "report.html", text)
    return report


def _write_compare_report(out: Path, preset_name: str, steps: list[dict], argv: list[str],
                          entries: list[dict]) -> Path:
    from transfer.report.compare import report_parts
    body, plots, _ = report_parts(out, entries)
    parts = [f"# us3l report — preset `{preset_name}`, checkpoints compared", "",
             "Linear-probe accuracy (%) and detection AP (%) per width, one column per checkpoint. "
             "Detection numbers are per engine; the engines' schedules differ, so never compare "
             "them across engines.", "", *body]
    parts += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    parts += _how_produced(steps, argv)
    return _publish(out, parts)


def _write_html(path: Path, markdown: str) -> None:
    """A minimal self-contained page: tables and images rendered, the rest preformatted."""
    body, in_code, in_table = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("![") and "](" in line:
            src = line[line.index("](") + 2:-1]
            body.append(f'<p><img src="{html.escape(src)}" style="max-width:100%"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    page = ("<!doctype html><meta charset='utf-8'><title>us3l report</title><style>body{font-family:"
            "sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}td,th{border:"
            "1px solid #ccc;padding:3px 8px;text-align:right}pre{background:#f5f5f5;padding:1em;"
            "overflow:auto}</style>\n" + "\n".join(body))
    atomic_write(path, lambda tmp: Path(tmp).write_text(page))
