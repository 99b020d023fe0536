#!/usr/bin/env python
"""Gather detection metrics.json files into one table per engine and task, and plot AP vs width
and vs backbone MACs (one figure per engine and task; engines are never mixed in one plot, their
schedules differ).

    python tools/collect_results.py RUN_OR_FOLDER [...] [--out DIR]
           [--label CKPT_OR_SHA256=LABEL ...] [--group-by source]

Writes DIR/detection_results.md, DIR/detection_results.csv and DIR/det_<engine>_<task>.png
(default DIR: runs/det/report). Runs evaluated without training (--eval-only) are listed in the
table but left out of the plots. Hidden and temporary folders and files (a run or a writer that
was killed) are never read.

Every row is labelled by its source checkpoint (the "source" column; transfer/report/labels.py):
a --label given for the checkpoint (its file, or a sha256 prefix of at least 8 hex digits, as in
metrics.json's source_sha256), else the label tools/import_checkpoint.py recorded (meta.json
source.imported_from.label of the run's export), else the pretraining method (source.method),
else "checkpoint <sha8>". Plots draw each source as its own series. --group-by source splits
each engine/task table into one table per source (in --label order) after a side-by-side table
of the headline metric (VOC: AP50, COCO: box AP): one row per width, one column per source.

Bad input (a path that does not exist, no metrics.json found, a file that is not JSON or breaks
the schema, NaN or out-of-range values, --out under a regular file, a --label that is not
KEY=LABEL, names no checkpoint file or sha256, is given twice or matches no run): one line naming
the problem, exit 2, nothing written. Exit statuses: pretrain/cli.py.
"""
from __future__ import annotations

import csv
import io
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain import cli  # noqa: E402
from pretrain.safe_io import (UnsafeFileError, atomic_write, is_partial, published,  # noqa: E402
                              read_json)
from transfer.detection import metrics  # noqa: E402
from transfer.pipeline import output_folder_problem  # noqa: E402
from transfer.report import labels as L  # noqa: E402

PROG = "collect_results.py"

ARCH_LABEL = {"resnet50": "R-50", "resnet18": "R-18"}


def find(paths: list[str]) -> list[Path]:
    """metrics.json files: those named, and those under the folders named, except any in (or
    named like) a hidden or temporary entry below the folder given."""
    found = []
    for p in map(Path, paths):
        if p.is_file():
            if is_partial(p):
                raise FileNotFoundError(f"{p} is a hidden or temporary file (an unfinished "
                                        f"write); pass the run's metrics.json")
            found.append(p)
        elif p.is_dir():
            below = sorted(p.rglob(metrics.FILENAME))
            keep = {p / q for q in published(f.relative_to(p) for f in below)}
            found += [f for f in below if f in keep and f.is_file()]
        else:
            raise FileNotFoundError(f"{p} does not exist; pass run folders or metrics.json files")
    return found


def load(files: list[Path]) -> list[dict]:
    """Records that follow the schema. The engines' own log folders (OUT/detectron2/, OUT/mmdet/)
    are skipped: detectron2 writes its training events to a metrics.json of its own there."""
    rows = []
    for f in files:
        if f.parent.name in metrics.ENGINES:
            continue
        record = metrics.read(f)
        record["_file"] = str(f)
        record["_mtime"] = f.stat().st_mtime
        rows.append(record)
    return rows


_HEX = re.compile(r"^[0-9a-fA-F]{8,64}$")


class LabelError(ValueError):
    """A --label value that cannot be used (one line)."""


def parse_labels(values: list[str]) -> list[tuple[str, str, str]]:
    """``--label`` values as (sha256 or prefix, label, as given), in the order given. KEY is a
    checkpoint file (hashed) or a sha256 prefix of at least 8 hex digits."""
    from pretrain.checkpoint import file_sha256
    out: list[tuple[str, str, str]] = []
    for text in values:
        key, sep, label = text.partition("=")
        key, label = key.strip(), label.strip()
        if not sep or not key or not label:
            raise LabelError(f"--label {text!r} is not CKPT_OR_SHA256=LABEL (e.g. --label "
                             f"runs/imp/tv_r50.pth='torchvision R-50')")
        problem = L.check_label(label)
        if problem:
            raise LabelError(f"--label {text!r}: {problem}; pass another label")
        if Path(key).is_file():
            sha = file_sha256(key)
        elif _HEX.match(key):
            sha = key.lower()
        else:
            raise LabelError(f"--label {text!r}: {key} is neither a checkpoint file nor a sha256 "
                             f"(at least 8 hex digits); pass the checkpoint the runs came from")
        for other_sha, other_label, other_text in out:
            if sha.startswith(other_sha) or other_sha.startswith(sha):
                raise LabelError(f"--label {text!r} and {other_text!r} name the same checkpoint; "
                                 f"give each checkpoint one label")
        out.append((sha, label, text))
    return out


