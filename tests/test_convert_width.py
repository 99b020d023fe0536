"""tools/convert_width.py: exact BN recalibration, the torchvision export, reports, bad input.

Engine round trips (detectron2, MMDetection) are in test_export_engines.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from export_helpers import make_checkpoint
from pretrain import slim
from pretrain.checkpoint import save_checkpoint
from pretrain.models import build_backbone
from transfer.export import bn_calibration, calib_data, convert, verify

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--calib-batches", "2", "--calib-batch-size", "4", "--calib-size", "64", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {
        "r18": make_checkpoint(d / "r18.pth", "resnet18"),
        "r18_cifar": make_checkpoint(d / "r18c.pth", "resnet18", stem="cifar",
                                     data={"name": "synthetic", "image_size": 32}),
        "r18_narrow_range": make_checkpoint(d / "r18n.pth", "resnet18", width_range=(0.5, 1.0)),
        "mismatched": make_checkpoint(d / "mm.pth", "resnet50", weights_arch="resnet18"),
        "dir": d,
    }


# ----------------------------------------------------------------------------- BN recalibration
def _randomise_affine(model: nn.Module) -> None:
    with torch.no_grad():
        for bn in slim.slim_batchnorms(model):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)


def test_calibrated_stats_equal_direct_batch_mean_and_unbiased_variance():
    """Running stats after recalibration at r = average over the (equal-size) calibration
    batches of the per-channel batch mean and unbiased batch variance of each BN input,
    computed independently on the plain static network at r; channels beyond r are reset."""
    torch.manual_seed(0)
    width = 0.3
    model = build_backbone({"arch": "resnet18", "stem": "cifar"})
    _randomise_affine(model)
    static = build_backbone({"arch": "resnet18", "stem": "cifar"}, width=width)
    static.load_state_dict(slim.slice_state_dict(model.state_dict(), static.state_dict()))
    loader = calib_data.calibration_loader(calib_data.CalibSpec("synthetic"), 32, batch_size=6,
                                           num_batches=3, stem="cifar")
    batches = [images for images, _ in loader]
    assert [b.shape[0] for b in batches] == [6, 6, 6]

    used = bn_calibration.recalibrate_bn(model, width, loader, num_batches=3, progress=False)
    assert used == 3 and not model.training and slim.get_width(model) == width

    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name:
                                     inputs.setdefault(name, []).append(inp[0].detach()))
             for name, m in static.named_modules() if isinstance(m, nn.BatchNorm2d)]
    static.train()
    with torch.no_grad():
        for images in batches:
            static(images)
    for h in hooks:
        h.remove()
    calibrated = dict(model.named_modules())
    assert len(inputs) == len(slim.slim_batchnorms(model)) == 20
    for name, xs in inputs.items():
        mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in xs]).mean(0)
        bn = calibrated[name]
        c = mean.numel()
        torch.testing.assert_close(bn.running_mean[:c], mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var[:c], var, rtol=1e-4, atol=1e-5)
        assert torch.all(bn.running_mean[c:] == 0) and torch.all(bn.running_var[c:] == 1)
        assert int(bn.num_batches_tracked) == 3
    # equal-size batches: the average of batch means is the mean over the whole calibration set
    whole = static.conv1(torch.cat(batches)).mean(dim=(0, 2, 3))
    torch.testing.assert_close(calibrated["bn1"].running_mean[: whole.numel()], whole,
                               rtol=1e-4, atol=1e-5)


def test_recalibration_rejects_unequal_batches():
    model = build_backbone({"arch": "resnet18", "stem": "cifar"})
    batches = [torch.randn(4, 3, 32, 32), torch.randn(3, 3, 32, 32)]
    with pytest.raises(ValueError, match="equal-size batches"):
        bn_calibration.recalibrate_bn(model, 0.5, batches, progress=False)


# ----------------------------------------------------------------------------- torchvision export
def test_torchvision_export_keys_and_features(ckpts, tmp_path):
    import torchvision
    out = tmp_path / "out"
    rc = convert.main([str(ckpts["r18"]), "--out", str(out), "--widths", "0.3", "1.0",
                       "--formats", "torchvision", *FAST])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["table6.md", "verification.md", "w0.30",
                                                     "w1.00"]
    for folder, width in (("w0.30", 0.3), ("w1.00", 1.0)):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["meta.json", "torchvision.pth"]
        state = torch.load(out / folder / "torchvision.pth", weights_only=True)
        twin = build_backbone({"arch": "resnet18"}, width=width)
        assert set(state) == set(twin.state_dict())
        assert not any(k.startswith(("fc.", "projector", "predictor", "momentum")) for k in state)
    state = torch.load(out / "w1.00" / "torchvision.pth", weights_only=True)
    assert set(torchvision.models.resnet18().state_dict()) - set(state) == {"fc.weight", "fc.bias"}
    text = (out / "verification.md").read_text()
    assert "| 0.3 | 24 | 24 40 80 152 | 24 40 80 152 |" in text
    assert "torchvision.models.resnet18" in text
    table6 = (out / "table6.md").read_text()
    assert "| R-18 | 1.0x | 11.18M | 11.69M | 1.81G |" in table6


def test_exported_stats_are_calibrated_not_sliced(ckpts, tmp_path):
    """The export carries the statistics recalibrated at its width."""
    out = tmp_path / "out"
    assert convert.main([str(ckpts["r18"]), "--out", str(out), "--widths", "0.5",
                         "--formats", "torchvision", *FAST]) == 0
    state = torch.load(out / "w0.50" / "torchvision.pth", weights_only=True)
    from pretrain.checkpoint import load_backbone, load_checkpoint
    ckpt = load_checkpoint(ckpts["r18"])
    model = load_backbone(ckpt)
    loader = calib_data.calibration_loader(calib_data.spec_from_config(ckpt["config"]), 64, 4, 2)
    bn_calibration.recalibrate_bn(model, 0.5, loader, 2, progress=False)
    c = state["layer3.1.bn2.running_var"].numel()
    torch.testing.assert_close(state["layer3.1.bn2.running_var"],
                               model.layer3[1].bn2.running_var[:c])
    assert not torch.allclose(state["layer3.1.bn2.running_var"], torch.ones(c))


def test_verification_failure_leaves_no_folder(ckpts, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(verify, "TOLERANCE", -1.0)  # every comparison now fails genuinely
    out = tmp_path / "out"
    rc = convert.main([str(ckpts["r18"]), "--out", str(out), "--widths", "0.5",
                       "--formats", "torchvision", *FAST])
    assert rc == 1
    assert "verification failed" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- bad input
def _bad_cases(ckpts, tmp_path):
    d = ckpts["dir"]
    unknown = d / "unknown.pth"
    if not unknown.exists():
        sd = build_backbone({"arch": "resnet18"}).state_dict()
        save_checkpoint(unknown, config={"model": {"arch": "resnet34"}, "data": {"name": "synthetic"}},
                        state={"backbone": sd})
    truncated = d / "truncated.pth"
    blob = Path(ckpts["r18"]).read_bytes()
    truncated.write_bytes(blob[: len(blob) // 2])
    text = d / "notes.pth"
    text.write_text("not a checkpoint\n")
    r18 = str(ckpts["r18"])
    return {
        "width below 0.25": ([r18, "--widths", "0.2"], "outside [0.25, 1.0]"),
        "width above 1.0": ([r18, "--widths", "1.1"], "outside [0.25, 1.0]"),
        "range beyond 1.0": ([r18, "--widths-range", "0.25:1.25:0.5"], "outside [0.25, 1.0]"),
        "outside trained range": ([str(ckpts["r18_narrow_range"]), "--widths", "0.3"],
                                  "trained range [0.5, 1]"),
        "unknown architecture": ([str(unknown)], "unknown architecture 'resnet34'"),
        "mismatched architecture": ([str(ckpts["mismatched"])], "do not match architecture"),
        "--arch disagrees": ([r18, "--arch", "resnet50"], "not 'resnet50'"),
        "truncated file": ([str(truncated)], "not a readable US3L checkpoint"),
        "not a checkpoint": ([str(text)], "not a readable US3L checkpoint"),
        "missing file": ([str(d / "absent.pth")], "does not exist"),
        "missing cifar": ([r18, "--calib-data", f"cifar10:{d / 'nowhere'}"], "cifar10 not found"),
        "missing folder": ([r18, "--calib-data", f"folder:{d / 'nowhere'}"], "does not exist"),
        "unknown calib data": ([r18, "--calib-data", "imagenet21k"], "unknown calibration data"),
        "cifar stem to detectors": ([str(ckpts["r18_cifar"]), "--formats", "detectron2"],
                                    "cannot go to detectors"),
    }


def test_bad_input_one_line_exit_2_nothing_written(ckpts, tmp_path, capsys):
    for label, (argv, message) in _bad_cases(ckpts, tmp_path).items():
        out = tmp_path / label.replace(" ", "_")
        rc = convert.main(argv + ["--out", str(out), *FAST])
        err = capsys.readouterr().err
        assert rc == 2, label
        assert err.count("\n") == 1 and err.startswith("convert_width.py: error:"), (label, err)
        assert message in err, (label, err)
        assert not out.exists(), label


def test_cli_exit_code(ckpts, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_width.py"),
                           str(ckpts["r18"]), "--widths", "0.1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "width 0.1" in proc.stderr
    assert not out.exists()


def test_defaults_from_checkpoint_config(ckpts, tmp_path, capsys):
    """`convert_width.py CKPT --out DIR`: widths, formats and calibration data from the
    checkpoint (a CIFAR-stem R-18: torchvision only, 32 px synthetic data)."""
    out = tmp_path / "out"
    assert convert.main([str(ckpts["r18_cifar"]), "--out", str(out), "--calib-batches", "2",
                         "--calib-batch-size", "2", "--verify-images", "2", "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("w*")) == ["w0.25", "w0.50", "w0.75", "w1.00"]
    import json
    meta = json.loads((out / "w0.75" / "meta.json").read_text())
    assert meta["calibration"]["data"].startswith("checkpoint data: synthetic")
    assert meta["calibration"]["image_size"] == 32
    assert meta["files"] == {"torchvision": "torchvision.pth"}
    assert meta["stem"] == "cifar" and meta["channel_plan"]["out"] == [48, 96, 192, 384]


def test_calibration_on_cifar_files(ckpts, tmp_path, capsys):
    """--calib-data cifar10:ROOT reads torchvision's CIFAR layout; a re-packed copy (the test
    fixture) fails the MD5 check (exit 2) unless --no-verify-md5."""
    from transfer.fixtures import write_cifar
    root = tmp_path / "data"
    write_cifar(root, num_classes=10, train_per_class=1)
    argv = [str(ckpts["r18"]), "--widths", "0.5", "--formats", "torchvision",
            "--calib-data", f"cifar10:{root}", *FAST]
    assert convert.main(argv + ["--out", str(tmp_path / "a")]) == 2
    assert "MD5" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert convert.main(argv + ["--out", str(tmp_path / "b"), "--no-verify-md5"]) == 0
    import json
    meta = json.loads((tmp_path / "b" / "w0.50" / "meta.json").read_text())
    assert meta["calibration"]["data"] == f"cifar10:{root}"


@pytest.mark.parametrize("arch,extra", [("vit_tiny", {"image_size": 32}),
                                        ("mobilenetv2", {"stem": "cifar"})])
def test_other_backbones_torchvision_only(arch, extra, tmp_path, capsys):
    """Every pretrainer backbone converts (torchvision format); ViT has no BN: said, skipped."""
    import json
    model = build_backbone({"arch": arch, **extra})
    ckpt = save_checkpoint(tmp_path / f"{arch}.pth",
                           config={"model": {"arch": arch, **extra},
                                   "data": {"name": "synthetic", "image_size": 32}},
                           state={"backbone": model.state_dict()})
    out = tmp_path / "out"
    assert convert.main([str(ckpt), "--out", str(out), "--widths", "0.3", "--calib-batches", "2",
                         "--calib-batch-size", "2", "--verify-images", "2", "--quiet"]) == 0
    meta = json.loads((out / "w0.30" / "meta.json").read_text())
    assert meta["files"] == {"torchvision": "torchvision.pth"}
    assert meta["verification"]["max_rel_error"]["torchvision"] <= 1e-5
    if arch == "vit_tiny":
        assert meta["calibration"]["batches"] == 0
        assert "no BatchNorm" in capsys.readouterr().out
    else:
        assert meta["calibration"]["batches"] == 2
    assert convert.main([str(ckpt), "--out", str(tmp_path / "det"), "--formats", "mmdet",
                         "--quiet"]) == 2
    assert not (tmp_path / "det").exists()


def test_failure_at_the_second_width(ckpts, tmp_path, monkeypatch, capsys):
    """The only check of a run that fails after a width finished: exit 1, one line naming the
    failed width and what was kept; the finished width stays complete and verified, the reports
    list exactly it, and the failed width leaves no folder (not even a hidden temporary one).
    Two faults: the second width's export corrupted on disk before it is loaded back (a genuine
    verification failure) and a full disk while writing it."""
    import json

    from transfer.export import torchvision_export
    real_write = torchvision_export.write

    def corrupting_write(path, state):          # the second export is written wrong
        written = real_write(path, state)
        if "w0.50" in Path(path).parent.name:
            bad = torch.load(written, weights_only=True)
            bad["layer2.0.bn1.running_mean"] += 0.5
            torch.save(bad, written)
        return written

    def full_disk_write(path, state):
        if "w0.50" in Path(path).parent.name:
            raise OSError(28, "No space left on device", str(path))
        return real_write(path, state)

    for name, fault, message in (("verify", corrupting_write, "verification failed at w0.50"),
                                 ("disk", full_disk_write, "could not write at w0.50")):
        monkeypatch.setattr(torchvision_export, "write", fault)
        out = tmp_path / name
        rc = convert.main([str(ckpts["r18"]), "--out", str(out), "--widths", "0.25", "0.5",
                           "--formats", "torchvision", *FAST])
        err = capsys.readouterr().err
        assert rc == 1, (name, err)
        assert err.count("\n") == 1 and err.startswith(f"convert_width.py: {message}:"), err
        assert "kept 1 finished width(s) (w0.25)" in err
        assert sorted(p.name for p in out.iterdir()) == ["table6.md", "verification.md", "w0.25"]
        meta = json.loads((out / "w0.25" / "meta.json").read_text())
        assert meta["verification"]["max_rel_error"]["torchvision"] <= 1e-5
        torch.load(out / "w0.25" / "torchvision.pth", weights_only=True)
        report = (out / "verification.md").read_text()
        assert "\n| 0.25 |" in report and "\n| 0.5 |" not in report
