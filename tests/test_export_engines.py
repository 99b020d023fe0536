"""Exports load into detectron2 / MMDetection / torchvision with nothing skipped and compute what
the slimmable network computes; detectors built on an exported width-0.3 R-50 train one step.

One module fixture converts what the checks need, once: R-50 (Bottleneck) at 0.3 (a channel plan
that breaks the stage doubling: 24/40/80/152) and 1.0 (also loads into torchvision.models.resnet50),
R-18 (BasicBlock) at 0.3, each in all three formats with verification on. Other widths go through
the same code; test_convert_width.py converts them (torchvision format, R-18 at 1.0 included).
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from export_helpers import make_checkpoint
from pretrain.models import build_backbone
from transfer.export import convert, verify

WIDTHS = {"resnet18": (0.3,), "resnet50": (0.3, 1.0)}
FAST = ["--calib-batches", "2", "--calib-batch-size", "4", "--calib-size", "64",
        "--verify-images", "2", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """R-18 and R-50 converted at their WIDTHS in all three formats (verification on)."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for arch in ("resnet18", "resnet50"):
        ckpt = make_checkpoint(root / f"{arch}.pth", arch)
        folder = root / arch
        rc = convert.main([str(ckpt), "--out", str(folder), "--widths", *map(str, WIDTHS[arch]),
                           "--formats", "torchvision", "detectron2", "mmdet", *FAST])
        assert rc == 0
        out[arch] = {"ckpt": ckpt, "dir": folder}
    return out


def _meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_every_width_loads_in_every_engine_with_equal_features(exports, arch):
    """The only check that each engine's own loader computes the slimmable network's features
    (BasicBlock and Bottleneck, a non-doubling width, and 1.0 into torchvision's ResNet-50)."""
    folder = exports[arch]["dir"]
    for width in WIDTHS[arch]:
        meta = _meta(folder / convert.folder_name(width))
        errors = meta["verification"]["max_rel_error"]
        engines = {"torchvision", "detectron2", "mmdet"}
        if width == 1.0:
            engines.add(f"torchvision.models.{arch}")
        assert set(errors) == engines, (width, errors)
        assert all(e <= 1e-5 for e in errors.values()), (width, errors)
        assert meta["files"] == {"torchvision": "torchvision.pth", "detectron2": "detectron2.pkl",
                                 "mmdet": "mmdet.pth"}
    text = (folder / "verification.md").read_text()
    assert text.count("\n| 0.") + text.count("\n| 1.0") == len(WIDTHS[arch])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_exact_key_sets(exports, arch):
    """The only exact key-set check of the detectron2 and mmdet files.
    torchvision.pth = the static twin's keys; detectron2.pkl = the renamed keys of
    detectron2's own ResNet built from meta.json (no num_batches_tracked); mmdet.pth =
    'backbone.' + the keys of the registered mmdet backbone."""
    import transfer.detectron2.compat  # noqa: F401
    from transfer.detectron2.backbone import build_us3l_resnet as build_d2
    from transfer.mmdet.backbone import build_us3l_resnet as build_mm
    folder = exports[arch]["dir"] / "w0.30"
    meta = _meta(folder)
    tv = torch.load(folder / "torchvision.pth", weights_only=True)
    assert set(tv) == set(build_backbone({"arch": arch}, width=0.3).state_dict())
    with open(folder / "detectron2.pkl", "rb") as fh:  # written by this test run
        d2 = pickle.load(fh)
    assert d2["__author__"] == "us3l" and d2["matching_heuristics"] is True
    assert all(isinstance(v, np.ndarray) for v in d2["model"].values())
    d2_keys = {k for k in build_d2(meta["channel_plan"]).state_dict()
               if not k.endswith("num_batches_tracked")}
    assert set(d2["model"]) == d2_keys
    assert len(d2_keys) == len([k for k in tv if not k.endswith("num_batches_tracked")])
    expected_names = {"stem.conv1.weight", "stem.conv1.norm.running_var", "res2.0.conv1.norm.bias",
                      "res3.0.shortcut.weight", "res3.0.shortcut.norm.running_mean",
                      "res5.1.conv2.weight"}
    assert expected_names <= set(d2["model"])
    assert d2["model"]["res3.0.shortcut.norm.running_mean"].shape == (meta["channel_plan"]["out"][1],)
    mm = torch.load(folder / "mmdet.pth", weights_only=True)
    mm_keys = set(build_mm(folder / "meta.json").state_dict())
    assert set(mm["state_dict"]) == {"backbone." + k for k in mm_keys} == {"backbone." + k for k in tv}
    if arch == "resnet50":
        assert meta["channel_plan"]["inner"] == [24, 40, 80, 152]
        assert meta["channel_plan"]["out"] == [80, 152, 304, 616]


