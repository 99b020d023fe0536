"""tools/reproduce.py: the paper's tables as data, the commands per row, the side-by-side collect.

Everything runs in-process except one --run --smoke of a real row (its three tools as
subprocesses, at toy scale: a real row's --run takes GPU-hours); --collect reads
results files made by the suite's own writers (detection: transfer.detection.metrics.write; probe:
the results.json layout transfer/linear/runner.py writes, checked against its own reader
transfer.report.tables.markdown_table).
"""
from __future__ import annotations

import json
import math
import re
import shlex
import sys
from pathlib import Path

import pytest

from bad_input_helpers import ROOT, call_main, snapshot
from pretrain.config import load_config
from pretrain.safe_io import atomic_write, published

sys.path.insert(0, str(ROOT / "tools"))
import reproduce  # noqa: E402

from transfer.detection import metrics as det_metrics  # noqa: E402
from transfer.linear.runner import RESULTS_FORMAT  # noqa: E402
from transfer.report.tables import markdown_table  # noqa: E402
from transfer.reproduce import commands as C  # noqa: E402
from transfer.reproduce import paper  # noqa: E402

PROG = reproduce.PROG
ALL_ROWS = [r for t in paper.TABLES.values() for r in t.rows]
COVERED = [r for r in ALL_ROWS if r.covered]


def run_main(argv, capsys) -> str:
    capsys.readouterr()
    assert reproduce.main(list(argv)) == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------------------ the data
def test_paper_data_has_every_table_and_a_number_for_every_width():
    assert list(paper.TABLES) == [str(i) for i in range(1, 10)] + ["fig3"]
    for t in paper.TABLES.values():
        keys = [r.key for r in t.rows]
        assert len(keys) == len(set(keys)), t.key
        for r in t.rows:
            assert r.table == t.key and all(0 < w <= 1 for w in r.widths)
            if t.key == "fig3":  # values only drawn in the figure
                assert r.paper == {} and "+18.5" in r.note
                continue
            assert set(r.paper) == set(r.metrics), (t.key, r.key)
            for values in r.paper.values():
                assert set(values) == set(r.widths), (t.key, r.key)
                assert all(v is None or 0 < v < 100 for v in values.values())
    # spot checks against the paper's text
    assert paper.table("2").rows[8].paper["cifar100"][0.25] == 60.4       # R-18 Ours
    assert paper.table("7").rows[0].paper["cifar100"][1.0] is None        # case 1 collapses
    assert paper.table("5").rows[1].paper["APm75"][0.25] == 26.9
    assert paper.table("6").rows[1].paper["flowers102"][1.0] == 90.6
    assert paper.table("Fig. 3") is paper.table("fig3") and paper.table("table9").key == "9"


def test_every_covered_row_resolves_with_its_overrides():
    assert len(COVERED) >= 60
    for r in COVERED:
        path = C.config_path(r)
        assert path.is_file(), path
        for fixed in (r.widths if r.individual else [None]):
            cfg = C.resolved_config(r, fixed)
            assert cfg == load_config(path, list(r.overrides) + (
                [f"sampling.fixed_width={fixed}"] if fixed is not None else []))
            if fixed is not None:
                assert cfg["sampling"]["min_width"] == cfg["sampling"]["max_width"] == fixed
            else:  # one checkpoint must hold every width the row reports
                s = cfg["sampling"]
                assert s["min_width"] <= min(r.widths) and max(r.widths) <= s["max_width"]
        for text in r.overrides:  # each override reaches the resolved config
            key, value = text.split("=", 1)
            node = C.resolved_config(r)
            for part in key.split("."):
                node = node[part]
            assert str(node).lower() == value.lower() or float(node) == float(value), text
    case1 = next(r for r in paper.table("7").rows if r.key == "case1")
    m = C.resolved_config(case1)["method"]
    assert (m["base_loss"], m["distill_loss"]) == ("mse", "none")


def test_estimates_are_finite_and_sharper_for_us3l_than_us_net():
    for r in COVERED:
        est = C.estimate(r)
        assert math.isfinite(est.total) and est.pretrain > 0 and est.evaluate > 0, r.key
        assert "img/s" in est.basis
    rows = {r.key: r for r in paper.table("2").rows}
    ours, us = C.estimate(rows["r18-ours"]), C.estimate(rows["r18-us-simclr"])
    # Algorithm 1 trains fewer width^2 per iteration than the 4-width sandwich
    assert C.width_cost(C.resolved_config(rows["r18-ours"])) < \
        C.width_cost(C.resolved_config(rows["r18-us-simclr"]))
    assert ours.pretrain > 0 and us.pretrain > 0


