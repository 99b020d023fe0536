"""The few collective operations pretraining needs, each a no-op in a single process.

Why a module of its own: the losses (cross-GPU negatives), the MoCo queue and the checkpoint's
per-rank RNG states all need "this rank, the world, gather"; keeping them here keeps the losses
and the engine free of ``torch.distributed`` bookkeeping and testable without a process group.

Two gathers, as the references have them:

* ``concat_all_gather`` (MoCo v3's ``moco/builder.py`` and the official US3L ViT code,
  ``ViT_experiments/moco/builder.py``): no gradient. For targets that are detached anyway
  (momentum keys, teacher outputs) and for the MoCo queue.
* ``gather_with_grad`` (SimCLR's ``tpu_cross_replica_concat`` in google-research/simclr
  ``objective.py``): the backward all-reduces (sums) the incoming gradient over ranks and keeps
  this rank's slice, so that after DDP's gradient averaging the update equals the
  single-process one on the concatenated batch (each rank's loss is the mean over its own
  anchors; the ranks' mean is the global loss).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


@torch.no_grad()
def concat_all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order (``t`` itself when alone)."""
    if not is_distributed():
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        ctx.n = len(t)
        out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(out, t.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's rows: sum their gradients
        lo = dist.get_rank() * ctx.n
        return grad[lo:lo + ctx.n]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Like ``concat_all_gather``, with gradients flowing back to every rank's own rows."""
    if not is_distributed():
        return t
    return _GatherWithGrad.apply(t)


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` when alone); picklable objects."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
