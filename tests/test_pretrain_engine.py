"""The pretrainer end to end on tiny synthetic data: configs, checkpoint, exact resume, a real run."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain import checkpoint as ckpt_io
from pretrain import slim
from pretrain.config import ConfigError, load_config
from pretrain.data import DataError, build_datasets, train_loader
from pretrain.engine import Trainer
from pretrain.methods import table7_case

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "pretrain"


def tiny(tmp_path, *extra, iters=6):
    """A run that takes about a second per iteration on 2 CPU cores."""
    return load_config(None, [
        "model.arch=resnet18", "model.stem=cifar",
        "data.image_size=16", "data.batch_size=16", "data.num_workers=0",
        "data.synthetic.train_size=64", "data.synthetic.val_size=32",
        "heads.projector.hidden=64", "heads.projector.out=32", "heads.predictor.hidden=32",
        "heads.distill_head.hidden=64", f"schedule.iters={iters}", "optim.lr=0.05",
        "optim.warmup_epochs=0.5", "checkpoint.every_iters=3", f"output.dir={tmp_path}",
        "monitor.tensorboard=false", "monitor.log_every=1", *extra])


def losses_by_iteration(trainer):
    return {h["iteration"]: [r["loss"] for r in h["records"]] for h in trainer.history}


def test_exact_resume_after_kill_and_checkpoint_contents(tmp_path):
    """Loss after N steps with a restart at N/2 equals the uninterrupted run (seeded, CPU)."""
    full = Trainer(tiny(tmp_path / "full"), progress=False)
    full.train()
    first = Trainer(tiny(tmp_path / "cut"), progress=False)
    first.train(stop_after=3)                        # "killed" right after the checkpoint at 3
    assert first.iteration == 3
    resumed = Trainer(tiny(tmp_path / "cut"), resume=tmp_path / "cut" / "checkpoint.pth",
                      progress=False)
    assert resumed.iteration == 3
    resumed.train()
    a, b = losses_by_iteration(full), losses_by_iteration(resumed)
    assert sorted(b) == [4, 5, 6] and len(b[6]) == 3   # sub-networks sampled after the restart
    for it in b:
        assert a[it] == b[it], f"iteration {it}: {a[it]} vs {b[it]}"
    for k, v in full.method.state_dict().items():
        assert torch.equal(v, resumed.method.state_dict()[k]), k

    # the checkpoint: safe to load, exact parts, enough training state, backbone usable at any width
    path = tmp_path / "full" / "checkpoint.pth"
    raw = torch.load(path, weights_only=True)
    ckpt = ckpt_io.load_checkpoint(path)
    assert set(raw) == set(ckpt)
    assert set(ckpt["state"]) == {"backbone", "projector", "distill_head", "momentum_backbone",
                                  "momentum_projector"}           # case 13: no predictor
    ts = ckpt["train_state"]
    assert {"iteration", "epoch", "optimizer", "scheduler", "scaler", "width_rng", "rng",
            "rng_per_rank", "world_size", "momentum"} <= set(ts)
    assert ts["world_size"] == 1 and len(ts["rng_per_rank"]) == 1      # this process's own RNG
    assert ts["iteration"] == 6 and ckpt["width_range"] == [0.25, 1.0]
    assert ckpt["config"]["method"]["base_loss"] == "infonce"
    assert (tmp_path / "full" / "config.yaml").is_file()
    assert (tmp_path / "full" / "widths.csv").read_text().count("\n") == 1 + 1 + 3 * 5
    slimmable = ckpt_io.load_backbone(ckpt)
    twin = ckpt_io.load_backbone(ckpt, width=0.5)
    x = torch.randn(4, 3, 16, 16)
    slim.set_width(slimmable, 0.5)
    with torch.no_grad():
        for net in (slimmable, twin):
            with slim.calibrating(net):
                net(x)
            net.eval()
        assert torch.allclose(slimmable(x), twin(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match=r"the config changes what the run means \(method\."):
        Trainer(tiny(tmp_path / "full", "method.table7_case=1"), resume=path, progress=False)


def test_short_run_properties(tmp_path):
    """An 8-iteration Algorithm 1 run (T_p = 2): properties that hold whatever it learns -- the
    exact iterations and widths logged, finite losses, the lr schedule's exact values, a momentum
    schedule that only rises, every trained parameter updated, bounded kNN accuracies. (Whether
    pretraining *learns* is measured over seeds by bench/probe_learning.py, not here.)"""
    import csv
    import math
    cfg = tiny(tmp_path, "data.synthetic.train_size=32", "data.batch_size=8", "data.image_size=8",
               "method.momentum_schedule=cosine",
               "monitor.knn_every=8", "monitor.knn_batches=2", iters=8)
    trainer = Trainer(cfg, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.method.online.named_parameters()}
    summary = trainer.train()
    assert summary["iteration"] == 8 and [h["iteration"] for h in trainer.history] == list(range(1, 9))
    # Algorithm 1 with T = 8: t <= 2 base only; then R_min = 1 - 0.25 * floor(t / 2) (>= 0.25)
    for h in trainer.history:
        t, widths = h["iteration"], [r["width"] for r in h["records"]]
        if t <= 2:
            assert widths == [1.0], (t, widths)
            continue
        r_min = max(0.25, 1 - 0.25 * (t // 2))
        assert widths[:2] == [1.0, r_min] and len(widths) == 3, (t, widths)
        assert r_min <= widths[2] <= 1.0
        assert [r["role"] for r in h["records"]] == ["base", "min", "random"]
    records = [r for h in trainer.history for r in h["records"]]
    assert all(math.isfinite(r["loss"]) and 0.0 <= r["std"] <= 1.0 for r in records)

    rows = list(csv.DictReader(open(tmp_path / "train.csv")))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 9))
    base_lr, warmup = 0.05, 2                       # optim.lr; 0.5 epoch of 32 // 8 iterations
    expected = [base_lr * ((i + 1) / warmup if i < warmup
                           else 0.5 * (1 + math.cos(math.pi * (i - warmup) / (8 - warmup))))
                for i in range(8)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-5)
    momentum = [float(r["momentum"]) for r in rows]
    assert momentum == sorted(momentum) and cfg["method"]["momentum"] <= momentum[0] < momentum[-1] <= 1
    assert all(float(r["reg"]) > 0 and math.isfinite(float(r["loss"])) for r in rows)
    assert (tmp_path / "widths.csv").read_text().count("\n") == 1 + 2 * 1 + 6 * 3

    after = dict(trainer.method.online.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n])]
    assert not unchanged, unchanged
    knn = list(csv.DictReader(open(tmp_path / "knn.csv")))
    assert [(r["iteration"], r["width"]) for r in knn] == [("8", "1"), ("8", "0.25")]
    assert all(0.0 <= float(r["top1"]) <= 100.0 for r in knn)
    assert ckpt_io.load_checkpoint(tmp_path / "checkpoint.pth")["train_state"]["iteration"] == 8


def _algorithm1_reference_grads(method, regularizer_cfg, x1, x2, widths, alpha):
    """Algorithm 1's gradient by plain autograd on a copy of the method: (base loss + group
    regularization at ``alpha``, without g when no sub-network runs) backward once, then each
    sub-network's loss backward (the pre-issue-19 formulation, which DDP cannot run)."""
    import copy

    from pretrain.regularizers import build_regularizer
    method = copy.deepcopy(method)
    inner = method.online
    reg = build_regularizer(regularizer_cfg, inner.backbone,
                            [inner.projector, inner.predictor, inner.distill_head],
                            student_heads=[inner.distill_head])
    reg.set_alpha(alpha)
    students = len(widths) > 1
    slim.set_width(inner, widths[0])
    o1, o2 = inner(x1, x2)
    k1, k2 = method.momentum_targets(x1, x2)
    (method.base_loss(o1, o2, k1, k2) + reg(students=students)).backward()
    t1, t2 = method.sub_targets(o1, o2, k1, k2)
    for width in widths[1:]:
        slim.set_width(inner, width)
        s1, s2 = inner(x1, x2, student=True)
        method.sub_loss(s1, s2, t1, t2, k1, k2).backward()
    return {n: p.grad for n, p in inner.named_parameters()}, lambda: reg(students=students)


