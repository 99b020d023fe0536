#!/usr/bin/env python
"""Reproduce the paper's tables (US3L, CVPR 2023: Tables 1-9, Fig. 3) row by row, and put the
paper's numbers beside ours.

    python tools/reproduce.py --list                        # every table and row: covered or why not
    python tools/reproduce.py --dry-run 2                   # exact commands + GPU-hour estimate per row
    python tools/reproduce.py --run 2 --rows r18-ours r18-byol --gpus 8 --out runs/reproduce \\
        --data-root /data [--imagenet-root /data/imagenet] [--det-data /data/detectron2]
    python tools/reproduce.py --collect 2 --out runs/reproduce   # OUT/table2/table2.{md,png}
    python tools/reproduce.py --run 2 --rows r18-ours --smoke --out /tmp/smoke  # toy scale, CPU

TABLE: 1..9 or fig3 ("table2", "Fig. 3" accepted). The paper's numbers and the row -> config map
are data (transfer/reproduce/paper.py); the commands and the estimate's basis are in
transfer/reproduce/commands.py. --run calls the project's own tools (tools/pretrain.py, under
torchrun with --gpus N > 1; tools/convert_width.py; tools/linear_probe.py or tools/train_det.sh
--gpus N) as subprocesses, logged in OUT/logs/; a re-run skips every finished step (OUT/.steps/),
and pretraining runs shared by several rows or tables run once. --collect reads the results the
runs wrote (probe results.json, detection metrics.json) and writes OUT/table<T>/table<T>.md (paper /
ours / difference side by side; a missing result is '–', a collapse the paper reports is '-') and
OUT/table<T>/table<T>.png (paper dashed, ours solid), each written atomically.

GPU-hours are estimates (assumed throughput, not measured); --dry-run prints the basis.

--smoke (with --dry-run or --run) runs every step of the chosen probe rows at toy scale to check the
plumbing end to end on a CPU (transfer/reproduce/commands.py SMOKE_*: 2 pretraining iterations on
the synthetic set, the probe on scikit-learn's digits); its numbers mean nothing. Detection rows
and rows that need a teacher checkpoint first (SEED) are not smoke-testable.

Exit statuses: 0 done; 1 a step failed (one line naming it and its log; finished steps stay done);
2 bad input (an unknown table or row, a row that is not available, --collect on a folder that does
not exist, a results file that is not what the tools write; one line, nothing written);
130/143 interrupted (pretrain/cli.py).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pretrain import cli  # noqa: E402

PROG = "reproduce.py"


class BadInput(Exception):
    """One line for the user; exit 2."""


def parse_args(argv):
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="every table and row: covered or not")
    mode.add_argument("--dry-run", metavar="TABLE", help="print the commands and GPU-hours")
    mode.add_argument("--run", metavar="TABLE", help="run the table's rows")
    mode.add_argument("--collect", metavar="TABLE", help="paper / ours / difference, md + png")
    p.add_argument("--rows", nargs="+", metavar="ROW", help="only these rows (keys from --list)")
    p.add_argument("--gpus", type=cli.int_at_least(1), default=1,
                   help="GPUs: pretraining under torchrun, detection with --gpus N (default 1)")
    p.add_argument("--out", default="runs/reproduce", help="output folder (default runs/reproduce)")
    p.add_argument("--data-root", default="data",
                   help="CIFAR and probe datasets in torchvision's layouts (default data)")
    p.add_argument("--imagenet-root", default="data/imagenet",
                   help="ImageNet-style folder for the ImageNet pretraining (default data/imagenet)")
    p.add_argument("--det-data", default="datasets",
                   help="$DETECTRON2_DATASETS for detection (default datasets)")
    p.add_argument("--smoke", action="store_true",
                   help="with --dry-run/--run: every step at toy scale on a CPU (plumbing check)")
    return p.parse_args(argv)


def _table(name):
    from transfer.reproduce import paper
    try:
        return paper.table(name)
    except KeyError:
        raise BadInput(f"unknown table {name!r}; expected one of "
                       f"{', '.join(paper.TABLES)} (see {PROG} --list)") from None


def _rows(table, keys, need_covered: bool):
    if not keys:
        rows = list(table.rows)
        if need_covered:
            rows = [r for r in rows if r.covered]
            if not rows:
                raise BadInput(f"no row of table {table.key} is available "
                               f"({table.rows[0].unavailable}); see {PROG} --list")
        return rows
    by_key = {r.key: r for r in table.rows}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise BadInput(f"unknown row {unknown[0]!r} in table {table.key}; expected one of "
                       f"{', '.join(by_key)}")
    rows = [by_key[k] for k in dict.fromkeys(keys)]
    if need_covered:
        for r in rows:
            if not r.covered:
                raise BadInput(f"row {r.key} of table {table.key} is {r.unavailable}; "
                               f"drop it from --rows")
    return rows


def _settings(args):
    from transfer.reproduce.commands import Settings
    return Settings(out=Path(args.out), data_root=args.data_root,
                    imagenet_root=args.imagenet_root, det_data=args.det_data, gpus=args.gpus,
                    smoke=args.smoke)


# ------------------------------------------------------------------------------ --list
def list_text() -> str:
    from transfer.reproduce import paper
    lines = []
    for t in paper.TABLES.values():
        n = sum(r.covered for r in t.rows)
        lines.append(f"{t.title}  [{n}/{len(t.rows)} rows covered]")
        for r in t.rows:
            where = (f"configs/pretrain/{r.config}.yaml" + (" " + " ".join(r.overrides)
                                                             if r.overrides else "")
                     + (" (one run per width)" if r.individual else ""))
            status = "covered: " + where if r.covered else r.unavailable
            lines.append(f"  {r.key:<22} {r.name:<42} {status}")
            if r.note:
                lines.append(f"  {'':<22} note: {r.note}")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ --dry-run
def dry_run_text(table, rows, settings) -> str:
    from transfer.reproduce import commands as C
    lines = [f"# {table.title}", "# GPU-hours: ESTIMATES, not measurements. Basis: "
             f"{C.THROUGHPUT_SOURCE}; detection from detectron2's model zoo speed "
             f"(transfer/reproduce/commands.py)", ""]
    total = 0.0
    for r in rows:
        lines.append(f"## {r.key}: {r.name}")
        if not r.covered:
            lines += [f"   {r.unavailable}", ""]
            continue
        est = C.estimate(r)
        total += est.total
        lines.append(f"   estimate: {C.fmt_hours(est.total)} GPU-h (pretrain "
                     f"{C.fmt_hours(est.pretrain)}, evaluation {C.fmt_hours(est.evaluate)}); "
                     f"{est.basis}")
        if r.note:
            lines.append(f"   note: {r.note}")
        lines += [c.text() for c in C.commands(r, settings)] + [""]
    lines.append(f"# total estimate: {C.fmt_hours(total)} GPU-h for {sum(r.covered for r in rows)} "
                 f"covered rows (a pretraining run shared by several rows is counted once per row)")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ --run
def run_rows(table, rows, settings) -> int:
    from transfer.pipeline import Pipeline, Step, StepFailed, output_folder_problem
    from transfer.reproduce import commands as C
    problem = output_folder_problem(settings.out)
    if problem:
        raise BadInput(f"cannot use --out {settings.out}: {problem}; pass another folder")
    steps, seen = [], set()
    for r in rows:
        for c in C.commands(r, settings):
            if c.name in seen:
                continue
            seen.add(c.name)
            env = None if c.env is None else {**os.environ, **c.env}
            steps.append(Step(c.name, c.argv, c.outputs, c.inputs, env=env))
    pipe = Pipeline(settings.out)
    try:
        for step in steps:
            pipe.run(step)
    except StepFailed as err:
        print(f"{PROG}: {cli.one_line(err)}", file=sys.stderr)
        return cli.EXIT_STEP_FAILED
    print(f"done: {len(steps)} steps; collect with: {PROG} --collect {table.key} --out {settings.out}")
    return 0


# ------------------------------------------------------------------------------ --collect
def _ours(row, out: Path) -> dict:
    """{metric: {width: value}} from what the row's runs wrote under OUT."""
    from pretrain import safe_io
    from transfer.detection import metrics as det_metrics
    from transfer.linear.runner import RESULTS_FORMAT
    found: dict = {}
    folder = Path(out) / f"table{row.table}" / row.key  # transfer/reproduce/commands.py row_dir
    if row.evaluation is None or not folder.is_dir():
        return found
    if row.evaluation.kind == "probe":
        for path in sorted(safe_io.published(folder.glob("probe*/results.json"))):
            try:
                res = safe_io.read_json(path, "probe results")
            except safe_io.UnsafeFileError as err:
                raise BadInput(f"{cli.one_line(err)}; re-run tools/linear_probe.py") from None
            if not isinstance(res, dict) or res.get("format") != RESULTS_FORMAT \
                    or not isinstance(res.get("rows"), list):
                raise BadInput(f"{path} is not a {RESULTS_FORMAT} results file; re-run "
                               f"tools/linear_probe.py")
            try:
                for entry in res["rows"]:
                    for name, probe in entry["datasets"].items():
                        found.setdefault(name, {})[round(float(entry["width"]), 4)] = \
                            float(probe["value"])
            except (KeyError, TypeError, ValueError, AttributeError):
                raise BadInput(f"{path} lacks a width or a value; re-run tools/linear_probe.py") \
                    from None
    else:
        ev = row.evaluation
        for path in sorted(safe_io.published(folder.glob("det/*/metrics.json"))):
            try:
                rec = det_metrics.read(path)
            except det_metrics.MetricsError as err:
                raise BadInput(cli.one_line(err)) from None
            if rec["engine"] != ev.engine or rec["task"] != ev.task:
                continue
            for key in det_metrics.metric_keys(ev.task):
                if rec[key] is not None:
                    found.setdefault(key, {})[round(float(rec["width"]), 4)] = float(rec[key])
    return found


