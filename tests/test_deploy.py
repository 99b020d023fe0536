"""Deploy tools: the picker on hand-made tables, bench_widths and pick_width end to end on a tiny
CIFAR-stem ResNet-18 at 32 px, and their bad input."""
from __future__ import annotations

import json
import math

import pytest

from bad_input_helpers import call_main
from export_helpers import make_checkpoint
from transfer.deploy import bench, memory, pareto, pick, picker, results
from transfer.deploy.picker import Budget, Candidate
from transfer.export import convert

pytestmark = pytest.mark.usefixtures("one_thread")
MEASURE = ["--reps", "3", "--warmup", "1", "--threads", "1"]
CALIB = ["--calib-batches", "2", "--calib-batch-size", "4"]


# ------------------------------------------------------------------ picker on hand-made tables
def table():
    return [Candidate(0.25, 2.0, 2.2, 50), Candidate(0.5, 4.0, 4.4, 80),
            Candidate(0.75, 7.5, 8.1, 150), Candidate(1.0, 12.0, 13.0, 260)]


def test_most_accurate_within_latency_wins_and_says_why():
    cands = table()
    picker.attach_accuracy(cands, {0.25: 60.0, 1.0: 72.0}, "probe", results.interpolate)
    chosen, why = picker.choose(cands, Budget(8.0))
    assert chosen.width == 0.75
    assert chosen.accuracy == pytest.approx(60 + 12 * (0.75 - 0.25) / 0.75)
    assert chosen.accuracy_note == "interpolated between measured widths"
    assert [c.accuracy_note for c in cands][0].startswith("measured")
    assert "most accurate" in why and "1x, misses: latency 12.00 > 8 ms" in why


def test_memory_budget_and_accuracy_beat_width():
    cands = table()
    picker.attach_accuracy(cands, {0.25: 60.0, 0.5: 70.0, 0.75: 65.0, 1.0: 72.0}, "probe",
                           results.interpolate)
    assert picker.choose(cands, Budget(20.0))[0].width == 1.0
    assert picker.choose(cands, Budget(20.0, memory_mb=200))[0].width == 0.5  # 0.75 is worse
    assert picker.misses(cands[3], Budget(20.0, memory_mb=200)) == ["memory 260 > 200 MiB"]


def test_without_accuracy_the_widest_fitting_width_wins():
    cands = table()
    picker.attach_accuracy(cands, {}, "none", results.interpolate)
    chosen, why = picker.choose(cands, Budget(5.0))
    assert chosen.width == 0.5 and "widest" in why and all(c.accuracy is None for c in cands)


def test_nothing_fits_names_the_fastest_width():
    with pytest.raises(picker.NothingFits) as err:
        picker.choose(table(), Budget(1.0))
    assert err.value.fastest.width == 0.25
    assert "0.25x" in str(err.value) and "2.00 ms" in str(err.value) and "\n" not in str(err.value)


def test_interpolation_never_extrapolates():
    known = {0.5: 70.0, 1.0: 80.0}
    assert results.interpolate(known, 0.75) == pytest.approx(75.0)
    assert results.interpolate(known, 0.25) is None and results.interpolate(known, 0.5) == 70.0


def test_search_bisects_to_the_boundary_and_keeps_every_measurement():
    widths = [round(0.25 + 0.025 * i, 3) for i in range(31)]     # 0.25 .. 1.0
    latency = {w: 1.0 + 10 * w * w for w in widths}                # a hand-made latency table
    seen = []

    def measure(w):
        seen.append(w)
        return Candidate(w, latency[w])

    measured = picker.search(widths, measure, Budget(6.0))
    best = max(w for w in widths if latency[w] <= 6.0)
    assert picker.choose(measured, Budget(6.0))[0].width == best
    assert [c.width for c in measured] == seen and len(seen) <= 2 + math.ceil(math.log2(31))
    assert len(picker.search(widths, measure, Budget(100.0))) == 2      # widest fits: stop
    assert len(picker.search(widths, measure, Budget(0.5))) == 1        # narrowest misses: stop