# ------------------------------------------------------------------------------ --list, --dry-run
def test_list_names_every_table_and_row(capsys):
    out = run_main(["--list"], capsys)
    sections = out.strip().split("\n\n")
    assert len(sections) == len(paper.TABLES)
    for t, section in zip(paper.TABLES.values(), sections):
        assert section.startswith(t.title)
        for r in t.rows:
            line = next(line for line in section.splitlines() if line.split()[:1] == [r.key]
                        and r.name in line)
            if r.covered:
                assert f"covered: configs/pretrain/{r.config}.yaml" in line
            else:
                assert "not available" in line
    assert "not available: the suite has no supervised" in out  # Table 1's supervised rows


def test_dry_run_2_prints_commands_whose_configs_exist(capsys, tmp_path):
    out = run_main(["--dry-run", "2", "--out", str(tmp_path / "r"), "--data-root", "/data"],
                   capsys)
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
    cmds = [shlex.split(line) for line in out.splitlines()
            if "tools/pretrain.py" in line or "tools/convert_width.py" in line
            or "tools/linear_probe.py" in line]
    pre = [c for c in cmds if any(a.endswith("tools/pretrain.py") for a in c)]
    assert pre and all((ROOT / c[c.index("--config") + 1]).is_file() for c in pre)
    assert all("data.root=/data" in c for c in pre)
    t2 = paper.table("2")
    covered = [r for r in t2.rows if r.covered]
    # one pretraining per once-trained row, one per width for an individually trained one, and
    # a SEED row's teacher first
    assert len(pre) == sum((len(r.widths) if r.individual else 1) + bool(C.teacher_config(r))
                           for r in covered)
    probes = [c for c in cmds if any(a.endswith("tools/linear_probe.py") for a in c)]
    assert all(c[c.index("--protocol") + 1] == "sgd" and c[c.index("--image-size") + 1] == "32"
               for c in probes)
    for r in t2.rows:
        assert f"## {r.key}: {r.name}" in out
    assert len(re.findall(r"^   estimate: [0-9.]+ GPU-h", out, re.M)) == len(covered)
    assert all(f"   {r.unavailable}" in out for r in t2.rows if not r.covered)
    assert "ESTIMATES" in out and "not measured" in out


def test_seed_rows_pretrain_their_teacher_first_and_name_its_file(tmp_path):
    rows = {r.key: r for r in paper.table("2").rows}
    for key, teacher in (("r18-seedmse-r18", "byol_r18_cifar100"),
                         ("r18-seed-r50", "byol_r50_cifar100")):
        cmds = C.commands(rows[key], C.Settings(out=tmp_path))
        first, students = cmds[0], [c for c in cmds[1:] if c.kind == "pretrain"]
        ckpt = tmp_path / "pretrain" / teacher / "checkpoint.pth"
        assert first.kind == "pretrain" and first.outputs == [ckpt]
        assert first.argv[first.argv.index("--config") + 1].endswith(f"{teacher}.yaml")
        assert len(students) == len(rows[key].widths)
        for c in students:
            named = [a for a in c.argv if a.startswith("teacher.checkpoint=")]
            assert named == [f"teacher.checkpoint={ckpt}"] and ckpt in c.inputs
    plain = C.commands(rows["r18-ours"], C.Settings(out=tmp_path))
    assert C.teacher_config(rows["r18-ours"]) is None
    assert not any(a.startswith("teacher.") for c in plain for a in c.argv)


def test_dry_run_detection_rows_use_train_det_with_gpus(capsys):
    out = run_main(["--dry-run", "5", "--gpus", "8", "--det-data", "/d2"], capsys)
    det = [line for line in out.splitlines() if "tools/train_det.sh" in line]
    assert len(det) == 8  # 2 rows x 4 widths
    assert all(line.startswith("DETECTRON2_DATASETS=/d2 bash ") and "--gpus 8" in line
               and " coco " in line for line in det)
    assert "torch.distributed.run --nproc_per_node=8" in out


# ------------------------------------------------------------------------------ --collect
def probe_results(widths_values: dict, dataset="cifar100", protocol="sgd") -> dict:
    """The results.json layout of transfer/linear/runner.py ``_run``."""
    return {"format": RESULTS_FORMAT, "protocol": protocol,
            "source": {"model": {"arch": "resnet18"}}, "datasets": [dataset],
            "metrics": {dataset: "top1"}, "image_size": 32, "device": "cpu",
            "rows": [{"width": w, "params": 1000, "macs": 2000, "macs_from": "fvcore",
                      "datasets": {dataset: {"metric": "top1", "value": v, "n_train": 10,
                                             "n_val": 0, "n_test": 10}}}
                     for w, v in widths_values.items()]}