def collect(table, rows, out: Path) -> list[dict]:
    """One record per (row, width, metric): paper, ours (None = missing), diff (ours - paper)."""
    records = []
    for r in rows:
        ours = _ours(r, out)
        for w in r.widths:
            for m in r.metrics:
                p = r.paper.get(m, {})
                paper = p.get(w) if w in p else "n/a"
                mine = ours.get(m, {}).get(round(w, 4))
                diff = (mine - paper) if isinstance(paper, float) and mine is not None else None
                records.append({"row": r.key, "name": r.name, "width": w, "metric": m,
                                "paper": paper, "ours": mine, "diff": diff,
                                "covered": r.covered})
    return records


def _cell(value) -> str:
    if value == "n/a":
        return "–"
    if value is None:
        return "-"
    return f"{value:.1f}"


def markdown(table, rows, records) -> str:
    metrics = list(dict.fromkeys(m for r in rows for m in r.metrics))
    head = ["row", "width"] + [f"{m} {k}" for m in metrics for k in ("paper", "ours", "diff")]
    lines = [f"# {table.title}", "",
             "paper: the paper's number ('-' = the paper reports a collapse, '–' = none given); "
             "ours: this run ('–' = no result); diff = ours - paper.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    index = {(x["row"], x["width"], x["metric"]): x for x in records}
    for r in rows:
        for w in r.widths:
            cells = [r.name + ("" if r.covered else " (not available)"), f"{w:g}x"]
            for m in metrics:
                x = index.get((r.key, w, m))
                if x is None:
                    cells += ["–", "–", "–"]
                    continue
                cells += [_cell(x["paper"]), "–" if x["ours"] is None else f"{x['ours']:.1f}",
                          "–" if x["diff"] is None else f"{x['diff']:+.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r.key}: {r.unavailable}" for r in rows if not r.covered]
    notes += [f"- {r.key}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "Notes:", *dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def plot(table, rows, records, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pretrain.safe_io import atomic_write
    metrics = list(dict.fromkeys(m for r in rows for m in r.metrics))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for i, r in enumerate(rows):
            color = f"C{i % 10}"
            pts = [x for x in records if x["row"] == r.key and x["metric"] == m]
            pw = [(x["width"], x["paper"]) for x in pts if isinstance(x["paper"], float)]
            ow = [(x["width"], x["ours"]) for x in pts if x["ours"] is not None]
            if pw:
                ax.plot(*zip(*sorted(pw)), "--", color=color, alpha=0.6, label=f"{r.name} (paper)")
            if ow:
                ax.plot(*zip(*sorted(ow)), "o-", color=color, label=f"{r.name} (ours)")
        ax.set_title(m)
        ax.set_xlabel("width")
        ax.set_ylabel(table.metric_label)
        if ax.lines:
            ax.legend(fontsize=6)
    fig.suptitle(table.title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def collect_table(table, rows, out: Path) -> tuple[Path, Path, list[dict]]:
    from pretrain.safe_io import atomic_write
    if not out.is_dir():
        raise BadInput(f"--out {out} does not exist; pass the folder given to --run")
    records = collect(table, rows, out)  # every results file read (and checked) before writing
    folder = out / f"table{table.key}"
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / f"table{table.key}.md"
    atomic_write(md, lambda tmp: Path(tmp).write_text(markdown(table, rows, records)))
    png = folder / f"table{table.key}.png"
    plot(table, rows, records, png)
    return md, png, records


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.list:
            if args.rows:
                raise BadInput("--rows goes with --dry-run, --run or --collect, not --list")
            print(list_text(), end="")
            return 0
        name = args.dry_run or args.run or args.collect
        table = _table(name)
        rows = _rows(table, args.rows, need_covered=bool(args.run))
        if args.smoke:
            if args.collect:
                raise BadInput("--smoke goes with --dry-run or --run, not --collect")
            det = [r.key for r in rows if r.covered and r.evaluation.kind == "det"]
            if det:
                raise BadInput(f"--smoke covers probe rows only; row {det[0]} of table "
                               f"{table.key} needs a detection dataset: drop it from --rows")
        settings = _settings(args)
        if args.dry_run:
            print(dry_run_text(table, rows, settings), end="")
            return 0
        if args.run:
            return run_rows(table, rows, settings)
        md, png, records = collect_table(table, rows, Path(args.out))
        have = sum(x["ours"] is not None for x in records)
        print(f"wrote {md} and {png} ({have} of {len(records)} numbers found)")
        return 0
    except BadInput as err:
        print(f"{PROG}: error: {cli.one_line(err)}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
