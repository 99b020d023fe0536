#!/usr/bin/env python
"""Gather detection metrics.json files into one table per engine and task, and plot AP vs width
and vs backbone MACs (one figure per engine and task; engines are never mixed in one plot, their
schedules differ).

    python tools/collect_results.py RUN_OR_FOLDER [...] [--out DIR]

Writes DIR/detection_results.md, DIR/detection_results.csv and DIR/det_<engine>_<task>.png
(default DIR: runs/det/report). Runs evaluated without training (--eval-only) are listed in the
table but left out of the plots. Hidden and temporary folders and files (a run or a writer that
was killed) are never read.

Bad input (a path that does not exist, no metrics.json found, a file that is not JSON or breaks
the schema, NaN or out-of-range values, --out under a regular file): one line naming the file,
exit 2, nothing written. Exit statuses: pretrain/cli.py.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain import cli  # noqa: E402
from pretrain.safe_io import atomic_write, is_partial, published  # noqa: E402
from transfer.detection import metrics  # noqa: E402
from transfer.pipeline import output_folder_problem  # noqa: E402

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


def _fmt(value, digits=1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict], engine: str, task: str) -> str:
    keys = metrics.metric_keys(task)
    head = ["arch", "width", "params (M)", "MACs@224 (G)", *keys, "iterations", "source sha256",
            "run"]
    lines = [f"### {engine} / {task}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["arch"], r["width"], r["_mtime"])):
        run = r.get("run", {})
        iters = "untrained heads" if run.get("eval_only") else str(run.get("iterations", "?"))
        cells = [ARCH_LABEL.get(r["arch"], r["arch"]), f"{r['width']:g}x",
                 f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e9:.2f}",
                 *[_fmt(r[k]) for k in keys], iters, r["source_sha256"][:12],
                 str(Path(r["_file"]).parent)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], engine: str, task: str, path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: r["_mtime"]):
        if not r.get("run", {}).get("eval_only"):
            latest[(r["arch"], r["width"])] = r
    if not latest:
        return None
    keys = metrics.metric_keys(task)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for arch in sorted({a for a, _ in latest}):
        pts = sorted((r for (a, _), r in latest.items() if a == arch), key=lambda r: r["width"])
        for key in keys:
            xs_w = [r["width"] for r in pts if r[key] is not None]
            xs_m = [r["macs"] / 1e9 for r in pts if r[key] is not None]
            ys = [r[key] for r in pts if r[key] is not None]
            label = f"{ARCH_LABEL.get(arch, arch)} {key}"
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
    fields = ["engine", "task", "arch", "width", "params", "macs", *metrics.BOX_KEYS,
              *metrics.MASK_KEYS, "iterations", "eval_only", "source_sha256", "file"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        run = r.get("run", {})
        writer.writerow({**{k: r.get(k) for k in fields if k in r}, "iterations":
                         run.get("iterations"), "eval_only": run.get("eval_only"),
                         "file": r["_file"]})
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders (searched recursively) or files")
    parser.add_argument("--out", default=str(REPO / "runs" / "det" / "report"))
    args = parser.parse_args(argv)
    problem = output_folder_problem(args.out)
    if problem:
        print(f"{PROG}: error: --out {args.out}: {problem}; pass another --out", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    try:
        rows = load(find(args.paths))
    except (FileNotFoundError, metrics.MetricsError) as err:
        print(f"{PROG}: error: {cli.one_line(err, 600)}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    if not rows:
        print(f"{PROG}: error: no {metrics.FILENAME} under {' '.join(args.paths)}; pass the "
              f"--out folders of tools/train_det.sh", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    out = Path(args.out)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["engine"], r["task"]), []).append(r)
    parts = ["# Detection transfer results", "",
             "AP in percent from each engine's own evaluator (VOC: VOC07 11-point metric; COCO: "
             "pycocotools box and mask AP). Never compare across engines: schedules differ.", ""]
    for (engine, task), group in sorted(groups.items()):
        parts.append(table(group, engine, task))
        png = plot(group, engine, task, out / f"det_{engine}_{task}.png")
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
