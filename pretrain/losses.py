"""The paper's losses (Eq. 1, 2, 6, 7), computed in float32 so they stay safe under mixed precision.

Every function L2-normalises its inputs unless told they already are (``normalized=True``), and
returns the mean over the batch. InfoNCE goes through ``cross_entropy`` (log-sum-exp), never a raw
``exp``. Gradients w.r.t. normalised student outputs are Eq. 8 (MSE-distill: ``-z_t``) and Eq. 9
(NCE-distill: ``(-z_t + sum_j P_j z_j^t) / tau``); ``tests/test_losses.py`` checks both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _f32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def _norm(z: torch.Tensor, normalized: bool) -> torch.Tensor:
    return z if normalized else F.normalize(z, dim=-1)


def negative_cosine(p: torch.Tensor, z: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """D(p, z) of Eq. 1: -p/|p| . z/|z|, batch mean. ``z`` is the target: pass it detached."""
    with torch.autocast(p.device.type, enabled=False):
        p, z = _f32(p, z)
        return -(_norm(p, normalized) * _norm(z, normalized)).sum(-1).mean()


def mse_distill(zs: torch.Tensor, zt: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """Eq. 6: -z_s . z_t on L2-normalised vectors (equals MSE/2 - 1); the target is detached."""
    return negative_cosine(zs, zt.detach(), normalized)


def nce_distill(zs: torch.Tensor, zt: torch.Tensor, temperature: float = 1.0,
                normalized: bool = False) -> torch.Tensor:
    """Eq. 7: -z_s^i . z_t^i / tau + log sum_k exp(z_s^i . z_t^k / tau); targets detached."""
    with torch.autocast(zs.device.type, enabled=False):
        zs, zt = _f32(zs, zt)
        zs, zt = _norm(zs, normalized), _norm(zt.detach(), normalized)
        logits = zs @ zt.t() / temperature
        return F.cross_entropy(logits, torch.arange(len(zs), device=zs.device))


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
             normalized: bool = False) -> torch.Tensor:
    """Eq. 2 (SimCLR's NT-Xent): each of the 2N views against its pair and the other 2N-2 views."""
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = _f32(z1, z2)
        z = torch.cat([_norm(z1, normalized), _norm(z2, normalized)])
        n = len(z1)
        logits = z @ z.t() / temperature
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device),
                                    float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, target)


def info_nce_target(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.5,
                    queue: torch.Tensor | None = None, normalized: bool = False) -> torch.Tensor:
    """InfoNCE against a (momentum) target: q_i's positive is k_i, negatives the other k_j and an
    optional queue of earlier keys (MoCo). ``k`` is detached."""
    with torch.autocast(q.device.type, enabled=False):
        q, k = _f32(q, k)
        q, k = _norm(q, normalized), _norm(k.detach(), normalized)
        logits = q @ k.t()
        if queue is not None and len(queue):
            logits = torch.cat([logits, q @ queue.float().t()], dim=1)
        return F.cross_entropy(logits / temperature, torch.arange(len(q), device=q.device))


def embedding_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the batch std of L2-normalised ``z`` (SimSiam's collapse metric):
    about 1/sqrt(dim) for well-spread outputs, 0 for a collapsed (constant) output."""
    with torch.no_grad():
        return F.normalize(z.detach().float(), dim=-1).std(dim=0).mean().item()
