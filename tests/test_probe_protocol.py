"""The probe's protocol against its references (issue #12): ssl-transfer's grid, solver budget,
warm starts and tie rule (replayed here with scikit-learn, as ssl-transfer's linear.py runs it);
the feature cache keyed on the data's identity and the code; the official US3L SGD linear
evaluation's transforms, batch and downstream BN recalibration; the US-Net BN calibration size."""
from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision.transforms as T
from PIL import Image

from bad_input_helpers import call_main
from pretrain.checkpoint import save_checkpoint
from pretrain.models import build_backbone
from transfer import datasets as D
from transfer import fixtures
from transfer.export import bn_calibration, convert
from transfer.linear import features, lbfgs, sgd, splits
from transfer.linear.features import FeatureCache, probe_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import linear_probe  # noqa: E402

CFG = {"arch": "resnet18", "stem": "cifar"}
FAST = ["--calib-batches", 2, "--calib-batch-size", 16]


@pytest.fixture(autouse=True)
def one_thread():
    from threadpoolctl import threadpool_limits
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "random.pth"
    save_checkpoint(path, config={"model": dict(CFG), "data": {"name": "digits",
                                                               "image_size": 16}},
                    state={"backbone": build_backbone(CFG).state_dict()})
    return path


def digits_probe_features(dim: int = 64):
    """Digits pixels through a fixed random ReLU projection, split as the probe splits them."""
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(64, dim)).astype(np.float32) / 8

    def feats(split):
        data = D.load("digits", None, split)
        x = data.images.reshape(len(data), -1).astype(np.float32) / 255
        return torch.from_numpy(np.maximum(x @ proj, 0)), torch.as_tensor(data.targets)
    (xa, ya), test = feats("train"), feats("test")
    fit, val = splits.held_out(len(ya))
    return {"train": (xa[fit], ya[fit]), "val": (xa[val], ya[val]), "test": test}


# ------------------------------------------------------------------------------- grid
def test_default_grid_is_ssl_transfers():
    """45 weight decays torch.logspace(-6, 5, 45) (float32), C = 1/wd.item(), in ssl-transfer's
    order: C from 1e6 down to 1e-5."""
    wds = torch.logspace(-6, 5, 45)
    assert lbfgs.GRID == tuple(1.0 / w.item() for w in wds)
    assert len(lbfgs.GRID) == 45
    assert lbfgs.GRID[0] == pytest.approx(1e6, rel=1e-6)
    assert lbfgs.GRID[-1] == pytest.approx(1e-5, rel=1e-6)
    assert all(a > b for a, b in zip(lbfgs.GRID, lbfgs.GRID[1:]))
    assert lbfgs.wd_grid(1e-2, 1e2, 5) == tuple(1.0 / w.item() for w in torch.logspace(-2, 2, 5))
    assert lbfgs.c_grid(1e-2, 1e2, 3) == pytest.approx((1e-2, 1.0, 1e2))
    assert lbfgs.DEFAULT_SOLVER == "sklearn" and lbfgs.SKLEARN_MAX_ITER == 100
    args = linear_probe.parser().parse_args(["--ckpt", "c", "--out", "o"])
    assert (args.solver, args.grid, args.wd_grid, args.max_iter) == ("sklearn", None, None, None)


