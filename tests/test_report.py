"""The end-to-end report (transfer/report/summary.py): every cell of its table equals the value in
the file it comes from. The only check of the report's numbers (the pipeline test only runs it)."""
from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

from transfer.report.summary import write_report

EXPORTS = {  # width -> meta.json fields the report reads
    1.0: {"params": 11_176_512, "macs_224": 1_814_073_344,
          "channel_plan": {"out": [64, 128, 256, 512]}},
    0.5: {"params": 2_797_104, "macs_224": 456_963_072,
          "channel_plan": {"out": [32, 64, 128, 256]}},
    0.25: {"params": 700_000, "macs_224": 115_000_000,
           "channel_plan": {"out": [16, 32, 64, 128]}},
}
PROBE = {1.0: {"cifar10": 71.26, "dtd": 30.04}, 0.5: {"cifar10": 64.93, "dtd": 0.0},
         0.25: {"cifar10": 12.348}}                                   # 0.25 has no DTD entry
# A full detectron2 schedule (a measurement) and two 40-iteration mmdet runs at batch 2 (80 images
# seen: smoke checks, transfer/report/answer.py)
FULL = {"run": {"protocol": {"iterations": 18000, "total_batch": 16}}}
SHORT_RUN = {"run": {"protocol": {"iterations": 40, "total_batch": 2}}}
DET = [("detectron2", "voc", 1.0, {"AP": 40.12, "AP50": 66.66, "AP75": 41.0, **FULL}),
       ("mmdet", "coco", 0.5, {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APm": 0.0, **SHORT_RUN}),
       ("mmdet", "coco", 1.0, {"AP": 8.449, "AP50": 20.0, "AP75": 5.0, "APm": 7.5, **SHORT_RUN})]
# What each source value must read as (one decimal), written out rather than recomputed
EXPECTED = {
    1.0: ["1x", "64/128/256/512", "11.18M", "1.81G", "71.3", "30.0", "66.7", "8.4 (smoke check)"],
    0.5: ["0.5x", "32/64/128/256", "2.80M", "456.96M", "64.9", "0.0", "–", "0.0 (smoke check)"],
    0.25: ["0.25x", "16/32/64/128", "700.00K", "115.00M", "12.3", "–", "–", "–"],
}
HEADER = ["Width", "Channels (res2..res5)", "Params", "MACs@224", "C-10 acc", "DTD acc",
          "VOC AP50 (detectron2)", "COCO box AP (mmdet)"]


def _write_sources(out: Path) -> None:
    for width, meta in EXPORTS.items():
        folder = out / "export" / f"w{width:.2f}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"width": width, **meta}))
    rows = [{"width": w, "datasets": {n: {"value": v} for n, v in d.items()}}
            for w, d in PROBE.items()]
    (out / "probe").mkdir()
    (out / "probe" / "results.json").write_text(json.dumps(
        {"rows": rows, "protocol": "lbfgs", "metrics": {"cifar10": "top1", "dtd": "top1"}}))
    for engine, task, width, metrics in DET:
        folder = out / "det" / f"{engine}_{task}_w{width:g}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(
            {"engine": engine, "task": task, "width": width, **metrics}))


def _table(markdown: str) -> list[list[str]]:
    lines = [l for l in markdown.splitlines() if l.startswith("| Width |")]
    assert len(lines) == 1
    start = markdown.splitlines().index(lines[0])
    rows = []
    for line in markdown.splitlines()[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_report_cells_equal_their_source_files(tmp_path):
    _write_sources(tmp_path)
    report = write_report(tmp_path, "unit", steps=[{"name": "probe", "seconds": 3.0,
                                                     "command": "tools/linear_probe.py"}],
                          argv=["tools/run_all.py", "--preset", "unit"])
    text = report.read_text()
    rows = _table(text)
    assert rows[0] == HEADER and set(rows[1][0]) <= set("-")
    body = {row[0]: row for row in rows[2:]}
    assert list(body) == ["1x", "0.5x", "0.25x"]                    # widest first
    for width, expected in EXPECTED.items():
        assert body[f"{width:g}x"] == expected, (width, body[f"{width:g}x"])
    # each numeric cell against its source, column by column
    column = {name: i for i, name in enumerate(HEADER)}
    for width, values in PROBE.items():
        for name, value in values.items():
            label = {"cifar10": "C-10 acc", "dtd": "DTD acc"}[name]
            assert float(body[f"{width:g}x"][column[label]]) == round(value, 1)
    for engine, task, width, metrics in DET:
        label = "VOC AP50 (detectron2)" if task == "voc" else "COCO box AP (mmdet)"
        source = metrics["AP50"] if task == "voc" else metrics["AP"]
        assert float(body[f"{width:g}x"][column[label]].split()[0]) == round(source, 1)
    # the per-run lines list every metric the run has, and the HTML page carries the same cells
    assert ("- mmdet coco at 1x: AP 8.4, AP50 20.0, AP75 5.0, APm 7.5 (smoke check: 80 images "
            "seen)") in text
    assert "- detectron2 voc at 1x: AP 40.1, AP50 66.7, AP75 41.0" in text
    page = (tmp_path / "report.html").read_text()
    for expected in EXPECTED.values():
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in expected) + "</tr>" in page


