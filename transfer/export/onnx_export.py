"""ONNX format: the static twin at one width as ``model.onnx``, with a dynamic batch axis.

Why this exporter: torch 2.14's default (dynamo) exporter takes ~5 s per width and prints its own
progress; the TorchScript exporter (``dynamo=False``) takes ~0.2 s, gives the same graph for these
convolutional backbones and a symbolic ``batch`` dimension via ``dynamic_axes``. When a torch
without it is installed, the dynamo exporter (``dynamic_shapes``) is used instead; ``meta.json``
records which one ran, the opset and the input size. Outputs are the backbone's stage features
C2..C5 (``c2``..``c5``; one ``features`` output for a backbone without stages), the tensors
verify.py compares with the slimmable network. Height and width are fixed at the export size.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from pretrain.safe_io import atomic_write

FILENAME = "model.onnx"
# opset 17: the newest opset every onnxruntime >= 1.14 and the common mobile runtimes accept;
# nothing in a ResNet/MobileNet backbone needs a newer operator (torch.onnx's own docs list 17
# as the TorchScript exporter's long-supported target).
OPSET = 17
INPUT_NAME = "images"
BATCH_DIM = "batch"


class StageOutputs(nn.Module):
    """The backbone with its stage features as a tuple (what the ONNX graph returns)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        if hasattr(self.backbone, "forward_stages"):
            return tuple(self.backbone.forward_stages(x))
        return (self.backbone(x),)


def output_names(backbone: nn.Module, image_size: int) -> list[str]:
    with torch.no_grad():
        count = len(StageOutputs(backbone).eval()(torch.zeros(1, 3, image_size, image_size)))
    return [f"c{i + 2}" for i in range(count)] if count > 1 else ["features"]


def _export(model: nn.Module, example: torch.Tensor, path: str, names: list[str]) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), path, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=names,
                              dynamic_axes={INPUT_NAME: {0: BATCH_DIM},
                                            **{n: {0: BATCH_DIM} for n in names}})
        return "torchscript"
    except TypeError:  # a torch whose exporter has no dynamo=False: the torch.export path
        torch.onnx.export(model, (example,), path, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=names,
                          dynamic_shapes={"x": {0: torch.export.Dim(BATCH_DIM)}})
        return "dynamo"


def write(path: str | Path, static_backbone: nn.Module, image_size: int) -> tuple[Path, dict]:
    """Export ``static_backbone`` (eval mode, CPU, float32) to ``path`` atomically; returns the
    path and what goes into meta.json under ``onnx``."""
    backbone = static_backbone.eval().cpu().float()
    names = output_names(backbone, image_size)
    # batch 2 while tracing: a batch of 1 lets the tracer treat the axis as a constant
    example = torch.zeros(2, 3, image_size, image_size)
    used = {}

    def save(tmp: str) -> None:
        used["exporter"] = _export(StageOutputs(backbone).eval(), example, tmp, names)

    atomic_write(path, save)
    return Path(path), {"file": Path(path).name, "opset": OPSET, "exporter": used["exporter"],
                        "input": INPUT_NAME, "input_size": [3, image_size, image_size],
                        "dynamic_axes": {INPUT_NAME: {"0": BATCH_DIM}}, "outputs": names,
                        "dtype": "float32"}
