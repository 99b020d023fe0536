"""tools/import_checkpoint.py: every source format, the drop list, unknown keys, bad input.

Sources are built here in each codebase's exact on-disk layout (taken from its code; see the
docstrings of transfer/imports/from_*.py) with random weights and random BN statistics, so a
mapping that swaps two tensors or drops a statistic changes the features. torchvision (and timm
where installed) are built live; the official US3L networks run through a port of the official
layers. Each test checks exact key sets, features within 1e-5 and the recorded source identity.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from pretrain import slim
from pretrain.checkpoint import file_sha256, load_backbone, load_checkpoint, save_checkpoint
from pretrain.models import build_backbone
from tests.bad_input_helpers import call_main
from transfer.imports import core, from_timm, from_us3l_official as official, import_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from import_checkpoint import PROG, main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5


def randomize(state: dict, seed: int = 0) -> dict:
    """Random weights and BN statistics (running_var in [0.5, 1.5])."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value.clone()
        elif key.endswith("running_var"):
            out[key] = torch.rand(value.shape, generator=gen) + 0.5
        else:
            out[key] = torch.randn(value.shape, generator=gen) * (0.1 if value.dim() > 1 else 1)
    return out


def features(model: nn.Module, x: torch.Tensor, train: bool = False) -> torch.Tensor:
    model.train(train)
    with torch.no_grad():
        out = model(x)
    return torch.flatten(out, 1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def our_keys(arch: str, stem: str = "imagenet") -> set[str]:
    return set(build_backbone({"arch": arch, "stem": stem}).state_dict())


def x_at(stem: str) -> torch.Tensor:
    size = 32 if stem == "cifar" else 64
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7))


def tv_backbone(arch: str, seed: int = 0) -> tuple[nn.Module, dict]:
    """A torchvision network with random weights; (model without classifier, full state dict)."""
    model = (torchvision.models.mobilenet_v2() if arch == "mobilenetv2"
             else getattr(torchvision.models, arch)())
    state = randomize(model.state_dict(), seed)
    model.load_state_dict(state)
    if arch == "mobilenetv2":
        model.classifier = nn.Identity()
    else:
        model.fc = nn.Identity()
    return model, state


# ------------------------------------------------------------------------------ torchvision
def test_torchvision_resnet18_training_checkpoint(tmp_path, capsys):
    model, state = tv_backbone("resnet18")
    src = tmp_path / "tv.pth"
    torch.save({"model": state, "epoch": 3, "optimizer": {"state": {}, "param_groups": []},
                "args": argparse.Namespace(lr=0.1, model="resnet18")}, src)
    out = tmp_path / "imported.pth"
    capsys.readouterr()
    assert cli_run(["--from", "torchvision", "--arch", "resnet18", "--out", str(out), str(src)]) == 0
    printed = capsys.readouterr().out
    assert "classifier head: 2: fc.bias, fc.weight" in printed and "verified against" in printed

    ckpt = load_checkpoint(out)
    assert set(ckpt["state"]["backbone"]) == our_keys("resnet18")
    assert ckpt["width_range"] == [1.0, 1.0]
    rec = ckpt["source"]
    assert rec["format"] == "torchvision" and rec["sha256"] == file_sha256(src)
    assert rec["epoch"] == 3 and rec["args"] == {"lr": 0.1, "model": "resnet18"}  # plain fields
    assert rec["dropped"] == {"classifier head": ["fc.bias", "fc.weight"],
                              "optimizer state (whole entry)": ["<optimizer>"]}
    assert rec["filled"] == [] and rec["slimmable"] is False
    json.dumps(rec)  # meta.json-ready
    x = x_at("imagenet")
    assert rel(features(load_backbone(ckpt, width=1.0), x), features(model, x)) <= TOL


def cli_run(argv) -> int:
    from pretrain import cli
    return cli.run(main, PROG, argv)


