"""Detection transfer: one protocol in both engines whatever the process count, multi-process runs
that finish, run identity, evaluation that never depends on what a short run learned, bad input
in one line.

What runs where (each expensive path once):
- single-process train + evaluate in both engines and both tasks: tests/test_pipeline.py (the
  main job's ci preset); here only what it cannot show;
- 2 CPU processes over gloo (torchrun), train + evaluate: detectron2 VOC (with gradient
  accumulation) and MMDetection COCO (with nothing above the score threshold): the only checks
  of the multi-process paths, NaiveSyncBN, accumulation and MMDetection's empty-result path;
- ``--resume`` and ``--eval-only``: the only checks of those paths (detectron2's COCO evaluator
  on an empty prediction set is checked here, through --eval-only).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import transfer.detectron2.compat  # noqa: F401  (before detectron2)
from transfer.detection import identity, metrics, protocol, synthetic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from export_helpers import make_checkpoint  # noqa: E402

WIDTH = 0.25
TINY_D2 = ["SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(1,)",
           "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
           "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
           "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
           "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
           "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10",
           "TEST.PRECISE_BN.ENABLED", "False", "SEED", "0"]
TINY_MM = ["--max-iters", "2", "--img-scale", "128", "96", "--cfg-options",
           "train_dataloader.num_workers=0", "test_dataloader.num_workers=0",
           "model.train_cfg.rpn.sampler.num=32", "model.train_cfg.rcnn.sampler.num=16",
           "model.train_cfg.rpn_proposal.max_per_img=32", "model.test_cfg.rpn.max_per_img=32",
           "model.test_cfg.rcnn.score_thr=0.0", "model.test_cfg.rcnn.max_per_img=10",
           "randomness.seed=0"]
CONFIGS = {
    "voc": ("configs/detectron2/faster_rcnn_R_18_FPN_voc0712_us3l.yaml",
            "configs/mmdet/faster-rcnn_r18_fpn_voc0712_us3l.py"),
    "coco": ("configs/detectron2/mask_rcnn_R_18_FPN_1x_coco_us3l.yaml",
             "configs/mmdet/mask-rcnn_r18_fpn_1x_coco_us3l.py"),
}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A resnet18 checkpoint exported at WIDTH by the project's converter (all three formats)."""
    from transfer.export.convert import main as convert

    tmp = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(tmp / "ckpt.pth", arch="resnet18")
    rc = convert([str(ckpt), "--out", str(tmp / "exports"), "--widths", str(WIDTH),
                  "--calib-data", "synthetic", "--calib-batches", "1", "--calib-batch-size", "2",
                  "--calib-size", "64", "--verify-images", "1", "--quiet"])
    assert rc == 0
    folder = tmp / "exports" / "w0.25"
    return folder, json.loads((folder / "meta.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("detdata")
    synthetic.make_voc(root, n_trainval07=2, n_test07=2, n_trainval12=2, size=96, seed=0)
    synthetic.make_coco(root, n_train=2, n_val=2, size=96, seed=0)
    return root


def _run(args, data_root, timeout=300, **env_vars):
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), OMP_NUM_THREADS="1",
               MPLBACKEND="Agg", US3L_VENV=str(Path(sys.executable).parents[1]), **env_vars)
    return subprocess.run(["bash", str(REPO / "tools" / "train_det.sh"), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout)


def _record(out: Path, engine: str, task: str, meta: dict, world: int, iterations: int) -> dict:
    """The metrics file: the schema's exact keys, the export's identity, values that are finite
    percentages (or 0 with a note when nothing was detected), the resolved protocol."""
    record = metrics.read(out / "metrics.json")
    assert set(record) == set(metrics.IDENTITY_KEYS) | set(metrics.metric_keys(task)) | {"run"}
    assert (record["engine"], record["task"], record["arch"], record["width"]) == \
        (engine, task, "resnet18", WIDTH)
    assert record["source_sha256"] == meta["source"]["sha256"]
    assert record["params"] == meta["params"] and record["macs"] == meta["macs_224"]
    for key in metrics.metric_keys(task):
        assert isinstance(record[key], float) and math.isfinite(record[key]), key
        assert 0.0 <= record[key] <= 100.0, key
    run = record["run"]
    assert run["iterations"] == iterations and run["world_size"] == world
    count = run["detections"]["count"]
    assert isinstance(count, int) and count >= 0 and run["detections"]["images"] == 2
    if count == 0:
        assert all(record[k] == 0.0 for k in metrics.metric_keys(task))
        assert any("no detections" in note for note in run["notes"])
    ident = json.loads((out / identity.FILENAME).read_text())
    assert (ident["engine"], ident["task"], ident["width"], ident["source_sha256"]) == \
        (engine, task, WIDTH, meta["source"]["sha256"])
    return record


def _logs(folder: Path, pattern: str) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.rglob(pattern)))


