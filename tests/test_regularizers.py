"""Group regularization (Eq. 4-5): the coefficients, the penalty, its gradient, alpha=0 = plain L2."""
import torch
import torch.nn as nn

from pretrain.models import build_backbone
from pretrain.regularizers import GroupRegularizer, build_regularizer, group_coefficients

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
