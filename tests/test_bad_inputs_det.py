"""Bad input to the detection tools, collect_results.py and run_all.py (issue #11's matrix, this
share): every case asserts the exit status, exactly one line on stderr, no traceback, and that the
folders involved (the run folder, the export copies, the report folder) are unchanged or still
absent: no run folder is claimed on bad input.

How: the tools' ``main`` functions are called in-process through ``pretrain.cli.run`` exactly as
their ``__main__`` does (``tests/bad_input_helpers.call_main``), so a case costs milliseconds, not
a torch import; a handful of real ``bash tools/train_det.sh`` command lines fail before torchrun
starts. Engines are never mocked: every case fails in the project's own checks before an engine
would run, which is the promise being tested. Hostile files carry a payload that would create a
marker file; each such case asserts the marker does not exist.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import transfer.detectron2.compat  # noqa: F401  (before detectron2)
from transfer.detection import metrics, preflight, synthetic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tools"))
from bad_input_helpers import call_main, run_cmd  # noqa: E402
from export_helpers import make_checkpoint  # noqa: E402
from test_safe_io import Payload, write_hostile_pickle  # noqa: E402

import collect_results  # noqa: E402
import run_all  # noqa: E402
import train_detectron2  # noqa: E402
import train_mmdet  # noqa: E402

WIDTH = "w0.25"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A resnet18 checkpoint exported at 0.25x by the project's converter (detectron2 + mmdet)."""
    from transfer.export.convert import main as convert

    tmp = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(tmp / "ckpt.pth", arch="resnet18")
    rc = convert([str(ckpt), "--out", str(tmp / "exports"), "--widths", "0.25",
                  "--formats", "detectron2", "mmdet", "--calib-data", "synthetic",
                  "--calib-batches", "1", "--calib-batch-size", "2", "--calib-size", "64",
                  "--verify-images", "1", "--quiet"])
    assert rc == 0
    return tmp / "exports" / WIDTH


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("detdata")
    synthetic.make_voc(root, n_trainval07=1, n_test07=1, n_trainval12=1, size=64, seed=0)
    synthetic.make_coco(root, n_train=1, n_val=1, size=64, seed=0)
    return root


@pytest.fixture
def ctx(export, data, tmp_path, monkeypatch):
    """A case's world: ``work`` (everything the case may touch: export copies, run folders,
    reports; asserted unchanged), ``out`` (a run folder that must stay absent), a copy of the
    export, and the data root in $DETECTRON2_DATASETS."""
    work = tmp_path / "work"
    work.mkdir()
    copy = work / "exports" / WIDTH
    shutil.copytree(export, copy)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data))
    return SimpleNamespace(work=work, out=work / "run", export=copy, data=data, tmp=tmp_path,
                           marker=tmp_path / "payload-ran")