# ----------------------------------------------------------------------------------------------
# The protocol, resolved by both engines' config builders (no training)


def test_split_batch_and_linear_lr_scaling():
    assert protocol.split_batch(16, 1) == protocol.Batching(16, 1, 16, 1)
    assert protocol.split_batch(16, 8) == protocol.Batching(16, 8, 2, 1)
    assert protocol.split_batch(16, 2, max_per_process=4) == protocol.Batching(16, 2, 4, 2)
    assert protocol.split_batch(16, 1, max_per_process=3) == protocol.Batching(16, 1, 2, 8)
    assert protocol.split_batch(16, 16) == protocol.Batching(16, 16, 1, 1)
    with pytest.raises(protocol.ProtocolError, match=r"3 processes cannot share a total batch "
                                                     r"of 16 equally; run on \[1, 2, 4, 8, 16\]"):
        protocol.split_batch(16, 3)
    with pytest.raises(protocol.ProtocolError):
        protocol.split_batch(16, 32)
    assert protocol.scaled_lr(16) == (0.02, "lr 0.02 at total batch 16 (the protocol)")
    lr, note = protocol.scaled_lr(2)
    assert lr == pytest.approx(0.0025) and "scaled linearly" in note
    assert protocol.scaled_lr(2, explicit_lr=0.01) == (0.01, "lr 0.01 set explicitly (not scaled)")


@pytest.mark.parametrize("task", ["voc", "coco"])
def test_both_engines_resolve_the_protocol_at_1_2_and_8_gpus(task, export):
    """The configs each engine builds for 1, 2 and 8 GPUs run exactly the protocol table: total
    batch 16 and lr 0.02 whatever the GPU count (per-GPU batch 16/N), the schedule, the scales,
    the norm layers (BN on one process, SyncBN on several) and the explicit evaluators."""
    from mmdet.utils import register_all_modules

    from transfer.detectron2.config import build_cfg, describe as d2_describe
    from transfer.mmdet.config import build_config, describe as mm_describe

    register_all_modules()
    folder, _ = export
    d2_file, mm_file = (REPO / f for f in CONFIGS[task])
    for gpus in (1, 2, 8):
        want = protocol.expected(task, gpus, device="cuda")
        cfg, _, _, lr_note = build_cfg(d2_file, folder, world_size=gpus, device="cuda")
        d2 = d2_describe(cfg, gpus)
        mcfg, _, _, mm_note = build_config(mm_file, folder, task, "/nonexistent", "/tmp/unused",
                                           world_size=gpus, device="cuda")
        mm = mm_describe(mcfg, gpus)
        for described in (d2, mm):
            evaluator = described.pop("evaluator")
            assert described == want, (gpus, described)
            assert ("bbox+segm" in evaluator) == (task == "coco")
        assert mcfg.train_dataloader.batch_size == 16 // gpus
        assert cfg.SOLVER.IMS_PER_BATCH == 16  # detectron2's is global
        assert lr_note == mm_note == "lr 0.02 at total batch 16 (the protocol)"
    assert want["per_process_batch"] == 2 and want["norm"]["backbone"] == "SyncBN"
    assert protocol.expected(task, 1)["norm"]["fpn"] == "BN"
    # a total batch that needs accumulation, and one no process count can share
    cfg, _, _, note = build_cfg(d2_file, folder, world_size=2, device="cuda", total_batch=8,
                                ims_per_gpu=2)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.ACCUMULATION_STEPS) == (8, 2)
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.01) and "scaled linearly" in note
    mcfg, *_ = build_config(mm_file, folder, task, "/x", "/tmp/unused", world_size=2,
                            device="cuda", total_batch=8, ims_per_gpu=2)
    assert (mcfg.train_dataloader.batch_size, mcfg.optim_wrapper.accumulative_counts) == (2, 2)
    assert mcfg.optim_wrapper.optimizer.lr == pytest.approx(0.01)
    from transfer.detectron2.config import ConfigError as D2Error
    from transfer.mmdet.config import ConfigError as MMError
    with pytest.raises(D2Error, match="3 processes cannot share"):
        build_cfg(d2_file, folder, world_size=3, device="cuda")
    with pytest.raises(MMError, match="3 processes cannot share"):
        build_config(mm_file, folder, task, "/x", "/tmp/unused", world_size=3, device="cuda")
    with pytest.raises(MMError, match="pass --total-batch"):
        build_config(mm_file, folder, task, "/x", "/tmp/unused",
                     cfg_options={"train_dataloader.batch_size": 2})


