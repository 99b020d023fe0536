"""What the MMDetection runs add to the engine: a detection count beside the evaluator, and the
all-reduce SyncBN that several CPU processes can run.

Why: ``CocoMetric`` logs "results of the whole dataset is empty" and returns no AP at all when a
(short) run predicts nothing, so the metrics parser cannot tell "nothing predicted" from "the
evaluator failed". ``DetectionCount`` runs beside the engine's own metric (mmengine evaluators
take a list) and reports ``detections/count``; ``transfer.detection.metrics`` scores a run with
no detections 0 and says so. torch's SyncBatchNorm needs a GPU; ``NaiveSyncBN`` averages the
batch statistics with a plain all-reduce (gloo too), the computation of detectron2's
``NaiveSyncBatchNorm``, and stands in for SyncBN only where several CPU processes train.

Imported through the configs' ``custom_imports`` (with the backbone).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from mmengine.evaluator import BaseMetric
from mmengine.registry import MODELS as ENGINE_MODELS
from mmdet.registry import METRICS
from torch import nn


@METRICS.register_module()
class DetectionCount(BaseMetric):
    """The number of predicted boxes over the test set (``detections/count``, all ranks)."""

    default_prefix = "detections"

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(int(len(sample["pred_instances"]["bboxes"])))

    def compute_metrics(self, results: list) -> dict:
        return {"count": int(sum(results)), "images": len(results)}


class _AllReduce(torch.autograd.Function):
    """Sum over processes, with the gradient summed back the same way."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class NaiveSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics averaged over all processes (equal per-process batches)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        stats = torch.cat([x.mean(dim=[0, 2, 3]), (x * x).mean(dim=[0, 2, 3])])
        mean, meansqr = torch.split(_AllReduce.apply(stats) / dist.get_world_size(), channels)
        var = meansqr - mean * mean
        if self.track_running_stats:
            self.running_mean += self.momentum * (mean.detach() - self.running_mean)
            self.running_var += self.momentum * (var.detach() - self.running_var)
            self.num_batches_tracked += 1
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


# mmcv's build_norm_layer looks names up in mmengine's MODELS (after mmdet's); the class name
# makes mmcv's abbreviation 'bn', so parameter names (bn1, ...) match the export's.
if "NaiveSyncBN" not in ENGINE_MODELS.module_dict:
    ENGINE_MODELS.register_module("NaiveSyncBN", module=NaiveSyncBatchNorm)