# ---------------------------------------------------------------------------- checkpoints compared
# Two checkpoints (tools/run_all.py --compare): a slimmable one at 1.0/0.5/0.25 and a fixed-width
# import at 1.0 only; each in its own folder, as run_all lays them out.
COMPARED = [
    {"label": "US3L (ours)", "folder": "compare/ours-11111111", "sha256": "11" * 32,
     "checkpoint": "/ckpt/ours.pth", "arch": "resnet18", "stem": "imagenet",
     "width_range": [0.25, 1.0], "origin": "tools/pretrain.py (us3l, iteration 6)",
     "probe": PROBE, "det": DET},
    {"label": "solo-learn BYOL", "folder": "compare/byol-22222222", "sha256": "22" * 32,
     "checkpoint": "/ckpt/byol.pth", "arch": "resnet18", "stem": "imagenet",
     "width_range": [1.0, 1.0], "origin": "tools/import_checkpoint.py --from solo-learn",
     "probe": {1.0: {"cifar10": 80.04, "dtd": 41.96}},
     "det": [("detectron2", "voc", 1.0, {"AP": 45.0, "AP50": 70.04, "AP75": 44.0})]},
]


def _write_compared(out: Path) -> list[dict]:
    entries = []
    for spec in COMPARED:
        folder = out / spec["folder"]
        folder.mkdir(parents=True)
        for width in spec["probe"]:
            meta = dict(EXPORTS[width], width=width, calibration={"data": "digits"},
                        source={"sha256": spec["sha256"], "method": "us3l"})
            (folder / "export" / f"w{width:.2f}").mkdir(parents=True)
            (folder / "export" / f"w{width:.2f}" / "meta.json").write_text(json.dumps(meta))
        rows = [{"width": w, "datasets": {n: {"value": v} for n, v in d.items()}}
                for w, d in spec["probe"].items()]
        (folder / "probe").mkdir()
        (folder / "probe" / "results.json").write_text(json.dumps(
            {"rows": rows, "protocol": "lbfgs", "metrics": {"cifar10": "top1", "dtd": "top1"}}))
        for engine, task, width, metrics in spec["det"]:
            run = folder / "det" / f"{engine}_{task}_w{width:g}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps(
                {"engine": engine, "task": task, "width": width, **metrics}))
        entries.append({k: v for k, v in spec.items() if k not in ("probe", "det")})
    return entries


