"""Parameters and MACs of a backbone at a width, counted by ``torch.utils.flop_counter``.

What is counted: MACs = FLOPs / 2 of the ops torch's FlopCounterMode knows -- convolutions and
matrix products (conv, mm/addmm/bmm, attention). BatchNorm, ReLU, pooling and residual additions
are not counted (they are a fraction of a percent for ResNets). Params: every parameter of the
backbone (conv weights, BN affine); no classifier, projector or heads; BN running statistics are
buffers, not parameters. Both are measured on the static twin at the width (batch 1).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

COUNTED = ("MACs = FLOPs/2 from torch.utils.flop_counter.FlopCounterMode (convolutions and matrix "
           "products; BN, ReLU, pooling and additions not counted), batch 1; params = all backbone "
           "parameters incl. BN affine, no fc/projector/heads")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int, in_channels: int = 3) -> int | None:
    """MACs of one forward pass on a ``image_size`` square image (None if the model rejects it).

    Counted on a copy on the ``meta`` device (shapes only, no arithmetic); its BatchNorms are
    swapped for identities first, which the counter does not count anyway and which are slow to
    trace on meta tensors.
    """
    return _count(_meta_copy(model), image_size, in_channels)


def static_macs(model_cfg: dict, width: float, image_sizes=(224, 32)) -> dict[int, int | None]:
    """MACs of the static network at ``width`` for each image size, built directly on ``meta``."""
    from pretrain.models import build_backbone
    with torch.device("meta"):
        model = build_backbone(model_cfg, width=width)
    model = _strip_bn(model)
    return {size: _count(model, size) for size in image_sizes}


def _strip_bn(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.Identity())
        else:
            _strip_bn(child)
    return model


def _meta_copy(model: nn.Module) -> nn.Module:
    return _strip_bn(copy.deepcopy(model).to("meta"))


def _count(meta_model: nn.Module, image_size: int, in_channels: int = 3) -> int | None:
    meta_model.eval()
    x = torch.zeros(1, in_channels, image_size, image_size, device="meta")
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            meta_model(x)
    except (RuntimeError, ValueError, AssertionError, NotImplementedError):
        return None
    return counter.get_total_flops() // 2


def classifier_params(feature_dim: int, classes: int = 1000) -> int:
    """Parameters of the linear classifier the paper's Table 6 counts on top of the backbone."""
    with torch.device("meta"):
        return count_params(nn.Linear(feature_dim, classes))


def human(n: int | None, unit: str) -> str:
    if n is None:
        return "-"
    scale = {"M": 1e6, "G": 1e9}[unit]
    return f"{n / scale:.2f}{unit}"


def width_label(width: float) -> str:
    """0.5 -> '0.5', 1 -> '1.0' (the paper's spelling)."""
    text = f"{width:g}"
    return text if "." in text else text + ".0"


def table6_rows(archs=("resnet50", "resnet18"), widths=(1.0, 0.75, 0.5, 0.25),
                stem: str = "imagenet") -> list[dict]:
    """Params/MACs of the static networks (they depend on the architecture and width only)."""
    from pretrain.models import build_backbone
    from pretrain.models.resnet import channel_plan
    rows = []
    for arch in archs:
        for width in widths:
            cfg = {"arch": arch, "stem": stem}
            with torch.device("meta"):
                params = count_params(build_backbone(cfg, width=width))
            counted = static_macs(cfg, width)
            rows.append({"arch": arch, "width": width, "params": params,
                         "params_fc1000": params + classifier_params(channel_plan(arch, width)["out"][-1]),
                         "macs_224": counted[224], "macs_32": counted[32]})
    return rows


def table6_markdown(rows: list[dict]) -> str:
    """rows: {"arch", "width", "params", "params_fc1000", "macs_224", "macs_32"} -> the paper's
    Table 6 columns. The paper's Params include a 1000-way classifier (its 1.0x R-50 "22.56M"
    reads as a typo for 25.56M); "Params + fc1000" is the comparable column."""
    nets = {"resnet50": "R-50", "resnet18": "R-18"}
    lines = ["| Net | Width | Params (backbone) | Params + fc1000 | MACs (224 px) | MACs (32 px) |",
             "|---|---|---|---|---|---|"]
    last = None
    order = list(dict.fromkeys(r["arch"] for r in rows))  # architectures in the given order
    for row in sorted(rows, key=lambda r: (order.index(r["arch"]), -r["width"])):
        net = nets.get(row["arch"], row["arch"])
        lines.append(f"| {net if net != last else ''} | {width_label(row['width'])}x | "
                     f"{human(row['params'], 'M')} | {human(row.get('params_fc1000'), 'M')} | "
                     f"{human(row['macs_224'], 'G')} | "
                     f"{human(row['macs_32'], 'M')} |")
        last = net
    lines.append("")
    lines.append(f"Counted: {COUNTED}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m transfer.export.macs: the Table 6 columns for
    print(table6_markdown(table6_rows()), end="")