def write_probe(folder: Path, results: dict) -> None:
    markdown_table(results)  # the suite's own reader accepts it
    folder.mkdir(parents=True)
    atomic_write(folder / "results.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))


def write_det(folder: Path, width: float, values: dict, task="coco") -> None:
    meta = {"model": {"arch": "resnet50"}, "width": width, "source_sha256": "ab" * 32,
            "params": 123, "macs": 456}
    record = det_metrics.make_record("detectron2", task, meta, values, [])
    folder.mkdir(parents=True)
    det_metrics.write(folder, record)


def test_collect_puts_paper_ours_and_difference_side_by_side(capsys, tmp_path):
    out = tmp_path / "runs"
    write_probe(out / "table2" / "r18-ours" / "probe", probe_results({1.0: 70.0, 0.25: 58.1}))
    write_probe(out / "table2" / "r18-byol" / "probe_w0.50", probe_results({0.5: 62.6}))
    text = run_main(["--collect", "2", "--out", str(out)], capsys)
    assert "3 of" in text
    md = (out / "table2" / "table2.md").read_text()
    png = out / "table2" / "table2.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    lines = {(c[0], c[1]): c[2:] for c in (
        [x.strip() for x in line.strip("|").split("|")] for line in md.splitlines()
        if line.startswith("| ResNet") or line.startswith("| MobileNet"))}
    assert lines[("ResNet-18 Ours", "1x")] == ["69.0", "70.0", "+1.0"]
    assert lines[("ResNet-18 Ours", "0.25x")] == ["60.4", "58.1", "-2.3"]
    assert lines[("ResNet-18 Ours", "0.5x")] == ["64.7", "–", "–"]
    assert lines[("ResNet-18 BYOL", "0.5x")] == ["62.1", "62.6", "+0.5"]
    assert lines[("MobileNetv2 US+SimSiam", "1x")] == ["-", "–", "–"]  # collapsed in the paper
    seed = next(r for r in paper.table("2").rows if r.key == "r18-seed-r50")
    seed_name = seed.name + ("" if seed.covered else " (not available)")
    assert lines[(seed_name, "1x")] == ["67.3", "–", "–"]
    assert all(f"- {r.key}: {r.unavailable}" in md for r in paper.table("2").rows if not r.covered)
    assert published(out.rglob("*")) == list(out.rglob("*"))  # no temp file left

    t2 = paper.table("2")
    recs = reproduce.collect(t2, list(t2.rows), out)
    got = {(x["row"], x["width"]): round(x["diff"], 4) for x in recs if x["diff"] is not None}
    assert got == {("r18-ours", 1.0): 1.0, ("r18-ours", 0.25): -2.3, ("r18-byol", 0.5): 0.5}


def test_collect_detection_reads_metrics_json_of_its_engine_and_task(capsys, tmp_path):
    out = tmp_path / "runs"
    det = out / "table5" / "ours" / "det"
    write_det(det / "detectron2_coco_w0.50",
              0.5, {"AP": 34.0, "AP50": 52.7, "AP75": 35.0, "APm": 30.6, "APm50": None,
                    "APm75": 33.3})
    write_det(det / "detectron2_voc_w0.25", 0.25, {"AP": 90.0, "AP50": 90.0, "AP75": 90.0},
              task="voc")  # another task: not Table 5's
    run_main(["--collect", "5", "--out", str(out), "--rows", "ours"], capsys)
    md = (out / "table5" / "table5.md").read_text()
    row = next([x.strip() for x in line.strip("|").split("|")] for line in md.splitlines()
               if line.startswith("| Ours | 0.5x"))
    assert row[2:] == ["33.5", "34.0", "+0.5", "52.7", "52.7", "+0.0", "35.8", "35.0", "-0.8",
                       "30.6", "30.6", "+0.0", "49.8", "–", "–", "32.3", "33.3", "+1.0"]
    quarter = next(line for line in md.splitlines() if line.startswith("| Ours | 0.25x"))
    assert "90.0" not in quarter and "BYOL" not in md