def _section(markdown: str, title: str) -> list[list[str]]:
    """The table under the heading ``## title``."""
    lines = markdown.splitlines()
    start = lines.index(f"## {title}") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_compared_checkpoints_side_by_side_one_column_each(tmp_path):
    """One table per measure, one column per checkpoint headed by its label in the order given,
    each cell its own checkpoint's value; the fixed-width import fills only its 1x row."""
    entries = _write_compared(tmp_path)
    report = write_report(tmp_path, "unit", steps=[], argv=["tools/run_all.py", "--compare",
                                                            "US3L (ours)=/ckpt/ours.pth"],
                          compare=entries)
    text = report.read_text()
    labels = ["US3L (ours)", "solo-learn BYOL"]
    assert "2 checkpoints side by side: US3L (ours) vs solo-learn BYOL." in text
    expected = {
        "C-10 acc (linear probe, %)": [["1x", "71.3", "80.0"], ["0.5x", "64.9", "–"],
                                       ["0.25x", "12.3", "–"]],
        "DTD acc (linear probe, %)": [["1x", "30.0", "42.0"], ["0.5x", "0.0", "–"]],
        "VOC AP50 (detectron2) (AP, %)": [["1x", "66.7", "70.0"]],
        "COCO box AP (mmdet) (AP, %)": [["1x", "8.4", "–"], ["0.5x", "0.0", "–"]],
        "Params / MACs@224 of each network": [["1x", "11.18M / 1.81G", "11.18M / 1.81G"],
                                              ["0.5x", "2.80M / 456.96M", "–"],
                                              ["0.25x", "700.00K / 115.00M", "–"]],
    }
    for title, body in expected.items():
        rows = _section(text, title)
        assert rows[0] == ["Width", *labels] and set(rows[1][0]) <= set("-"), title
        assert rows[2:] == body, (title, rows[2:])
    # every cell against its own checkpoint's source file
    for spec in COMPARED:
        col = 1 + labels.index(spec["label"])
        for width, values in spec["probe"].items():
            for name, value in values.items():
                title = {"cifar10": "C-10", "dtd": "DTD"}[name] + " acc (linear probe, %)"
                row = next(r for r in _section(text, title)[2:] if r[0] == f"{width:g}x")
                assert float(row[col]) == round(value, 1)
    checkpoints = _section(text, "Checkpoints")
    assert checkpoints[0] == ["Label", "Network", "Trained widths", "Evaluated widths", "Source",
                              "sha256", "BN calibration", "Checkpoint"]
    assert checkpoints[2] == ["US3L (ours)", "resnet18 (imagenet stem)", "0.25..1", "0.25 0.5 1",
                              "tools/pretrain.py (us3l, iteration 6)", "11" * 6, "digits",
                              "/ckpt/ours.pth"]
    assert checkpoints[3][:4] == ["solo-learn BYOL", "resnet18 (imagenet stem)", "1 (fixed)", "1"]
    assert "- solo-learn BYOL: detectron2 voc at 1x: AP 45.0, AP50 70.0, AP75 44.0" in text
    assert "- US3L (ours): mmdet coco at 1x: AP 8.4, AP50 20.0, AP75 5.0, APm 7.5" in text
    assert "'US3L (ours)=/ckpt/ours.pth'" in text  # the command, quoted as typed
    for png in ("accuracy_vs_width.png", "accuracy_vs_macs.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "report.html").read_text()
    assert "<tr><td>1x</td><td>71.3</td><td>80.0</td></tr>" in page
    assert page.count("<img") == 2


def test_compared_checkpoint_without_label_takes_its_meta_label(tmp_path):
    """No label given: the import's recorded label (meta.json source.imported_from.label), else
    the method (source.method)."""
    entries = _write_compared(tmp_path)
    meta_path = tmp_path / COMPARED[1]["folder"] / "export" / "w1.00" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["source"]["imported_from"] = {"format": "solo-learn", "label": "solo-learn byol"}
    meta_path.write_text(json.dumps(meta))
    for entry in entries:
        entry.pop("label")
    text = write_report(tmp_path, "unit", steps=[], argv=["x"], compare=entries).read_text()
    assert _section(text, "C-10 acc (linear probe, %)")[0] == ["Width", "us3l", "solo-learn byol"]


# ---------------------------------------------------------------- the answer, baselines, smoke checks
RANDOM = {1.0: {"cifar10": 60.0, "digits": 90.04}, 0.5: {"cifar10": 50.0, "digits": 85.0},
          0.25: {"cifar10": 10.0, "digits": 70.0}}
OURS = {1.0: {"cifar10": 71.26, "digits": 96.0}, 0.5: {"cifar10": 64.93, "digits": 94.0},
        0.25: {"cifar10": 12.348, "digits": 91.2}}
NAMES = {"digits": "digits (real, scikit-learn)",
         "cifar10": "tinted digit scans (CIFAR-10 format, synthetic)"}
CONTEXT = {"dataset_labels": NAMES, "headline": "digits", "baseline": "random-init",
           "step_notes": {"linear-probe": "lbfgs linear probe on digits at 64 px"}}


def _write_probe(folder: Path, values: dict) -> None:
    rows = [{"width": w, "datasets": {n: {"value": v} for n, v in d.items()}}
            for w, d in values.items()]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(
        {"rows": rows, "protocol": "lbfgs", "metrics": {n: "top1" for n in NAMES}}))


def _with_baseline(out: Path) -> Path:
    _write_sources(out)
    _write_probe(out / "probe", OURS)
    _write_probe(out / "baselines" / "random-init" / "probe", RANDOM)
    return write_report(out, "demo", steps=[{"name": "linear-probe", "seconds": 41.0,
                                             "command": "tools/linear_probe.py"}],
                        argv=["tools/run_all.py", "--preset", "demo"], context=CONTEXT)


