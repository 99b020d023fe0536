"""The MLP heads of pretraining: projector, predictor, auxiliary distillation head g (Eq. 3).

Only the projector's input is slimmable (it reads its width from the backbone's features at the
current width, a ``SlimLinear`` whose output is never sliced); everything after it has fixed
sizes, so every width maps into the same embedding space. Heads run in training only and are not
part of the exported backbone.
"""
from __future__ import annotations

import torch.nn as nn

from pretrain.slim import SlimLinear


def _mlp(dims: list[int], bn_last: bool, slim_first: bool) -> nn.Sequential:
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
            layers.append(nn.BatchNorm1d(fout))
    return nn.Sequential(*layers)


def projector(feature_dim: int, hidden: int = 2048, out: int = 256, layers: int = 3,
              bn_last: bool = True) -> nn.Sequential:
    """feature_dim-hidden-...-out with BN (SimCLR v2/SimSiam style); input follows the backbone."""
    if layers < 1:
        raise ValueError(f"heads.projector.layers must be >= 1, got {layers}")
    return _mlp([feature_dim] + [hidden] * (layers - 1) + [out], bn_last, slim_first=True)


def predictor(dim: int = 256, hidden: int = 512) -> nn.Sequential:
    """h(.) of SimSiam/BYOL: dim-hidden-dim, BN after the hidden layer only."""
    return _mlp([dim, hidden, dim], bn_last=False, slim_first=False)


def distill_head(dim: int = 256, hidden: int = 2048) -> nn.Sequential:
    """g(.) of Eq. 3 (256-2048-256): absorbs the capacity gap between a sub-network and its teacher."""
    return _mlp([dim, hidden, dim], bn_last=False, slim_first=False)