def _tampered(tmp_path, src: Path, name: str, edit) -> Path:
    """A copy of an export folder with one file edited (the verifier must catch it)."""
    import shutil
    dst = tmp_path / name
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def test_verifiers_reject_skipped_or_missing_keys(exports, tmp_path):
    """What "it loaded" hides: detectron2 skips a shape-mismatched key with a warning and mmengine
    skips a missing key with a warning; both are failures here, as is a strict-load miss."""
    src = exports["resnet50"]["dir"] / "w0.30"
    x = torch.randn(1, 3, 64, 64)
    ckpt = exports["resnet50"]["ckpt"]
    from pretrain.checkpoint import load_backbone, load_checkpoint
    from transfer.export import bn_calibration, calib_data
    loaded = load_checkpoint(ckpt)
    slimmable = load_backbone(loaded)
    loader = calib_data.calibration_loader(calib_data.spec_from_config(loaded["config"]), 64, 4, 2)
    bn_calibration.recalibrate_bn(slimmable, 0.3, loader, 2, progress=False)  # as the converter
    refs = verify.reference_features(slimmable, 0.3, x)

    def shrink_d2(folder):
        path = folder / "detectron2.pkl"
        data = pickle.loads(path.read_bytes())
        data["model"]["res4.2.conv2.weight"] = data["model"]["res4.2.conv2.weight"][:-8]
        path.write_bytes(pickle.dumps(data))

    def drop_d2(folder):
        path = folder / "detectron2.pkl"
        data = pickle.loads(path.read_bytes())
        del data["model"]["res2.1.conv3.norm.running_var"]
        path.write_bytes(pickle.dumps(data))

    def drop_mm(folder):
        path = folder / "mmdet.pth"
        data = torch.load(path, weights_only=True)
        del data["state_dict"]["backbone.layer3.4.bn1.weight"]
        torch.save(data, path)

    def drop_tv(folder):
        path = folder / "torchvision.pth"
        data = torch.load(path, weights_only=True)
        del data["layer1.0.downsample.0.weight"]
        torch.save(data, path)

    def perturb_tv_stats(folder):  # loads cleanly, computes something else
        path = folder / "torchvision.pth"
        data = torch.load(path, weights_only=True)
        data["layer2.1.bn2.running_var"] *= 1.01
        torch.save(data, path)

    def d2(f):
        return verify.verify_detectron2(f / "detectron2.pkl", f / "meta.json", x, refs)

    def mm(f):
        return verify.verify_mmdet(f / "mmdet.pth", f / "meta.json", x, refs)

    def tv(f):
        return verify.verify_torchvision(f / "torchvision.pth", {"arch": "resnet50"}, 0.3, x, refs)

    cases = [("d2_shape", shrink_d2, "res4.2.conv2.weight", d2),
             ("d2_missing", drop_d2, "res2.1.conv3.norm.running_var", d2),
             ("mm_missing", drop_mm, "layer3.4.bn1.weight", mm),
             ("tv_missing", drop_tv, "layer1.0.downsample.0.weight", tv),
             ("tv_values", perturb_tv_stats, "features differ", tv)]
    for check in (d2, mm, tv):  # control: the untouched export passes every verifier
        check(src)
    for name, edit, match, check in cases:
        folder = _tampered(tmp_path, src, name, edit)
        with pytest.raises(verify.VerificationError, match=match.replace(".", r"\.")):
            check(folder)