# ------------------------------------------------------------------ selection and ties
def ssl_transfer_linear_tester(feats, wd_range):
    """ssl-transfer's LinearTester.validate + evaluate (linear.py), metric 'accuracy', on
    float64 features: one warm-started LogReg, C = 1/wd, strict '>' from best_score 0."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression as LogReg
    (xt, yt), (xv, yv), (xs, ys) = ((x.numpy().astype(np.float64), y.numpy())
                                    for x, y in (feats[s] for s in ("train", "val", "test")))
    clf = LogReg(solver="lbfgs", warm_start=True)
    best_score, best_C = 0, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for wd in wd_range:
            C = 1. / wd.item()
            clf.set_params(C=C)
            clf.fit(xt, yt)
            test_score = 100. * clf.score(xv, yv)
            if test_score > best_score:
                best_score, best_C = test_score, C
        clf.set_params(C=best_C)
        clf.fit(np.concatenate([xt, xv]), np.concatenate([yt, yv]))
        return 100. * clf.score(xs, ys), best_C


def test_sklearn_solver_replays_ssl_transfer():
    """The default solver picks ssl-transfer's C and scores its test accuracy (the same float64
    computation: equal up to float32 rounding of the percentage)."""
    feats = digits_probe_features()
    ours = lbfgs.probe(feats, "top1", 10)  # defaults: GRID, sklearn, max_iter 100
    theirs, their_C = ssl_transfer_linear_tester(feats, torch.logspace(-6, 5, 45))
    assert ours["C"] == their_C
    assert ours["value"] == pytest.approx(theirs, abs=1e-4)
    assert ours["solver"] == "sklearn" and ours["max_iter"] == 100
    assert [c for c, _ in ours["val_curve"]] == list(lbfgs.GRID)  # weak -> strong
    # its budget is the reference's: most large-C fits stop at 100 iterations, unconverged
    assert ours["solver_iterations"] <= 100 * (45 + 1)


def test_ties_keep_the_larger_C():
    """Well-separated classes: every C scores 100% on val; both solvers keep the largest C."""
    rng = np.random.default_rng(0)
    centers = np.array([[8.0, 0, 0, 0], [0, 8.0, 0, 0], [0, 0, 8.0, 0]])

    def draw(n):
        y = np.arange(n) % 3
        return (torch.from_numpy((centers[y] + rng.normal(0, 0.3, (n, 4))).astype(np.float32)),
                torch.from_numpy(y))
    feats = {"train": draw(60), "val": draw(30), "test": draw(30)}
    grid = lbfgs.wd_grid(1e-2, 1e2, 5)  # C 100 .. 0.01
    for solver in lbfgs.SOLVERS:
        result = lbfgs.probe(feats, "top1", 3, grid=grid, solver=solver,
                             device=torch.device("cpu"))
        assert {v for _, v in result["val_curve"]} == {100.0}, solver
        assert result["C"] == max(grid), solver


# ------------------------------------------------------------------------ cache key
def test_cache_key_names_the_data_and_the_code(tmp_path, monkeypatch):
    """Same checkpoint, same dataset name: another root, a changed split file or another code
    version misses the cache; the same data hits it."""
    root_a = tmp_path / "a"
    fixtures.write_cifar(root_a, 10, train_per_class=2, test_per_class=1)
    model = build_backbone(CFG, width=0.25).eval()
    calls = []

    def get_model():
        calls.append(1)
        return model

    cache, tag, cpu = FeatureCache(tmp_path / "cache"), {"sha": "abc", "width": 0.25}, "cpu"
    run = (lambda root: probe_features(get_model, tag, "cifar10", root, 8, cache,
                                       torch.device(cpu), verify_md5=False))
    first = run(root_a)
    assert len(calls) == 1
    run(root_a)
    assert len(calls) == 1  # same data: a hit
    root_b = tmp_path / "b"
    shutil.copytree(root_a, root_b)  # the same bytes and mtimes, another folder
    again = run(root_b)
    assert len(calls) == 2
    assert torch.equal(first["train"][0], again["train"][0])
    batch = root_a / "cifar-10-batches-py" / "data_batch_1"
    st = batch.stat()
    os.utime(batch, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # re-extracted/edited file
    run(root_a)
    assert len(calls) == 3
    fixtures.write_cifar(root_a, 10, train_per_class=2, test_per_class=1, seed=1)  # other data
    changed = run(root_a)
    assert len(calls) == 4 and not torch.equal(first["train"][0], changed["train"][0])

    key = features.cache_key(tag, "cifar10", root_a, "train", 8)
    assert key["data"]["root"] == str(root_a.resolve()) and key["data"]["files"] == 7
    assert key["code"]["features"] == features.CODE_VERSION
    monkeypatch.setattr(features, "CODE_VERSION", features.CODE_VERSION + 1)
    assert features.cache_key(tag, "cifar10", root_a, "train", 8) != key
    run(root_a)
    assert len(calls) == 5  # new extraction code: nothing old is reused


# --------------------------------------------------------------------- SGD protocol
def test_sgd_defaults_are_the_official_linear_eval():
    cfg = sgd.SGDConfig()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs,
            cfg.milestones, cfg.gamma) == (30.0, 0.9, 0.0, 512, 100, (60, 80), 0.1)
    assert (cfg.bn_calib_epochs, cfg.bn_calib_batch_size, cfg.bn_calib_momentum) == (3, 128, 0.1)
    assert [sgd.recipe_for(n, cfg) for n in ("cifar10", "cifar100", "flowers102", "pets")] == \
        ["cifar", "cifar", "imagenet", "imagenet"]
    assert sgd.default_image_size(["cifar100"]) == 32
    assert sgd.default_image_size(["cifar10", "pets"]) == 224

    train = sgd.train_transform(32, cfg, "cifar").transforms
    crop = train[0]
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (32, 32)
    assert crop.scale == (0.8, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert crop.interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(train[1], T.RandomHorizontalFlip)
    assert tuple(train[-1].mean) == sgd.CIFAR_MEAN and tuple(train[-1].std) == sgd.CIFAR_STD
    resize, center = sgd.eval_transform(32, "cifar").transforms[:2]
    assert resize.size == 36 and resize.interpolation == T.InterpolationMode.BICUBIC
    assert center.size == (32, 32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8))
    assert sgd.eval_transform(32, "cifar")(image).shape == (3, 32, 32)
    assert sgd.train_transform(32, cfg, "cifar")(image).shape == (3, 32, 32)
    assert sgd.train_transform(224, cfg, "imagenet").transforms[0].scale == (0.08, 1.0)
    assert sgd.eval_transform(224, "imagenet").transforms[0].size == 256

    args = linear_probe.parser().parse_args(["--ckpt", "c", "--out", "o"])
    assert (args.sgd_batch_size, args.sgd_lr, args.sgd_epochs, args.sgd_milestones,
            args.sgd_weight_decay, args.sgd_bn_calib_epochs, args.image_size) == \
        (512, 30.0, 100, [60, 80], 0.0, 3, None)


def test_downstream_bn_recalibration_is_the_official_running_average():
    """3 epochs through BN's running average (momentum 0.1, not reset), on a copy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3)).eval()
    x = torch.randn(8, 3, 4, 4) * 2 + 5
    data = torch.utils.data.TensorDataset(x, torch.zeros(8, dtype=torch.long))
    cfg = sgd.SGDConfig(bn_calib_batch_size=8)  # one batch per epoch: order-free statistics
    calibrated, info = sgd.recalibrate_bn(model, data, cfg, "cpu")
    assert calibrated is not model and info["epochs"] == 3 and info["batches"] == 3
    keep = 0.9 ** 3
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
    bn = calibrated[0]
    torch.testing.assert_close(bn.running_mean, (1 - keep) * mean)
    torch.testing.assert_close(bn.running_var, keep * torch.ones(3) + (1 - keep) * var)
    assert not bn.training
    assert torch.equal(model[0].running_mean, torch.zeros(3))  # the original is untouched
    same, info = sgd.recalibrate_bn(model, data, sgd.SGDConfig(bn_calib_epochs=0), "cpu")
    assert same is model and info["epochs"] == 0