def test_collect_without_results_writes_dashes(capsys, tmp_path):
    run_main(["--collect", "fig3", "--out", str(tmp_path)], capsys)
    md = (tmp_path / "tablefig3" / "tablefig3.md").read_text()
    body = [line for line in md.splitlines() if line.startswith("| BYOL") or line.startswith("| Ours")]
    assert len(body) == 8 and all(set(line.replace("|", "").split()[2:]) == {"–"} for line in body)
    assert "+18.5" in md


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("argv, words", [
    (["--dry-run", "10"], ["unknown table", "'10'", "fig3"]),
    (["--run", "table12"], ["unknown table"]),
    (["--dry-run", "2", "--rows", "r18-ours", "nope"], ["unknown row", "'nope'", "r18-ours"]),
    (["--run", "1", "--rows", "sup-snet"], ["sup-snet", "no supervised"]),
    (["--run", "4"], ["no row of table 4", "ImageNet"]),
    (["--collect", "2", "--rows", "bogus"], ["unknown row"]),
    (["--list", "--rows", "x"], ["--rows"]),
    (["--dry-run", "2", "--gpus", "0"], ["--gpus"]),
    (["--dry-run", "2", "--run", "2"], ["not allowed"]),
    (["--collect", "2", "--smoke"], ["--smoke", "--collect"]),
    (["--dry-run", "5", "--smoke"], ["--smoke", "detection", "byol"]),
    ([], ["required"]),
])
def test_bad_input_is_one_line_exit_2(argv, words, capsys, tmp_path):
    out = tmp_path / "out"
    call_main(reproduce.main, argv + ["--out", str(out)] if argv else argv, PROG, capsys,
              must_mention=words, unchanged=out)
    assert not out.exists()


def test_collect_refuses_a_missing_folder_and_foreign_files(capsys, tmp_path):
    call_main(reproduce.main, ["--collect", "2", "--out", str(tmp_path / "none")], PROG, capsys,
              must_mention=["does not exist"], unchanged=tmp_path / "none")
    out = tmp_path / "runs"
    bad = out / "table2" / "r18-ours" / "probe"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text(json.dumps({"rows": []}))
    call_main(reproduce.main, ["--collect", "2", "--out", str(out)], PROG, capsys,
              must_mention=["results.json", RESULTS_FORMAT], unchanged=out)
    (bad / "results.json").write_text("{not json")
    call_main(reproduce.main, ["--collect", "2", "--out", str(out)], PROG, capsys,
              must_mention=["results.json"], unchanged=out)
    det = out / "table5" / "ours" / "det" / "detectron2_coco_w0.50"
    det.mkdir(parents=True)
    (det / "metrics.json").write_text(json.dumps({"schema": "x"}))
    call_main(reproduce.main, ["--collect", "5", "--out", str(out)], PROG, capsys,
              must_mention=["metrics.json"], unchanged=out)
    assert snapshot(out / "table5").keys() == {"ours", "ours/det", "ours/det/detectron2_coco_w0.50",
                                               "ours/det/detectron2_coco_w0.50/metrics.json"}


def test_run_refuses_an_out_under_a_file(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    call_main(reproduce.main, ["--run", "2", "--rows", "r18-ours", "--out", str(blocker / "o")],
              PROG, capsys, must_mention=["is a file"], unchanged=blocker)


# ------------------------------------------------------------------------------ --smoke
def test_smoke_dry_run_shrinks_every_step_of_a_vit_row(capsys, tmp_path):
    text = run_main(["--dry-run", "3", "--rows", "tiny-us-mocov3", "--smoke", "--out",
                     str(tmp_path)], capsys)
    pretrain, convert, probe = [shlex.split(line) for tool in ("pretrain", "convert_width",
                                                               "linear_probe")
                                for line in text.splitlines()
                                if f"tools/{tool}.py " in line and not line.startswith(" ")]
    assert {"model.depth=1", "model.patch_size=8", "schedule.iters=2",
            "data.name=synthetic"} <= set(pretrain)
    assert load_config(C.CONFIG_DIR / "us_mocov3_vit_tiny_cifar10.yaml",
                       [a for a in pretrain if "=" in a and not a.startswith("-")])["model"][
        "depth"] == 1                                            # the overrides resolve
    assert convert[convert.index("--widths") + 1:convert.index("--formats")] == ["1", "0.25"]
    assert probe[probe.index("--datasets") + 1] == "digits"
    assert probe[probe.index("--image-size") + 1] == "32"          # the shrunk ViT's input size


def test_smoke_run_of_a_real_row_end_to_end(capsys, tmp_path):
    """Table 2's "Ours" row through tools/pretrain.py, convert_width.py and linear_probe.py at toy
    scale: the probe's results hold the row's largest and smallest widths; a re-run skips."""
    out = tmp_path / "smoke"
    argv = ["--run", "2", "--rows", "r18-ours", "--smoke", "--out", str(out)]
    run_main(argv, capsys)
    res = json.loads((out / "table2" / "r18-ours" / "probe" / "results.json").read_text())
    assert [r["width"] for r in res["rows"]] == [1.0, 0.25]
    for r in res["rows"]:
        assert 0.0 <= r["datasets"]["digits"]["value"] <= 100.0
    ckpt = out / "pretrain" / "us3l_r18_cifar100+smoke" / "checkpoint.pth"
    assert ckpt.is_file()
    before = ckpt.stat().st_mtime_ns
    assert "done: 3 steps" in run_main(argv, capsys)                   # finished steps are skipped
    assert ckpt.stat().st_mtime_ns == before