def export_label(record: dict) -> str | None:
    """The label recorded in the meta.json of the export the run was started from (None when
    that export is gone or unreadable: the sha256 label is used then)."""
    export = (record.get("run") or {}).get("export")
    if not isinstance(export, str) or not export:
        return None
    meta_path = Path(export) / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path, "export meta")
    except UnsafeFileError:
        return None
    if not isinstance(meta, dict) or (meta.get("source") or {}).get("sha256") not in (
            None, record["source_sha256"]):
        return None  # another checkpoint's export now lives there
    return L.meta_label(meta)


def label_rows(rows: list[dict], given: list[tuple[str, str, str]]) -> list[str]:
    """Set each row's ``_label``; returns the labels in order (given ones first, in --label
    order, then the others sorted). A --label that matches no run is a ``LabelError``."""
    used = set()
    for r in rows:
        match = next(((sha, label) for sha, label, _ in given
                      if r["source_sha256"].lower().startswith(sha)), None)
        if match is not None:
            used.add(match[0])
            r["_label"] = match[1]
        else:
            r["_label"] = export_label(r) or L.sha_label(r["source_sha256"])
    unused = [text for sha, _, text in given if sha not in used]
    if unused:
        shas = sorted({r["source_sha256"][:12] for r in rows})
        raise LabelError(f"--label {unused[0]!r} matches no run's checkpoint (the runs come from "
                         f"{', '.join(shas)}); pass a checkpoint the runs came from")
    order = list(dict.fromkeys(label for _, label, _ in given))
    return order + sorted({r["_label"] for r in rows} - set(order))


def _fmt(value, digits=1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "¦")


