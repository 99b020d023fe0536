"""Exact BatchNorm statistics of a slimmable network at one width (design.md §2).

During pretraining BN uses batch statistics at every width, so no width has running statistics
of its own. Here they are computed afterwards: reset, forward N equal-size batches of images
(by default training augmentations, as the official code; calib_data.py) in train mode under no_grad with a cumulative average (momentum=None), then eval mode.
The result per channel is the average over batches of the batch mean and of the unbiased batch
variance -- exactly what ``nn.BatchNorm`` with momentum=None accumulates. Never the width-1.0
statistics sliced. This module is the one owner of the procedure (the converter and the linear
probe both call ``recalibrate_bn``).

How many images: US-Net's (JiahuiYu/slimmable_networks, apps/us_mobilenet_v{1,2}_train_val.yml:
``bn_cal_batch_num: 5``, ``cumulative_bn_stats: true``, batch 1024 over 8 GPUs, i.e. 128 images per
process, whose BN layers compute their own statistics) and the official US3L code's
(config.py: ``MODEL.OFA.BN_CAL_BATCH_NUM = 5``, ``CUMULATIVE_BN_STATS = True``; configs:
``TRAIN.BATCH_SIZE: 128 # per-gpu``): 5 batches of 128 images, a cumulative average.
``DEFAULT_BATCHES`` x ``DEFAULT_BATCH_SIZE`` are the converter's and the probe's defaults.
(The official ``workers/calibrate.py`` runs 501 batches of 128 augmented images through BN's
exponential average, momentum 0.1, which weights only the last few dozen batches; its training
augmentations are followed here, its EMA is not.)
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from pretrain import slim

# S-Net (switchable BN) is not recalibrated: each listed width's private BN has the running
# statistics it was trained with, which is what slimmable networks evaluate with
# (JiahuiYu/slimmable_networks train.py runs BN calibration only under the calibrate_bn flag of its
# universally slimmable configs; US3L-CVPR2023 workers/calibrate.py is likewise the US-Net path).
# The converter skips it for switchable BN and says so in meta.json.
SWITCHABLE_PROCEDURE = ("none: switchable BatchNorm (S-Net) keeps each listed width's own "
                        "running statistics from training; not recalibrated")
DEFAULT_BATCHES = 5       # US-Net bn_cal_batch_num; US3L MODEL.OFA.BN_CAL_BATCH_NUM
DEFAULT_BATCH_SIZE = 128  # images per batch (per process in US-Net / US3L)


def has_batchnorm(model: nn.Module) -> bool:
    return bool(slim.slim_batchnorms(model))


def _images(batch) -> torch.Tensor:
    """A loader may yield images or (images, labels, ...)."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def recalibrate_bn(model: nn.Module, width: float, batches: Iterable, num_batches: int | None = None,
                   device: torch.device | str | None = None, progress: bool = True) -> int:
    """Set ``model`` to ``width``, recompute its BN running statistics from ``batches``, return
    the number of batches used. The model is left at ``width`` in eval mode on ``device``.

    A model without BatchNorm (ViT) has nothing to recalibrate: it is set to width and eval mode
    and 0 is returned. Batches must all have the same size so the cumulative average is the
    average over the calibration set (use ``drop_last=True``).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    slim.set_width(model, width)
    if not has_batchnorm(model):
        model.eval()
        return 0
    used, size = 0, None
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=num_batches, desc=f"BN calibration at {width:g}", leave=False,
                   unit="batch", disable=None)  # no bar when stderr is not a terminal
    with slim.calibrating(model), slim.cached_slices(model), torch.no_grad():
        for batch in batches:
            if num_batches is not None and used >= num_batches:
                break
            images = _images(batch)
            if size is None:
                size = images.shape[0]
            elif images.shape[0] != size:
                raise ValueError(f"calibration batch {used} has {images.shape[0]} images, the first "
                                 f"had {size}; use equal-size batches (drop_last=True)")
            model(images.to(device, non_blocking=True))
            used += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if used == 0:
        raise ValueError("no calibration batches: the calibration set is smaller than one batch")
    if num_batches is not None and used < num_batches:
        raise ValueError(f"the calibration set gave {used} batches, {num_batches} were asked for; "
                         f"lower --calib-batches or the batch size")
    model.eval()
    return used
