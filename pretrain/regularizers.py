"""Group regularization (Eq. 4-5): smaller L2 coefficients for later channel groups.

The K output channels of a weight (dim 0) are split in order into G groups of K_G = floor(K/G)
channels; channel k (0-based) is in group min(floor(k / K_G), G - 1) (the K mod G leftover channels
join the last group) and gets lambda_k = lambda * (1 - group * alpha). alpha = 0 is plain L2.
The coefficient tensors are built once (shaped to broadcast over each parameter), so a step costs
one multiply-add per parameter; the penalty is added to the loss once per iteration.

Schedule (``group_alpha``; the paper gives only G = 8, alpha = 0.05, so this follows the official
code, megvii-research/US3L-CVPR2023 losses/regularizers/GroupReg.py ``cal_lambda``): plain L2
(alpha 0) during ``regularization.warmup_epochs`` (official: 0 on CIFAR, 50 on ImageNet), then
alpha ramps linearly from 0 to its value at ``regularization.ramp_until`` of the schedule (official:
``total_epochs // 2``), constant after. The official code steps it per epoch; here it moves per
iteration (epoch = iteration / iterations per epoch), with the same end points.

Heads used only by the sub-networks (the auxiliary distillation head g of Eq. 3) are decayed only
in iterations that run a sub-network (``students=True``): in stage 1 of Algorithm 1 only the base
network trains and g is unused, so it is left alone (the official GroupReg skips the head in the
full-width passes, which are the only passes of stage 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn


def group_alpha(epoch: float, total_epochs: float, alpha: float, warmup_epochs: float = 0.0,
                ramp_until: float = 0.5) -> float:
    """The alpha of Eq. 5 at ``epoch`` (fractional, counted from 0) of ``total_epochs``: 0 (plain
    L2) before ``warmup_epochs``; then linear from 0 to ``alpha`` at ``ramp_until * total_epochs``
    (official GroupReg.cal_lambda, whose ramp ends at total_epochs // 2); ``alpha`` after. A ramp
    that ends at or before the warm-up gives the full alpha right after it."""
    if epoch < warmup_epochs:
        return 0.0
    end = ramp_until * total_epochs
    if epoch < end and end > warmup_epochs:
        return alpha * (epoch - warmup_epochs) / (end - warmup_epochs)
    return alpha


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
    ``student_only`` names parameters (of ``plain``) used only by the sub-networks: they are
    left out of ``forward(students=False)`` / ``add_grad_(students=False)``. ``alpha`` is the
    target value; ``set_alpha`` moves the current one (the schedule, ``group_alpha``).
    """

    def __init__(self, grouped: dict[str, nn.Parameter], plain: dict[str, nn.Parameter] | None = None,
                 lam: float = 5e-5, groups: int = 8, alpha: float = 0.05,
                 channel_dims: dict[str, int] | None = None, student_only: tuple | list = ()):
        super().__init__()
        self.lam, self.groups, self.alpha = float(lam), int(groups), float(alpha)
        self.current_alpha = self.alpha
        self.params: list[nn.Parameter] = []
        self.names: list[str] = []
        self.group_index: list[torch.Tensor | None] = []   # per grouped parameter, broadcastable
        for name, p in grouped.items():
            dim = (channel_dims or {}).get(name, 0) % p.dim()
            shape = [1] * p.dim()
            shape[dim] = -1
            per_group = max(1, p.shape[dim] // self.groups)
            group = torch.clamp(torch.arange(p.shape[dim]) // per_group, max=self.groups - 1)
            self.group_index.append(group.to(torch.float64).reshape(shape))
            self.params.append(p)
            self.names.append(name)
        for name, p in (plain or {}).items():
            self.group_index.append(None)
            self.params.append(p)
            self.names.append(name)
        unknown = set(student_only) - set(self.names)
        if unknown:
            raise ValueError(f"student_only names parameters the regularizer does not hold: "
                             f"{sorted(unknown)[:3]}")
        self.student_only = [name in set(student_only) for name in self.names]
        for i, p in enumerate(self.params):
            self.register_buffer(f"coef_{i}", self._coef(i, p, self.alpha), persistent=False)

    def _coef(self, i: int, p: nn.Parameter, alpha: float) -> torch.Tensor:
        group = self.group_index[i]
        if group is None:
            return torch.full([1] * p.dim(), self.lam, dtype=torch.float32)
        return (self.lam * (1.0 - group * alpha)).to(torch.float32)   # Eq. 5, as group_coefficients

    @torch.no_grad()
    def set_alpha(self, alpha: float) -> None:
        """Rebuild the coefficients for the current alpha (the schedule); a no-op when unchanged."""
        alpha = float(alpha)
        if alpha == self.current_alpha:
            return
        self.current_alpha = alpha
        for i, p in enumerate(self.params):
            if self.group_index[i] is not None:
                coef = getattr(self, f"coef_{i}")
                coef.copy_(self._coef(i, p, alpha).to(coef.device))

    def coefficient(self, name: str) -> torch.Tensor:
        return getattr(self, f"coef_{self.names.index(name)}")

    def _active(self, students: bool):
        for i, p in enumerate(self.params):
            if students or not self.student_only[i]:
                yield i, p

    @torch.no_grad()
    def add_grad_(self, scale: float = 1.0, students: bool = True) -> None:
        """Add d(penalty)/dp = 2 lambda_k w_k (times ``scale``, e.g. AMP's loss scale) to ``.grad``
        (``students=False``: an iteration without sub-networks; the student-only heads get none).

        The engine applies the penalty this way, after the iteration's backward passes, instead of
        back-propagating ``forward()``: under DDP a second autograd path into a parameter that the
        synced forward left unused (the distillation head g in a one-width iteration) marks it
        ready twice. Every rank holds the same weights, so the un-reduced gradient is the average.
        """
        for i, p in self._active(students):
            grad = getattr(self, f"coef_{i}") * (2 * p.float())  # autograd's pow/mul backward
            if scale != 1.0:
                grad = grad * scale
            grad = grad.to(p.dtype)
            if p.grad is None:
                p.grad = grad
            else:
                p.grad.add_(grad)

    def forward(self, students: bool = True) -> torch.Tensor:
        total = None
        for i, p in self._active(students):
            term = (getattr(self, f"coef_{i}") * p.float().pow(2)).sum()
            total = term if total is None else total + term
        return torch.zeros(()) if total is None else total


def build_regularizer(cfg: dict, backbone: nn.Module, heads: list[nn.Module],
                      student_heads: tuple | list = ()) -> GroupRegularizer | None:
    """From the ``regularization`` config section; None when it is off (or lambda is 0).
    ``student_heads``: those of ``heads`` that only the sub-networks use (g), decayed only in
    iterations that run a sub-network."""
    if cfg["type"] == "none" or float(cfg["lam"]) == 0.0:
        return None
    grouped = {f"backbone.{n}": p for n, p in backbone.named_parameters() if p.requires_grad}
    last = tuple(getattr(backbone, "channel_last_params", ()))
    dims = {k: -1 for k in grouped if k.split(".")[-1] in last}
    plain, student_only = {}, []
    for i, head in enumerate(heads):
        if head is not None:
            params = {f"head{i}.{n}": p for n, p in head.named_parameters() if p.requires_grad}
            plain.update(params)
            if any(head is h for h in student_heads if h is not None):
                student_only += list(params)
    return GroupRegularizer(grouped, plain, cfg["lam"], cfg["groups"], cfg["alpha"], dims,
                            student_only)


def scheduled_alpha(cfg: dict, epoch: float, total_epochs: float) -> float:
    """``group_alpha`` from the ``regularization`` config section (keys absent: no schedule)."""
    return group_alpha(epoch, total_epochs, float(cfg["alpha"]),
                       float(cfg.get("warmup_epochs", 0.0) or 0.0),
                       float(cfg.get("ramp_until", 0.0) or 0.0))
