"""The stack is real: both engines' detectors, built from the project's configs on an export,
infer ranked boxes (and masks) inside the image; the engines ship the configs the project
inherits; mmcv's compiled ops run; pycocotools scores a known case; the detectron2 compat layer
fails loudly for what truly needs detectron2's compiled ops. (Training steps of these detectors
run in tests/test_detection.py and tests/test_pipeline.py.)"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import transfer.detectron2.compat as d2compat


WIDTH = 0.25
DETECTIONS = 10  # per image, both engines


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A resnet18 checkpoint exported at WIDTH (detectron2 and mmdet formats)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from export_helpers import make_checkpoint
    from transfer.export.convert import main as convert

    tmp = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(tmp / "ckpt.pth", arch="resnet18")
    assert convert([str(ckpt), "--out", str(tmp / "exports"), "--widths", str(WIDTH),
                    "--formats", "detectron2", "mmdet", "--calib-data", "synthetic",
                    "--calib-batches", "1", "--calib-batch-size", "2", "--calib-size", "64",
                    "--verify-images", "1", "--quiet"]) == 0
    return tmp / "exports" / "w0.25"


def _check_detections(boxes, scores, labels, h, w, num_classes, masks=None):
    """Exactly DETECTIONS boxes per image (score threshold 0 keeps at least the best box of every
    class after per-class NMS, and there are more classes than DETECTIONS), inside the image,
    with scores in (0, 1], labels in range and, for masks, one full-size mask per box."""
    assert boxes.shape == (DETECTIONS, 4), boxes.shape
    assert torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert scores.shape == (DETECTIONS,) and (scores > 0).all() and (scores <= 1).all()
    assert (scores[:-1] >= scores[1:]).all()  # ranked
    assert labels.shape == (DETECTIONS,) and (labels >= 0).all() and (labels < num_classes).all()
    if masks is not None:
        assert tuple(masks.shape) == (DETECTIONS, h, w) and masks.dtype == torch.bool


def test_detectron2_mask_rcnn_from_the_project_config_infers_ranked_boxes_and_masks(export):
    """The only inference check of detectron2's detector built from the project config (the
    training runs in test_detection/test_pipeline score what they predict, not its shape)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from pathlib import Path

    from transfer.detectron2.config import build_cfg

    repo = Path(__file__).resolve().parents[1]
    cfg, _, _, _ = build_cfg(repo / "configs/detectron2/mask_rcnn_R_18_FPN_1x_coco_us3l.yaml",
                             export, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                      "TEST.DETECTIONS_PER_IMAGE", str(DETECTIONS),
                                      "MODEL.RPN.POST_NMS_TOPK_TEST", "64"], device="cpu")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    h, w = 96, 128
    image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8).float()
    with torch.no_grad():
        inst = model([{"image": image, "height": h, "width": w}])[0]["instances"]
    _check_detections(inst.pred_boxes.tensor, inst.scores, inst.pred_classes, h, w, 80,
                      inst.pred_masks)


def test_mmdet_faster_rcnn_from_the_project_config_infers_ranked_boxes(export):
    """The only inference check of MMDetection's detector built from the project config."""
    from pathlib import Path

    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules

    from transfer.mmdet.config import build_config

    register_all_modules()
    repo = Path(__file__).resolve().parents[1]
    cfg, *_ = build_config(repo / "configs/mmdet/faster-rcnn_r18_fpn_voc0712_us3l.py", export,
                           "voc", "/nonexistent", "/tmp/unused", device="cpu",
                           cfg_options={"model.test_cfg.rcnn.score_thr": 0.0,
                                        "model.test_cfg.rcnn.max_per_img": DETECTIONS,
                                        "model.test_cfg.rpn.max_per_img": 64})
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    h, w = 96, 128
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                         scale_factor=(1.0, 1.0), batch_input_shape=(h, w)))
    data = {"inputs": [torch.randint(0, 255, (3, h, w), dtype=torch.uint8)],
            "data_samples": [sample]}
    with torch.no_grad():
        result = model(**model.data_preprocessor(data, training=False), mode="predict")[0]
    pred = result.pred_instances
    _check_detections(pred.bboxes, pred.scores, pred.labels, h, w, 20)


def test_engines_ship_the_configs_the_project_inherits():
    """The model-zoo configs the project's configs build on are packaged with each engine."""
    import mmdet
    from detectron2 import model_zoo

    for name in ("PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml",
                 "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"):
        assert os.path.isfile(model_zoo.get_config_file(name))
    configs = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")
    for name in ("pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py",
                 "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"):
        assert os.path.isfile(os.path.join(configs, name))


def test_mmcv_compiled_roi_align_and_nms_match_torchvision_on_cpu():
    import torchvision.ops as tvops
    from mmcv.ops import RoIAlign, nms

    torch.manual_seed(0)
    feats = torch.randn(1, 4, 32, 32)
    rois = torch.tensor([[0, 2.0, 3.0, 20.0, 25.0], [0, 5.5, 1.25, 30.0, 12.0]])
    ours = RoIAlign((7, 7), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feats, rois)
    ref = tvops.roi_align(feats, rois, (7, 7), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 9, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    ref_keep = tvops.nms(boxes, scores, 0.5)
    assert keep.tolist() == ref_keep.tolist() == [3, 2]
    assert dets.shape == (2, 5)


def test_pycocotools_scores_a_known_case():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {
        "info": {"description": "two-image check"}, "licenses": [],
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "box"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
        ],
    }
    gt.createIndex()
    # One perfect detection, one miss (IoU 0): AP = 0.5 at every threshold (101-point interpolation
    # gives recall 0.5 at precision 1.0 -> 51/101 of the curve).
    dt = gt.loadRes([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
                     {"image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.8}])
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate(); ev.accumulate(); ev.summarize()
    assert ev.stats[0] == pytest.approx(51 / 101, abs=1e-6)
    assert ev.stats[1] == pytest.approx(51 / 101, abs=1e-6)


def test_detectron2_compat_layer_keeps_real_ops_or_fails_loudly():
    from detectron2.layers import nms, ROIAlign  # torchvision-backed: must work either way
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11.0]])
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
    assert ROIAlign((2, 2), 1.0, 0, aligned=True)(torch.ones(1, 1, 8, 8),
                                                  torch.tensor([[0, 0, 0, 4, 4.0]])).shape == (1, 1, 2, 2)
    from PIL import Image
    assert Image.LINEAR == Image.BILINEAR
    assert np.int is not None and np.float is not None and np.bool is not None
    if d2compat.HAS_COMPILED_OPS:
        pytest.skip("official detectron2 with compiled ops: nothing stands in")
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated
    with pytest.raises(NotImplementedError, match="compiled ops"):
        pairwise_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5))
    assert d2compat.coco_fast_eval_available() is False