@pytest.mark.parametrize("task", ["voc", "coco"])
def test_both_engines_step_the_same_lr_at_every_iteration(task, export):
    """detectron2's scheduler (WarmupMultiStepLR) and MMDetection's (LinearLR + MultiStepLR),
    built from the resolved configs, give the same lr at every iteration of the schedule."""
    import numpy as np
    from detectron2.solver import build_lr_scheduler
    from mmengine.registry import PARAM_SCHEDULERS
    from mmdet.utils import register_all_modules

    from transfer.detectron2.config import build_cfg
    from transfer.mmdet.config import build_config

    register_all_modules()
    folder, _ = export
    d2_file, mm_file = (REPO / f for f in CONFIGS[task])
    cfg, *_ = build_cfg(d2_file, folder, world_size=8, device="cuda")
    mcfg, *_ = build_config(mm_file, folder, task, "/x", "/tmp/unused", world_size=8,
                            device="cuda")

    def optimizer(lr):
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)

    d2_opt, mm_opt = optimizer(cfg.SOLVER.BASE_LR), optimizer(mcfg.optim_wrapper.optimizer.lr)
    d2_sched = build_lr_scheduler(cfg, d2_opt)
    mm_scheds = [PARAM_SCHEDULERS.build(dict(s, optimizer=mm_opt)) for s in mcfg.param_scheduler]
    iterations = protocol.PROTOCOL[task]["iterations"]
    d2_lr, mm_lr = np.empty(iterations), np.empty(iterations)
    for i in range(iterations):
        d2_lr[i], mm_lr[i] = d2_opt.param_groups[0]["lr"], mm_opt.param_groups[0]["lr"]
        d2_opt.step(), mm_opt.step()
        d2_sched.step()
        for sched in mm_scheds:
            sched.step()
    np.testing.assert_allclose(mm_lr, d2_lr, rtol=1e-6, atol=1e-12)
    steps, warmup = protocol.PROTOCOL[task]["steps"], protocol.PROTOCOL[task]["warmup_iters"]
    assert d2_lr[0] == pytest.approx(0.02 * 0.001)
    assert d2_lr[warmup] == pytest.approx(0.02) and d2_lr[warmup - 1] < 0.02
    assert d2_lr[steps[0]] == pytest.approx(0.002) and d2_lr[steps[1]] == pytest.approx(0.0002)


