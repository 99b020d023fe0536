"""Group regularization (Eq. 4-5): smaller L2 coefficients for later channel groups.

The K output channels of a weight (dim 0) are split in order into G groups of K_G = floor(K/G)
channels; channel k (0-based) is in group min(floor(k / K_G), G - 1) (the K mod G leftover channels
join the last group) and gets lambda_k = lambda * (1 - group * alpha). alpha = 0 is plain L2.
The coefficient tensors are built once (shaped to broadcast over each parameter), so a step costs
one multiply-add per parameter; the penalty is added to the loss once per iteration.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def group_coefficients(channels: int, lam: float, groups: int = 8, alpha: float = 0.05
                       ) -> torch.Tensor:
    """lambda_k of Eq. 5 for k = 0..channels-1."""
    if groups < 1:
        raise ValueError(f"regularization groups must be >= 1, got {groups}")
    per_group = max(1, channels // groups)
    group = torch.clamp(torch.arange(channels) // per_group, max=groups - 1)
    return lam * (1.0 - group.to(torch.float64) * alpha)


class GroupRegularizer(nn.Module):
    """sum_k lambda_k ||w_k||^2 over the given parameters.

    ``grouped`` parameters get per-output-channel coefficients (the slimmable backbone, whose
    channels are prefix-sliced; channel dim 0 unless ``channel_dims`` says otherwise, e.g. -1 for
    ViT's cls/position embeddings); ``plain`` ones the flat lambda (heads, fixed output width).
    """

    def __init__(self, grouped: dict[str, nn.Parameter], plain: dict[str, nn.Parameter] | None = None,
                 lam: float = 5e-5, groups: int = 8, alpha: float = 0.05,
                 channel_dims: dict[str, int] | None = None):
        super().__init__()
        self.lam, self.groups, self.alpha = float(lam), int(groups), float(alpha)
        self.params: list[nn.Parameter] = []
        self.names: list[str] = []
        coefs: list[torch.Tensor] = []
        for name, p in grouped.items():
            dim = (channel_dims or {}).get(name, 0) % p.dim()
            c = group_coefficients(p.shape[dim], self.lam, self.groups, self.alpha)
            shape = [1] * p.dim()
            shape[dim] = -1
            coefs.append(c.reshape(shape).to(torch.float32))
            self.params.append(p)
            self.names.append(name)
        for name, p in (plain or {}).items():
            coefs.append(torch.full([1] * p.dim(), self.lam, dtype=torch.float32))
            self.params.append(p)
            self.names.append(name)
        for i, c in enumerate(coefs):
            self.register_buffer(f"coef_{i}", c, persistent=False)

    def coefficient(self, name: str) -> torch.Tensor:
        return getattr(self, f"coef_{self.names.index(name)}")

    @torch.no_grad()
    def add_grad_(self, scale: float = 1.0) -> None:
        """Add d(penalty)/dp = 2 lambda_k w_k (times ``scale``, e.g. AMP's loss scale) to ``.grad``.

        The engine applies the penalty this way, after the iteration's backward passes, instead of
        back-propagating ``forward()``: under DDP a second autograd path into a parameter that the
        synced forward left unused (the distillation head g in a one-width iteration) marks it
        ready twice. Every rank holds the same weights, so the un-reduced gradient is the average.
        """
        for i, p in enumerate(self.params):
            grad = getattr(self, f"coef_{i}") * (2 * p.float())  # autograd's pow/mul backward
            if scale != 1.0:
                grad = grad * scale
            grad = grad.to(p.dtype)
            if p.grad is None:
                p.grad = grad
            else:
                p.grad.add_(grad)

    def forward(self) -> torch.Tensor:
        if not self.params:
            return torch.zeros(())
        total = None
        for i, p in enumerate(self.params):
            term = (getattr(self, f"coef_{i}") * p.float().pow(2)).sum()
            total = term if total is None else total + term
        return total


def build_regularizer(cfg: dict, backbone: nn.Module, heads: list[nn.Module]) -> GroupRegularizer | None:
    """From the ``regularization`` config section; None when it is off (or lambda is 0)."""
    if cfg["type"] == "none" or float(cfg["lam"]) == 0.0:
        return None
    grouped = {f"backbone.{n}": p for n, p in backbone.named_parameters() if p.requires_grad}
    last = tuple(getattr(backbone, "channel_last_params", ()))
    dims = {k: -1 for k in grouped if k.split(".")[-1] in last}
    plain = {}
    for i, head in enumerate(heads):
        if head is not None:
            plain.update({f"head{i}.{n}": p for n, p in head.named_parameters() if p.requires_grad})
    return GroupRegularizer(grouped, plain, cfg["lam"], cfg["groups"], cfg["alpha"], dims)
