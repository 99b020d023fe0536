"""The losses: values against the paper's formulas, gradients against Eq. 8 and Eq. 9, AMP safety."""
import math

import pytest
import torch
import torch.nn.functional as F

from pretrain import losses


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).float()


def test_mse_distill_gradient_is_eq8():
    zs, zt = unit(6, 16, 0).requires_grad_(), unit(6, 16, 1)
    loss = losses.mse_distill(zs, zt, normalized=True)  # batch mean of Eq. 6
    loss.backward()
    assert torch.allclose(zs.grad * len(zs), -zt, atol=1e-6)  # Eq. 8: dL/dz_s = -z_t
    assert torch.allclose(loss, -(zs * zt).sum(1).mean())


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.1])
def test_nce_distill_gradient_is_eq9(tau):
    zs, zt = unit(7, 16, 2).requires_grad_(), unit(7, 16, 3)
    losses.nce_distill(zs, zt, temperature=tau, normalized=True).backward()
    with torch.no_grad():
        p = torch.softmax(zs @ zt.t() / tau, dim=1)           # P_j of Eq. 9
        expected = (-zt + p @ zt) / tau                       # -z_t^i + sum_j P_j z_t^j
    assert torch.allclose(zs.grad * len(zs), expected, atol=1e-5)


def test_nce_distill_value_is_eq7():
    zs, zt = unit(5, 8, 4), unit(5, 8, 5)
    eq7 = [-(zs[i] @ zt[i]) + torch.logsumexp(zs[i] @ zt.t(), 0) for i in range(5)]
    assert torch.allclose(losses.nce_distill(zs, zt, 1.0, normalized=True), torch.stack(eq7).mean(),
                          atol=1e-6)


def test_info_nce_is_eq2():
    z1, z2, tau = unit(4, 8, 6), unit(4, 8, 7), 0.5
    views = torch.cat([z1, z2])
    terms = []
    for a in range(8):
        pos = (a + 4) % 8
        others = [b for b in range(8) if b != a]
        logits = torch.stack([views[a] @ views[b] / tau for b in others])
        terms.append(-(views[a] @ views[pos] / tau) + torch.logsumexp(logits, 0))
    assert torch.allclose(losses.info_nce(z1, z2, tau), torch.stack(terms).mean(), atol=1e-5)


def test_info_nce_target_with_queue():
    q, k, queue = unit(4, 8, 8), unit(4, 8, 9), unit(6, 8, 10)
    logits = torch.cat([q @ k.t(), q @ queue.t()], 1) / 0.2
    expected = F.cross_entropy(logits, torch.arange(4))
    assert torch.allclose(losses.info_nce_target(q, k, 0.2, queue), expected, atol=1e-6)


def test_negative_cosine_normalises_and_stops_gradient_only_where_told():
    p = torch.randn(3, 5, requires_grad=True)
    z = torch.randn(3, 5, requires_grad=True)
    assert torch.allclose(losses.negative_cosine(p, 3.0 * p.detach()), torch.tensor(-1.0))
    losses.mse_distill(p, z).backward()
    assert z.grad is None and p.grad is not None  # the distillation target is detached


def test_losses_safe_for_half_inputs_and_tiny_temperature():
    z1 = (unit(8, 16, 11) * 300).half()
    z2 = (unit(8, 16, 12) * 300).half()
    for value in (losses.info_nce(z1, z2, 0.01), losses.nce_distill(z1, z2, 0.01),
                  losses.info_nce_target(z1, z2, 0.01), losses.negative_cosine(z1, z2)):
        assert value.dtype == torch.float32 and torch.isfinite(value)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = losses.info_nce(torch.randn(8, 16), torch.randn(8, 16), 0.05)
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_embedding_std_detects_collapse():
    assert losses.embedding_std(torch.ones(64, 32) + 1e-3 * torch.randn(64, 32)) < 1e-3
    spread = losses.embedding_std(torch.randn(4096, 64))
    assert abs(spread - 1 / math.sqrt(64)) < 0.01