def test_cli_sgd_defaults_to_32px_with_bn_recalibration(ckpt, tmp_path, capsys):
    """--protocol sgd on a small-image set without --image-size: 32 px, the cifar recipe, BN
    recalibrated on the downstream train set first (shortened epochs: the test is about what
    is run, not what it learns)."""
    code = linear_probe.main([str(a) for a in [
        "--ckpt", ckpt, "--datasets", "digits", "--widths", 0.25, "--protocol", "sgd",
        "--sgd-epochs", 1, "--sgd-milestones", 1, "--sgd-lr", 0.03, "--sgd-bn-calib-epochs", 1,
        "--out", tmp_path / "out", *FAST]])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    entry = results["rows"][0]["datasets"]["digits"]
    assert results["image_size"] == entry["image_size"] == 32
    assert entry["config"]["recipe"] == "cifar" and entry["config"]["batch_size"] == 512
    assert entry["bn_calibration"]["epochs"] == 1 and entry["bn_calibration"]["batches"] == 10
    assert np.isfinite(entry["final_train_loss"]) and 0.0 <= entry["value"] <= 100.0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["args"]["image_size"] == 32


# ----------------------------------------------------------- command line: solvers, grids
def test_cli_solvers_and_grids(ckpt, tmp_path, capsys):
    common = ["--ckpt", ckpt, "--datasets", "digits", "--widths", 0.25, "--image-size", 16,
              "--cache-dir", tmp_path / "cache", *FAST]
    assert linear_probe.main([str(a) for a in [*common, "--wd-grid", 1e-2, 1e2, 3,
                                               "--out", tmp_path / "a"]]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    entry = a["rows"][0]["datasets"]["digits"]
    assert (a["solver"], a["max_iter"]) == ("sklearn", 100)
    assert [c for c, _ in entry["val_curve"]] == list(lbfgs.wd_grid(1e-2, 1e2, 3))
    assert linear_probe.main([str(a) for a in [*common, "--solver", "converged", "--grid", 1e-2,
                                               1e2, 3, "--out", tmp_path / "b"]]) == 0
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert (b["solver"], b["max_iter"]) == ("converged", 1000)
    assert [c for c, _ in b["rows"][0]["datasets"]["digits"]["val_curve"]] == \
        pytest.approx([1e-2, 1.0, 1e2])
    capsys.readouterr()
    out = tmp_path / "bad"
    call_main(linear_probe.main, [str(a) for a in [*common, "--grid", 1, 2, 3, "--wd-grid", 1,
                                                   2, 3, "--out", out]],
              "linear_probe.py", capsys, must_mention=("--wd-grid", "not allowed"),
              unchanged=out)
    call_main(linear_probe.main, [str(a) for a in [*common, "--wd-grid", 1e-60, 1, 3,
                                                   "--out", out]],
              "linear_probe.py", capsys, must_mention=("--wd-grid", "float32"), unchanged=out)
    call_main(linear_probe.main, [str(a) for a in [*common, "--solver", "newton", "--out", out]],
              "linear_probe.py", capsys, must_mention=("--solver",), unchanged=out)


# -------------------------------------------------------------------- BN calibration size
def test_bn_calibration_defaults_are_us_nets():
    """US-Net: bn_cal_batch_num 5 with 128 images per process (US3L: BN_CAL_BATCH_NUM 5,
    128 per GPU): the converter's and the probe's defaults."""
    assert (bn_calibration.DEFAULT_BATCHES, bn_calibration.DEFAULT_BATCH_SIZE) == (5, 128)
    args = convert.parser().parse_args(["ckpt.pth", "--out", "o"])
    assert (args.calib_batches, args.calib_batch_size) == (5, 128)
    args = linear_probe.parser().parse_args(["--ckpt", "c", "--out", "o"])
    assert (args.calib_batches, args.calib_batch_size) == (5, 128)
    from transfer.linear.backbones import CheckpointSource
    import inspect
    params = inspect.signature(CheckpointSource).parameters
    assert (params["calib_batches"].default, params["calib_batch_size"].default) == (5, 128)
