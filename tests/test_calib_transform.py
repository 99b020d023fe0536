"""--calib-transform: BN calibration on training augmentations by default (US3L
workers/calibrate.py), eval transforms as the named alternative; seeded, recorded in meta.json."""
from __future__ import annotations

import json

import pytest
import torch

from bad_input_helpers import call_main
from export_helpers import make_checkpoint
from pretrain.checkpoint import load_backbone, load_checkpoint
from transfer.export import bn_calibration, calib_data, convert

FAST = ["--calib-batches", "2", "--calib-batch-size", "4", "--formats", "torchvision",
        "--widths", "0.5", "--verify-images", "2", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "r18c.pth", "resnet18", stem="cifar",
                           data={"name": "synthetic", "image_size": 32, "augment": "cifar"})


def _calibrated_stats(ckpt, **loader_kw) -> dict[str, torch.Tensor]:
    loaded = load_checkpoint(ckpt)
    model = load_backbone(loaded)
    loader = calib_data.calibration_loader(calib_data.spec_from_config(loaded["config"]), 32, 4, 2,
                                           stem="cifar", **loader_kw)
    bn_calibration.recalibrate_bn(model, 0.5, loader, 2, progress=False)
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def test_default_is_train_transform_seeded_and_differs_from_eval(ckpt):
    default = _calibrated_stats(ckpt)
    train = _calibrated_stats(ckpt, transform="train")
    train_again = _calibrated_stats(ckpt, transform="train")
    evaluated = _calibrated_stats(ckpt, transform="eval")
    other_seed = _calibrated_stats(ckpt, transform="train", seed=1)
    for k in default:  # bit-identical: the same seeded augmentations every time
        assert torch.equal(default[k], train[k]) and torch.equal(train[k], train_again[k]), k
    assert not torch.equal(train["bn1.running_var"], evaluated["bn1.running_var"])
    assert not torch.equal(train["bn1.running_mean"], other_seed["bn1.running_mean"])


def test_train_images_are_seeded_per_image_and_leave_the_global_rng_alone():
    spec = calib_data.CalibSpec("synthetic", data={"augment": "cifar"})
    train = calib_data.build_dataset(spec, 32, "cifar", synthetic_size=8)
    evaluated = calib_data.build_dataset(spec, 32, "cifar", synthetic_size=8, transform="eval")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = train[3][0]
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(train[3][0], first) and not torch.equal(first, evaluated[3][0])


def test_preset_follows_the_checkpoint_augment():
    spec = calib_data.CalibSpec("synthetic", data={"augment": "byol"})
    assert calib_data.augment_preset(spec, "cifar") == "byol"
    assert calib_data.augment_preset(spec, "cifar", augment="imagenet") == "imagenet"
    assert calib_data.augment_preset(calib_data.CalibSpec("digits"), "cifar") == "cifar"
    with pytest.raises(calib_data.CalibDataError, match="--calib-transform"):
        calib_data.build_dataset(calib_data.CalibSpec("synthetic"), 32, transform="bogus")


def _export(ckpt, out, *extra) -> tuple[dict, dict]:
    assert convert.main([str(ckpt), "--out", str(out), *FAST, *extra]) == 0
    meta = json.loads((out / "w0.50" / "meta.json").read_text())
    return meta, torch.load(out / "w0.50" / "torchvision.pth", weights_only=True)


def test_converter_default_train_recorded_and_reproducible(ckpt, tmp_path):
    assert convert.parser().parse_args([str(ckpt), "--out", "x"]).calib_transform == "train"
    meta, state = _export(ckpt, tmp_path / "a")
    meta2, state2 = _export(ckpt, tmp_path / "b")
    meta_eval, state_eval = _export(ckpt, tmp_path / "c", "--calib-transform", "eval")
    assert meta["calibration"]["transform"] == "train"
    assert meta["calibration"]["augment"] == "cifar"
    assert "training augmentations" in meta["calibration"]["procedure"]
    assert meta_eval["calibration"]["transform"] == "eval"
    assert meta_eval["calibration"]["augment"] is None
    assert "eval transforms" in meta_eval["calibration"]["procedure"]
    assert "training augmentations" in (tmp_path / "a" / "verification.md").read_text()
    assert state.keys() == state2.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    assert not torch.equal(state["bn1.running_var"], state_eval["bn1.running_var"])


def test_bad_calib_transform_is_one_line_exit_2(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    call_main(convert.main, [str(ckpt), "--out", str(out), "--calib-transform", "augmented"],
              convert.PROG, capsys, must_mention=("--calib-transform", "train", "eval"),
              unchanged=out)
    assert not out.exists()
