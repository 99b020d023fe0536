"""The end-to-end report: one page per run folder, from the artefacts the steps wrote.

It reads, never recomputes: ``export/w*/meta.json`` (params, MACs), ``probe/results.json``
(linear-probe accuracy), ``det/*/metrics.json`` (AP per engine and task) and the pretraining
logs (``pretrain/widths.csv``: loss and embedding std per sampled width), and each baseline's
probe (``baselines/NAME/probe/results.json``: e.g. the random-init encoder at the same widths,
beside which the pretrained checkpoint's accuracy gets a column of differences). It writes
``report.md``, ``report.html`` and PNG plots next to them. Reading is safe: plain JSON only,
hidden and temporary entries (a killed writer's) skipped, NaN shown as '–', and a file that is
not what it should be is one ``UnsafeFileError`` line naming it. The page opens with the answer
(transfer/report/answer.py), names each dataset for what it is, and marks detection runs too
short to measure anything as smoke checks (in the table only, never in a plot).
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
from transfer.deploy.pareto import plot_pareto  # noqa: E402
from transfer.deploy.results import figure as latency_figure  # noqa: E402
from transfer.deploy.results import read_latency  # noqa: E402
from transfer.report import answer  # noqa: E402
from transfer.report.tables import SHORT, human  # noqa: E402

GROUP = " · "  # "DATASET · MEASURE": one header cell over the dataset's columns in the page


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


def _probe_values(path: Path) -> tuple[dict | None, dict[float, dict[str, float | None]]]:
    """A probe's results.json and its values: width -> dataset -> accuracy (None: not finite)."""
    probe = _load_json(path, "probe results")
    if probe is not None and not isinstance(probe, dict):
        raise UnsafeFileError(f"probe results {path} do not hold a results record")
    values: dict[float, dict] = defaultdict(dict)
    try:
        for row in (probe or {}).get("rows", []):
            for name, entry in row["datasets"].items():
                values[float(row["width"])][name] = _finite(entry["value"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UnsafeFileError(f"probe results {path} do not hold rows of width and dataset "
                              f"values ({type(err).__name__}: {err})") from None
    return probe, values


def collect(out: Path) -> dict:
    """Everything the report shows, keyed by width (columns ``probe:DATASET``,
    ``base:NAME:probe:DATASET``, ``delta:NAME:probe:DATASET`` = pretrained minus baseline, and
    ``det:ENGINE:TASK``), the probe record, the detection runs and the detection columns that are
    smoke checks. Hidden and temporary folders are skipped; a file that is not what it should be
    is one ``UnsafeFileError`` line naming it."""
    widths: dict[float, dict] = defaultdict(dict)
    for meta_path in _found(out / "export", "w*/meta.json"):
        meta = _load_json(meta_path, "export meta")
        try:
            w = float(meta["width"])
            widths[w]["params"] = _finite(meta.get("params"))
            widths[w]["macs"] = _finite(meta.get("macs_224"))
            widths[w]["channels"] = (meta.get("channel_plan") or {}).get("out")
            widths[w]["latency_ms"], widths[w]["latency_backend"] = _latency(meta_path.parent)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UnsafeFileError(f"export meta {meta_path} lacks a width or channel plan "
                                  f"({type(err).__name__}: {err})") from None
    probe, values = _probe_values(out / "probe" / "results.json")
    for w, by_name in values.items():
        for name, value in by_name.items():
            widths[w][f"probe:{name}"] = value
    baselines = []
    for path in _found(out / "baselines", "*/probe/results.json"):
        base = path.parent.parent.name
        baselines.append(base)
        for w, by_name in _probe_values(path)[1].items():
            for name, value in by_name.items():
                widths[w][f"base:{base}:probe:{name}"] = value
                mine = widths[w].get(f"probe:{name}")
                widths[w][f"delta:{base}:probe:{name}"] = \
                    None if value is None or mine is None else mine - value
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
    smoke = {f"det:{m['engine']}:{m['task']}" for m in det_runs if answer.is_smoke_check(m)}
    return {"widths": dict(sorted(widths.items(), reverse=True)), "probe": probe, "det": det_runs,
            "baselines": baselines, "smoke": smoke}


def _latency(width_folder: Path) -> tuple[float | None, str | None]:
    """Batch-1 median latency of the width on this machine (tools/bench_widths.py's latency.json)
    and its backend: onnxruntime where measured (what a deployment runs), else torch eager."""
    record = read_latency(width_folder)
    for backend in ("onnxruntime", "torch", "onnxruntime-cuda", "torch-cuda"):
        ms = latency_figure(record, backend, 1)
        if ms is not None:
            return ms, backend
    return None, None


def _columns(data: dict, headline: str | None = None) -> list[str]:
    """Table columns: each probe dataset (the headline first) followed by its baselines and their
    differences, then detection. A new measure (e.g. latency) is one more key in the rows and one
    more case in ``_label``."""
    keys = {k for row in data["widths"].values() for k in row}
    probes = sorted((k for k in keys if k.startswith("probe:")),
                    key=lambda k: (k != f"probe:{headline}", k))
    cols = []
    for col in probes:
        cols.append(col)
        for base in data.get("baselines", []):
            cols += [c for c in (f"base:{base}:{col}", f"delta:{base}:{col}") if c in keys]
    return cols + sorted(k for k in keys if k.startswith("det:"))


def _label(col: str, names: dict | None = None) -> str:
    """A column's header; ``names``: dataset -> what it really is (answer.dataset_label)."""
    kind, _, rest = col.partition(":")
    if kind in ("base", "delta"):
        base, _, probe_col = rest.partition(":")
        dataset = probe_col.partition(":")[2]
        name = (names or {}).get(dataset) or SHORT.get(dataset, dataset)
        return f"{name}{GROUP}" + (base if kind == "base" else f"Δ pretrained − {base}")
    if kind == "probe":
        return f"{names[rest]}{GROUP}pretrained" if names and rest in names else \
            f"{SHORT.get(rest, rest)} acc"
    _, engine, task = col.split(":")
    return f"{task.upper()} {'AP50' if task == 'voc' else 'box AP'} ({engine})"


def _cell(data: dict, col: str, value) -> str:
    if value is None:
        return "–"
    if col.startswith("delta:"):
        return f"{value:+.1f}"
    return f"{value:.1f}" + (f" ({answer.SMOKE})" if col in data.get("smoke", ()) else "")


def table(data: dict, names: dict | None = None, headline: str | None = None) -> str:
    cols = _columns(data, headline)
    timed = any(row.get("latency_ms") is not None for row in data["widths"].values())
    header = (["Width", "Channels (res2..res5)", "Params", "MACs@224"]
              + (["Latency b1, this machine"] if timed else []) + [_label(c, names) for c in cols])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for w, row in data["widths"].items():
        cells = [f"{w:g}x", "/".join(map(str, row.get("channels") or [])) or "–",
                 human(row.get("params")), human(row.get("macs"))]
        if timed:
            cells.append(f"{row['latency_ms']:.2f} ms ({row['latency_backend']})"
                         if row.get("latency_ms") is not None else "–")
        cells += [_cell(data, c, row.get(c)) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plotted_columns(data: dict) -> list[str]:
    """The measures a plot draws: never a difference column, never a smoke check."""
    return [c for c in _columns(data) if not c.startswith("delta:")
            and c not in data.get("smoke", ())]


def plot_vs(data: dict, x_key: str, xlabel: str, path: Path, names: dict | None = None
            ) -> Path | None:
    """Accuracy/AP against width or MACs: one line per measure, a baseline dashed in its
    dataset's colour; differences and smoke checks are not plotted."""
    cols = plotted_columns(data)
    series = {c: [(row[x_key] if x_key != "width" else w, row[c]) for w, row in data["widths"].items()
                  if row.get(c) is not None and (x_key == "width" or row.get(x_key))] for c in cols}
    series = {c: sorted(v) for c, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = {}
    for c, pts in series.items():
        own = c.split(":", 2)[2] if c.startswith("base:") else c
        colour = colours.setdefault(own, f"C{len(colours) % 10}")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour,
                linestyle="--" if c.startswith("base:") else "-", label=_label(c, names))
    if any(c.startswith("base:") for c in series):
        ax.set_title("solid: pretrained checkpoint, dashed: baseline at the same width", fontsize=9)
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
                 compare: list[dict] | None = None, context: dict | None = None) -> Path:
    """``out/report.md`` (+ report.html and plots). ``compare``: the entries of
    ``tools/run_all.py --compare`` (see transfer/report/compare.py): the checkpoints side by side
    instead of the single checkpoint of ``out/export``. ``context`` (tools/run_all.py):
    ``dataset_labels`` (dataset -> what it really is), ``headline`` (the dataset the answer is
    about), ``baseline`` (the baseline folder the answer compares with) and ``step_notes`` (step
    -> one sentence: what data and budget produced it)."""
    out = Path(out)
    if compare is not None:
        return _write_compare_report(out, preset_name, steps, argv, compare)
    context = context or {}
    names = context.get("dataset_labels")
    data = collect(out)
    probed = {c[6:] for row in data["widths"].values() for c in row if c.startswith("probe:")}
    headline = context.get("headline") if context.get("headline") in probed else \
        min(probed, default=None)
    baseline = context.get("baseline") if context.get("baseline") in data["baselines"] else \
        (data["baselines"] or [None])[0]
    plots = [p for p in (plot_vs(data, "width", "width multiplier", out / "accuracy_vs_width.png",
                                 names),
                         plot_vs(data, "macs", "MACs at 224x224", out / "accuracy_vs_macs.png",
                                 names),
                         plot_training_curves(out, out / "training_curves.png"),
                         plot_pareto(_pareto_rows(data, names), out / "accuracy_vs_latency.png",
                                     "accuracy vs batch-1 latency (this machine)")) if p]
    config_path = out / "pretrain" / "config.yaml"
    label = (names or {}).get(headline) or SHORT.get(headline, headline)
    parts = [f"# us3l report — preset `{preset_name}`", ""]
    if headline:
        parts += ["Answer: " + answer.opening(data["widths"], headline, label, baseline), ""]
    parts += ["One checkpoint, every width: linear-probe top-1 accuracy (%) and detection AP (%) "
              "per width" + (f", beside the {', '.join(data['baselines'])} baseline at the same "
                             f"width and the difference (points)" if data["baselines"] else "")
              + ". Detection numbers are per engine; the engines' schedules differ, so never "
              "compare them across engines.", ""]
    if data["smoke"]:
        parts += [f"Smoke check: a detection run that saw fewer than "
                  f"{answer.MIN_DET_IMAGES_SEEN} training images (iterations x batch; 100 "
                  f"iterations at batch 4 is the shortest run known to learn on these sets) only "
                  f"shows that the step works; its AP is marked '({answer.SMOKE})' and left out of "
                  f"the plots.", ""]
    parts += [table(data, names, headline)]
    if data["probe"]:
        metric_names = data["probe"].get("metrics")
        metric_names = metric_names if isinstance(metric_names, dict) else {}
        parts += ["Probe protocol: " + str(data["probe"].get("protocol", "?")) + "; metrics: "
                  + ", ".join(f"{(names or {}).get(k) or SHORT.get(k, k)} {v}"
                              for k, v in metric_names.items()), ""]
    for run in data["det"]:
        keys = [k for k in ("AP", "AP50", "AP75", "APm", "APm50", "APm75")
                if _finite(run.get(k)) is not None]
        seen = answer.images_seen(run)
        smoke = f" ({answer.SMOKE}: {seen if seen is not None else 'unknown'} images seen)" \
            if answer.is_smoke_check(run) else ""
        parts.append(f"- {run['engine']} {run['task']} at {float(run['width']):g}x: "
                     + ", ".join(f"{k} {run[k]:.1f}" for k in keys) + smoke)
    if data["det"]:
        parts.append("")
    parts += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    parts += _how_produced(steps, argv, context.get("step_notes"))
    if config_path.is_file():
        parts += ["", "Pretraining config (`pretrain/config.yaml`):", "", "```yaml",
                  config_path.read_text().strip(), "```"]
    return _publish(out, parts)


def _pareto_rows(data: dict, names: dict | None) -> list[dict]:
    """The checkpoint's plotted measures at every timed width (not the baselines' curves, never a
    difference or a smoke check)."""
    return [{"width": w, "accuracy": row[c], "latency_ms": row["latency_ms"],
             "label": f"{_label(c, names).replace(GROUP, ' ')}, {row['latency_backend']} b1"}
            for c in plotted_columns(data) if not c.startswith("base:")
            for w, row in data["widths"].items()
            if row.get(c) is not None and row.get("latency_ms") is not None]


def _how_produced(steps: list[dict], argv: list[str], notes: dict | None = None) -> list[str]:
    total = sum(rec.get("seconds", 0) for rec in steps if not rec.get("skipped"))
    parts = ["## How this was produced", "", "```", shlex.join(map(str, argv)), "```", "",
             f"Steps run this time: {total:.0f} s in all.", "",
             "| step | seconds | what (data, budget) | command |", "|---|---|---|---|"]
    for rec in steps:
        secs = "skipped (up to date)" if rec.get("skipped") else f"{rec.get('seconds', 0):.0f}"
        command = str(rec["command"]).replace("|", "¦")  # a '|' would split the table row
        what = str((notes or {}).get(rec["name"], "")).replace("|", "¦")
        parts.append(f"| {rec['name']} | {secs} | {what} | `{command}` |")
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


def _header_rows(cells: list[str]) -> str:
    """A table's header; where cells read "GROUP · SUB", a row of groups over a row of subs."""
    if not any(GROUP in c for c in cells):
        return "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>"
    top, sub = [], []
    for cell in cells:
        group, sep, rest = cell.partition(GROUP)
        if not sep:
            top.append([cell, 1, True])
        elif top and top[-1][0] == group and not top[-1][2]:
            top[-1][1] += 1
        else:
            top.append([group, 1, False])
        if sep:
            sub.append(rest)
    first = "".join(f"<th rowspan='2'>{html.escape(t)}</th>" if alone else
                    f"<th colspan='{n}' class='group'>{html.escape(t)}</th>" for t, n, alone in top)
    return (f"<tr>{first}</tr><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in sub)
            + "</tr>")


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
                body.append(_header_rows(cells))
            else:
                body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("![") and "](" in line:
            src = line[line.index("](") + 2:-1]
            body.append(f'<p><img src="{html.escape(src)}" style="max-width:100%"></p>')
        elif line.startswith("Answer: "):  # the page's first words: what the reader came for
            body.append(f"<p class='answer'><strong>Answer:</strong> "
                        f"{html.escape(line[len('Answer: '):])}</p>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    page = ("<!doctype html><meta charset='utf-8'><title>us3l report</title><style>body{font-family:"
            "sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
            "font-size:.85em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
            "pre{background:#f5f5f5;padding:1em;overflow:auto}.answer{font-size:1.15em;"
            "background:#eef6ee;padding:.6em 1em;border-left:4px solid #3a3}"
            "th.group{text-align:center;background:#f3f3f3}</style>\n" + "\n".join(body))
    atomic_write(path, lambda tmp: Path(tmp).write_text(page))