def table(rows: list[dict], engine: str, task: str, title: str | None = None) -> str:
    keys = metrics.metric_keys(task)
    head = ["source", "arch", "width", "params (M)", "MACs@224 (G)", *keys, "iterations",
            "source sha256", "run"]
    lines = [f"### {title or f'{engine} / {task}'}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["arch"], r["width"], r["_mtime"])):
        run = r.get("run", {})
        iters = "untrained heads" if run.get("eval_only") else str(run.get("iterations", "?"))
        cells = [_cell(r["_label"]), ARCH_LABEL.get(r["arch"], r["arch"]), f"{r['width']:g}x",
                 f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e9:.2f}",
                 *[_fmt(r[k]) for k in keys], iters, r["source_sha256"][:12],
                 _cell(Path(r["_file"]).parent)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def headline(task: str) -> str:
    """The metric a side-by-side table shows: VOC AP50, COCO box AP (as the main report)."""
    return "AP50" if task == "voc" else "AP"


def side_by_side(rows: list[dict], engine: str, task: str, order: list[str]) -> str:
    """One row per (arch, width), one column per source: the latest trained run's headline
    metric ('–' where that source has no run)."""
    key = headline(task)
    latest = _latest(rows)
    labels = [lab for lab in order if any(lab == k[0] for k in latest)]
    head = ["arch", "width", *[_cell(lab) for lab in labels]]
    lines = [f"### {engine} / {task}: {key} by source", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for arch, width in sorted({(a, w) for _, a, w in latest}, key=lambda k: (k[0], -k[1])):
        cells = [ARCH_LABEL.get(arch, arch), f"{width:g}x"]
        for lab in labels:
            r = latest.get((lab, arch, width))
            cells.append("–" if r is None else _fmt(r[key]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _latest(rows: list[dict]) -> dict[tuple, dict]:
    """The latest trained (not --eval-only) run per (source label, arch, width)."""
    latest: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: r["_mtime"]):
        if not r.get("run", {}).get("eval_only"):
            latest[(r["_label"], r["arch"], r["width"])] = r
    return latest


def plot(rows: list[dict], engine: str, task: str, path: Path,
         order: list[str] | None = None) -> Path | None:
    """AP vs width and vs MACs: one series per source label, architecture and metric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest = _latest(rows)
    if not latest:
        return None
    keys = metrics.metric_keys(task)
    several = len({lab for lab, _, _ in latest}) > 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    order = list(dict.fromkeys(lab for lab in (order or []) if any(k[0] == lab for k in latest)))
    order += sorted({lab for lab, _, _ in latest} - set(order))
    for lab in order:
        for arch in sorted({a for lb, a, _ in latest if lb == lab}):
            pts = sorted((r for (lb, a, _), r in latest.items() if lb == lab and a == arch),
                         key=lambda r: r["width"])
            for key in keys:
                xs_w = [r["width"] for r in pts if r[key] is not None]
                xs_m = [r["macs"] / 1e9 for r in pts if r[key] is not None]
                ys = [r[key] for r in pts if r[key] is not None]
                label = f"{lab}: " * several + f"{ARCH_LABEL.get(arch, arch)} {key}"
                axes[0].plot(xs_w, ys, marker="o", label=label)
                axes[1].plot(xs_m, ys, marker="o", label=label)
    axes[0].set_xlabel("width")
    axes[1].set_xlabel("backbone MACs at 224 px (G)")
    for ax in axes:
        ax.set_ylabel("AP (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{engine}: {'VOC07 test (Faster R-CNN FPN)' if task == 'voc' else 'COCO val2017 (Mask R-CNN FPN)'}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def write_csv(rows: list[dict], path: Path) -> Path:
    fields = ["engine", "task", "source", "arch", "width", "params", "macs", *metrics.BOX_KEYS,
              *metrics.MASK_KEYS, "iterations", "eval_only", "source_sha256", "file"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        run = r.get("run", {})
        writer.writerow({**{k: r.get(k) for k in fields if k in r}, "iterations":
                         run.get("iterations"), "eval_only": run.get("eval_only"),
                         "source": r["_label"], "file": r["_file"]})
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders (searched recursively) or files")
    parser.add_argument("--out", default=str(REPO / "runs" / "det" / "report"))
    parser.add_argument("--label", action="append", default=[], metavar="CKPT_OR_SHA256=LABEL",
                        help="the source label of the runs from this checkpoint (repeatable; "
                             "default: the label recorded in the export's meta.json)")
    parser.add_argument("--group-by", choices=("run", "source"), default="run",
                        help="source: a side-by-side table per engine/task (one column per "
                             "source label) and one table per source")
    args = parser.parse_args(argv)
    problem = output_folder_problem(args.out)
    if problem:
        print(f"{PROG}: error: --out {args.out}: {problem}; pass another --out", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    try:
        given = parse_labels(args.label)
        rows = load(find(args.paths))
        if not rows:
            raise FileNotFoundError(f"no {metrics.FILENAME} under {' '.join(args.paths)}; pass "
                                    f"the --out folders of tools/train_det.sh")
        order = label_rows(rows, given)
    except (FileNotFoundError, metrics.MetricsError, LabelError) as err:
        print(f"{PROG}: error: {cli.one_line(err, 600)}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    out = Path(args.out)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["engine"], r["task"]), []).append(r)
    parts = ["# Detection transfer results", "",
             "AP in percent from each engine's own evaluator (VOC: VOC07 11-point metric; COCO: "
             "pycocotools box and mask AP). Never compare across engines: schedules differ.", ""]
    for (engine, task), group in sorted(groups.items()):
        if args.group_by == "source":
            parts.append(side_by_side(group, engine, task, order))
            for lab in order:
                mine = [r for r in group if r["_label"] == lab]
                if mine:
                    parts.append(table(mine, engine, task, f"{engine} / {task}: {_cell(lab)}"))
        else:
            parts.append(table(group, engine, task))
        png = plot(group, engine, task, out / f"det_{engine}_{task}.png", order)
        if png is not None:
            parts.append(f"![{engine} {task}]({png.name})\n")
    atomic_write(out / "detection_results.md", lambda tmp: Path(tmp).write_text("\n".join(parts)))
    write_csv(rows, out / "detection_results.csv")
    print("\n".join(parts))
    print(f"wrote {out}/detection_results.md, detection_results.csv and "
          f"{len(groups)} plot(s) from {len(rows)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