def _meta(c, **changes) -> Path:
    meta = json.loads((c.export / "meta.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            meta.pop(key, None)
        else:
            meta[key] = value
    (c.export / "meta.json").write_text(json.dumps(meta))
    return c.export


_DROP = object()


def after(_effect, args: list[str]) -> list[str]:
    """``args``, once ``_effect`` (an argument, so evaluated first) has changed the case's files."""
    return args


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _nan_pkl(c) -> Path:
    state = pickle.loads((c.export / "detectron2.pkl").read_bytes())
    name = next(k for k, v in state["model"].items() if v.dtype.kind == "f")
    state["model"][name] = state["model"][name].copy()
    state["model"][name].flat[0] = np.nan
    (c.export / "detectron2.pkl").write_bytes(pickle.dumps(state))
    return c.export


def _inf_pth(c) -> Path:
    state = torch.load(c.export / "mmdet.pth", weights_only=True)
    name = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    state["state_dict"][name] = state["state_dict"][name].clone()
    state["state_dict"][name].view(-1)[0] = float("inf")
    torch.save(state, c.export / "mmdet.pth")
    return c.export


def _hostile_pkl(c) -> Path:
    write_hostile_pickle(c.export / "detectron2.pkl", c.marker)
    return c.export


def _hostile_pth(c) -> Path:
    torch.save({"state_dict": Payload(c.marker)}, c.export / "mmdet.pth")
    return c.export


def _data(c, broken: str) -> None:
    """A broken copy of the data root in $DETECTRON2_DATASETS."""
    root = c.tmp / "data"
    if broken == "file":
        _file(root)
    elif broken == "missing":
        pass
    else:
        shutil.copytree(c.data, root)
        if broken == "voc-split":
            (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").unlink()
        elif broken == "voc-xml":
            first = sorted((root / "VOC2007" / "Annotations").glob("*.xml"))[0]
            first.write_text("<annotation><object>")
        elif broken == "coco-json":
            (root / "coco" / "annotations" / "instances_val2017.json").write_text("{not json")
        elif broken == "coco-images":
            (root / "coco" / "annotations" / "instances_train2017.json").write_text(
                json.dumps({"images": [1], "annotations": [], "categories": []}))
    os.environ["DETECTRON2_DATASETS"] = str(root)  # monkeypatch (ctx) restores it


def _other_run(c, engine: str = "mmdet") -> None:
    c.out.mkdir(parents=True)
    (c.out / "run.json").write_text(json.dumps({
        "engine": engine, "task": "voc", "arch": "resnet18", "width": 0.25,
        "source_sha256": "ab" * 32, "export": "/elsewhere"}))


def _own_run(c, engine: str) -> None:
    """A run folder this export started (run.json) that holds no checkpoint."""
    meta = json.loads((c.export / "meta.json").read_text())
    from transfer.detection import identity
    identity.claim(c.out, identity.identity(engine, "voc", meta, c.export), resume=False)


# ----------------------------------------------------------------------------------------------
# transfer.detection.preflight (what train_det.sh runs before torchrun starts N workers)

def E(c):
    return str(c.export)


def O(c):
    return ["--out", str(c.out)]


PREFLIGHT = [
    # (id, setup(c) -> argv after the program name, words the line must hold)
    ("engine-unknown", lambda c: ["yolo", "voc", E(c), *O(c)], ["invalid choice", "yolo"]),
    ("task-unknown", lambda c: ["mmdet", "kitti", E(c), *O(c)], ["invalid choice", "kitti"]),
    ("gpus-0", lambda c: ["mmdet", "voc", E(c), "--gpus", "0", *O(c)], ["--gpus", "minimum 1"]),
    ("gpus-negative", lambda c: ["mmdet", "voc", E(c), "--gpus=-1", *O(c)], ["--gpus"]),
    ("gpus-abc", lambda c: ["mmdet", "voc", E(c), "--gpus", "abc", *O(c)],
     ["--gpus", "not an integer"]),
    ("world-0", lambda c: ["mmdet", "voc", E(c), "--cpu", "--world", "0", *O(c)], ["--world"]),
    ("total-batch-0", lambda c: ["mmdet", "voc", E(c), "--total-batch", "0", *O(c)],
     ["--total-batch"]),
    ("total-batch-abc", lambda c: ["mmdet", "voc", E(c), "--total-batch", "abc", *O(c)],
     ["--total-batch"]),
    ("total-batch-nan", lambda c: ["mmdet", "voc", E(c), "--total-batch", "nan", *O(c)],
     ["--total-batch"]),
    ("ims-per-gpu-0", lambda c: ["mmdet", "voc", E(c), "--ims-per-gpu", "0", *O(c)],
     ["--ims-per-gpu"]),
    ("batch-not-divisible-by-3", lambda c: ["detectron2", "voc", E(c), "--cpu", "--world", "3",
                                            *O(c)], ["3 processes cannot share"]),
    ("total-batch-6-on-4", lambda c: ["mmdet", "coco", E(c), "--cpu", "--world", "4",
                                      "--total-batch", "6", *O(c)], ["4 processes", "6"]),
    ("export-missing", lambda c: ["mmdet", "voc", str(c.work / "nope"), *O(c)],
     ["export folder", "does not exist"]),
    ("export-empty", lambda c: ["mmdet", "voc", str(_dir(c.work / "empty")), *O(c)],
     ["is empty"]),
    ("export-only-hidden-temp", lambda c: ["detectron2", "voc", str(
        _file(c.work / "half" / ".w0.50.123.ab.tmp" / "meta.json", "{}").parents[1]), *O(c)],
     ["no finished export"]),
    ("export-is-temp-folder", lambda c: ["detectron2", "voc", str(
        shutil.copytree(c.export, c.work / "exports" / ".w0.25.999.x.tmp")), *O(c)],
     ["hidden or temporary"]),
    ("export-is-converter-out", lambda c: ["mmdet", "voc", str(c.export.parent), *O(c)],
     ["--out folder, not one width", WIDTH]),
    ("width-not-exported", lambda c: ["mmdet", "voc", str(c.export.parent / "w0.50"), *O(c)],
     ["width was not exported", WIDTH]),
    ("export-is-a-file", lambda c: ["mmdet", "voc", str(_file(c.work / "export.pth")), *O(c)],
     ["is a file, not a folder"]),
    ("d2-pkl-hostile", lambda c: ["detectron2", "voc", str(_hostile_pkl(c)), *O(c)],
     ["refused, nothing from it ran"]),
    ("mmdet-pth-hostile", lambda c: ["mmdet", "voc", str(_hostile_pth(c)), *O(c)],
     ["refused, nothing from it ran"]),
    ("d2-pkl-nan", lambda c: ["detectron2", "voc", str(_nan_pkl(c)), *O(c)],
     ["NaN or Inf", "detectron2.pkl"]),
    ("mmdet-pth-inf", lambda c: ["mmdet", "coco", str(_inf_pth(c)), *O(c)],
     ["NaN or Inf", "mmdet.pth"]),
    ("mmdet-pth-truncated", lambda c: after(
        (c.export / "mmdet.pth").write_bytes((c.export / "mmdet.pth").read_bytes()[:64]),
        ["mmdet", "voc", E(c), *O(c)]), ["not a readable torch file"]),
    ("d2-pkl-not-a-dict", lambda c: after(
        (c.export / "detectron2.pkl").write_bytes(pickle.dumps([1, 2])),
        ["detectron2", "voc", E(c), *O(c)]), ["no 'model' dict"]),
    ("d2-pkl-missing", lambda c: after((c.export / "detectron2.pkl").unlink(),
                                       ["detectron2", "voc", E(c), *O(c)]),
     ["detectron2.pkl is missing"]),
    ("meta-not-json", lambda c: after((c.export / "meta.json").write_text("{oops"),
                                      ["mmdet", "voc", E(c), *O(c)]), ["not valid JSON"]),
    ("meta-wrong-version", lambda c: ["mmdet", "voc", str(_meta(c, meta_version=99)), *O(c)],
     ["not a us3l export meta.json"]),
    ("meta-width-nan", lambda c: ["mmdet", "voc", str(_meta(c, width=float("nan"))), *O(c)],
     ["width nan", "(0, 1]"]),
    ("meta-width-text", lambda c: ["mmdet", "voc", str(_meta(c, width="half")), *O(c)],
     ["width 'half'"]),
    ("meta-no-source", lambda c: ["mmdet", "voc", str(_meta(c, source=_DROP)), *O(c)],
     ["source"]),
    ("meta-cifar-stem", lambda c: ["mmdet", "voc", str(_meta(c, stem="cifar")), *O(c)],
     ["meta.json", "stem"]),
    ("meta-no-channel-plan", lambda c: ["mmdet", "voc", str(_meta(c, arch="mobilenetv2",
                                                                  channel_plan=_DROP)), *O(c)],
     ["no ResNet channel plan"]),
    ("data-root-missing", lambda c: _data(c, "missing") or ["mmdet", "voc", E(c), *O(c)],
     ["does not exist", "VOC2007/{Annotations"]),
    ("data-root-is-a-file", lambda c: _data(c, "file") or ["mmdet", "coco", E(c), *O(c)],
     ["is a file, not a folder"]),
    ("data-voc-no-test-split", lambda c: _data(c, "voc-split") or ["detectron2", "voc", E(c),
                                                                   *O(c)], ["test.txt"]),
    ("data-voc-bad-xml", lambda c: _data(c, "voc-xml") or ["detectron2", "voc", E(c), *O(c)],
     ["not valid XML"]),
    ("data-coco-not-json", lambda c: _data(c, "coco-json") or ["mmdet", "coco", E(c), *O(c)],
     ["instances_val2017.json is not valid JSON"]),
    ("data-coco-bad-images", lambda c: _data(c, "coco-images") or ["mmdet", "coco", E(c), *O(c)],
     ["has no file_name"]),
    ("out-under-a-file", lambda c: ["mmdet", "voc", E(c), "--out",
                                    str(_file(c.work / "afile") / "run")],
     ["afile is a file, not a folder"]),
    ("out-is-a-file", lambda c: ["mmdet", "voc", E(c), "--out", str(_file(c.work / "runfile"))],
     ["runfile is a file, not a folder"]),
    ("resume-nothing", lambda c: ["mmdet", "voc", E(c), "--resume", *O(c)],
     ["holds no run to resume"]),
    ("resume-other-run", lambda c: _other_run(c) or ["detectron2", "voc", E(c), "--resume",
                                                      *O(c)], ["holds a run of mmdet/voc"]),
    ("out-of-other-run", lambda c: _other_run(c, "detectron2") or ["detectron2", "voc", E(c),
                                                                    *O(c)],
     ["holds a run of detectron2/voc"]),
    ("eval-only-resume-no-checkpoint", lambda c: _own_run(c, "mmdet") or [
        "mmdet", "voc", E(c), "--resume", "--eval-only", *O(c)], ["holds no checkpoint"]),
]
if torch.cuda.device_count() < 2:
    PREFLIGHT.append(("gpus-2-without-cuda", lambda c: ["detectron2", "voc", E(c), "--gpus", "2",
                                                        *O(c)], ["needs 2 CUDA devices"]))


@pytest.mark.parametrize("build,words", [pytest.param(b, w, id=i) for i, b, w in PREFLIGHT])
def test_preflight_refuses_in_one_line(ctx, capsys, build, words):
    argv = build(ctx)
    call_main(preflight.main, argv, "train_det.sh", capsys, must_mention=words,
              unchanged=ctx.work)
    assert not ctx.marker.exists()  # nothing from a hostile file ran
    assert not ctx.out.is_dir() or (ctx.out / "run.json").is_file()  # never claimed anew


def test_preflight_accepts_a_good_run_and_claims_the_folder(ctx, capsys):
    """The control: the same fixtures pass, so every refusal above is the one case's doing."""
    assert preflight.main(["detectron2", "voc", E(ctx), "--cpu", "--world", "2", *O(ctx)]) == 0
    assert capsys.readouterr().out.strip() == str(ctx.out)
    assert json.loads((ctx.out / "run.json").read_text())["engine"] == "detectron2"


# ----------------------------------------------------------------------------------------------
# tools/train_detectron2.py and tools/train_mmdet.py (what train_det.sh runs on one process)

HOSTILE_YAML = "SOLVER:\n  BASE_LR: !!python/object/apply:os.system ['touch {marker}']\n"

DETECTRON2 = [
    ("max-iter-0", lambda c: ["SOLVER.MAX_ITER", "0"], ["SOLVER.MAX_ITER 0"]),
    ("base-lr-negative", lambda c: ["SOLVER.BASE_LR", "-0.01"], ["SOLVER.BASE_LR -0.01"]),
    ("base-lr-text", lambda c: ["SOLVER.BASE_LR", "abc"], ["bad detectron2 option"]),
    ("ims-per-batch-0", lambda c: ["SOLVER.IMS_PER_BATCH", "0"], ["SOLVER.IMS_PER_BATCH 0"]),
    ("score-thresh-2", lambda c: ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "2.0"],
     ["SCORE_THRESH_TEST", "[0, 1]"]),
    ("odd-options", lambda c: ["SOLVER.MAX_ITER"], ["KEY VALUE pairs"]),
    ("unknown-key", lambda c: ["SOLVER.NOPE", "1"], ["bad detectron2 option"]),
    ("accumulation-key", lambda c: ["SOLVER.ACCUMULATION_STEPS", "2"], ["--ims-per-gpu"]),
    ("num-gpus-0", lambda c: ["--num-gpus", "0"], ["--num-gpus"]),
    ("machine-rank-out-of-range", lambda c: ["--machine-rank", "1"], ["--machine-rank 1"]),
    ("total-batch-0", lambda c: ["--total-batch", "0"], ["--total-batch"]),
    ("config-missing", lambda c: ["--config", str(c.work / "nope.yaml")], ["does not exist"]),
    ("config-of-other-arch", lambda c: [
        "--config", str(REPO / "configs/detectron2/faster_rcnn_R_50_FPN_voc0712_us3l.yaml")],
     ["pass the R-18 config"]),
    ("config-hostile-yaml", lambda c: ["--config", str(_file(
        c.work / "evil.yaml", HOSTILE_YAML.format(marker=c.marker)))],
     ["refused, nothing from it ran"]),
    ("resume-nothing", lambda c: ["--resume"], ["holds no run to resume"]),
    ("eval-only-resume-no-checkpoint", lambda c: _own_run(c, "detectron2") or [
        "--eval-only", "--resume"], ["holds no checkpoint"]),
    ("d2-pkl-hostile", lambda c: after(_hostile_pkl(c), []), ["refused, nothing from it ran"]),
]


@pytest.mark.parametrize("build,words", [pytest.param(b, w, id=i) for i, b, w in DETECTRON2])
def test_train_detectron2_refuses_in_one_line(ctx, capsys, build, words):
    # flags, or detectron2 KEY VALUE options (argparse REMAINDER: after every flag)
    argv = ["--task", "voc", "--export", E(ctx), *O(ctx), *build(ctx)]
    call_main(train_detectron2.main, argv, "train_detectron2.py", capsys, must_mention=words,
              unchanged=ctx.work)
    assert not ctx.marker.exists()


MMDET = [
    ("max-iters-0", ["--max-iters", "0"], ["--max-iters"]),
    ("max-iters-abc", ["--max-iters", "abc"], ["--max-iters"]),
    ("img-scale-0", ["--img-scale", "0", "96"], ["--img-scale"]),
    ("ims-per-gpu-0", ["--ims-per-gpu", "0"], ["--ims-per-gpu"]),
    ("local-rank-negative", ["--local_rank=-1"], ["--local_rank"]),
    ("launcher-unknown", ["--launcher", "ssh"], ["--launcher"]),
    ("cfg-option-not-key-value", ["--cfg-options", "abc"], ["is not key=value"]),
    ("cfg-option-lr-nan", ["--cfg-options", "optim_wrapper.optimizer.lr=nan"],
     ["finite number > 0"]),
    ("cfg-option-per-gpu-batch", ["--cfg-options", "train_dataloader.batch_size=4"],
     ["--total-batch"]),
    ("config-missing", ["--config", "/nonexistent/cfg.py"], ["does not exist"]),
    ("config-of-other-arch", ["--config",
                              str(REPO / "configs/mmdet/faster-rcnn_r50_fpn_voc0712_us3l.py")],
     ["the export is resnet18"]),
    ("unknown-option", ["--bogus"], ["unrecognized arguments"]),
]


@pytest.mark.parametrize("extra,words", [pytest.param(e, w, id=i) for i, e, w in MMDET])
def test_train_mmdet_refuses_in_one_line(ctx, capsys, extra, words):
    """The config is built before the run folder is claimed: an option mmengine refuses leaves
    no run folder behind."""
    call_main(train_mmdet.main, ["--task", "voc", "--export", E(ctx), *O(ctx), *extra],
              "train_mmdet.py", capsys, must_mention=words, unchanged=ctx.work)


# ----------------------------------------------------------------------------------------------
# tools/train_det.sh itself (<= 6 subprocesses; each fails before torchrun starts)

SHELL = [
    ("engine-unknown", ["yolo", "voc", "{export}"], ["unknown ENGINE 'yolo'"]),
    ("gpus-abc", ["mmdet", "voc", "{export}", "--gpus", "abc"], ["--gpus 'abc'"]),
    ("cpu-procs-0", ["mmdet", "voc", "{export}", "--cpu-procs", "0"], ["--cpu-procs '0'"]),
    ("node-rank-out-of-range", ["detectron2", "voc", "{export}", "--nnodes", "2", "--node-rank",
                                "2"], ["--node-rank '2'"]),
    ("hostile-pkl-two-procs", ["detectron2", "voc", "{hostile}", "--cpu-procs", "2"],
     ["refused, nothing from it ran"]),
    ("resume-nothing-one-proc", ["mmdet", "voc", "{export}", "--resume"],
     ["holds no run to resume"]),
]


@pytest.mark.parametrize("args,words", [pytest.param(a, w, id=i) for i, a, w in SHELL])
def test_train_det_sh_refuses_in_one_line(ctx, args, words):
    hostile = ctx.work / "exports" / "w1.00"
    shutil.copytree(ctx.export, hostile)
    write_hostile_pickle(hostile / "detectron2.pkl", ctx.marker)
    argv = [a.format(export=ctx.export, hostile=hostile) for a in args]
    env = {"DETECTRON2_DATASETS": os.environ["DETECTRON2_DATASETS"],
           "US3L_VENV": str(Path(sys.executable).parents[1]), "OMP_NUM_THREADS": "1"}
    run_cmd(["bash", REPO / "tools" / "train_det.sh", *argv, "--out", ctx.out],
            must_mention=["train_det", *words], unchanged=ctx.work, env=env)
    assert not ctx.marker.exists()


# ----------------------------------------------------------------------------------------------
# tools/collect_results.py

def _record(w: float = 0.5, **changes) -> dict:
    meta = {"arch": "resnet18", "params": 1_000_000, "macs_224": int(w * 1e9),
            "width": w, "source": {"sha256": "cd" * 32}}
    record = metrics.make_record("detectron2", "voc", meta,
                                 {"AP": 20.0, "AP50": 40.0, "AP75": 10.0}, [],
                                 run={"iterations": 10, "eval_only": False})
    record.update(changes)
    return record


def _runs(c, text: str | None = None, hidden: bool = False, **changes) -> Path:
    """A runs folder with one run whose metrics.json is ``text`` (or a record with ``changes``)."""
    run = c.work / "runs" / (".detectron2_voc_w0.50.123.ab.tmp" if hidden else "detectron2_voc")
    body = text if text is not None else json.dumps(_record(**changes))
    _file(run / "metrics.json", body)
    return c.work / "runs"


COLLECT = [
    ("path-missing", lambda c: [str(c.work / "nope")], ["does not exist"]),
    ("no-metrics", lambda c: [str(_dir(c.work / "runs"))],
     ["no metrics.json under"]),
    ("only-hidden-run", lambda c: [str(_runs(c, hidden=True))], ["no metrics.json under"]),
    ("temp-file-named", lambda c: [str(_file(c.work / ".metrics.json.123.ab.tmp", "{}"))],
     ["hidden or temporary"]),
    ("not-json", lambda c: [str(_runs(c, "{half"))], ["not a readable metrics file"]),
    ("not-utf8", lambda c: after(
        _file(c.work / "runs" / "detectron2_voc" / "metrics.json").write_bytes(b"\xff\xfe\x00"),
        [str(c.work / "runs")]), ["not a readable metrics file"]),
    ("a-list", lambda c: [str(_runs(c, "[1, 2]"))], ["does not hold a metrics record"]),
    ("missing-key", lambda c: [str(_runs(c, json.dumps(
        {k: v for k, v in _record().items() if k != "AP75"})))], ["missing ['AP75']"]),
    ("ap-nan", lambda c: [str(_runs(c, AP=float("nan")))], ["AP=nan"]),
    ("ap-infinity", lambda c: [str(_runs(c, AP50=float("inf")))], ["AP50=inf"]),
    ("ap-above-100", lambda c: [str(_runs(c, AP=140.0))], ["AP=140.0"]),
    ("width-text", lambda c: [str(_runs(c, width="half"))], ["width='half'"]),
    ("params-negative", lambda c: [str(_runs(c, params=-1))], ["params=-1"]),
    ("wrong-schema", lambda c: [str(_runs(c, schema="other/1"))], ["not a us3l"]),
    ("unknown-engine", lambda c: [str(_runs(c, engine="yolo"))], ["engine 'yolo'"]),
    ("out-under-a-file", lambda c: [str(_runs(c)), "--out", str(_file(c.work / "f") / "rep")],
     ["is a file, not a folder"]),
    ("out-is-a-file", lambda c: [str(_runs(c)), "--out", str(_file(c.work / "report"))],
     ["is a file, not a folder"]),
    ("no-paths", lambda c: [], ["the following arguments are required"]),
]


@pytest.mark.parametrize("build,words", [pytest.param(b, w, id=i) for i, b, w in COLLECT])
def test_collect_results_refuses_in_one_line(ctx, capsys, build, words):
    argv = build(ctx)
    if "--out" not in argv:
        argv += ["--out", str(ctx.work / "report")]
    call_main(collect_results.main, argv, "collect_results.py", capsys, must_mention=words,
              unchanged=ctx.work)
    assert not (ctx.work / "report").is_dir()


def test_collect_results_skips_hidden_runs(ctx, capsys):
    """A killed run's hidden folder is never read, even beside good runs (control case)."""
    runs = _runs(ctx)
    _file(runs / ".mmdet_voc.77.x.tmp" / "metrics.json", json.dumps(
        dict(_record(1.0), engine="mmdet")))
    assert collect_results.main([str(runs), "--out", str(ctx.work / "report")]) == 0
    text = (ctx.work / "report" / "detection_results.md").read_text()
    assert "### detectron2 / voc" in text and "mmdet" not in text.split("schedules differ.")[1]


# ----------------------------------------------------------------------------------------------
# tools/run_all.py

RUN_ALL = [
    ("preset-unknown", lambda c: ["--preset", "huge"], 2, ["invalid choice", "huge"]),
    ("gpus-0", lambda c: ["--gpus", "0"], 2, ["--gpus"]),
    ("gpus-abc", lambda c: ["--gpus", "abc"], 2, ["--gpus"]),
    ("real-preset-without-data-root", lambda c: ["--preset", "cifar100-r18"], 2,
     ["--data-root"]),
    ("data-root-missing", lambda c: ["--preset", "cifar100-r18", "--data-root",
                                     str(c.work / "nope")], 2, ["is not a folder"]),
    ("det-data-missing", lambda c: ["--preset", "imagenet-r50", "--data-root", str(c.work),
                                    "--det-data", str(c.work / "nodet")], 2, ["--det-data"]),
    ("out-under-a-file", lambda c: ["--out", str(_file(c.work / "f") / "run")], 2,
     ["is a file, not a folder"]),
    ("override-not-key-value", lambda c: ["--pretrain-override", "schedule.iters"], 2,
     ["is not KEY=VALUE"]),
]


@pytest.mark.parametrize("build,code,words",
                         [pytest.param(b, k, w, id=i) for i, b, k, w in RUN_ALL])
def test_run_all_refuses_in_one_line(ctx, capsys, build, code, words):
    argv = build(ctx)
    if "--out" not in argv:
        argv += ["--out", str(ctx.out)]
    call_main(run_all.main, argv, "run_all.py", capsys, want_code=code, must_mention=words,
              unchanged=ctx.work)


def test_run_all_failing_step_is_one_line_naming_the_step_and_its_log(ctx, capsys):
    """The first step (the built-in classification fixtures) cannot write its data root: the run
    stops with one line naming the step and its log, exit 1, and leaves no stamp for it."""
    root = ctx.tmp / "cls"
    _file(root / "cifar-10-batches-py")  # a file where the generator needs a folder
    out = ctx.tmp / "pipeline"
    line = call_main(run_all.main, ["--preset", "ci", "--data-root", str(root), "--out", str(out)],
                     "run_all.py", capsys, want_code=1,
                     must_mention=["step 'data-classification' failed", "full log"])
    log = out / "logs" / "data-classification.log"
    assert str(log) in line and log.is_file()
    assert not (out / ".steps" / "data-classification.json").exists()
    assert not (out / "report.md").exists()
