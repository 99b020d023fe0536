"""The main job, reduced: tools/run_all.py --preset ci runs every step on built-in data and
every artefact exists and holds real numbers; a re-run with unchanged inputs skips every step.

The ci preset is the suite's only single-process train + evaluate run of each detection engine
and task (tests/test_detection.py runs the multi-process, resume and eval-only paths). Nothing
here depends on what its 2- to 6-iteration runs learn: values are checked to be finite
percentages (a detector that predicted nothing scores 0 with a note), never above a threshold.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ["data-classification", "data-detection", "pretrain", "convert", "latency", "linear-probe",
         "det-detectron2-voc-w0.25", "det-detectron2-coco-w0.25", "det-mmdet-voc-w0.25",
         "det-mmdet-coco-w0.25", "collect-detection"]


def _run(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "run_all.py"), "--preset", "ci",
                           "--out", str(out)], capture_output=True, text=True, timeout=1200)


def _finite_percent(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 100.0


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    proc = _run(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_every_step_runs_and_every_artefact_holds_real_numbers(ci_run):
    out, proc = ci_run
    for step in STEPS:
        stamp = json.loads((out / ".steps" / f"{step}.json").read_text())
        assert stamp["skipped"] is False and stamp["seconds"] >= 0
    # One checkpoint, exports at each width with verified engines.
    assert (out / "pretrain" / "checkpoint.pth").is_file()
    for w in ("w0.25", "w1.00"):
        files = {p.name for p in (out / "export" / w).iterdir()}
        assert {"torchvision.pth", "detectron2.pkl", "mmdet.pth", "meta.json"} <= files
        meta = json.loads((out / "export" / w / "meta.json").read_text())
        assert meta["params"] > 0 and meta["macs_224"] > 0
        assert all(err <= 1e-5 for err in meta["verification"]["max_rel_error"].values())
    probe = json.loads((out / "probe" / "results.json").read_text())
    assert sorted(r["width"] for r in probe["rows"]) == [0.25, 1.0]
    for row in probe["rows"]:
        assert set(row["datasets"]) == {"cifar10", "digits"}
        assert all(_finite_percent(e["value"]) for e in row["datasets"].values())
    for engine in ("detectron2", "mmdet"):
        for task in ("voc", "coco"):
            m = json.loads((out / "det" / f"{engine}_{task}_w0.25" / "metrics.json").read_text())
            assert (m["engine"], m["task"], m["width"]) == (engine, task, 0.25)
            keys = ["AP", "AP50", "AP75"] + (["APm", "APm50", "APm75"] if task == "coco" else [])
            assert all(_finite_percent(m[k]) for k in keys), m
            # the short schedule's total batch 2 (lr scaled linearly), every detection kept
            resolved = m["run"]["protocol"]
            assert (resolved["total_batch"], resolved["processes"]) == (2, 1)
            assert resolved["lr"] == pytest.approx(0.0025)
            count = m["run"]["detections"]["count"]
            assert count > 0 or m["run"]["notes"] == [
                "no detections on the test set (none above the score threshold): every AP is 0"]
            assert json.loads((out / "det" / f"{engine}_{task}_w0.25" / "run.json").read_text())[
                "engine"] == engine
    report = (out / "report.md").read_text()
    assert "| 0.25x |" in report and "| 1x |" in report and "run_all.py" in report
    for png in ("accuracy_vs_width.png", "accuracy_vs_macs.png", "training_curves.png",
                "accuracy_vs_latency.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "report.html").read_text().count("<img") == 4
    # the latency step (issue #14): each width timed on this machine, a column in the table
    for w in ("w0.25", "w1.00"):
        lat = json.loads((out / "export" / w / "latency.json").read_text())
        median = lat["backends"]["torch"]["batches"]["1"]["median_ms"]
        assert math.isfinite(median) and median > 0
    assert "Latency b1, this machine" in report and " ms (torch) |" in report
    assert "| 0.25x |" in proc.stdout
    # live progress from every kind of step, on the console and in the logs (no bar redraws)
    for pattern in (r"\[pretrain\] iteration 5/6, loss \d", r"\[convert\] converted w0\.25: params",
                    r"\[linear-probe\] probe width 0\.25x, digits: \d",
                    r"\[det-detectron2-voc-w0\.25\] iteration 2, loss \d",
                    r"\[det-mmdet-coco-w0\.25\] iteration 2/2, loss \d"):
        assert re.search(pattern, proc.stdout), pattern
    assert "progress: iteration 6/6" in (out / "logs" / "pretrain.log").read_text()
    assert "\r" not in (out / "logs" / "linear-probe.log").read_text()
    # detection from 2 iterations at batch 2 is a smoke check, marked as one
    assert report.count("(smoke check)") >= 4 and "Answer: On digits (real, scikit-learn)" in report


@pytest.mark.slow
def test_rerun_skips_finished_steps(ci_run):
    out, _ = ci_run
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("up to date, skipped") == len(STEPS)


def test_real_data_preset_without_data_root_fails_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "run_all.py"), "--preset",
                           "cifar100-r18", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--data-root" in proc.stderr
    assert not (tmp_path / "x").exists()


def _step(tmp: Path, name: str, code: str, inputs=(), outputs=("out.txt",), clean=()):
    from transfer.pipeline import Step
    return Step(name, [sys.executable, "-c", code], outputs=[tmp / o for o in outputs],
                inputs=[tmp / i for i in inputs], clean=[tmp / c for c in clean])


def test_pipeline_reruns_a_step_whose_input_changed_and_a_failed_step_leaves_no_stamp(tmp_path):
    """The only check of the step logic: skipped when nothing changed, re-run when an input file
    changed, a failed step leaves no stamp (and loses an old one), owned folders are cleaned."""
    from transfer.pipeline import Pipeline, StepFailed

    (tmp_path / "in.txt").write_text("a")
    (tmp_path / "owned").mkdir()
    (tmp_path / "owned" / "stale").write_text("x")
    copy = (f"import pathlib; p = pathlib.Path({str(tmp_path)!r}); "
            f"(p / 'out.txt').write_text((p / 'in.txt').read_text())")
    lines: list[str] = []
    pipe = Pipeline(tmp_path / "run", log=lines.append)
    step = _step(tmp_path, "copy", copy, inputs=["in.txt"], clean=["owned"])
    assert pipe.run(step)["skipped"] is False and (tmp_path / "out.txt").read_text() == "a"
    assert not (tmp_path / "owned").exists()
    assert pipe.run(step)["skipped"] is True
    (tmp_path / "in.txt").write_text("bb")  # size and mtime change
    assert pipe.run(step)["skipped"] is False and (tmp_path / "out.txt").read_text() == "bb"

    stamp = tmp_path / "run" / ".steps" / "copy.json"
    assert stamp.is_file()
    failing = _step(tmp_path, "copy", "import sys; print('half done'); sys.exit(3)",
                    inputs=["in.txt"])
    with pytest.raises(StepFailed, match=r"step 'copy' failed \(exit 3\).*full log: .*copy.log"):
        pipe.run(failing)
    assert not stamp.exists()  # the old stamp does not survive a failed re-run
    assert "half done" in (tmp_path / "run" / "logs" / "copy.log").read_text()
    assert not pipe.is_done(step)
    assert pipe.run(step)["skipped"] is False  # and the next run runs it again
    missing = _step(tmp_path, "nothing", "pass", outputs=["never.txt"])
    with pytest.raises(StepFailed, match="did not write"):
        pipe.run(missing)
    assert not (tmp_path / "run" / ".steps" / "nothing.json").exists()


def test_progress_lines_reach_the_console_and_every_line_the_log(tmp_path):
    """A step's progress lines are echoed as '[step] ...' while it runs; every line (a bar's
    carriage-return redraws split into lines) goes to its log."""
    from transfer.pipeline import Pipeline
    code = ("import sys; print('progress: iteration 1/2, loss 3.5'); print('chatter'); "
            "sys.stdout.write('bar 1/2\\rbar 2/2\\n'); print('progress: iteration 2/2, loss 3.1')")
    lines: list[str] = []
    Pipeline(tmp_path / "run", log=lines.append).run(_step(tmp_path, "work", code + "; open("
                                                          f"{str(tmp_path / 'out.txt')!r}, 'w')"))
    shown = [line for line in lines if not line.startswith("[work] $")]
    assert shown[:2] == ["[work] iteration 1/2, loss 3.5", "[work] iteration 2/2, loss 3.1"]
    assert shown[2].startswith("[work] done in ")
    assert (tmp_path / "run" / "logs" / "work.log").read_text().splitlines() == [
        "progress: iteration 1/2, loss 3.5", "chatter", "bar 1/2", "bar 2/2",
        "progress: iteration 2/2, loss 3.1"]


def test_progress_line_reads_each_engines_own_format():
    from transfer.pipeline import progress_line
    assert progress_line("[11/29 02:35:00 d2.utils.events]:  eta: 0:00:12  iter: 19  "
                         "total_loss: 1.963  loss_cls: 0.6") == "iteration 20, loss 1.963, ETA 0:00:12"
    assert progress_line("11/29 02:36:00 - mmengine - INFO - Iter(train) [ 8/40]  lr: 1e-04  "
                         "eta: 0:00:31  time: 0.5  loss: 2.3456  loss_rpn_cls: 0.6") == \
        "iteration 8/40, loss 2.3456, ETA 0:00:31"
    assert progress_line("w0.25: stem 16 | inner [8] | out [16] | params 0.70M | MACs 0.14G@224 "
                         "2.1M@32 | max rel err: x") == "converted w0.25: params 0.70M, MACs 0.14G@224"
    assert progress_line("loading annotations") is None


def test_demo_puts_a_random_init_baseline_beside_the_checkpoint(tmp_path):
    """The demo's baseline: the pretraining command with --init-only (same config, overrides and
    seed), converted and probed exactly as the checkpoint; the report is told what each dataset
    really is."""
    sys.path.insert(0, str(REPO / "tools"))
    import run_all
    args = run_all.cli.ArgumentParser().parse_args([])
    args.data_root = args.det_data = args.calib_data = None
    args.pretrain_override, args.gpus = [], 1
    preset = run_all.PRESETS["demo"]
    steps = {s.name: s for s in run_all.build_steps(args, preset, tmp_path)}
    init, pre = steps["random-init"].command, steps["pretrain"].command
    assert "--init-only" in init and f"output.dir={tmp_path / 'baselines' / 'random-init'}" in init
    assert [c for c in init if "=" in c and "output.dir" not in c] == \
        [c for c in pre if "=" in c and "output.dir" not in c]
    probe, base_probe = steps["linear-probe"].command, steps["linear-probe-random-init"].command
    assert base_probe[base_probe.index("--datasets"):base_probe.index("--out")] == \
        probe[probe.index("--datasets"):probe.index("--out")]
    assert str(tmp_path / "baselines" / "random-init" / "export") in base_probe
    context = run_all.report_context(args, preset, list(steps.values()))
    assert context["dataset_labels"] == {"digits": "digits (real, scikit-learn)",
                                         "cifar10": "tinted digit scans (CIFAR-10 format, "
                                                    "synthetic)"}
    assert (context["headline"], context["baseline"]) == ("digits", "random-init")
    assert "smoke check" in context["step_notes"]["det-mmdet-voc-w1.00"]
    assert "100 iterations" in context["step_notes"]["pretrain"]


def test_init_only_writes_the_same_untrained_network_for_the_same_seed(tmp_path, capsys):
    import torch

    from pretrain.checkpoint import load_checkpoint
    from importlib import util
    spec = util.spec_from_file_location("pretrain_tool", REPO / "tools" / "pretrain.py")
    tool = util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    small = ["data.synthetic.train_size=64", "data.synthetic.val_size=32", "schedule.iters=3"]
    for name in ("a", "b"):
        assert tool.main(["--init-only", *small, f"output.dir={tmp_path / name}"]) == 0
    a, b = (load_checkpoint(tmp_path / n / "checkpoint.pth") for n in ("a", "b"))
    assert a["train_state"]["iteration"] == 0
    sa, sb = a["state"]["backbone"], b["state"]["backbone"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "random init (seed 0, not trained)" in capsys.readouterr().out