@pytest.mark.parametrize("widths", [[1.0], [1.0, 0.25, 0.6]], ids=["one-width", "three-widths"])
def test_regularization_gradient_added_once(tmp_path, widths):
    """The gradient the optimizer steps with equals autograd's gradient of base + reg + sub
    losses (the group regularization is now added to .grad in closed form, issue 19): the only
    check that the DDP-safe formulation leaves single-process training unchanged. The step is
    iteration 2 of 4 (8 per epoch): alpha is half way up its ramp (0.05 * 0.125 / 0.25). In a
    one-width iteration the distillation head g is unused and gets no gradient at all (issue 12:
    not decayed while unused)."""
    cfg = tiny(tmp_path, "data.batch_size=8", "data.image_size=8", iters=4)
    trainer = Trainer(cfg, progress=False)
    trainer.iteration = 1                        # the next step is iteration 2
    x1, x2, _ = next(iter(train_loader(trainer.train_set, cfg["data"], 0, 0, 0)))
    ref, reg = _algorithm1_reference_grads(trainer.method, cfg["regularization"], x1, x2, widths,
                                           alpha=0.025)
    inner, seen = trainer.method.online, {}

    def record(optimizer, args, kwargs):  # the gradients the real step is about to use
        seen.update({n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None})
    trainer.optimizer.register_step_pre_hook(record)
    out = trainer.step(x1, x2, widths=widths)
    assert [r["width"] for r in out["records"]] == widths
    assert out["reg_alpha"] == pytest.approx(0.025)
    assert out["reg"] == pytest.approx(float(reg().detach()), rel=1e-6)
    assert set(seen) == {n for n, g in ref.items() if g is not None}
    for name, grad in seen.items():  # equal up to float summation order (1e-6 of the scale)
        scale = float(ref[name].abs().max())
        torch.testing.assert_close(grad, ref[name], rtol=1e-5, atol=1e-6 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")
    g_names = {f"distill_head.{n}" for n, _ in inner.distill_head.named_parameters()}
    if len(widths) == 1:
        assert not g_names & set(seen)            # g: no loss gradient, no decay
    else:
        assert g_names <= set(seen)


@pytest.mark.parametrize("case", range(1, 18))
def test_every_table7_case_trains(tmp_path, case):
    cfg = tiny(tmp_path, f"method.table7_case={case}", "sampling.dynamic=false",
               "sampling.num_random=0", "checkpoint.every_iters=0", "data.image_size=8",
               "data.batch_size=8", iters=1)
    sw = table7_case(case)
    assert {k: cfg["method"][k] for k in sw} == sw
    trainer = Trainer(cfg, progress=False)
    x1, x2, _ = next(iter(train_loader(trainer.train_set, cfg["data"], 0, 0, 0)))
    out = trainer.step(x1, x2)
    assert [r["width"] for r in out["records"]] == [1.0, 0.25]
    assert all(np.isfinite(r["loss"]) for r in out["records"])
    o = trainer.method.online
    assert (o.predictor is not None) == (sw["base_loss"] == "mse")
    assert (o.distill_head is not None) == sw["aux_distill_head"]
    assert (trainer.method.momentum_backbone is not None) == (sw["momentum_base"] or sw["momentum_sub"])


def test_baselines_queue_and_fixed_width(tmp_path):
    cfg = load_config(CONFIGS / "mocov2_r18_cifar100.yaml", [
        "data.name=synthetic", "data.image_size=16", "data.batch_size=16", "data.num_workers=0",
        "data.synthetic.train_size=32", "method.queue_size=40", "sampling.fixed_width=0.5",
        "schedule.iters=3", f"output.dir={tmp_path}", "monitor.tensorboard=false",
        "heads.projector.hidden=64"])
    trainer = Trainer(cfg, progress=False)
    trainer.train()
    assert all([r["width"] for r in h["records"]] == [0.5] for h in trainer.history)
    assert int(trainer.method.queue_ptr) == (3 * 32) % 40
    ckpt = ckpt_io.load_checkpoint(tmp_path / "checkpoint.pth")
    assert ckpt["width_range"] == [0.5, 0.5] and "moco_queue" in ckpt["train_state"]
    ckpt_io.load_backbone(ckpt, width=0.5)
    with pytest.raises(ValueError, match="outside the trained range"):
        ckpt_io.load_backbone(ckpt, width=1.0)


def test_shipped_configs_resolve():
    files = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("_"))
    assert len(files) >= 50
    for path in files:
        cfg = load_config(path)
        assert cfg["method"]["base_loss"] in ("mse", "infonce"), path
    us3l = load_config(CONFIGS / "us3l_r18_cifar100.yaml")
    assert {k: us3l["method"][k] for k in table7_case(13)} == table7_case(13)
    assert us3l["sampling"]["dynamic"] and us3l["regularization"]["alpha"] == 0.05
    assert us3l["data"]["name"] == "cifar100" and us3l["model"] == {"arch": "resnet18", "stem": "cifar"}
    vit = load_config(CONFIGS / "us3l_vit_tiny_cifar10.yaml")
    assert "stem" not in vit["model"] and vit["model"]["arch"] == "vit_tiny"
    usnet = load_config(CONFIGS / "us_simclr_r50_cifar100.yaml")
    assert usnet["sampling"]["num_random"] == 2 and not usnet["sampling"]["dynamic"]
    assert load_config(CONFIGS / "simsiam_mbv2_cifar100.yaml")["sampling"]["max_width"] == 1.0
    assert load_config(CONFIGS / "demo.yaml")["data"]["name"] == "synthetic"


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="table7_case"):
        load_config(None, ["method.table7_case=18"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="min_width"):
        load_config(None, ["sampling.min_width=0.1"])
    assert load_config(None, ["method.table7_case=1"])["method"]["distill_loss"] == "none"


def test_gather_negatives_defaults_follow_each_reference():
    """method.gather_negatives left null: what each method's reference code does (see
    pretrain/methods/__init__.py); an explicit value wins; anything but a bool is an error."""
    def gather(*over, path=None):
        return load_config(path, list(over))["method"]["gather_negatives"]
    assert not gather()                                           # us3l CNN code: local batch
    assert not gather("method.name=simclr") and not gather("method.name=mocov2")
    assert gather("method.name=mocov3")                           # MoCo v3: concat_all_gather
    assert not gather("method.table7_case=16")
    assert gather("method.table7_case=16", "method.gather_negatives=true")
    assert not gather("method.name=mocov3", "method.gather_negatives=false")
    assert gather(path=CONFIGS / "us3l_vit_tiny_cifar10.yaml")    # US3L's ViT (MoCo v3) code
    assert not gather(path=CONFIGS / "us3l_r18_cifar100.yaml")
    with pytest.raises(ConfigError, match="'method.gather_negatives': expected true or false"):
        load_config(None, ["method.gather_negatives=sometimes"])


def test_batch_split_check_names_batch_world_and_fix():
    from pretrain.engine import check_batch_split
    check_batch_split(16, 2)
    check_batch_split(15, 1)
    with pytest.raises(ConfigError, match=r"^data.batch_size=30 \(the global batch\) is not "
                       r"divisible by the 4 processes; set data.batch_size to a multiple of 4 "
                       r"\(e.g. 28 or 32\)"):
        check_batch_split(30, 4)
    with pytest.raises(ConfigError, match=r"multiple of 8 \(e.g. 8\)"):
        check_batch_split(6, 8)


def _write_cifar10(root: Path):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
                         "labels": [0, 1, 2, 3]}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)


