"""The end-to-end report (transfer/report/summary.py): every cell of its table equals the value in
the file it comes from. The only check of the report's numbers (the pipeline test only runs it)."""
from __future__ import annotations

import json
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
DET = [("detectron2", "voc", 1.0, {"AP": 40.12, "AP50": 66.66, "AP75": 41.0}),
       ("mmdet", "coco", 0.5, {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APm": 0.0}),
       ("mmdet", "coco", 1.0, {"AP": 8.449, "AP50": 20.0, "AP75": 5.0, "APm": 7.5})]
# What each source value must read as (one decimal), written out rather than recomputed
EXPECTED = {
    1.0: ["1x", "64/128/256/512", "11.18M", "1.81G", "71.3", "30.0", "66.7", "8.4"],
    0.5: ["0.5x", "32/64/128/256", "2.80M", "456.96M", "64.9", "0.0", "–", "0.0"],
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
        assert float(body[f"{width:g}x"][column[label]]) == round(source, 1)
    # the per-run lines list every metric the run has, and the HTML page carries the same cells
    assert "- mmdet coco at 1x: AP 8.4, AP50 20.0, AP75 5.0, APm 7.5" in text
    assert "- detectron2 voc at 1x: AP 40.1, AP50 66.7, AP75 41.0" in text
    page = (tmp_path / "report.html").read_text()
    for expected in EXPECTED.values():
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in expected) + "</tr>" in page