def test_pareto_front_and_plot(tmp_path):
    rows = [{"width": 0.25, "accuracy": 60, "latency_ms": 2, "label": "a"},
            {"width": 0.5, "accuracy": 58, "latency_ms": 3, "label": "a"},
            {"width": 1.0, "accuracy": 70, "latency_ms": 9, "label": "a"}]
    assert [r["width"] for r in pareto.pareto_front(rows)] == [0.25, 1.0]
    path = pareto.plot_pareto(rows, tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert pareto.plot_pareto([dict(rows[0], accuracy=None)], tmp_path / "q.png") is None
    assert results.read_latency(tmp_path) is None


# ------------------------------------------------------------------ end to end on a tiny model
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder as tools/run_all.py lays it out: export/w*/ and probe/results.json."""
    d = tmp_path_factory.mktemp("deploy")
    ckpt = make_checkpoint(d / "r18c.pth", "resnet18", stem="cifar",
                           data={"name": "synthetic", "image_size": 32})
    assert convert.main([str(ckpt), "--out", str(d / "run" / "export"), "--widths", "0.25",
                         "0.5", "--formats", "torchvision", "onnx", *CALIB, "--quiet"]) == 0
    (d / "run" / "probe").mkdir()
    (d / "run" / "probe" / "results.json").write_text(json.dumps({"rows": [
        {"width": 0.25, "datasets": {"cifar100": {"value": 40.0}}},
        {"width": 0.5, "datasets": {"cifar100": {"value": 50.0}}}]}))
    return ckpt, d / "run"


def test_bench_widths_writes_latency_table_and_pareto(run_folder, capsys):
    _, run = run_folder
    assert bench.main([str(run / "export"), "--batch", "2", "--no-memory", "--cpu-only",
                       *MEASURE]) == 0
    rec = results.read_latency(run / "export" / "w0.50")
    assert set(rec) == {"width", "input_size", "machine", "backends"}
    assert set(rec["backends"]) == {"torch", "onnxruntime"} and rec["machine"]["threads"] == 1
    entry = rec["backends"]["onnxruntime"]
    assert entry["threads"] == 1 and set(entry["batches"]) == {"1", "2"}
    b2 = entry["batches"]["2"]
    assert b2["median_ms"] > 0 and b2["p90_ms"] >= b2["median_ms"] and b2["reps"] == 3
    assert b2["throughput_ips"] == pytest.approx(2 / (b2["median_ms"] / 1e3))
    assert (run / "export" / "pareto.png").is_file() and (run / "export" / "latency.md").is_file()
    assert "| 0.25 | onnxruntime (cpu) | 1 |" in capsys.readouterr().out


def test_peak_memory_is_measured_in_a_fresh_process(run_folder):
    _, run = run_folder
    peaks = memory.measure(run / "export" / "w0.25", "torch", 1, "cpu", [1, 4])
    assert set(peaks) == {"1", "4"} and 0 < peaks["1"] <= peaks["4"]


def test_pick_from_export_reuses_measurements_and_exports(run_folder, tmp_path, capsys):
    _, run = run_folder
    rc = pick.main(["--export", str(run / "export"), "--latency-ms", "1e6", "--backend", "torch",
                    "--metric", "cifar100", "--export-to", str(tmp_path / "chosen"), *MEASURE])
    out = capsys.readouterr().out
    assert rc == 0 and "chosen: 0.5x" in out and "50.00 (measured, probe:cifar100" in out
    assert (tmp_path / "chosen" / "w0.50" / "torchvision.pth").is_file()


def test_pick_from_checkpoint_searches_and_keeps_candidates(run_folder, tmp_path, capsys):
    ckpt, run = run_folder
    cache = tmp_path / "cache"
    rc = pick.main(["--ckpt", str(ckpt), "--latency-ms", "1e6", "--backend", "torch",
                    "--results", str(run), "--cache", str(cache), *CALIB, *MEASURE])
    out = capsys.readouterr().out
    assert rc == 0 and "chosen: 1x" in out
    kept = sorted(p.parent.name for p in cache.glob("w*/latency.json"))
    assert kept == ["w0.25", "w1.00"]  # narrowest and widest measured; the widest fits: done


def test_nothing_fits_exit_2_one_line_with_fastest(run_folder, capsys):
    _, run = run_folder
    line = call_main(pick.main, ["--export", str(run / "export"), "--latency-ms", "1e-6",
                                 "--backend", "torch", *MEASURE], pick.PROG, capsys,
                     must_mention=("fastest", "ms", "p90"))
    assert "0.25x" in line or "0.5x" in line  # whichever this noisy run measured faster


@pytest.mark.parametrize("argv,words", [
    (["--latency-ms", "-1"], ("--latency-ms", "> 0")),
    (["--latency-ms", "nan"], ("--latency-ms", "finite")),
    (["--latency-ms", "0"], ("--latency-ms",)),
    (["--latency-ms", "8", "--memory-mb", "-5"], ("--memory-mb",)),
    (["--latency-ms", "8", "--metric", "imagenet"], ("--metric", "cifar100")),
    (["--latency-ms", "8", "--backend", "tensorrt"], ("--backend",)),
])
def test_bad_budgets_one_line_exit_2(run_folder, capsys, argv, words):
    _, run = run_folder
    call_main(pick.main, ["--export", str(run / "export"), *argv], pick.PROG, capsys,
              must_mention=words, unchanged=run)


def test_bad_input_bench_and_pick(tmp_path, capsys):
    call_main(bench.main, [str(tmp_path / "missing")], bench.PROG, capsys,
              must_mention=("not a folder",))
    call_main(bench.main, [str(tmp_path)], bench.PROG, capsys, must_mention=("no width export",),
              unchanged=tmp_path)
    call_main(pick.main, ["--export", str(tmp_path / "missing"), "--latency-ms", "8"], pick.PROG,
              capsys, must_mention=("--export",))


def test_a_wider_width_without_accuracy_ranks_above_the_measured_ones_below_it():
    cands = table()
    picker.attach_accuracy(cands, {0.25: 60.0, 0.5: 70.0}, "probe", results.interpolate)
    chosen, why = picker.choose(cands, Budget(8.0))
    assert chosen.width == 0.75 and chosen.accuracy is None and "widest" in why
