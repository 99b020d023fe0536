"""The paper's losses (Eq. 1, 2, 6, 7), computed in float32 so they stay safe under mixed precision.

Every function L2-normalises its inputs unless told they already are (``normalized=True``), and
returns the mean over the batch. InfoNCE goes through ``cross_entropy`` (log-sum-exp), never a raw
``exp``. Gradients w.r.t. normalised student outputs are Eq. 8 (MSE-distill: ``-z_t``) and Eq. 9
(NCE-distill: ``(-z_t + sum_j P_j z_j^t) / tau``); ``tests/test_losses.py`` checks both.

Cross-GPU negatives (``gather=True``, the ``method.gather_negatives`` switch): the InfoNCE-type
losses then contrast this rank's anchors against every rank's targets, as MoCo v3 does
(``concat_all_gather`` of the detached keys, positives at ``rank * n + i``); SimCLR's loss, whose
negatives carry gradient, gathers with ``gather_with_grad`` (SimCLR's cross-replica concat). Each
rank's value is the mean over its own anchors, so the ranks' mean is the loss of one process over
the concatenated batch, and so is the DDP-averaged gradient. Without a process group ``gather``
changes nothing.

Two forms of InfoNCE against a detached target (``method.infonce_form``, methods/__init__.py):
``info_nce_2b`` is Eq. 2's 2B form (the official US3L ``nt_xentv2`` over [z; sg(t)]: both sides
anchored, 2B-2 negatives including online-online pairs; US3L's default for the momentum base loss
and for NCE distillation); ``info_nce_target`` / ``nce_distill`` are the B form (MoCo v3's
``contrastive_loss``, Eq. 7 as printed: z against the B targets, B-1 negatives).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain import distributed


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


def _offset(n: int, gather: bool) -> int:
    """Index of this rank's first row among the gathered targets."""
    return distributed.rank() * n if gather else 0


def nce_distill(zs: torch.Tensor, zt: torch.Tensor, temperature: float = 1.0,
                normalized: bool = False, gather: bool = False) -> torch.Tensor:
    """Eq. 7: -z_s^i . z_t^i / tau + log sum_k exp(z_s^i . z_t^k / tau); targets detached (over
    every rank's targets with ``gather``)."""
    with torch.autocast(zs.device.type, enabled=False):
        zs, zt = _f32(zs, zt)
        zs, zt = _norm(zs, normalized), _norm(zt.detach(), normalized)
        if gather:
            zt = distributed.concat_all_gather(zt)
        logits = zs @ zt.t() / temperature
        target = torch.arange(len(zs), device=zs.device) + _offset(len(zs), gather)
        return F.cross_entropy(logits, target)


def _nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, normalized: bool,
             gather: bool, stop_second: bool) -> torch.Tensor:
    """SimCLR's NT-Xent over the 2N set [z1; z2]: every row anchored, its pair the positive, the
    other 2N-2 rows negatives. ``stop_second``: z2 is a target (detached, gathered without
    gradient); z1 keeps its gradient, also where it is a negative or the positive of a z2 row."""
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = _f32(z1, z2)
        if stop_second:
            z2 = z2.detach()
        z1, z2 = _norm(z1, normalized), _norm(z2, normalized)
        n = len(z1)
        anchors = torch.cat([z1, z2])
        if gather:  # negatives keep their gradient (SimCLR): gather_with_grad
            z1 = distributed.gather_with_grad(z1)
            z2 = (distributed.concat_all_gather(z2) if stop_second
                  else distributed.gather_with_grad(z2))
        big = len(z1)                      # N = world * n (n when not gathering)
        columns = torch.cat([z1, z2])      # [view 1 of every rank, view 2 of every rank]
        logits = anchors @ columns.t() / temperature
        own = torch.arange(n, device=z1.device) + _offset(n, gather)
        self_idx = torch.cat([own, own + big])
        logits = logits.masked_fill(
            F.one_hot(self_idx, 2 * big).bool(), float("-inf"))
        target = torch.cat([own + big, own])
        return F.cross_entropy(logits, target)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
             normalized: bool = False, gather: bool = False) -> torch.Tensor:
    """Eq. 2 (SimCLR's NT-Xent): each of the 2N views against its pair and the other 2N-2 views
    (with ``gather``: this rank's 2n views against all 2N views of every rank)."""
    return _nt_xent(z1, z2, temperature, normalized, gather, stop_second=False)


def info_nce_2b(z: torch.Tensor, t: torch.Tensor, temperature: float = 0.5,
                normalized: bool = False, gather: bool = False) -> torch.Tensor:
    """Eq. 2 in its 2B form against a target: the official US3L ``nt_xentv2(z, t.detach())``
    (megvii-research/US3L-CVPR2023 losses/criterions/InfoNCEv2_distill.py).

    Over the 2B set [z; sg(t)] every row is an anchor: z_i's positive is t_i and its 2B-2
    negatives are the other z_j (online-online pairs) and the other t_j; t_i's positive is z_i
    and its negatives the other t_j and z_j. ``t`` (a momentum key, a teacher output) is
    detached, so the gradient reaches ``z`` through its own rows and through the t rows, where
    z_j is a positive or a negative. The batch mean over the 2B rows. With ``gather`` this
    rank's 2b rows are contrasted against the 2B rows of every rank (``z`` gathered with its
    gradient, ``t`` without), so the ranks' mean is the one-process loss on the whole batch."""
    return _nt_xent(z, t, temperature, normalized, gather, stop_second=True)


def info_nce_target(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.5,
                    queue: torch.Tensor | None = None, normalized: bool = False,
                    gather: bool = False) -> torch.Tensor:
    """InfoNCE against a (momentum) target: q_i's positive is k_i, negatives the other k_j (of
    every rank with ``gather``, MoCo v3's ``contrastive_loss``) and an optional queue of earlier
    keys (MoCo). ``k`` is detached."""
    with torch.autocast(q.device.type, enabled=False):
        q, k = _f32(q, k)
        q, k = _norm(q, normalized), _norm(k.detach(), normalized)
        if gather:
            k = distributed.concat_all_gather(k)
        logits = q @ k.t()
        if queue is not None and len(queue):
            logits = torch.cat([logits, q @ queue.float().t()], dim=1)
        target = torch.arange(len(q), device=q.device) + _offset(len(q), gather)
        return F.cross_entropy(logits / temperature, target)


def embedding_spread(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch std of L2-normalised ``z`` (SimSiam's collapse metric):
    about 1/sqrt(dim) for well-spread outputs, 0 for a collapsed (constant) output. A 0-d tensor
    on ``z``'s device (reading it is the caller's one host sync)."""
    with torch.no_grad():
        return F.normalize(z.detach().float(), dim=-1).std(dim=0).mean()


def embedding_std(z: torch.Tensor) -> float:
    """``embedding_spread`` as a Python float."""
    return embedding_spread(z).item()