def test_cifar_md5_switch_and_missing_layout(tmp_path):
    data = load_config(None, ["data.name=cifar10", f"data.root={tmp_path}"])["data"]
    with pytest.raises(DataError, match=r"cifar-10-batches-py/\{data_batch_1\.\.5"):
        build_datasets(data)                     # nothing there: the error names the layout
    _write_cifar10(tmp_path)
    with pytest.raises(DataError, match="verify_md5=false"):
        build_datasets(data)                     # a re-packed copy fails torchvision's MD5 check
    train, test = build_datasets({**data, "verify_md5": False})
    assert len(train) == 20 and len(test) == 4


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("pretrain_cli", ROOT / "tools" / "pretrain.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown config key 'optim.lrr'" in err
    assert cli.main(["data.name=cifar100", f"data.root={tmp_path}", f"output.dir={tmp_path}"]) == 2
    assert "cifar-100-python" in capsys.readouterr().err


def test_warmup_cosine_and_lars():
    from pretrain.engine import LARS, warmup_cosine
    f = warmup_cosine(total=10, warmup=2, min_ratio=0.0)
    assert [round(f(i), 4) for i in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.1, momentum=0.9, weight_decay=0.0, eta=0.001)
    w.grad, b.grad = torch.tensor([[0.6, 0.8]]), torch.tensor([2.0])
    opt.step()
    trust = 0.001 * 5.0 / 1.0                     # eta * |w| / |g| (weights only)
    assert torch.allclose(w, torch.tensor([[3.0, 4.0]]) - 0.1 * trust * torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(b, torch.tensor([1.0 - 0.1 * 2.0]))   # 1-D parameters: plain SGD


def test_image_folder_layout(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / split / cls / "a.png")
    data = load_config(None, ["data.name=folder", f"data.root={tmp_path}"])["data"]
    train, val = build_datasets(data)
    assert len(train) == 2 and len(val) == 2 and train.classes == ["cat", "dog"]
    with pytest.raises(DataError, match="ROOT/train/<class>/<image>"):
        build_datasets({**data, "root": str(tmp_path / "missing")})


def test_convert_sync_batchnorm_leaves_no_plain_batchnorm(tmp_path):
    """What a CUDA DDP run converts (test_pretrain_ddp runs on CPU, where torch's SyncBatchNorm
    cannot run): after conversion every BatchNorm synchronises -- a SyncBatchNorm, or a
    SlimBatchNorm in sync mode -- in each part that has one: online backbone, projector,
    predictor, distillation head g, momentum backbone and momentum projector (Table 7 case 4 has
    them all). The parameters stay the same objects (the optimizer and regularizer hold them)."""
    import torch.nn as nn

    from pretrain.engine import convert_sync_batchnorm
    trainer = Trainer(tiny(tmp_path, "method.table7_case=4"), progress=False)
    method, o = trainer.method, trainer.method.online
    params = [id(p) for p in method.parameters()]
    count = convert_sync_batchnorm(method)
    parts = {"backbone": o.backbone, "projector": o.projector, "predictor": o.predictor,
             "distill_head": o.distill_head, "momentum_backbone": method.momentum_backbone,
             "momentum_projector": method.momentum_projector}
    assert all(part is not None for part in parts.values())

    def synced(m):
        return isinstance(m, nn.SyncBatchNorm) or (isinstance(m, slim.SlimBatchNorm) and m.sync)
    bns = [m for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(synced(m) for m in bns)                 # no plain BatchNorm anywhere
    for name, part in parts.items():
        assert any(synced(m) for m in part.modules()), name
    assert count == len(bns)
    assert [id(p) for p in method.parameters()] == params
