"""The stack is real: both engines build their own shipped R50-FPN models, train a step and infer
on the CPU; mmcv's compiled ops run; pycocotools scores a known case; the detectron2 compat layer
fails loudly for what truly needs detectron2's compiled ops."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

import transfer.detectron2.compat as d2compat


def _tiny_targets(h=96, w=128):
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 80.0]])
    labels = torch.tensor([1, 3])
    return boxes, labels


def test_detectron2_faster_rcnn_r50_fpn_trains_and_infers_from_model_zoo_config():
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.NORM = "GN"  # random init: GN gives sane losses without pretrained stats
    cfg.MODEL.RESNETS.FREEZE_AT = 0
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    torch.manual_seed(0)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 20e6  # a real R50-FPN Faster R-CNN
    boxes, labels = _tiny_targets()
    inst = Instances((96, 128), gt_boxes=Boxes(boxes), gt_classes=labels)
    batch = [{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8).float(),
              "instances": inst, "height": 96, "width": 128}]
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    from detectron2.utils.events import EventStorage
    with EventStorage(0):
        losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    opt.zero_grad()
    total.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 96, "width": 128}])
    pred = out[0]["instances"]
    assert pred.pred_boxes.tensor.shape[1] == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_mmdet_mask_rcnn_r50_fpn_trains_and_infers_from_shipped_config():
    from mmengine.config import Config
    from mmdet.utils import register_all_modules
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from mmdet.structures.mask import BitmapMasks
    import mmdet

    register_all_modules()
    cfg_path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "mask_rcnn",
                            "mask-rcnn_r50_fpn_1x_coco.py")
    cfg = Config.fromfile(cfg_path)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    model_cfg.backbone.norm_cfg = dict(type="BN", requires_grad=True)
    model_cfg.backbone.norm_eval = False
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.init_weights()
    h, w = 96, 128
    boxes, labels = _tiny_targets(h, w)
    masks = np.zeros((2, h, w), dtype=np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[k, y0:y1, x0:x1] = 1
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                         scale_factor=(1.0, 1.0), batch_input_shape=(h, w)))
    sample.gt_instances = InstanceData(bboxes=boxes, labels=labels, masks=BitmapMasks(masks, h, w))
    data = {"inputs": [torch.randint(0, 255, (3, h, w), dtype=torch.uint8)], "data_samples": [sample]}
    model.train()
    processed = model.data_preprocessor(data, training=True)
    losses = model(**processed, mode="loss")
    assert {"loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"} <= set(losses)
    total = sum(v if isinstance(v, torch.Tensor) else sum(v) for v in losses.values())
    assert torch.isfinite(total)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    opt.zero_grad()
    total.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        processed = model.data_preprocessor(
            {"inputs": data["inputs"], "data_samples": [copy.deepcopy(sample)]}, training=False)
        result = model(**processed, mode="predict")[0]
    assert result.pred_instances.bboxes.shape[-1] == 4
    assert "masks" in result.pred_instances


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
