"""Several checkpoints side by side (issue #15 item 4): ``tools/run_all.py --compare LABEL=CKPT``
and ``tools/collect_results.py --label/--group-by source``.

The real run: a slimmable ResNet-18 checkpoint in this suite's format (widths 0.25..1)
next to a torchvision ResNet-18 (random weights) imported by tools/import_checkpoint.py's code
(fixed width 1.0, no pretraining data: --calib-data). Both are converted and probed on the
built-in digits by the project's own command lines; the report's columns are their labels and
every cell equals that checkpoint's own probe results.json. Nothing asserts what the probes
learn. The detection path is checked as the steps it builds (the ci pipeline test runs the
engines); collect_results' labels on metrics files written with the schema's own writer.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from pretrain import cli
from pretrain.checkpoint import file_sha256
from tests.bad_input_helpers import call_main
from tests.export_helpers import make_checkpoint
from tests.test_import_checkpoint import tv_backbone
from transfer.detection import metrics

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import collect_results  # noqa: E402
import run_all  # noqa: E402

# the ci preset, probing the built-in digits only with a 3-value C grid, without detection
PRESET = dict(run_all.PRESETS["ci"], probe_datasets=["digits"], det_widths=[],
              probe_options=["--grid", "0.1", "10", "3"])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from transfer.imports import import_checkpoint
    tmp = tmp_path_factory.mktemp("ckpts")
    ours = make_checkpoint(tmp / "ours.pth", arch="resnet18", stem="imagenet",
                           width_range=(0.25, 1.0))
    _, state = tv_backbone("resnet18")
    torch.save({"model": state, "epoch": 3}, tmp / "tv_src.pth")
    import_checkpoint(tmp / "tv_src.pth", "torchvision", "resnet18", tmp / "tv.pth")
    return {"ours": ours, "tv": tmp / "tv.pth", "tv_src": tmp / "tv_src.pth", "dir": tmp}


@pytest.fixture(scope="module")
def preset():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(run_all.PRESETS, "ci-compare", PRESET)
        yield "ci-compare"


def _argv(out: Path, *compare: str, calib: str | None = "digits") -> list[str]:
    return ["--preset", "ci-compare", "--out", str(out), *(["--calib-data", calib] if calib
                                                          else []), "--compare", *compare]


@pytest.fixture(scope="module")
def compared(ckpts, preset, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    argv = _argv(out, f"US3L (ours)={ckpts['ours']}", f"={ckpts['tv']}")
    assert cli.run(run_all.main, run_all.PROG, argv) == 0
    return out


def _section(markdown: str, title: str) -> list[list[str]]:
    lines = markdown.splitlines()
    rows = []
    for line in lines[lines.index(f"## {title}") + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_report_puts_each_checkpoint_in_its_own_column(compared, ckpts):
    out = compared
    manifest = json.loads((out / "compare" / "compare.json").read_text())["entries"]
    assert [e["checkpoint"] for e in manifest] == [str(ckpts["ours"]), str(ckpts["tv"])]
    assert [e["width_range"] for e in manifest] == [[0.25, 1.0], [1.0, 1.0]]
    assert [e["widths"] for e in manifest] == [[0.25, 1.0], [1.0]]
    # the import's default label is the one it recorded, carried by the converter into meta.json
    tv_meta = json.loads((out / manifest[1]["folder"] / "export" / "w1.00" / "meta.json")
                         .read_text())
    assert tv_meta["source"]["imported_from"]["label"] == "torchvision"
    labels = ["US3L (ours)", "torchvision"]
    assert [e["label"] for e in manifest] == labels

    text = (out / "report.md").read_text()
    table = _section(text, "Digits acc (linear probe, %)")
    assert table[0] == ["Width", *labels]
    assert [row[0] for row in table[2:]] == ["1x", "0.25x"]
    probes = [json.loads((out / e["folder"] / "probe" / "results.json").read_text())
              for e in manifest]
    for col, probe in enumerate(probes, start=1):
        measured = {r["width"]: r["datasets"]["digits"]["value"] for r in probe["rows"]}
        assert set(measured) == set(manifest[col - 1]["widths"])
        for row in table[2:]:
            width = float(row[0][:-1])
            assert row[col] == (f"{measured[width]:.1f}" if width in measured else "–")
    assert table[3][2] == "–"  # the fixed-width import has no 0.25x row of its own
    checkpoints = _section(text, "Checkpoints")
    assert [r[:4] for r in checkpoints[2:]] == [
        ["US3L (ours)", "resnet18 (imagenet stem)", "0.25..1", "0.25 1"],
        ["torchvision", "resnet18 (imagenet stem)", "1 (fixed)", "1"]]
    assert checkpoints[3][4] == "tools/import_checkpoint.py --from torchvision tv_src.pth (epoch 3)"
    assert [r[6] for r in checkpoints[2:]] == ["digits", "digits"]  # one calibration set for all
    for png in ("accuracy_vs_width.png", "accuracy_vs_macs.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    for e in manifest:  # converted for the probe only: this preset fine-tunes no detector
        assert sorted(p.name for p in (out / e["folder"] / "export" / "w1.00").iterdir()) == \
            ["meta.json", "torchvision.pth"]


def test_rerun_skips_every_step_and_a_new_label_reruns_nothing(compared, ckpts, capsys):
    out = compared
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / ".steps").iterdir()}
    assert sorted(stamps) == sorted(f"{s}-{k}.json" for s in ("convert", "linear-probe")
                                    for k in ("ours-" + file_sha256(ckpts["ours"])[:8],
                                              "tv-" + file_sha256(ckpts["tv"])[:8]))
    capsys.readouterr()
    argv = _argv(out, f"US3L (ours)={ckpts['ours']}", f"torchvision R-18={ckpts['tv']}")
    assert cli.run(run_all.main, run_all.PROG, argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("up to date, skipped") == 4 and "done in" not in printed
    assert {p.name: p.stat().st_mtime_ns for p in (out / ".steps").iterdir()} == stamps
    table = _section((out / "report.md").read_text(), "Digits acc (linear probe, %)")
    assert table[0] == ["Width", "US3L (ours)", "torchvision R-18"]


BAD = [
    ("no-equals", lambda c: [str(c["ours"])], ["is not LABEL=CKPT"]),
    ("empty-path", lambda c: ["ours="], ["is not LABEL=CKPT"]),
    ("missing-file", lambda c: [f"a={c['dir'] / 'nope.pth'}"], ["nope.pth does not exist"]),
    ("a-folder", lambda c: [f"a={c['dir']}"], ["is a folder, not a file"]),
    ("not-a-checkpoint", lambda c: [f"tv={c['tv_src']}"],
     ["not a US3L checkpoint", "tools/import_checkpoint.py"]),
    ("label-twice", lambda c: [f"a={c['ours']}", f"a={c['tv']}"], ["label 'a' is given 2 times"]),
    ("default-label-clash", lambda c: [f"torchvision={c['ours']}", f"={c['tv']}"],
     ["label 'torchvision' names both"]),
    ("same-checkpoint-twice", lambda c: [f"a={c['ours']}", f"b={c['ours']}"],
     ["are the same checkpoint"]),
    ("label-with-bar", lambda c: [f"a|b={c['ours']}"], ["'|'"]),
]


@pytest.mark.parametrize("build,words", [pytest.param(b, w, id=i) for i, b, w in BAD])
def test_bad_compare_values_one_line_nothing_written(ckpts, preset, tmp_path, capsys, build,
                                                     words):
    call_main(run_all.main, _argv(tmp_path / "run", *build(ckpts)), run_all.PROG, capsys,
              must_mention=["--compare", *words], unchanged=tmp_path)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,words", [
    (lambda c, out: _argv(out, f"={c['tv']}", calib=None), ["no pretraining data", "--calib-data"]),
    (lambda c, out: _argv(out, f"a={c['ours']}", calib="nope"), ["--calib-data", "unknown"]),
    (lambda c, out: _argv(out, f"a={c['ours']}", calib=f"folder:{out / 'none'}"),
     ["--calib-data", "is not a folder"]),
    (lambda c, out: _argv(out, f"a={c['ours']}") + ["--pretrain-override", "schedule.iters=2"],
     ["--pretrain-override", "--compare"]),
], ids=["import-without-calib-data", "calib-data-unknown", "calib-folder-missing",
        "pretrain-override"])
def test_compare_settings_refused_in_one_line(ckpts, preset, tmp_path, capsys, argv, words):
    call_main(run_all.main, argv(ckpts, tmp_path / "run"), run_all.PROG, capsys,
              must_mention=words, unchanged=tmp_path)


def test_compare_steps_with_detection(ckpts, tmp_path):
    """The ci preset (detection at 0.25x, both engines, both tasks): only a checkpoint that can
    go to detectors (not a CIFAR-stem one) and was trained at 0.25x (not the 1.0x import) is
    fine-tuned, its export carries the engines' formats, and the collected table labels its runs
    (by checkpoint sha256) and groups by them."""
    cifar = make_checkpoint(tmp_path / "cifar.pth", arch="resnet18", stem="cifar",
                            width_range=(0.25, 1.0), seed=1)
    args = argparse.Namespace(preset="ci", calib_data="digits", data_root=None, det_data=None,
                              gpus=1, compare=[f"cifar={cifar}", f"tv={ckpts['tv']}",
                                               f"det r18={ckpts['ours']}"], pretrain_override=[])
    entries, problem = run_all.check_compare(args, run_all.PRESETS["ci"])
    assert problem is None
    assert [(e.label, e.widths, e.det_widths) for e in entries] == [
        ("cifar", [0.25, 1.0], []), ("tv", [1.0], []), ("det r18", [0.25, 1.0], [0.25])]
    det = ckpts["ours"]
    out = tmp_path / "out"
    steps = run_all.build_compare_steps(args, run_all.PRESETS["ci"], out, entries)
    key = entries[2].key
    assert key == f"ours-{file_sha256(det)[:8]}"
    assert [s.name for s in steps] == [
        "data-classification", "data-detection",
        f"convert-{entries[0].key}", f"linear-probe-{entries[0].key}",
        f"convert-{entries[1].key}", f"linear-probe-{entries[1].key}",
        f"convert-{key}", f"linear-probe-{key}",
        *[f"det-{key}-{engine}-{task}-w0.25" for engine in ("detectron2", "mmdet")
          for task in ("voc", "coco")], "collect-detection"]
    by_name = {s.name: s for s in steps}

    def formats(step):
        cmd = step.command
        return cmd[cmd.index("--formats") + 1:cmd.index("--out")]
    assert formats(by_name[f"convert-{entries[0].key}"]) == ["torchvision"]
    assert formats(by_name[f"convert-{key}"]) == ["torchvision", "detectron2", "mmdet"]
    assert by_name[f"det-{key}-mmdet-coco-w0.25"].command[2:6] == [
        "mmdet", "coco", str(out / "compare" / key / "export" / "w0.25"), "--out"]
    collect = by_name["collect-detection"].command
    assert collect[2:4] == [str(out / "compare" / key / "det"), "--out"]
    assert collect[collect.index("--label") + 1] == f"{file_sha256(det)}=det r18"
    assert collect.count("--label") == 1 and "--group-by" in collect


# ------------------------------------------------------------------------------ collect_results
def _run(root: Path, name: str, sha: str, width: float, ap50: float, meta_source: dict | None):
    """A metrics.json written by the schema's own writer; its export's meta.json (when
    ``meta_source`` is given) records the source as the converter does."""
    export = root / "exports" / name
    meta = {"arch": "resnet18", "width": width, "params": 1_000_000,
            "macs_224": int(width * 1e9), "source": {"sha256": sha, **(meta_source or {})}}
    if meta_source is not None:
        export.mkdir(parents=True)
        (export / "meta.json").write_text(json.dumps(meta))
    record = metrics.make_record("detectron2", "voc", meta,
                                 {"AP": ap50 / 2, "AP50": ap50, "AP75": 1.0}, [],
                                 run={"iterations": 10, "eval_only": False,
                                      "export": str(export)})
    metrics.write(root / "runs" / name, record)


def _rows(markdown: str, heading: str) -> list[list[str]]:
    lines = markdown.splitlines()
    rows = []
    for line in lines[lines.index(f"### {heading}") + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


@pytest.fixture
def det_runs(tmp_path):
    a, b, c = "aa" * 32, "bb" * 32, "cc" * 32
    _run(tmp_path, "a1", a, 1.0, 60.0, {"method": "solo-learn byol",
                                        "imported_from": {"label": "solo-learn BYOL"}})
    _run(tmp_path, "b1", b, 1.0, 50.0, {"method": "us3l"})
    _run(tmp_path, "b5", b, 0.5, 40.0, {"method": "us3l"})
    _run(tmp_path, "c5", c, 0.5, 30.0, None)  # its export is gone: the sha256 label
    return tmp_path, (a, b, c)


def test_collect_results_labels_rows_by_source_and_groups_by_it(det_runs, capsys):
    root, (a, b, c) = det_runs
    out = root / "report"
    assert collect_results.main([str(root / "runs"), "--out", str(out), "--group-by", "source",
                                 "--label", f"{b[:10]}=US3L (ours)"]) == 0
    text = (out / "detection_results.md").read_text()
    order = ["US3L (ours)", "checkpoint cccccccc", "solo-learn BYOL"]  # --label first, then sorted
    assert _rows(text, "detectron2 / voc: AP50 by source") == [
        ["arch", "width", *order], ["---", "---", "---", "---", "---"],
        ["R-18", "1x", "50.0", "–", "60.0"], ["R-18", "0.5x", "40.0", "30.0", "–"]]
    for label, sha, widths in (("US3L (ours)", b, ["0.5x", "1x"]),
                               ("solo-learn BYOL", a, ["1x"]),
                               ("checkpoint cccccccc", c, ["0.5x"])):
        rows = _rows(text, f"detectron2 / voc: {label}")[2:]
        assert [r[0] for r in rows] == [label] * len(widths) and [r[2] for r in rows] == widths
        assert all(r[-2] == sha[:12] for r in rows)
    csv_rows = (out / "detection_results.csv").read_text().splitlines()
    assert csv_rows[0].split(",")[:3] == ["engine", "task", "source"]
    assert sorted(r.split(",")[2] for r in csv_rows[1:]) == sorted(
        ["solo-learn BYOL", "US3L (ours)", "US3L (ours)", "checkpoint cccccccc"])
    assert (out / "det_detectron2_voc.png").read_bytes()[:4] == b"\x89PNG"
    # without --group-by: one table, every row labelled by its source
    assert collect_results.main([str(root / "runs"), "--out", str(root / "plain")]) == 0
    rows = _rows((root / "plain" / "detection_results.md").read_text(), "detectron2 / voc")
    assert rows[0][:3] == ["source", "arch", "width"]
    assert sorted(r[0] for r in rows[2:]) == sorted(
        ["solo-learn BYOL", "us3l", "us3l", "checkpoint cccccccc"])


def test_collect_results_label_given_as_checkpoint_file(det_runs, tmp_path):
    root, _ = det_runs
    ckpt = tmp_path / "some.pth"
    ckpt.write_bytes(b"weights")
    sha = file_sha256(ckpt)
    _run(root, "d1", sha, 1.0, 20.0, None)
    assert collect_results.main([str(root / "runs"), "--out", str(root / "rep"),
                                 "--label", f"{ckpt}=mine"]) == 0
    rows = _rows((root / "rep" / "detection_results.md").read_text(), "detectron2 / voc")
    assert [r[0] for r in rows[2:] if r[-2] == sha[:12]] == ["mine"]


@pytest.mark.parametrize("label,words", [
    ("nolabel", ["is not CKPT_OR_SHA256=LABEL"]),
    ("aaaaaaaa=", ["is not CKPT_OR_SHA256=LABEL"]),
    ("xyz=mine", ["neither a checkpoint file nor a sha256"]),
    ("aaaaaaaa=a|b", ["'|'"]),
    ("dddddddd=mine", ["matches no run's checkpoint"]),
], ids=["no-equals", "empty-label", "not-sha-nor-file", "bar-in-label", "matches-no-run"])
def test_collect_results_bad_label_one_line_nothing_written(det_runs, capsys, label, words):
    root, _ = det_runs
    call_main(collect_results.main, [str(root / "runs"), "--out", str(root / "report"),
                                     "--label", label], collect_results.PROG, capsys,
              must_mention=words, unchanged=root)


def test_collect_results_same_checkpoint_labelled_twice(det_runs, capsys):
    root, (a, _, _) = det_runs
    call_main(collect_results.main, [str(root / "runs"), "--out", str(root / "report"),
                                     "--label", f"{a[:8]}=x", "--label", f"{a}=y"],
              collect_results.PROG, capsys, must_mention=["name the same checkpoint"],
              unchanged=root)
