"""The MLP heads of pretraining: projector, predictor, auxiliary distillation head g (Eq. 3).

Only the projector's input is slimmable (it reads its width from the backbone's features at the
current width, a ``SlimLinear`` whose output is never sliced); everything after it has fixed
sizes, so every width maps into the same embedding space. Heads run in training only and are not
part of the exported backbone.
"""
from __future__ import annotations

import torch.nn as nn

from pretrain.slim import SlimLinear


def _mlp(dims: list[int], bn_last: bool, slim_first: bool, affine_last: bool = True
         ) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fin, fout) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        if i == 0 and slim_first:
            layers.append(SlimLinear(fin, fout, bias=False, slim_out=False))
        else:
            layers.append(nn.Linear(fin, fout, bias=last and not bn_last))
        if not last:
            layers += [nn.BatchNorm1d(fout), nn.ReLU(inplace=True)]
        elif bn_last:
            layers.append(nn.BatchNorm1d(fout, affine=affine_last))
    return nn.Sequential(*layers)


def projector(feature_dim: int, hidden: int = 2048, out: int = 256, layers: int = 3,
              bn_last: bool = True) -> nn.Sequential:
    """feature_dim-hidden-...-out with BN (SimCLR v2/SimSiam style); input follows the backbone."""
    if layers < 1:
        raise ValueError(f"heads.projector.layers must be >= 1, got {layers}")
    return _mlp([feature_dim] + [hidden] * (layers - 1) + [out], bn_last, slim_first=True)


def predictor(dim: int = 256, hidden: int = 512, bn_last: bool = False) -> nn.Sequential:
    """h(.) of SimSiam/BYOL: dim-hidden-dim, BN after the hidden layer only. ``bn_last``: MoCo v3's
    predictor, which ends in a BN without affine parameters (facebookresearch/moco-v3 and US3L
    ViT_experiments/moco/builder.py ``_build_mlp(2, dim, mlp_dim, dim)``: last_bn, affine=False)."""
    return _mlp([dim, hidden, dim], bn_last=bn_last, slim_first=False, affine_last=False)


def distill_head(dim: int = 256, hidden: int = 2048, bn_last: bool = False) -> nn.Sequential:
    """g(.) of Eq. 3 (256-2048-256): absorbs the capacity gap between a sub-network and its teacher.
    ``bn_last``: the official ViT code's g is a copy of MoCo v3's predictor (``predictor_new =
    deepcopy(self.predictor)`` in ViT_experiments/moco/builder.py), so it ends in the same BN."""
    return _mlp([dim, hidden, dim], bn_last=bn_last, slim_first=False, affine_last=False)
