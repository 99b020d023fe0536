"""S-Net (pretrain/methods/snet.py): switchable BN per listed width, the fixed-list run, exports.

Tiny ResNet-18s: the switchable BN keeps each width's statistics apart; a short run through
tools/pretrain.py's main trains every listed width; a checkpoint with per-width BN converts at a
listed width (that width's own BN, not recalibrated) into torchvision / detectron2 / MMDetection
files that load strictly and match the network at that width; a width outside the list is one
line and exit 2.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from bad_input_helpers import call_main
from pretrain import slim
from pretrain.checkpoint import load_checkpoint, save_checkpoint
from pretrain.config import ConfigError, load_config
from pretrain.models import build_backbone
from pretrain.sampling import widths_for_iteration
from transfer.export import convert

ROOT = Path(__file__).resolve().parents[1]
LIST = [1.0, 0.75, 0.5, 0.25]
FAST = ["--calib-batches", "1", "--calib-batch-size", "2", "--calib-size", "64",
        "--verify-images", "2", "--quiet"]
pytestmark = pytest.mark.usefixtures("one_thread")

_spec = importlib.util.spec_from_file_location("pretrain_tool_snet", ROOT / "tools" / "pretrain.py")
PRETRAIN = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(PRETRAIN)


def _snet(stem: str = "cifar") -> torch.nn.Module:
    return build_backbone({"arch": "resnet18", "stem": stem, "bn_widths": LIST})


def test_switchable_bn_keeps_widths_apart():
    torch.manual_seed(0)
    model = _snet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    slim.set_width(model, 0.5)
    model(torch.randn(4, 3, 16, 16)).pow(2).mean().backward()
    optim.step()
    after = model.state_dict()
    i = LIST.index(0.5)
    own = [k for k in after if f".bn.{i}." in k]
    others = [k for k in after if ".bn." in k and f".bn.{i}." not in k]
    assert own and others
    assert all(torch.equal(before[k], after[k]) for k in others)  # exactly untouched
    assert all(not torch.equal(before[k], after[k]) for k in own if "running" in k)
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])  # conv weights shared
    assert after["layer1.0.bn1.widths"].tolist() == LIST  # the list travels with the weights
    assert after["layer1.0.bn1.bn.3.weight"].shape == (16,)  # channels_at(64, 0.25)


def test_calibration_leaves_switchable_bn_alone():
    """The kNN monitor calibrates BN at a width: S-Net's trained statistics must stay."""
    model = _snet().train()
    slim.set_width(model, 0.75)
    model(torch.randn(4, 3, 16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with slim.calibrating(model), torch.no_grad():
        model(torch.randn(4, 3, 16, 16))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_config_and_sampling():
    cfg = load_config(ROOT / "configs/pretrain/snet_distill_r18_cifar100.yaml")
    s = cfg["sampling"]
    assert (s["width_list"], s["min_width"], s["max_width"]) == (LIST, 0.25, 1.0)
    assert cfg["model"]["bn_widths"] == LIST and cfg["method"]["distill_loss"] == "mse"
    assert load_config(ROOT / "configs/pretrain/snet_r18_cifar100.yaml")["method"][
        "distill_loss"] == "none"
    assert widths_for_iteration(1, 10, {**s, "width_list": [0.5, 1.0, 0.25]}, None) == \
        [1.0, 0.5, 0.25]
    with pytest.raises(ConfigError, match="sampling.width_list"):
        load_config(None, ["method.name=snet"])
    with pytest.raises(ConfigError, match="repeats"):
        load_config(None, ["method.name=snet", "sampling.width_list=[1.0,1.0]"])


def test_short_snet_run_trains_every_listed_width(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--config", str(ROOT / "configs/pretrain/snet_distill_r18_cifar100.yaml"),
            "--no-progress", "data.name=synthetic", "data.image_size=16", "data.batch_size=8",
            "data.num_workers=0", "data.synthetic.train_size=16", "data.synthetic.val_size=8",
            "heads.projector.hidden=32", "heads.projector.out=16", "heads.predictor.hidden=16",
            "schedule.iters=2", "monitor.knn_every=0", "monitor.tensorboard=false",
            "monitor.log_every=1", "amp=false", f"output.dir={out}"]
    init = out / "init.pth"
    assert PRETRAIN.main([*argv, "--init-only"]) == 0
    (out / "checkpoint.pth").rename(init)
    assert PRETRAIN.main(argv) == 0
    first, last = load_checkpoint(init), load_checkpoint(out / "checkpoint.pth")
    assert last["config"]["sampling"]["width_list"] == LIST
    assert last["width_range"] == [0.25, 1.0]
    w0, w1 = first["state"]["backbone"], last["state"]["backbone"]
    assert set(w0) == set(w1) and {f"bn1.bn.{i}.running_mean" for i in range(4)} <= set(w1)
    for i in range(4):  # every listed width trained: its own BN moved
        assert not torch.equal(w0[f"layer4.1.bn2.bn.{i}.running_mean"],
                               w1[f"layer4.1.bn2.bn.{i}.running_mean"])
    assert not torch.equal(w0["layer1.0.conv1.weight"], w1["layer1.0.conv1.weight"])
    import csv
    with open(out / "widths.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["width"]) for r in rows] == LIST * 2  # every width, largest first, 2 iters
    assert all(math.isfinite(float(r["loss"])) for r in rows)


@pytest.fixture(scope="module")
def snet_checkpoint(tmp_path_factory):
    """A ResNet-18 (ImageNet stem) S-Net checkpoint with distinct BN per width."""
    torch.manual_seed(0)
    model = _snet("imagenet")
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and ".bn." in name:
                t.copy_(torch.empty_like(t).uniform_(0.5, 1.5) if not name.endswith("bias")
                        else torch.empty_like(t).uniform_(-0.2, 0.2))
    config = {"model": {"arch": "resnet18", "stem": "imagenet", "bn_widths": LIST},
              "sampling": {"width_list": LIST}, "data": {"name": "synthetic", "image_size": 64},
              "method": {"name": "snet"}}
    path = tmp_path_factory.mktemp("snet") / "snet.pth"
    save_checkpoint(path, config=config, state={"backbone": model.state_dict()},
                    width_range=(0.25, 1.0))
    return path, model


def test_export_loads_strictly_in_every_engine_and_matches(snet_checkpoint, tmp_path):
    import transfer.detectron2.compat  # noqa: F401
    from transfer.export import verify
    path, model = snet_checkpoint
    out = tmp_path / "exports"
    rc = convert.main([str(path), "--out", str(out), "--widths", "0.5",
                       "--formats", "torchvision", "detectron2", "mmdet", *FAST])
    assert rc == 0
    folder = out / "w0.50"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["calibration"]["batches"] == 0
    assert "switchable" in meta["calibration"]["procedure"]
    assert set(meta["verification"]["max_rel_error"]) == {"torchvision", "detectron2", "mmdet"}
    x = torch.randn(2, 3, 64, 64)
    slim.set_width(model, 0.5)
    refs = verify.reference_features(model.eval(), 0.5, x)
    results = [*verify.verify_torchvision(folder / "torchvision.pth",
                                          {"arch": "resnet18", "stem": "imagenet"}, 0.5, x, refs),
               verify.verify_detectron2(folder / "detectron2.pkl", folder / "meta.json", x, refs),
               verify.verify_mmdet(folder / "mmdet.pth", folder / "meta.json", x, refs)]
    assert all(r.max_rel_error <= 1e-5 for r in results), results
    tv = torch.load(folder / "torchvision.pth", weights_only=True)
    own = model.state_dict()
    assert torch.equal(tv["layer2.0.bn1.running_var"], own["layer2.0.bn1.bn.2.running_var"])
    assert not torch.equal(tv["layer2.0.bn1.weight"],  # not width 1.0's BN sliced
                           own["layer2.0.bn1.bn.0.weight"][:64])


def test_width_outside_the_list_is_one_line_exit_2(snet_checkpoint, tmp_path, capsys):
    path, _ = snet_checkpoint
    out = tmp_path / "out"
    out.mkdir()
    call_main(convert.main, [str(path), "--out", str(out), "--widths", "0.6", *FAST],
              convert.PROG, capsys, want_code=2,
              must_mention=("0.6", "[0.25, 0.5, 0.75, 1.0]"), unchanged=out)