def test_torchvision_mobilenetv2_bare_state_dict(tmp_path):
    model, state = tv_backbone("mobilenetv2", seed=1)
    src = tmp_path / "mnv2.pth"
    torch.save(state, src)
    rec = import_checkpoint(src, "torchvision", "mobilenetv2", tmp_path / "out.pth")
    assert rec["dropped"] == {"classifier head": ["classifier.1.bias", "classifier.1.weight"]}
    ckpt = load_checkpoint(tmp_path / "out.pth")
    assert set(ckpt["state"]["backbone"]) == our_keys("mobilenetv2")
    x = x_at("imagenet")
    assert rel(features(load_backbone(ckpt, width=1.0), x), features(model, x)) <= TOL


def test_import_is_the_checkpoint_format_plus_source(tmp_path):
    """The import writes save_checkpoint's format (same keys) plus the top-level 'source'."""
    ref = save_checkpoint(tmp_path / "ref.pth", config={"model": {"arch": "resnet18"}},
                          state={"backbone": build_backbone({"arch": "resnet18"}).state_dict()})
    _, state = tv_backbone("resnet18")
    torch.save(state, tmp_path / "tv.pth")
    import_checkpoint(tmp_path / "tv.pth", "torchvision", "resnet18", tmp_path / "imp.pth")
    ours, theirs = torch.load(tmp_path / "imp.pth", weights_only=True), \
        torch.load(ref, weights_only=True)
    assert set(ours) == set(theirs) | {"source"}
    for key in ("format", "format_version", "width_rule"):
        assert ours[key] == theirs[key]
    assert set(ours["state"]) == {"backbone"} and ours["config"]["model"] == \
        {"arch": "resnet18", "stem": "imagenet"}


# ------------------------------------------------------------------------------ timm
def timm_source(arch: str, seed: int = 2) -> tuple[nn.Module, dict]:
    """timm's network (live where installed, else its layout as written in timm's code)."""
    model = from_timm.reference_model(arch)
    state = randomize(model.state_dict(), seed)
    model.load_state_dict(state)
    head = "classifier" if arch == "mobilenetv2" else "fc"
    feat = 1280 if arch == "mobilenetv2" else 512
    full = dict(state, **{f"{head}.weight": torch.randn(10, feat), f"{head}.bias": torch.randn(10)})
    return model, full


@pytest.mark.parametrize("arch", ["mobilenetv2", "resnet18"])
def test_timm_train_checkpoint(tmp_path, arch):
    model, state = timm_source(arch)
    src = tmp_path / "timm.pth.tar"
    torch.save({"epoch": 5, "arch": from_timm.TIMM_NAMES[arch], "state_dict": state,
                "state_dict_ema": state, "optimizer": {}, "amp_scaler": {"scale": 1.0},
                "version": 2, "metric": 0.5,
                "args": argparse.Namespace(model=from_timm.TIMM_NAMES[arch])}, src)
    rec = import_checkpoint(src, "timm", arch, tmp_path / "out.pth")
    head = "classifier" if arch == "mobilenetv2" else "fc"
    assert rec["dropped"]["classifier head"] == [f"{head}.bias", f"{head}.weight"]
    assert rec["dropped"]["EMA copy of the weights (whole entry)"] == ["<state_dict_ema>"]
    assert rec["arch_in_file"] == from_timm.TIMM_NAMES[arch] and rec["epoch"] == 5
    ckpt = load_checkpoint(tmp_path / "out.pth")
    assert set(ckpt["state"]["backbone"]) == our_keys(arch)
    x = x_at("imagenet")
    assert rel(features(load_backbone(ckpt, width=1.0), x), features(model, x)) <= TOL


def test_timm_live_when_installed(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is not installed: its layout is checked "
                                              "through the port (test_timm_train_checkpoint)")
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0)
    model.load_state_dict(randomize(model.state_dict()))
    torch.save(model.state_dict(), tmp_path / "m.pth")
    import_checkpoint(tmp_path / "m.pth", "timm", "mobilenetv2", tmp_path / "o.pth")
    x = x_at("imagenet")
    got = features(load_backbone(load_checkpoint(tmp_path / "o.pth"), width=1.0), x)
    assert rel(got, features(model, x)) <= TOL