class _Page(HTMLParser):
    """The report page's images, table cells and first paragraph, as a browser reads them."""

    def __init__(self):
        super().__init__()
        self.images, self.header, self.rows, self.paragraphs = [], [], [], []
        self._cell, self._in_p = None, False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = tag
            self.rows[-1].append("")
        elif tag == "p":
            self._in_p = True
            self.paragraphs.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = None
        elif tag == "p":
            self._in_p = False

    def handle_data(self, data):
        if self._cell:
            self.rows[-1][-1] += data
        if self._in_p:
            self.paragraphs[-1] += data


def test_report_opens_with_the_answer_and_puts_the_baseline_beside_every_width(tmp_path):
    report = _with_baseline(tmp_path)
    text = report.read_text()
    # the answer first: retention at the narrowest width, and what pretraining adds there and at 1x
    first = next(line for line in text.splitlines()[1:] if line.strip())
    assert first == ("Answer: On digits (real, scikit-learn) (linear probe), at 0.25x the "
                     "checkpoint keeps 95% of its 1x accuracy (91.2% vs 96.0%); pretraining adds "
                     "21.2 points at 0.25x (91.2% vs 70.0%) and adds 6.0 points at 1x (96.0% vs "
                     "90.0%) over a random-init encoder of the same width.")
    rows = _table(text)
    header = rows[0]
    # honest names, the headline dataset first, each followed by its baseline and the difference
    assert header[4:10] == [
        "digits (real, scikit-learn) · pretrained", "digits (real, scikit-learn) · random-init",
        "digits (real, scikit-learn) · Δ pretrained − random-init",
        "tinted digit scans (CIFAR-10 format, synthetic) · pretrained",
        "tinted digit scans (CIFAR-10 format, synthetic) · random-init",
        "tinted digit scans (CIFAR-10 format, synthetic) · Δ pretrained − random-init"]
    body = {row[0]: row for row in rows[2:]}
    for width in OURS:
        cells = body[f"{width:g}x"]
        for offset, name in ((4, "digits"), (7, "cifar10")):
            ours, base = OURS[width][name], RANDOM[width][name]
            assert float(cells[offset]) == round(ours, 1)
            assert float(cells[offset + 1]) == round(base, 1)
            assert float(cells[offset + 2]) == round(ours - base, 1)
            assert cells[offset + 2][0] in "+-"
    assert "| linear-probe | 41 | lbfgs linear probe on digits at 64 px |" in text


def test_report_page_images_exist_smoke_checks_marked_and_figures_finite(tmp_path):
    from transfer.report.summary import collect, plotted_columns
    _with_baseline(tmp_path)
    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    assert page.paragraphs[0].startswith("Answer: On digits (real, scikit-learn)")
    assert len(page.images) == 2 and all((tmp_path / src).stat().st_size > 1000
                                         for src in page.images)
    table = next(i for i, row in enumerate(page.rows) if row and row[0] == "Width")
    # two header rows: each dataset over its three columns, then what each column holds
    groups, subs = page.rows[table], page.rows[table + 1]
    assert groups[4:6] == ["digits (real, scikit-learn)",
                           "tinted digit scans (CIFAR-10 format, synthetic)"]
    assert subs == ["pretrained", "random-init", "Δ pretrained − random-init"] * 2
    header = groups[:4] + [f"{g} · {s}" for g in groups[4:6] for s in subs[:3]] + groups[6:]
    body = page.rows[table + 2:table + 5]
    assert [row[0] for row in body] == ["1x", "0.5x", "0.25x"]
    assert [c for row in body for c in row[4:10]] == [c for row in _table(
        (tmp_path / "report.md").read_text())[2:] for c in row[4:10]]  # the page = the markdown
    mmdet = header.index("COCO box AP (mmdet)")
    assert [row[mmdet] for row in body] == ["8.4 (smoke check)", "0.0 (smoke check)", "–"]
    assert body[0][header.index("VOC AP50 (detectron2)")] == "66.7"  # a full schedule: measured
    for row in body:
        for cell in row[4:]:
            if cell != "–":
                assert math.isfinite(float(cell.split()[0]))
    assert any("smoke check" in p and "left out of the plots" in p for p in page.paragraphs)
    data = collect(tmp_path)
    assert data["smoke"] == {"det:mmdet:coco"}
    drawn = plotted_columns(data)
    assert "det:mmdet:coco" not in drawn and "det:detectron2:voc" in drawn
    assert "base:random-init:probe:digits" in drawn
    assert not any(c.startswith("delta:") for c in drawn)