def test_sync_bn_stand_ins_and_configs_carry_no_channels(export):
    """Models built for one process hold BN in backbone, FPN and heads; for several CPU processes
    the all-reduce NaiveSyncBN; for several GPUs the configs keep SyncBN. No config file carries
    channel numbers: they come from the export."""
    from detectron2.layers import NaiveSyncBatchNorm
    from detectron2.modeling import build_model
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from transfer.detectron2.config import build_cfg
    from transfer.mmdet.config import build_config
    from transfer.mmdet.evaluation import NaiveSyncBatchNorm as MMNaiveSyncBN

    folder, meta = export
    d2_config, mm_config = (REPO / f for f in CONFIGS["coco"])
    cfg, _, changed, _ = build_cfg(d2_config, folder, world_size=1, device="cpu")
    assert changed == ["MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
                       "MODEL.ROI_MASK_HEAD.NORM"]
    model = build_model(cfg)
    norms = [type(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    assert set(norms) == {torch.nn.BatchNorm2d}
    assert len(norms) > 20  # backbone + FPN + 4conv box head + mask head
    assert model.backbone.bottom_up.stem.conv1.out_channels == meta["channel_plan"]["stem"]
    cfg2, _, changed2, _ = build_cfg(d2_config, folder, world_size=2, device="cpu")
    assert changed2 == changed and cfg2.MODEL.FPN.NORM == "naiveSyncBN"
    assert any(isinstance(m, NaiveSyncBatchNorm) for m in build_model(cfg2).modules())
    cfg4, _, changed4, _ = build_cfg(d2_config, folder, world_size=4, device="cuda")
    assert changed4 == [] and cfg4.MODEL.FPN.NORM == "SyncBN"

    register_all_modules()
    mcfg, _, paths, _ = build_config(mm_config, folder, "coco", "/nonexistent", "/tmp/unused")
    assert "model.backbone.norm_cfg" in paths and "model.neck.norm_cfg" in paths
    assert mcfg.model.neck.in_channels == meta["channel_plan"]["out"]
    detector = MODELS.build(mcfg.model)
    mm_norms = {type(m) for m in detector.modules()
                if isinstance(m, torch.nn.modules.batchnorm._NormBase)}
    assert mm_norms == {torch.nn.BatchNorm2d}
    mcfg2, _, paths2, _ = build_config(mm_config, folder, "coco", "/x", "/tmp/unused",
                                       world_size=2, device="cpu")
    assert paths2 == paths and mcfg2.model_wrapper_cfg.device_ids is None
    assert any(isinstance(m, MMNaiveSyncBN) for m in MODELS.build(mcfg2.model).modules())
    mcfg_d, _, paths_d, _ = build_config(mm_config, folder, "coco", "/x", "/tmp/unused",
                                         world_size=2, device="cuda")
    assert paths_d == [] and mcfg_d.model.backbone.norm_cfg.type == "SyncBN"
    for path in list((REPO / "configs/detectron2").glob("*.yaml")) + \
            list((REPO / "configs/mmdet").glob("*.py")):
        assert not re.search(r"in_channels\s*=\s*\[\d|RES2_OUT_CHANNELS|base_channels",
                             path.read_text())


def test_naive_sync_bn_is_batch_norm_on_one_process():
    """MMDetection's stand-in equals BatchNorm2d outside a process group (train and eval)."""
    from transfer.mmdet.evaluation import NaiveSyncBatchNorm

    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    ours, ref = NaiveSyncBatchNorm(3), torch.nn.BatchNorm2d(3)
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


# ----------------------------------------------------------------------------------------------
# Metrics and identity (no engine run)


def test_metrics_from_both_engines_outputs_and_empty_prediction_sets():
    meta = {"arch": "resnet50", "width": 0.5, "params": 10, "macs_224": 20,
            "source": {"sha256": "ab" * 32}}
    d2 = {"bbox": {"AP": 40.0, "AP50": 70.0, "AP75": 41.0, "APs": float("nan")},
          "segm": {"AP": 35.0, "AP50": 60.0, "AP75": float("nan")},
          "detections": {"count": 7, "images": 2}}
    values, notes = metrics.from_detectron2({"coco_2017_val": d2}, "coco")
    record = metrics.make_record("detectron2", "coco", meta, values, notes)
    assert (record["AP"], record["APm50"], record["APm75"]) == (40.0, 60.0, None)
    assert notes == ["APm75: the evaluator returned NaN (no detections to score?)"]
    mm = {"pascal_voc/mAP": 0.4215, "pascal_voc/AP50": 0.7, "pascal_voc/AP75": 0.45,
          "detections/count": 3}
    values, notes = metrics.from_mmdet(mm, "voc")
    record = metrics.make_record("mmdet", "voc", meta, values, notes)
    assert (record["AP"], record["AP50"], record["AP75"]) == (42.15, 70.0, 45.0) and not notes
    # nothing detected: detectron2 gives NaN blocks, mmdet's CocoMetric gives no keys at all
    empty_d2 = {"bbox": {"AP": float("nan")}, "segm": {"AP": float("nan")},
                "detections": {"count": 0, "images": 2}}
    for values, notes in (metrics.from_detectron2(empty_d2, "coco"),
                          metrics.from_mmdet({"detections/count": 0}, "coco")):
        assert values == {k: 0.0 for k in metrics.metric_keys("coco")}
        assert notes == ["no detections on the test set (none above the score threshold): "
                         "every AP is 0"]
    with pytest.raises(metrics.MetricsError, match="no 'segm' block"):
        metrics.from_detectron2({"bbox": d2["bbox"], "detections": {"count": 5}}, "coco")
    with pytest.raises(metrics.MetricsError, match="nothing from the coco metric"):
        metrics.from_mmdet(mm, "coco")
    with pytest.raises(metrics.MetricsError, match="not a results dict"):
        metrics.from_detectron2(None, "voc")
    with pytest.raises(metrics.MetricsError, match="not a percentage"):
        metrics.validate(dict(record, AP=140.0))


def test_run_identity_names_the_checkpoint_and_refuses_another_run(tmp_path):
    meta = {"arch": "resnet50", "width": 0.5, "source": {"sha256": "12345678" + "0" * 56}}
    ident = identity.identity("detectron2", "voc", meta, tmp_path / "w0.50")
    assert identity.default_run_dir("runs/det", ident) == \
        Path("runs/det/detectron2_voc_12345678_w0.50")
    run = tmp_path / "run"
    identity.claim(run, ident, resume=False)
    identity.claim(run, ident, resume=True)  # the same run: fine
    other = dict(ident, source_sha256="87654321" + "0" * 56)
    for resume, verb in ((True, "--resume of"), (False, "--out")):
        with pytest.raises(identity.IdentityError) as err:
            identity.check(run, other, resume)
        message = str(err.value)
        assert message.startswith(f"{verb} {run}: it holds a run of detectron2/voc of resnet50 "
                                  f"0.5x from checkpoint 12345678")
        assert "not detectron2/voc of resnet50 0.5x from checkpoint 87654321" in message
    with pytest.raises(identity.IdentityError, match="mmdet/voc"):
        identity.check(run, dict(ident, engine="mmdet"), True)
    orphan = tmp_path / "orphan"
    (orphan / "detectron2").mkdir(parents=True)
    (orphan / "detectron2" / "model_final.pth").write_bytes(b"x")
    with pytest.raises(identity.IdentityError, match="has no run.json"):
        identity.check(orphan, ident, resume=True)


# ----------------------------------------------------------------------------------------------
# Engine runs


@pytest.mark.slow
def test_detectron2_two_cpu_processes_accumulation_then_resume(export, data, tmp_path):
    """2 processes over gloo, total batch 4 = 2 x 1 image x 2 accumulation steps: every rank exits
    0, evaluation runs once, metrics.json is written once with the resolved protocol. Then the
    run is resumed (one process) for one more iteration, and a resume by the other engine is
    refused in one line."""
    folder, meta = export
    out = tmp_path / "run"
    proc = _run(["detectron2", "voc", folder, "--out", out, "--cpu-procs", "2", "--total-batch",
                 "4", "--ims-per-gpu", "1", *TINY_D2], data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _record(out, "detectron2", "voc", meta, world=2, iterations=2)
    resolved = record["run"]["protocol"]
    assert {k: resolved[k] for k in ("total_batch", "processes", "per_process_batch",
                                     "accumulation")} == \
        {"total_batch": 4, "processes": 2, "per_process_batch": 1, "accumulation": 2}
    assert resolved["lr"] == pytest.approx(0.005) and "scaled linearly" in resolved["lr_note"]
    assert set(resolved["norm"].values()) == {"NaiveSyncBN"}
    logs = out / "detectron2"
    assert (logs / "log.txt.rank1").is_file()  # the second process ran
    log = (logs / "log.txt").read_text()
    assert log.count("Evaluation results for voc_2007_test in csv format") == 1
    assert _logs(logs, "log.txt*").count("Start inference on") == 2  # one per rank, once each
    assert re.search(r"backbone: \d+ tensors equal to .*detectron2.pkl", log)
    assert "protocol: total batch 4 = 2 process(es) x 1 image(s) x 2 accumulation step(s)" in log
    config = (logs / "config.yaml").read_text()
    assert "ACCUMULATION_STEPS: 2" in config and "IMS_PER_BATCH: 4" in config

    opts = [o if o != "2" or i != 1 else "3" for i, o in enumerate(TINY_D2)]  # MAX_ITER 3
    proc = _run(["detectron2", "voc", folder, "--out", out, "--resume", "--total-batch", "2",
                 *opts], data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _record(out, "detectron2", "voc", meta, world=1, iterations=3)
    assert "resumed at iteration 2" in (logs / "log.txt").read_text()

    proc = _run(["mmdet", "voc", folder, "--out", out, "--resume"], data)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "holds a run of detectron2/voc" in proc.stderr and "not mmdet/voc" in proc.stderr


@pytest.mark.slow
def test_mmdet_two_cpu_processes_with_nothing_detected(export, data, tmp_path):
    """2 processes over gloo on COCO with a score threshold nothing passes: CocoMetric finds the
    result set empty, the run still exits 0 on every rank and scores 0 with a note."""
    folder, meta = export
    out = tmp_path / "run"
    proc = _run(["mmdet", "coco", folder, "--out", out, "--cpu-procs", "2", "--total-batch", "2",
                 *TINY_MM, "model.test_cfg.rcnn.score_thr=1.0"], data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _record(out, "mmdet", "coco", meta, world=2, iterations=2)
    assert record["run"]["detections"]["count"] == 0
    assert record["run"]["protocol"]["per_process_batch"] == 1
    assert set(record["run"]["protocol"]["norm"].values()) == {"NaiveSyncBN"}
    log = _logs(Path(record["run"]["logs"]), "*.log")
    assert re.search(r"backbone: \d+ tensors equal to .*mmdet.pth", log)
    assert "The testing results of the whole dataset is empty" in proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).count("Evaluating bbox...") == 1


@pytest.mark.slow
@pytest.mark.parametrize("engine,task", [("detectron2", "coco"), ("mmdet", "voc")])
def test_eval_only(engine, task, export, data, tmp_path):
    """--eval-only: the untrained heads scored by the engine's evaluator, iterations 0. For
    detectron2 COCO nothing passes the threshold: COCOEvaluator is built with both tasks, so it
    still reports box AND mask blocks, and the run scores 0 with a note."""
    folder, meta = export
    out = tmp_path / "run"
    opts = [*TINY_D2, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.0"] if engine == "detectron2" \
        else TINY_MM
    proc = _run([engine, task, folder, "--out", out, "--eval-only", "--total-batch", "2", *opts],
                data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _record(out, engine, task, meta, world=1, iterations=0)
    assert record["run"]["eval_only"] is True
    if engine == "detectron2":
        assert record["run"]["detections"]["count"] == 0
        log = (out / "detectron2" / "log.txt").read_text()
        assert "copypaste: Task: bbox" in log and "copypaste: Task: segm" in log
        assert json.loads((out / "detectron2" / "inference" /
                           "coco_instances_results.json").read_text()) == []
    else:
        assert record["run"]["detections"]["count"] > 0  # score threshold 0: every image


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["detectron2", "mmdet"])
def test_train_and_evaluate_on_one_gpu(engine, export, data, tmp_path):
    """The CUDA path of each engine (one GPU, the engine's own launcher path): train, evaluate,
    metrics from a model on the GPU. MMDetection needs mmcv built with its CUDA ops."""
    folder, meta = export
    out = tmp_path / "run"
    opts = TINY_D2 if engine == "detectron2" else TINY_MM
    proc = _run([engine, "coco", folder, "--out", out, "--total-batch", "2", *opts], data,
                US3L_DEVICE="cuda")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _record(out, engine, "coco", meta, world=1, iterations=2)
    assert record["run"]["device"] == "cuda"


def test_bad_input_fails_in_one_line(export, data, tmp_path):
    folder, _ = export
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "x"

    def one_line(proc, *needles):
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        for needle in needles:
            assert needle in proc.stderr, proc.stderr

    one_line(_run(["detectron2", "voc", folder, "--out", out], empty),
             "VOC2007/{Annotations", str(empty))
    one_line(_run(["mmdet", "coco", folder, "--out", out], empty),
             "coco/annotations/instances_{train,val}2017.json")
    one_line(_run(["yolo", "voc", folder, "--out", out], data), "unknown ENGINE 'yolo'")
    one_line(_run(["mmdet", "voc", tmp_path / "nope", "--out", out], data), "export folder")
    if torch.cuda.device_count() < 2:
        one_line(_run(["detectron2", "voc", folder, "--gpus", "2", "--out", out], data),
                 "needs 2 CUDA devices")
    one_line(_run(["detectron2", "voc", folder, "--out", out, "--config",
                   REPO / "configs/detectron2/faster_rcnn_R_50_FPN_voc0712_us3l.yaml"], data),
             "export is resnet18; pass the R-18 config")
    one_line(_run(["mmdet", "voc", folder, "--out", out, "--cpu-procs", "3"], data),
             "3 processes cannot share a total batch of 16")
    one_line(_run(["detectron2", "voc", folder, "--out", out, "--total-batch", "0"], data),
             "--total-batch '0' is not a positive integer")
    # hostile engine files: refused before the engine reads them, and nothing from them ran
    from test_safe_io import Payload, write_hostile_pickle
    hostile = tmp_path / "hostile"
    shutil.copytree(folder, hostile)
    marker = tmp_path / "payload-ran"
    write_hostile_pickle(hostile / "detectron2.pkl", marker)
    torch.save({"state_dict": Payload(marker)}, hostile / "mmdet.pth")
    for engine in ("detectron2", "mmdet"):
        one_line(_run([engine, "voc", hostile, "--out", out], data),
                 "refused, nothing from it ran")
    one_line(_run(["detectron2", "voc", hostile, "--out", out, "--cpu-procs", "2"], data),
             "refused, nothing from it ran")
    assert not marker.exists()

    from mmcv.ops import get_compiling_cuda_version
    if get_compiling_cuda_version() == "not available":  # this machine's mmcv: CPU ops only
        one_line(_run(["mmdet", "voc", folder, "--out", out], data, US3L_DEVICE="cuda"),
                 "mmcv was built without its CUDA ops, so MMDetection cannot run on the GPU")
    assert not out.exists()  # nothing written


def test_collect_results_tables_and_plots(tmp_path):
    meta = {"arch": "resnet18", "params": 1_000_000, "source": {"sha256": "cd" * 32}}
    for engine in ("detectron2", "mmdet"):
        for width, ap50, eval_only in ((0.5, 30.0, False), (1.0, 40.0, False), (1.0, 0.5, True)):
            values = {"AP": ap50 / 2, "AP50": ap50, "AP75": None}
            record = metrics.make_record(engine, "voc", dict(meta, width=width,
                                                             macs_224=int(width * 1e9)),
                                         values, ["AP75: NaN"], run={"iterations": 0 if eval_only
                                                                     else 100,
                                                                     "eval_only": eval_only})
            run = tmp_path / "runs" / f"{engine}_{width}_{eval_only}"
            metrics.write(run, record)
            (run / engine).mkdir()
            (run / engine / "metrics.json").write_text('{"iteration": 1}\n{"iteration": 2}\n')
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(REPO / "tools/collect_results.py"),
                           str(tmp_path / "runs"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (out / "detection_results.md").read_text()
    assert "### detectron2 / voc" in text and "### mmdet / voc" in text
    assert "| R-18 | 0.5x | 1.00 | 0.50 | 15.0 | 30.0 | n/a | 100 |" in text
    assert "untrained heads" in text
    for engine in ("detectron2", "mmdet"):
        assert (out / f"det_{engine}_voc.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "detection_results.csv").read_text().splitlines()) == 7
    proc = subprocess.run([sys.executable, str(REPO / "tools/collect_results.py"), str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
