"""The linear probe: solver vs scikit-learn, feature cache, the CLI end to end on fixtures in the real
formats (--ckpt and --export agree), error handling, the SGD protocol, a pretrainer checkpoint."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.checkpoint import save_checkpoint
from pretrain.models import build_backbone
from transfer import datasets as D
from transfer import fixtures
from transfer.linear import lbfgs, metrics, splits
from transfer.linear.features import FeatureCache, probe_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import linear_probe  # noqa: E402

CFG = {"arch": "resnet18", "stem": "cifar"}
DATA_CFG = {"name": "digits", "image_size": 16}


@pytest.fixture(autouse=True)
def one_thread():
    """One thread for torch and for scikit-learn's BLAS: on 2 cores shared by parallel jobs,
    2-thread OpenMP/BLAS regions run ~10x slower than one thread."""
    from threadpoolctl import threadpool_limits
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


def write_ckpt(path: Path, seed: int = 0, model_cfg=CFG, data_cfg=DATA_CFG) -> Path:
    torch.manual_seed(seed)
    model = build_backbone(model_cfg)
    save_checkpoint(path, config={"model": dict(model_cfg), "data": dict(data_cfg)},
                    state={"backbone": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_ckpt(tmp_path_factory.mktemp("ckpt") / "random.pth")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    fixtures.write_all(root, per_class=2, size=16)
    return root


def digits_features():
    """Digits pixels through a fixed random ReLU projection: backbone-like features."""
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(64, 256)).astype(np.float32) / 8

    def feats(split):
        data = D.load("digits", None, split)
        x = data.images.reshape(len(data), -1).astype(np.float32) / 255
        return np.maximum(x @ proj, 0), np.asarray(data.targets)
    return feats("train"), feats("test")


def sklearn_objective(x, y, weight, bias, C):
    z = x.astype(np.float64) @ weight + bias
    z -= z.max(1, keepdims=True)
    nll = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean()
    return nll + 0.5 / (C * len(y)) * (weight ** 2).sum()


def test_solver_matches_sklearn():
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    (xa, ya), (xs, ys) = digits_features()
    fit_idx, val_idx = splits.held_out(len(ya))
    # a coarse grid keeps scikit-learn's side short; C <= 10: both solvers converge there (at
    # C = 100 scikit-learn's 1000 iterations stop short and the two differ by a val image)
    grid = np.logspace(-3, 1, 9)
    feats = {"train": (torch.from_numpy(xa[fit_idx]), torch.from_numpy(ya[fit_idx])),
             "val": (torch.from_numpy(xa[val_idx]), torch.from_numpy(ya[val_idx])),
             "test": (torch.from_numpy(xs), torch.from_numpy(ys))}
    ours = lbfgs.probe(feats, "top1", 10, grid=grid, device=torch.device("cpu"),
                       solver="converged")

    clf, best = LogisticRegression(max_iter=1000, warm_start=True), (-1.0, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in grid:  # the same protocol: sweep on val, refit on train+val, score on test
            clf.set_params(C=C).fit(xa[fit_idx], ya[fit_idx])
            value = 100 * clf.score(xa[val_idx], ya[val_idx])
            if value >= best[0]:  # ascending C: a tie keeps the larger C
                best = (value, C)
        final = LogisticRegression(C=best[1], max_iter=1000).fit(xa, ya)
    theirs = 100 * final.score(xs, ys)
    assert abs(ours["value"] - theirs) <= 0.5, (ours["value"], theirs)
    assert ours["n_train"] + ours["n_val"] == len(ya) and ours["n_test"] == len(ys)
    assert ours["feature_dim"] == 256 and len(ours["val_curve"]) == len(grid)

    # One fit: the same optimum (objective no worse than scikit-learn's) and the same accuracy.
    C = 1.0
    sk = LogisticRegression(C=C, max_iter=1000).fit(xa, ya)
    fit = lbfgs.fit((torch.from_numpy(xa), torch.from_numpy(ya)), C)
    ours_obj = sklearn_objective(xa, ya, fit.weight.double().numpy(), fit.bias.double().numpy(), C)
    sk_obj = sklearn_objective(xa, ya, sk.coef_.T, sk.intercept_, C)
    assert ours_obj <= sk_obj + 1e-4
    acc = 100 * (fit.predict(torch.from_numpy(xs)).numpy() == ys).mean()
    assert abs(acc - 100 * sk.score(xs, ys)) <= 0.5
    with pytest.raises(ValueError, match="positive"):
        lbfgs.fit((torch.from_numpy(xa), torch.from_numpy(ya)), 0.0)


def test_metrics():
    from sklearn.metrics import balanced_accuracy_score
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 300) ** 2 % 7  # imbalanced
    p = np.where(rng.random(300) < 0.7, y, rng.choice(np.unique(y), 300))
    t_y, t_p = torch.from_numpy(y), torch.from_numpy(p)
    assert metrics.score("mean_per_class", t_p, t_y) == pytest.approx(
        100 * balanced_accuracy_score(y, p))
    assert metrics.score("top1", t_p, t_y) == pytest.approx(100 * (y == p).mean())
    assert metrics.METRIC["flowers102"] == metrics.METRIC["pets"] == "mean_per_class"
    assert {metrics.METRIC[n] for n in ("cifar10", "cifar100", "dtd")} == {"top1"}


def test_feature_cache_reuses_and_keys(tmp_path):
    calls = []
    model = build_backbone(CFG, width=0.25).eval()

    def get_model():
        calls.append(1)
        return model

    cache = FeatureCache(tmp_path)
    tag = {"sha": "abc", "width": 0.25}
    first = probe_features(get_model, tag, "digits", None, 8, cache, torch.device("cpu"))
    assert len(calls) == 1 and set(first) == {"train", "val", "test"}
    assert [len(first[s][1]) for s in ("train", "val", "test")] == [1006, 251, 540]
    assert first["train"][0].shape[1] == 128  # ResNet-18 at 0.25: 512 * 0.25 channels
    again = probe_features(get_model, tag, "digits", None, 8, cache, torch.device("cpu"))
    assert len(calls) == 1  # nothing extracted twice
    for split in first:
        assert torch.equal(first[split][0], again[split][0])
        assert torch.equal(first[split][1], again[split][1])
    probe_features(get_model, {**tag, "width": 0.5}, "digits", None, 8, cache, torch.device("cpu"))
    assert len(calls) == 2  # another width, another key
    assert len(list(tmp_path.rglob("*.pt"))) == 4  # digits train/test x two widths


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = linear_probe.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


FIXTURE_SIZES = {  # dataset -> (n_train, n_val, n_test) of the fixtures above
    "cifar10": (16, 4, 20), "cifar100": (160, 40, 200), "flowers102": (204, 204, 204),
    "pets": (60, 14, 74), "dtd": (94, 94, 94)}  # val = floor(20%) as ssl-transfer
FAST = ["--calib-batches", 2, "--calib-batch-size", 16]  # BN calibration: 32 images


def test_cli_on_every_dataset_fixture(ckpt, data_root, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    names = list(FIXTURE_SIZES)
    base = ["--ckpt", ckpt, "--datasets", *names, "--data-root", data_root, "--image-size", 16,
            "--no-verify-md5", "--grid", 1e-3, 1e2, 6, "--max-iter", 100, "--cache-dir", cache,
            *FAST]
    code, stdout, err = run_cli(base + ["--widths", 0.5, 0.25, "--out", out], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert [r["width"] for r in results["rows"]] == [0.5, 0.25]
    assert results["datasets"] == names and results["protocol"] == "lbfgs"
    for row in results["rows"]:
        assert set(row) == {"width", "params", "macs", "macs_from", "datasets"}
        assert row["params"] > 0 and row["macs"] > 0
        for name in names:
            entry = row["datasets"][name]
            assert entry["metric"] == metrics.METRIC[name]
            assert 0.0 <= entry["value"] <= 100.0
            assert (entry["n_train"], entry["n_val"], entry["n_test"]) == FIXTURE_SIZES[name]
            assert entry["feature_dim"] == {0.5: 256, 0.25: 128}[row["width"]]
            assert entry["C"] in [c for c, _ in entry["val_curve"]] and len(entry["val_curve"]) == 6
    assert results["rows"][0]["params"] > results["rows"][1]["params"]
    table = (out / "results.md").read_text()
    assert "| Net | Width | Params | MACs | C-10 | C-100 | Flowers | Pets | DTD |" in table
    assert "| resnet18 | 0.5x |" in table and "| resnet18 | 0.25x |" in table
    for png in ("acc_vs_width.png", "acc_vs_macs.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert "--no-verify-md5" in config["command"] and config["args"]["image_size"] == 16
    assert not (out / "results.partial.json").exists()

    # A re-run with one more width extracts only that width; the cached files stay untouched.
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.pt")}
    assert len(before) == 2 * 12  # 5 datasets (12 torchvision splits) x 2 widths
    code, _, err = run_cli(base + ["--widths", 0.75, 0.5, 0.25, "--out", tmp_path / "out2"],
                           capsys)
    assert code == 0, err
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("*.pt")}
    assert len(after) == 3 * 12 and all(after[p] == t for p, t in before.items())
    again = json.loads((tmp_path / "out2" / "results.json").read_text())
    assert again["rows"][1:] == results["rows"]


def test_ckpt_and_export_give_the_same_probe(ckpt, tmp_path, capsys):
    from transfer.export import convert
    export = tmp_path / "export"
    assert convert.main([str(ckpt), "--out", str(export), "--widths", "0.5", "--formats",
                         "torchvision", "--quiet", "--calib-batches", "4",
                         "--calib-batch-size", "16"]) == 0
    capsys.readouterr()
    common = ["--datasets", "digits", "--image-size", 16, "--grid", 1e-2, 1e2, 5,
              "--cache-dir", tmp_path / "cache"]
    fast = ["--calib-batches", 4, "--calib-batch-size", 16]
    assert run_cli(["--ckpt", ckpt, "--widths", 0.5, "--out", tmp_path / "a", *common, *fast],
                   capsys)[0] == 0
    assert run_cli(["--export", export, "--out", tmp_path / "b", *common], capsys)[0] == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())["rows"][0]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["rows"][0]
    assert a["width"] == b["width"] == 0.5 and a["params"] == b["params"]
    da, db = a["datasets"]["digits"], b["datasets"]["digits"]
    assert da["value"] == pytest.approx(db["value"], abs=1e-6)
    assert np.allclose(np.array(da["val_curve"]), np.array(db["val_curve"]), atol=1e-6)


def test_cli_errors(ckpt, data_root, tmp_path, capsys):
    out = tmp_path / "out"
    # the fixtures are not the official archives: the MD5 check refuses them, nothing is written
    code, _, err = run_cli(["--ckpt", ckpt, "--datasets", "cifar10", "--data-root", data_root,
                            "--widths", 0.25, "--out", out, *FAST], capsys)
    assert code == 2 and "MD5" in err and "--no-verify-md5" in err and err.count("\n") == 1
    assert not out.exists()
    # a dataset that is not there: one line naming the layout
    code, _, err = run_cli(["--ckpt", ckpt, "--datasets", "dtd", "--data-root", tmp_path,
                            "--widths", 0.25, "--out", out], capsys)
    assert code == 2 and "dtd/dtd/{images/<class>/*.jpg,labels/{train,val,test}1.txt}" in err
    assert err.count("\n") == 1 and not out.exists()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(["--ckpt", bad, "--datasets", "digits", "--out", out], capsys)
    assert code == 2 and "not a readable US3L checkpoint" in err
    code, _, err = run_cli(["--ckpt", ckpt, "--datasets", "digits", "--widths", 0.1,
                            "--out", out], capsys)
    assert code == 2 and "outside [0.25, 1.0]" in err  # refused by the option's type
    code, _, err = run_cli(["--export", tmp_path, "--datasets", "digits", "--out", out], capsys)
    assert code == 2 and "no exported width" in err
    code, _, err = run_cli(["--ckpt", ckpt, "--datasets", "cifar10", "--out", out], capsys)
    assert code == 2 and "--data-root is required" in err
    assert not out.exists()


def test_sgd_protocol(ckpt, tmp_path, capsys):
    # lr 0.03, not the paper's 30: a random encoder's features are large (norm ~30)
    code, _, err = run_cli(["--ckpt", ckpt, "--datasets", "digits", "--widths", 0.25,
                            "--protocol", "sgd", "--image-size", 16, "--sgd-epochs", 3,
                            "--sgd-milestones", 2, "--sgd-batch-size", 128, "--sgd-lr", 0.03,
                            "--out", tmp_path, *FAST], capsys)
    assert code == 0, err
    entry = json.loads((tmp_path / "results.json").read_text())["rows"][0]["datasets"]["digits"]
    assert (entry["n_train"], entry["n_test"]) == (1257, 540) and entry["weight_decay"] == 0.0
    assert entry["config"]["epochs"] == 3 and entry["config"]["milestones"] == [2]
    # bounded and finite whatever 3 epochs of SGD learn (a short run's accuracy is not a property)
    assert 0.0 <= entry["value"] <= 100.0 and np.isfinite(entry["final_train_loss"])


def test_pretrainer_checkpoint_probes_at_its_width(tmp_path, capsys):
    """tools/pretrain.py's engine (SimCLR, fixed width 0.25, a CIFAR-format fixture) -> the probe
    CLI on that checkpoint: the only check that a pretrainer-written checkpoint (not a fixture
    one) goes through --ckpt. Properties only; whether pretraining beats a random encoder is
    measured over several seeds by bench/probe_learning.py."""
    from pretrain.config import load_config
    from pretrain.engine import Trainer
    root = Path(__file__).resolve().parents[1]
    fixtures.write_cifar(tmp_path / "data", 10, train_per_class=4, test_per_class=1)
    cfg = load_config(root / "configs" / "pretrain" / "_simclr.yaml", [
        "model={arch: resnet18, stem: cifar}", f"data.root={tmp_path / 'data'}",
        "data.name=cifar10", "data.verify_md5=false", "data.image_size=16",
        "data.batch_size=16", "data.num_workers=0", "sampling.fixed_width=0.25",
        "heads.projector={hidden: 64, out: 32}", "schedule.iters=2", "optim.lr=0.3",
        "optim.warmup_epochs=0", "monitor.tensorboard=false", "monitor.log_every=1000",
        "checkpoint.every_iters=100000", f"output.dir={tmp_path / 'run'}"])
    trained = Trainer(cfg, progress=False).train()["checkpoint"]
    code, _, err = run_cli(["--ckpt", trained, "--datasets", "digits", "--widths", 0.25,
                            "--image-size", 16, "--calib-data", "digits", "--grid", 1e-3, 1e2, 3,
                            "--max-iter", 50, "--out", tmp_path / "probe", *FAST], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert [r["width"] for r in results["rows"]] == [0.25]
    entry = results["rows"][0]["datasets"]["digits"]
    assert (entry["n_train"], entry["n_val"], entry["n_test"]) == (1006, 251, 540)
    assert entry["feature_dim"] == 128 and 0.0 <= entry["value"] <= 100.0
    assert entry["C"] in [c for c, _ in entry["val_curve"]] and len(entry["val_curve"]) == 3
    code, _, err = run_cli(["--ckpt", trained, "--datasets", "digits", "--widths", 0.5,
                            "--calib-data", "digits", "--out", tmp_path / "x", *FAST], capsys)
    assert code == 2 and "outside the trained range" in err   # trained at 0.25 only