def test_detectron2_faster_rcnn_fpn_trains_one_step_on_width_0_3(exports):
    """The only in-process check that detectron2 builds Faster R-CNN FPN on the project's backbone
    from meta.json, loads the export bit for bit and takes a finite training step."""
    import transfer.detectron2.compat  # noqa: F401
    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    from transfer.detectron2.backbone import add_us3l_config, apply_us3l_backbone
    folder = exports["resnet50"]["dir"] / "w0.30"
    cfg = add_us3l_config(get_cfg())
    cfg.merge_from_file(model_zoo.get_config_file("PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml"))
    apply_us3l_backbone(cfg, folder / "meta.json", weights=folder / "detectron2.pkl", norm="SyncBN")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 200, 50
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    torch.manual_seed(0)
    model = build_model(cfg)
    assert [model.backbone.bottom_up.output_shape()[f"res{i}"].channels for i in range(2, 6)] \
        == [80, 152, 304, 616]
    assert model.backbone.output_shape()["p2"].channels == 256
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    loaded = pickle.loads((folder / "detectron2.pkl").read_bytes())["model"]
    for key, value in loaded.items():
        assert np.array_equal(model.backbone.bottom_up.state_dict()[key].numpy(), value), key
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)
    inst = Instances((128, 128), gt_boxes=Boxes(torch.tensor([[10.0, 20.0, 70.0, 90.0],
                                                               [60.0, 30.0, 120.0, 110.0]])),
                     gt_classes=torch.tensor([3, 11]))
    before = model.backbone.bottom_up.res3[0].conv1.weight.detach().clone()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage(0):
        losses = model([{"image": image, "instances": inst, "height": 128, "width": 128}])
    total = sum(losses.values())
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert not torch.equal(before, model.backbone.bottom_up.res3[0].conv1.weight)


def test_mmdet_mask_rcnn_fpn_trains_one_step_on_width_0_3(exports):
    """The same for MMDetection's Mask R-CNN FPN (US3LResNet from meta.json)."""
    import os

    import mmdet
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.optim import OptimWrapper
    from mmengine.structures import InstanceData

    from transfer.mmdet.backbone import neck_in_channels, us3l_backbone_cfg
    register_all_modules()
    folder = exports["resnet50"]["dir"] / "w0.30"
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs",
                                       "mask_rcnn", "mask-rcnn_r50_fpn_1x_coco.py"))
    cfg.model.backbone = us3l_backbone_cfg(folder / "meta.json", folder / "mmdet.pth")
    cfg.model.neck.in_channels = neck_in_channels(folder / "meta.json")
    assert cfg.model.neck.in_channels == [80, 152, 304, 616] and cfg.model.neck.out_channels == 256
    cfg.model.train_cfg.rpn_proposal.nms_pre = 200
    cfg.model.train_cfg.rpn_proposal.max_per_img = 50
    cfg.model.train_cfg.rcnn.sampler.num = 32
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    state = torch.load(folder / "mmdet.pth", weights_only=True)["state_dict"]
    model_state = model.state_dict()
    for key, value in state.items():
        assert torch.equal(model_state[key], value), key
    masks = np.zeros((2, 128, 128), dtype=np.uint8)
    masks[0, 20:90, 10:70] = 1
    masks[1, 30:110, 60:120] = 1
    sample = DetDataSample(metainfo=dict(img_shape=(128, 128), ori_shape=(128, 128),
                                         scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[10.0, 20.0, 70.0, 90.0], [60.0, 30.0, 120.0, 110.0]]),
        labels=torch.tensor([3, 11]), masks=BitmapMasks(masks, 128, 128))
    data = {"inputs": [torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)],
            "data_samples": [sample]}
    before = model.backbone.layer2[0].conv1.weight.detach().clone()
    model.train()
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    logs = model.train_step(data, wrapper)
    assert {"loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"} <= set(logs)
    assert all(torch.isfinite(v).all() for v in logs.values())
    assert not torch.equal(before, model.backbone.layer2[0].conv1.weight)
