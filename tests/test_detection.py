"""Detection transfer end to end: tools/train_det.sh trains and evaluates an exported width in
detectron2 and in MMDetection on tiny genuine-format VOC and COCO data, and writes metrics.json
in one schema with numbers from the engines' own evaluators. Also: SyncBN degrades to BN on one
process, configs carry no channel numbers, bad input fails in one line with exit code 2."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import transfer.detectron2.compat  # noqa: F401  (before detectron2)
from transfer.detection import metrics, synthetic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from export_helpers import make_checkpoint  # noqa: E402

WIDTH = 0.25
TINY_D2 = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01",
           "SOLVER.WARMUP_ITERS", "1", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
           "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
           "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
           "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
           "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10",
           "TEST.PRECISE_BN.ENABLED", "False", "SEED", "0"]
TINY_MM = ["--max-iters", "2", "--img-scale", "128", "96", "--cfg-options",
           "train_dataloader.batch_size=2", "train_dataloader.num_workers=0",
           "val_dataloader.num_workers=0", "test_dataloader.num_workers=0",
           "model.train_cfg.rpn.sampler.num=32", "model.train_cfg.rcnn.sampler.num=16",
           "model.train_cfg.rpn_proposal.max_per_img=32", "model.test_cfg.rpn.max_per_img=32",
           "model.test_cfg.rcnn.score_thr=0.0", "model.test_cfg.rcnn.max_per_img=10",
           "randomness.seed=0"]


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


def _run(args, data_root, timeout=240):
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), OMP_NUM_THREADS="2",
               MPLBACKEND="Agg", US3L_VENV=str(Path(sys.executable).parents[1]))
    return subprocess.run(["bash", str(REPO / "tools" / "train_det.sh"), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout)


def _check_record(out: Path, engine: str, task: str, meta: dict) -> dict:
    record = metrics.read(out / "metrics.json")
    assert record["engine"] == engine and record["task"] == task
    assert record["arch"] == "resnet18" and record["width"] == WIDTH
    assert record["source_sha256"] == meta["source"]["sha256"]
    assert record["params"] == meta["params"] and record["macs"] == meta["macs_224"]
    for key in metrics.metric_keys(task):
        value = record[key]
        assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 100.0, key
    assert set(record) == set(metrics.IDENTITY_KEYS) | set(metrics.metric_keys(task)) | {"run"}
    assert record["run"]["iterations"] == 2 and record["run"]["world_size"] == 1
    return record


@pytest.mark.slow
@pytest.mark.parametrize("task", ["voc", "coco"])
def test_detectron2_end_to_end(task, export, data, tmp_path):
    folder, meta = export
    out = tmp_path / "run"
    proc = _run(["detectron2", task, folder, "--out", out, *TINY_D2], data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_record(out, "detectron2", task, meta)
    logs = out / "detectron2"
    cfg_text = (logs / "config.yaml").read_text()
    assert "SyncBN" not in cfg_text  # one process: SyncBN degraded to BN everywhere
    log = (logs / "log.txt").read_text()
    assert "SyncBN -> BN in MODEL.RESNETS.NORM, MODEL.FPN.NORM, MODEL.ROI_BOX_HEAD.NORM" in log
    assert re.search(r"backbone: \d+ tensors equal to .*detectron2.pkl", log)
    # the evaluator ran and the schema copies its numbers
    assert ("Evaluating voc_2007_test using 2007 metric" in log) == (task == "voc")
    if task == "coco":
        assert (logs / "inference" / "coco_instances_results.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["voc", "coco"])
def test_mmdet_end_to_end(task, export, data, tmp_path):
    folder, meta = export
    out = tmp_path / "run"
    proc = _run(["mmdet", task, folder, "--out", out, *TINY_MM], data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _check_record(out, "mmdet", task, meta)
    logs = Path(record["run"]["logs"])
    assert logs.parent == (out / "mmdet").resolve()
    log = next(logs.glob("*.log")).read_text()
    assert re.search(r"backbone: \d+ tensors equal to .*mmdet.pth", log)
    assert "one process: SyncBN -> BN" in log
    dumped = next((out / "mmdet").glob("*_us3l.py")).read_text()
    assert "SyncBN" not in dumped and "US3LResNet" in dumped


def test_sync_bn_degrades_on_one_process_and_configs_carry_no_channels(export):
    """detectron2 and mmdet models built from the configs for one process hold BN (no SyncBN)
    in backbone, FPN and heads; for several processes the configs keep SyncBN."""
    from detectron2.modeling import build_model
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from transfer.detectron2.config import build_cfg
    from transfer.mmdet.config import build_config

    folder, meta = export
    d2_config = REPO / "configs/detectron2/mask_rcnn_R_18_FPN_1x_coco_us3l.yaml"
    cfg, _, changed = build_cfg(d2_config, folder, world_size=1, device="cpu")
    assert changed == ["MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
                       "MODEL.ROI_MASK_HEAD.NORM"]
    model = build_model(cfg)
    norms = [type(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    assert torch.nn.SyncBatchNorm not in norms
    assert norms.count(torch.nn.BatchNorm2d) > 20  # backbone + FPN + 4conv box head + mask head
    assert model.backbone.bottom_up.stem.conv1.out_channels == meta["channel_plan"]["stem"]
    cfg4, _, changed4 = build_cfg(d2_config, folder, world_size=4, device="cpu")
    assert changed4 == [] and cfg4.MODEL.FPN.NORM == "SyncBN"

    register_all_modules()
    mm_config = REPO / "configs/mmdet/mask-rcnn_r18_fpn_1x_coco_us3l.py"
    mcfg, _, paths = build_config(mm_config, folder, "coco", "/nonexistent", "/tmp/unused")
    assert "model.backbone.norm_cfg" in paths and "model.neck.norm_cfg" in paths
    assert mcfg.model.neck.in_channels == meta["channel_plan"]["out"]
    detector = MODELS.build(mcfg.model)
    mm_norms = {type(m) for m in detector.modules()
                if isinstance(m, torch.nn.modules.batchnorm._NormBase)}
    assert torch.nn.SyncBatchNorm not in mm_norms and torch.nn.BatchNorm2d in mm_norms
    mcfg_d, _, paths_d = build_config(mm_config, folder, "coco", "/nonexistent", "/tmp/unused",
                                      distributed=True)
    assert paths_d == [] and mcfg_d.model.backbone.norm_cfg.type == "SyncBN"
    for path in list((REPO / "configs/detectron2").glob("*.yaml")) + \
            list((REPO / "configs/mmdet").glob("*.py")):
        assert not re.search(r"in_channels\s*=\s*\[\d|RES2_OUT_CHANNELS|base_channels", path.read_text())


def test_bad_input_fails_in_one_line(export, data, tmp_path):
    folder, _ = export
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run(["detectron2", "voc", folder, "--out", tmp_path / "x"], empty)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "VOC2007/{Annotations" in proc.stderr and str(empty) in proc.stderr
    proc = _run(["mmdet", "coco", folder, "--out", tmp_path / "x"], empty)
    assert proc.returncode == 2 and "coco/annotations/instances_{train,val}2017.json" in proc.stderr
    proc = _run(["yolo", "voc", folder], data)
    assert proc.returncode == 2 and "unknown ENGINE 'yolo'" in proc.stderr
    proc = _run(["mmdet", "voc", tmp_path / "nope"], data)
    assert proc.returncode == 2 and "export folder" in proc.stderr
    proc = _run(["detectron2", "voc", folder, "--gpus", "2"], data)
    assert proc.returncode == 2 and "needs 2 CUDA devices" in proc.stderr or \
        torch.cuda.device_count() >= 2
    proc = _run(["detectron2", "voc", folder, "--config",
                 REPO / "configs/detectron2/faster_rcnn_R_50_FPN_voc0712_us3l.yaml"], data)
    assert proc.returncode == 2
    assert "export is resnet18; pass the R-18 config" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x").exists()  # nothing written


def test_metrics_schema_from_both_engines_outputs():
    meta = {"arch": "resnet50", "width": 0.5, "params": 10, "macs_224": 20,
            "source": {"sha256": "ab" * 32}}
    d2 = {"bbox": {"AP": 40.0, "AP50": 70.0, "AP75": 41.0, "APs": float("nan")},
          "segm": {"AP": 35.0, "AP50": 60.0, "AP75": float("nan")}}
    values, notes = metrics.from_detectron2({"coco_2017_val": d2}, "coco")
    record = metrics.make_record("detectron2", "coco", meta, values, notes)
    assert (record["AP"], record["APm50"], record["APm75"]) == (40.0, 60.0, None)
    assert notes == ["APm75: the evaluator returned NaN (no detections to score?)"]
    mm = {"pascal_voc/mAP": 0.4215, "pascal_voc/AP50": 0.7, "pascal_voc/AP75": 0.45}
    values, notes = metrics.from_mmdet(mm, "voc")
    record = metrics.make_record("mmdet", "voc", meta, values, notes)
    assert (record["AP"], record["AP50"], record["AP75"]) == (42.15, 70.0, 45.0) and not notes
    with pytest.raises(metrics.MetricsError, match="no 'segm' block"):
        metrics.from_detectron2({"bbox": d2["bbox"]}, "coco")
    with pytest.raises(metrics.MetricsError, match="not from the coco metric"):
        metrics.from_mmdet(mm, "coco")
    with pytest.raises(metrics.MetricsError, match="not a percentage"):
        metrics.validate(dict(record, AP=140.0))


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