# ------------------------------------------------------------------------------ official US3L
def official_source(path: Path, arch: str, stem: str, track: bool, layout: str = "byol",
                    seed: int = 3) -> nn.Module:
    """A checkpoint as workers/ssl.py writes it (DDP ``module.`` keys, BYOL or MoCo model)."""
    net = official.official_network(arch, stem, track)
    net.load_state_dict(randomize(net.state_dict(), seed))
    sd = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}
    sd.update({"module.encoder_q.fc.0.weight": torch.randn(16, 8),
               "module.encoder_q.fc.1.running_mean": torch.zeros(16),
               "module.encoder_k.conv1.weight": torch.randn(4, 3, 3, 3)})
    if layout == "byol":
        sd.update({"module.predictor.0.weight": torch.randn(8, 8),
                   "module.predictor_new.0.weight": torch.randn(8, 8)})
    else:  # MoCo: queue
        sd.update({"module.queue": torch.randn(8, 32),
                   "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    name = ("us_cifar_" if stem == "cifar" else "us_") + arch
    torch.save({"epoch": 7, "arch": name, "state_dict": sd,
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return net


@pytest.mark.parametrize("arch,stem,track,layout", [("resnet18", "imagenet", False, "byol"),
                                                    ("resnet18", "cifar", True, "moco")])
def test_official_us3l_resnet_is_slimmable(tmp_path, arch, stem, track, layout):
    src = tmp_path / "checkpoint.pth.tar"
    net = official_source(src, arch, stem, track, layout)
    rec = import_checkpoint(src, "us3l-official", arch, tmp_path / "out.pth")
    ckpt = load_checkpoint(tmp_path / "out.pth")
    assert ckpt["width_range"] == [0.25, 1.0] and rec["slimmable"] is True
    assert ckpt["config"]["model"] == {"arch": arch, "stem": stem}
    assert set(ckpt["state"]["backbone"]) == our_keys(arch, stem)
    assert rec["arch_in_file"] == ("us_cifar_" if stem == "cifar" else "us_") + arch
    want = {"projector (encoder_q.fc)", "momentum encoder / teacher (encoder_k)",
            "optimizer state (whole entry)"} | (
        {"predictor", "distillation predictor"} if layout == "byol" else {"negative queue"})
    assert set(rec["dropped"]) == want
    ours = build_backbone({"arch": arch, "stem": stem})
    bn_buffers = {k for k in ours.state_dict() if k.endswith(core.BN_STATS + (core.BN_COUNTER,))}
    # without tracked statistics exactly the BN buffers are filled; with them, nothing
    assert set(rec["filled"]) == (set() if track else bn_buffers)
    slimmable = load_backbone(ckpt)
    x = x_at(stem)
    for width in (1.0, 0.8, 0.5, 0.3, 0.25):  # BN on batch statistics unless tracked
        with slim.at_width(slimmable, width):
            got = features(slimmable, x, train=not track)
        want_feat = features(official.set_official_width(net, width), x, train=not track)
        assert rel(got, want_feat) <= TOL, width


def test_official_width_rule_vs_ours(tmp_path):
    """ResNet layers: the same channels at every width; MobileNetV2 hidden layers: differ below
    1.0 (official t*make_divisible(C*r), ours make_divisible(t*C*r)), and the import says so."""
    grid = [0.25 + i * 0.005 for i in range(151)]
    for channels in (64, 128, 256, 512, 1024, 2048, 16, 24, 32, 96, 160, 320):
        assert all(official.official_channels(channels, w) == slim.channels_at(channels, w)
                   for w in grid), channels
    assert official.hidden_channels(24, 6, 0.5) == (96, 72)
    assert official.mobilenetv2_differences(1.0) == []
    assert all(official.mobilenetv2_differences(w) for w in grid[:-1])

    src = tmp_path / "mnv2.pth.tar"
    net = official_source(src, "mobilenetv2", "imagenet", track=False)
    rec = import_checkpoint(src, "us3l-official", "mobilenetv2", tmp_path / "out.pth")
    assert any("t*make_divisible(C*r)" in n for n in rec["notes"])
    assert list(rec["verification"]["max_rel_error"]) == ["1"]
    ckpt = load_checkpoint(tmp_path / "out.pth")
    assert set(ckpt["state"]["backbone"]) == our_keys("mobilenetv2")
    x = x_at("imagenet")
    got = features(load_backbone(ckpt), x, train=True)
    assert rel(got, features(official.set_official_width(net, 1.0), x, train=True)) <= TOL
    static = load_backbone(ckpt, width=0.5)  # ours at 0.5: 72 hidden channels in features.3
    assert static.features[3].conv[0][0].out_channels == 72


def test_official_source_config_sets_range(tmp_path, capsys):
    src = tmp_path / "checkpoint.pth.tar"
    official_source(src, "resnet18", "cifar", track=True)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("MODEL:\n  ARCH: us_cifar_resnet18\n  OFA:\n    WIDTH_MULT_RANGE: [0.5, 1.0]\n"
                   "SSL:\n  TYPE: BYOL\n")
    rec = import_checkpoint(src, "us3l-official", "resnet18", tmp_path / "a.pth",
                            source_config=cfg)
    assert rec["width_range"] == [0.5, 1.0] and rec["label"] == "us3l-official byol"
    assert list(rec["verification"]["max_rel_error"]) == ["1", "0.75", "0.5"]
    cfg.write_text("MODEL:\n  ARCH: us_cifar_resnet18\n  OFA:\n    NUM_SAMPLE_TRAINING: 1\n"
                   "    WIDTH_MULT: 0.25\n")
    rec = import_checkpoint(src, "us3l-official", "resnet18", tmp_path / "b.pth",
                            source_config=cfg)
    assert rec["width_range"] == [0.25, 0.25]
    cfg.write_text("MODEL:\n  ARCH: us_resnet50\n")
    call_main(main, [str(src), "--from", "us3l-official", "--arch", "resnet18", "--out",
                     str(tmp_path / "c.pth"), "--source-config", str(cfg)], PROG, capsys,
              must_mention=["us_resnet50"], unchanged=tmp_path / "c.pth")


# ------------------------------------------------------------------------------ solo-learn
def solo_source(folder: Path, arch: str = "resnet18", cifar: bool = False) -> nn.Module:
    """A Lightning checkpoint as solo-learn's BYOL writes it, with args.json beside it."""
    model, state = tv_backbone(arch, seed=4)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if cifar:
        state["conv1.weight"] = torch.randn(64, 3, 3, 3)
    sd = {f"backbone.{k}": v for k, v in state.items()}
    sd.update({f"momentum_backbone.{k}": v for k, v in state.items()})
    sd.update({"projector.0.weight": torch.randn(8, 512), "projector.1.running_mean":
               torch.zeros(8), "momentum_projector.0.weight": torch.randn(8, 512),
               "predictor.0.weight": torch.randn(8, 8), "classifier.weight": torch.randn(10, 512),
               "classifier.bias": torch.randn(10)})
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 9, "global_step": 900, "pytorch-lightning_version": "2.1.0",
                "state_dict": sd, "loops": {"fit_loop": {}}, "callbacks": {},
                "optimizer_states": [{}], "lr_schedulers": [{"last_epoch": 9}]},
               folder / "byol-ep=9.ckpt")
    (folder / "args.json").write_text(json.dumps({"method": "byol", "backbone": {"name": arch},
                                                  "data": {"dataset": "imagenet100"}}))
    return model


def test_solo_learn_byol(tmp_path, capsys):
    model = solo_source(tmp_path / "run")
    src = tmp_path / "run" / "byol-ep=9.ckpt"
    rec = import_checkpoint(src, "solo-learn", "resnet18", tmp_path / "out.pth")
    assert rec["label"] == "solo-learn byol" and rec["epoch"] == 9 and rec["global_step"] == 900
    assert rec["config"]["data"]["dataset"] == "imagenet100"
    groups = rec["dropped"]
    assert groups["online linear classifier"] == ["classifier.bias", "classifier.weight"]
    assert len(groups["momentum encoder"]) == len(our_keys("resnet18"))
    assert {"projector", "momentum projector", "predictor"} <= set(groups)
    ckpt = load_checkpoint(tmp_path / "out.pth")
    assert set(ckpt["state"]["backbone"]) == our_keys("resnet18")
    x = x_at("imagenet")
    assert rel(features(load_backbone(ckpt, width=1.0), x), features(model, x)) <= TOL

    solo_source(tmp_path / "cifar", cifar=True)  # padding-2 stem: refused, one line
    call_main(main, [str(tmp_path / "cifar" / "byol-ep=9.ckpt"), "--from", "solo-learn",
                     "--arch", "resnet18", "--out", str(tmp_path / "c.pth")], PROG, capsys,
              must_mention=["padding 2"], unchanged=tmp_path / "c.pth")


# ------------------------------------------------------------------------------ MMPretrain
def test_mmpretrain_byol_with_message_hub(tmp_path):
    """mmengine's training checkpoint: HistoryBuffer/numpy in message_hub read as inert data."""
    from mmengine.logging import HistoryBuffer
    model, state = tv_backbone("resnet18", seed=5)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    sd = {f"backbone.{k}": v for k, v in state.items()}
    sd.update({f"target_net.module.0.{k}": v for k, v in state.items()})
    sd.update({"target_net.steps": torch.tensor(3), "neck.mlp.0.weight": torch.randn(8, 512),
               "head.predictor.mlp.0.weight": torch.randn(8, 8)})
    hub = HistoryBuffer()
    hub.update(0.5)
    src = tmp_path / "epoch_3.pth"
    torch.save({"meta": {"epoch": 3, "iter": 30, "mmengine_version": "0.10.7",
                         "cfg": "model = dict(type='BYOL', backbone=dict(type='ResNet'))"},
                "state_dict": sd, "message_hub": {"log_scalars": {"loss": hub}},
                "optimizer": {}, "param_schedulers": []}, src)
    rec = import_checkpoint(src, "mmpretrain", "resnet18", tmp_path / "out.pth")
    assert rec["label"] == "mmpretrain byol" and rec["epoch"] == 3 and rec["iter"] == 30
    assert rec["dropped"]["neck (projector)"] == ["neck.mlp.0.weight"]
    assert rec["dropped"]["mmengine message hub (logs) (whole entry)"] == ["<message_hub>"]
    assert len(rec["dropped"]["momentum encoder (target_net)"]) == len(state) + 1
    ckpt = load_checkpoint(tmp_path / "out.pth")
    assert set(ckpt["state"]["backbone"]) == our_keys("resnet18")
    x = x_at("imagenet")
    assert rel(features(load_backbone(ckpt, width=1.0), x), features(model, x)) <= TOL


def test_mmselfsup_aliases_must_equal_backbone(tmp_path, capsys):
    _, state = tv_backbone("resnet18", seed=6)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    sd = {f"backbone.{k}": v for k, v in state.items()}
    sd.update({f"encoder_q.0.{k}": v.clone() for k, v in state.items()})
    sd.update({f"encoder_k.0.{k}": v for k, v in state.items()})
    sd.update({"queue": torch.randn(8, 16), "queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"meta": {"epoch": 200}, "state_dict": sd}, tmp_path / "moco.pth")
    rec = import_checkpoint(tmp_path / "moco.pth", "mmpretrain", "resnet18", tmp_path / "o.pth",
                            verify=False)
    assert len(rec["dropped"]["mmselfsup 0.x alias of backbone+neck"]) == len(state)
    sd["encoder_q.0.conv1.weight"] = sd["encoder_q.0.conv1.weight"] + 1
    torch.save({"meta": {"epoch": 200}, "state_dict": sd}, tmp_path / "bad.pth")
    call_main(main, [str(tmp_path / "bad.pth"), "--from", "mmpretrain", "--arch", "resnet18",
                     "--out", str(tmp_path / "b.pth")], PROG, capsys,
              must_mention=["encoder_q.0.conv1.weight"], unchanged=tmp_path / "b.pth")


# ------------------------------------------------------------------------------ bad input
@pytest.fixture()
def tv18(tmp_path) -> tuple[Path, dict]:
    _, state = tv_backbone("resnet18")
    path = tmp_path / "tv18.pth"
    torch.save(state, path)
    return path, state


def _argv(src, fmt, arch, out, *extra):
    return [str(src), "--from", fmt, "--arch", arch, "--out", str(out), *extra]


def test_unknown_key_fails(tmp_path, capsys):
    solo_source(tmp_path / "run")
    ck = torch.load(tmp_path / "run" / "byol-ep=9.ckpt", weights_only=True)
    ck["state_dict"]["mystery_head.weight"] = torch.ones(1)
    torch.save(ck, tmp_path / "x.ckpt")
    out = tmp_path / "out.pth"
    call_main(main, _argv(tmp_path / "x.ckpt", "solo-learn", "resnet18", out), PROG, capsys,
              must_mention=["mystery_head.weight", "drop list"], unchanged=out)


def test_wrong_arch_fails(tmp_path, tv18, capsys):
    out = tmp_path / "out.pth"
    call_main(main, _argv(tv18[0], "torchvision", "resnet50", out), PROG, capsys,
              must_mention=["resnet18", "--arch"], unchanged=out)
    src = tmp_path / "official.pth"
    official_source(src, "resnet18", "imagenet", track=False)
    call_main(main, _argv(src, "us3l-official", "mobilenetv2", out), PROG, capsys,
              must_mention=["--arch resnet18"], unchanged=out)
    call_main(main, _argv(tv18[0], "mmpretrain", "mobilenetv2", out), PROG, capsys,
              must_mention=["mobilenetv2"], unchanged=out)


@pytest.mark.parametrize("damage", ["truncated", "text", "code"])
def test_corrupted_or_hostile_file_fails(tmp_path, tv18, capsys, damage):
    src, _ = tv18
    marker = tmp_path / "ran"
    if damage == "truncated":
        data = src.read_bytes()
        src.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        src.write_text("not a checkpoint\n")
    else:  # a pickle that would run a command: refused before anything runs
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))
        torch.save({"state_dict": {"conv1.weight": torch.ones(1)}, "x": Evil()}, src)
    out = tmp_path / "out.pth"
    line = call_main(main, _argv(src, "timm", "resnet18", out), PROG, capsys,
                     must_mention=["timm"], unchanged=out)
    assert "pass a timm state_dict" in line
    assert not marker.exists()


def test_fixed_width_source_has_one_width(tmp_path, tv18, capsys):
    out = tmp_path / "out.pth"
    call_main(main, _argv(tv18[0], "torchvision", "resnet18", out, "--width-range", "0.25:1.0"),
              PROG, capsys, must_mention=["fixed-width", "1.0"], unchanged=out)
    import_checkpoint(tv18[0], "torchvision", "resnet18", out, verify=False)
    from transfer.export.convert import main as convert_main
    call_main(convert_main, [str(out), "--widths", "0.5", "--out", str(tmp_path / "exp")],
              "convert_width.py", capsys, must_mention=["outside"], unchanged=tmp_path / "exp")


def test_nan_weights_and_other_bad_input(tmp_path, tv18, capsys):
    src, state = tv18
    out = tmp_path / "out.pth"
    bad = dict(state, **{"layer1.0.conv1.weight": state["layer1.0.conv1.weight"] * float("nan")})
    torch.save(bad, tmp_path / "nan.pth")
    call_main(main, _argv(tmp_path / "nan.pth", "torchvision", "resnet18", out), PROG, capsys,
              must_mention=["NaN"], unchanged=out)
    call_main(main, _argv(tmp_path / "absent.pth", "torchvision", "resnet18", out), PROG, capsys,
              must_mention=["does not exist"], unchanged=out)
    call_main(main, _argv(src, "torchvision", "resnet18", tmp_path), PROG, capsys,
              must_mention=["folder"])
    call_main(main, _argv(src, "caffe", "resnet18", out), PROG, capsys,
              must_mention=["--from"], unchanged=out)
    mnv2 = tmp_path / "mnv2.pth"  # an official MobileNetV2 without its arch name: stem unknown
    net = official.official_network("mobilenetv2", "imagenet", False)
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}},
               mnv2)
    call_main(main, _argv(mnv2, "us3l-official", "mobilenetv2", out), PROG, capsys,
              must_mention=["--stem"], unchanged=out)
