"""SEED / SEED-MSE (pretrain/methods/seed.py) and the frozen teacher (pretrain/teacher.py).

A tiny BYOL teacher (resnet18 at 16 px, 2 iterations) is trained once per module; every student
run is a few iterations. Nothing here asserts what the runs learn (bench/digits_experiment.py).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bad_input_helpers import call_main
from pretrain import checkpoint as ckpt_io
from pretrain.config import ConfigError
from pretrain.engine import Trainer
from pretrain.methods.seed import SEED, seed_loss
from pretrain.models import build_backbone
from pretrain.teacher import load_teacher
from test_pretrain_engine import tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    cfg = tiny(out, "method.name=byol", "sampling.fixed_width=1.0", "checkpoint.every_iters=0",
               iters=2)
    Trainer(cfg, progress=False, device="cpu").train()
    return out / "checkpoint.pth"


def student_cfg(tmp_path, teacher, *extra, name="seed", iters=3):
    return tiny(tmp_path, f"method.name={name}", f"teacher.checkpoint={teacher}",
                "teacher.calibration_batches=2", "teacher.queue_size=40",
                "checkpoint.every_iters=0", *extra, iters=iters)


# ------------------------------------------------------------------------------ the losses
def test_seed_loss_equals_handwritten_reference():
    torch.manual_seed(0)
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    queue = F.normalize(torch.randn(5, 4), dim=1)
    ts, tt = 0.5, 0.1
    total = 0.0
    for i in range(3):  # SEED: softmax over [positive (own teacher embedding), queue]
        si, ti = s[i] / s[i].norm(), t[i] / t[i].norm()
        keys = [ti] + [queue[j] for j in range(5)]
        ls = [float(si @ k) / ts for k in keys]
        lt = [float(ti @ k) / tt for k in keys]
        shift = max(lt)  # exp(lt) overflows at 1/tt = 10: subtract the max (softmax unchanged)
        p_t = [math.exp(v - shift) / sum(math.exp(u - shift) for u in lt) for v in lt]
        log_p_s = [v - math.log(sum(math.exp(u) for u in ls)) for v in ls]
        total += -sum(a * b for a, b in zip(p_t, log_p_s))
    assert seed_loss(s, t, queue, ts, tt).item() == pytest.approx(total / 3, rel=1e-5)


def test_mse_variant_is_cross_view_negative_cosine(teacher_ckpt, tmp_path):
    cfg = student_cfg(tmp_path, teacher_ckpt, name="seed_mse")
    method = SEED(build_backbone(cfg["model"]), cfg)
    assert method.queue is None and method.online.predictor is not None
    torch.manual_seed(1)
    y1, y2, k1, k2 = (torch.randn(4, 8) for _ in range(4))
    cos = lambda a, b: sum(float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(4)) / 4
    want = 0.5 * (-cos(y1, k2) - cos(y2, k1))
    assert method._distill(y1, y2, k1, k2).item() == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------------------ the teacher
def test_teacher_frozen_and_identity(teacher_ckpt):
    teacher = load_teacher(teacher_ckpt)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    ident = teacher.identity()
    assert ident["sha256"] == ckpt_io.file_sha256(teacher_ckpt)
    assert (ident["arch"], ident["width"]) == ("resnet18", 1.0)
    with pytest.raises(ConfigError, match="teacher file changed"):
        load_teacher(teacher_ckpt, expect={"sha256": "0" * 64})


@pytest.mark.parametrize("name, sampling", [
    ("seed", ["sampling.fixed_width=0.5"]),
    ("seed_mse", ["sampling.fixed_width=null", "sampling.dynamic=false", "sampling.num_random=0"]),
])
def test_short_run_trains_student_only(teacher_ckpt, tmp_path, name, sampling):
    cfg = student_cfg(tmp_path, teacher_ckpt, *sampling, name=name)
    trainer = Trainer(cfg, progress=False, device="cpu")
    method = trainer.method
    student0 = {k: v.clone() for k, v in method.online.backbone.state_dict().items()}
    trainer.iteration, trainer.total = 0, 3
    loader = torch.utils.data.DataLoader(trainer.train_set, batch_size=16)
    batches = iter(loader)
    x1, x2, _ = next(batches)
    method.train()
    first = trainer.step(x1, x2)  # calibrates the teacher's BN once, then trains
    teacher0 = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    records = [first] + [trainer.step(*next(batches)[:2]) for _ in range(2)]
    widths = {r["width"] for out in records for r in out["records"]}
    assert widths == ({0.5} if name == "seed" else {1.0, 0.25})
    assert all(math.isfinite(r["loss"]) for out in records for r in out["records"])
    assert all(torch.equal(v, teacher0[k]) for k, v in method.teacher.state_dict().items())
    assert all(p.grad is None for p in method.teacher.parameters())
    assert not method.teacher.training
    changed = [k for k, v in method.online.backbone.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, student0[k])]
    assert changed


def test_checkpoint_records_teacher_and_converts(teacher_ckpt, tmp_path, capsys):
    from transfer.export import convert
    cfg = student_cfg(tmp_path / "run", teacher_ckpt, "sampling.fixed_width=0.5", iters=2)
    Trainer(cfg, progress=False, device="cpu").train()
    ckpt = ckpt_io.load_checkpoint(tmp_path / "run" / "checkpoint.pth")
    t = ckpt["config"]["teacher"]
    assert (t["sha256"], t["arch"], t["width"]) == (ckpt_io.file_sha256(teacher_ckpt),
                                                   "resnet18", 1.0)
    assert set(ckpt["state"]) == {"backbone", "projector"}  # no teacher weights
    assert ckpt["train_state"]["moco_queue"].shape == (40, 32)
    out = tmp_path / "export"
    assert convert.main([str(tmp_path / "run" / "checkpoint.pth"), "--out", str(out),
                         "--widths", "0.5", "--calib-batches", "2", "--calib-batch-size", "2",
                         "--verify-images", "2", "--quiet"]) == 0
    assert (out / "w0.50" / "torchvision.pth").is_file()


# ------------------------------------------------------------------------------ bad input
def _nan_teacher(teacher_ckpt, tmp_path) -> Path:
    payload = torch.load(teacher_ckpt, weights_only=True)
    first = next(iter(payload["state"]["projector"]))
    payload["state"]["projector"][first] = torch.full_like(
        payload["state"]["projector"][first], float("nan"))
    path = tmp_path / "nan.pth"
    torch.save(payload, path)
    return path


def test_bad_teacher_one_line_exit_2_nothing_written(teacher_ckpt, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("pretrain_tool_seed", ROOT / "tools" / "pretrain.py")
    pretrain_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain_tool)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    base = ["--config", str(ROOT / "configs" / "pretrain" / "demo.yaml"), "--no-progress",
            "model.arch=resnet18", "data.image_size=16", "data.batch_size=16",
            "data.synthetic.train_size=32", "heads.projector.hidden=64", "heads.projector.out=32",
            "schedule.iters=1", "data.num_workers=0"]
    out = tmp_path / "out"
    cases = [
        ([f"teacher.checkpoint={tmp_path / 'missing.pth'}"], ["does not exist"]),
        ([f"teacher.checkpoint={garbage}"], ["not a readable"]),
        ([f"teacher.checkpoint={_nan_teacher(teacher_ckpt, tmp_path)}"], ["NaN"]),
        ([f"teacher.checkpoint={teacher_ckpt}", "teacher.width=0.5"],
         ["teacher.width=0.5", "[1, 1]"]),
        ([f"teacher.checkpoint={teacher_ckpt}", "heads.projector.out=16"],
         ["heads.projector.out=32"]),
        ([], ["teacher.checkpoint=PATH"]),
    ]
    for extra, words in cases:
        call_main(pretrain_tool.main, base + ["method.name=seed", f"output.dir={out}", *extra],
                  "pretrain.py", capsys, must_mention=words, unchanged=out)
    call_main(pretrain_tool.main, base + [f"teacher.checkpoint={teacher_ckpt}",
                                          f"output.dir={out}"],
              "pretrain.py", capsys, must_mention=["method.name seed"], unchanged=out)
    assert not out.exists()
