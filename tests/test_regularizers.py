"""Group regularization (Eq. 4-5): the coefficients, the penalty, its gradient, alpha=0 = plain L2."""
import pytest
import torch
import torch.nn as nn

from pretrain.models import build_backbone
from pretrain.regularizers import (GroupRegularizer, build_regularizer, group_alpha,
                                   group_coefficients)

LAM = 5e-5


def test_coefficients_g8_alpha005():
    c = group_coefficients(64, LAM, groups=8, alpha=0.05)
    expected = torch.tensor([LAM * (1 - (k // 8) * 0.05) for k in range(64)], dtype=torch.float64)
    assert torch.allclose(c, expected)
    assert c[0] == LAM and torch.isclose(c[-1], torch.tensor(LAM * 0.65, dtype=torch.float64))


def test_coefficients_leftover_channels_join_last_group():
    c = group_coefficients(10, LAM, groups=8, alpha=0.05)   # K_G = 1: channels 8, 9 in group 7
    assert torch.allclose(c[7:], torch.full((3,), LAM * 0.65, dtype=torch.float64))
    assert len(set(c.tolist())) == 8
    assert torch.allclose(group_coefficients(4, LAM, 8, 0.05),  # fewer channels than groups
                          torch.tensor([LAM * (1 - k * 0.05) for k in range(4)], dtype=torch.float64))


def test_penalty_and_gradient():
    conv = nn.Conv2d(3, 16, 3)
    lin = nn.Linear(5, 4)
    reg = GroupRegularizer({"conv": conv.weight}, {"lin": lin.weight}, lam=LAM, groups=8, alpha=0.05)
    coef = group_coefficients(16, LAM, 8, 0.05).float()
    assert reg.coefficient("conv").shape == (16, 1, 1, 1)   # precomputed, broadcast over the kernel
    expected = (coef * conv.weight.detach().pow(2).sum((1, 2, 3))).sum() \
        + LAM * lin.weight.detach().pow(2).sum()
    value = reg()
    assert torch.allclose(value, expected, rtol=1e-5)
    value.backward()
    assert torch.allclose(conv.weight.grad, 2 * coef.view(-1, 1, 1, 1) * conv.weight.detach(), rtol=1e-5)
    assert torch.allclose(lin.weight.grad, 2 * LAM * lin.weight.detach(), rtol=1e-5)


def test_alpha_zero_is_plain_l2_on_a_backbone():
    net = build_backbone({"arch": "resnet18", "stem": "cifar"})
    head = nn.Linear(512, 8)
    reg = build_regularizer({"type": "group", "groups": 8, "alpha": 0.0, "lam": LAM}, net, [head, None])
    l2 = LAM * sum(p.detach().pow(2).sum() for p in list(net.parameters()) + list(head.parameters()))
    assert torch.allclose(reg(), l2, rtol=1e-5)
    grouped = build_regularizer({"type": "group", "groups": 8, "alpha": 0.05, "lam": LAM}, net, [head])
    assert grouped() < reg()          # later groups get smaller coefficients
    assert build_regularizer({"type": "none", "groups": 8, "alpha": 0.05, "lam": LAM}, net, []) is None


def test_vit_embeddings_grouped_on_the_channel_dim():
    vit = build_backbone({"arch": "vit_tiny", "depth": 1})
    reg = build_regularizer({"type": "group", "groups": 8, "alpha": 0.05, "lam": LAM}, vit, [])
    assert reg.coefficient("backbone.pos_embed").shape == (1, 1, 192)
    assert reg.coefficient("backbone.blocks.0.attn.q.weight").shape == (192, 1)


def test_add_grad_equals_autograd_of_the_penalty():
    """The engine's closed-form gradient (added to .grad, DDP-safe) is autograd's gradient of
    forward() bit for bit, is added to an existing gradient, and scales with AMP's loss scale."""
    model = build_backbone({"arch": "resnet18", "stem": "cifar"})
    head = nn.Sequential(nn.Linear(512, 8), nn.BatchNorm1d(8))
    reg = build_regularizer({"type": "group", "lam": LAM, "groups": 8, "alpha": 0.05}, model, [head])
    params = reg.params
    expected = torch.autograd.grad(reg(), params)
    for p in params:
        p.grad = None
    reg.add_grad_()
    for name, p, g in zip(reg.names, params, expected):
        assert torch.equal(p.grad, g), name
    base = [p.grad.clone() for p in params]
    reg.add_grad_(scale=4.0)
    for p, b, g in zip(params, base, expected):
        torch.testing.assert_close(p.grad, b + 4.0 * g, rtol=0, atol=1e-12)


# --- the alpha schedule (official GroupReg.cal_lambda) and g while unused (issue 12) ------------
def official_decay_alpha(epoch, alpha, warmup_epochs, total_epochs):
    """The alpha that megvii-research/US3L-CVPR2023 losses/regularizers/GroupReg.py
    ``cal_lambda`` uses at integer ``epoch`` (None: plain lambda, i.e. alpha 0), transcribed."""
    if epoch < warmup_epochs:
        return 0.0
    decay_alpha = alpha
    ramp_epochs = total_epochs // 2
    if epoch < ramp_epochs:
        decay_alpha *= (epoch - warmup_epochs) / (ramp_epochs - warmup_epochs)
    return decay_alpha


@pytest.mark.parametrize("total,warmup", [(400, 0), (100, 50), (200, 20)],
                         ids=["cifar-400ep", "imagenet-100ep-warm50", "200ep-warm20"])
def test_alpha_schedule_is_the_official_cal_lambda(total, warmup):
    for epoch in range(total):
        assert group_alpha(epoch, total, 0.05, warmup, 0.5) == pytest.approx(
            official_decay_alpha(epoch, 0.05, warmup, total), abs=1e-15), epoch
    assert group_alpha(0, 400, 0.05, 0, 0.5) == 0.0              # CIFAR: from 0 ...
    assert group_alpha(100, 400, 0.05, 0, 0.5) == pytest.approx(0.025)
    assert group_alpha(200, 400, 0.05, 0, 0.5) == 0.05           # ... to alpha at half
    assert group_alpha(49.99, 100, 0.05, 50, 0.5) == 0.0         # ImageNet: plain L2, then alpha
    assert group_alpha(50, 100, 0.05, 50, 0.5) == 0.05
    assert group_alpha(0, 400, 0.05, 0, 0.0) == 0.05             # ramp_until 0: constant


def test_set_alpha_gives_eq5_at_that_alpha():
    conv = nn.Conv2d(3, 16, 3)
    reg = GroupRegularizer({"conv": conv.weight}, {}, lam=LAM, groups=8, alpha=0.05)
    for alpha in (0.0, 0.0125, 0.05):
        reg.set_alpha(alpha)
        assert torch.equal(reg.coefficient("conv").flatten(),
                           group_coefficients(16, LAM, 8, alpha).float())
        assert reg.current_alpha == alpha and reg.alpha == 0.05


def test_student_only_head_left_out_when_no_sub_network_runs():
    net = build_backbone({"arch": "mobilenetv2", "stem": "cifar"})
    proj, g = nn.Linear(8, 4), nn.Linear(4, 4)
    reg = build_regularizer({"type": "group", "groups": 8, "alpha": 0.05, "lam": LAM}, net,
                            [proj, None, g], student_heads=[g])
    g_l2 = LAM * sum(p.detach().pow(2).sum() for p in g.parameters())
    assert torch.allclose(reg(students=True) - reg(students=False), g_l2, rtol=0, atol=1e-6)
    reg.add_grad_(students=False)
    assert all(p.grad is None for p in g.parameters())
    assert all(p.grad is not None for p in proj.parameters())
    reg.add_grad_(students=True)
    assert all(p.grad is not None for p in g.parameters())


def test_engine_stage1_leaves_g_untouched_and_follows_the_schedule(tmp_path):
    """A real run of Algorithm 1 (8 iterations, T_p = 2): in iterations 1-2 only the base network
    trains, so g gets neither a loss gradient nor decay and is bit-for-bit its initial value;
    from iteration 3 it trains. The regularizer's alpha is the schedule at each iteration."""
    from pretrain.config import load_config
    from pretrain.engine import Trainer
    cfg = load_config(None, [
        "model.arch=mobilenetv2", "model.stem=cifar", "data.image_size=8", "data.batch_size=8",
        "data.num_workers=0", "data.synthetic.train_size=32", "data.synthetic.val_size=0",
        "heads.projector.hidden=16", "heads.projector.out=8", "heads.distill_head.hidden=16",
        "schedule.iters=8", "optim.lr=0.05", "optim.warmup_epochs=0", "monitor.knn_every=0",
        "monitor.tensorboard=false", "checkpoint.every_iters=0", f"output.dir={tmp_path}"])
    trainer = Trainer(cfg, progress=False)
    g0 = {n: p.detach().clone() for n, p in trainer.method.online.distill_head.named_parameters()}
    trainer.train(stop_after=2)
    assert [len(h["records"]) for h in trainer.history] == [1, 1]
    for n, p in trainer.method.online.distill_head.named_parameters():
        assert torch.equal(p.detach(), g0[n]), n
    trainer.train(stop_after=3)
    assert len(trainer.history[-1]["records"]) == 3
    assert any(not torch.equal(p.detach(), g0[n])
               for n, p in trainer.method.online.distill_head.named_parameters())
    # 4 iterations per epoch, 2 epochs, ramp to 0.05 at epoch 1 (half of training)
    assert [trainer.reg_alpha(t) for t in range(1, 9)] == pytest.approx(
        [0.0, 0.0125, 0.025, 0.0375, 0.05, 0.05, 0.05, 0.05])
    assert trainer.regularizer.current_alpha == pytest.approx(0.025)   # iteration 3's


@pytest.mark.parametrize("argv,words", [
    (["regularization.warmup_epochs=-1"], ["'regularization.warmup_epochs'", ">= 0"]),
    (["regularization.ramp_until=1.5"], ["'regularization.ramp_until'", "<= 1"]),
    (["regularization.ramp_until=abc"], ["'regularization.ramp_until'"]),
])
def test_bad_schedule_values_are_one_line(tmp_path, capsys, argv, words):
    import importlib.util
    from pathlib import Path

    from bad_input_helpers import call_main
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("pretrain_tool_reg", root / "tools" / "pretrain.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "run"
    call_main(tool.main, ["--no-progress", *argv, f"output.dir={out}"], "pretrain.py", capsys,
              want_code=2, must_mention=words, unchanged=out)
    assert not out.exists()
