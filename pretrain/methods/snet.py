"""S-Net: a slimmable network trained on a fixed width list with switchable BatchNorm (Table 1).

The paper's Table 1 baseline ("SimSiam / S-Net [32]" and "S-Net+Distill [31]"; official configs
``configs/cifar/s_resnet18_simsiam_cifar.yaml`` and ``s_resnet18_byol_cifar.yaml`` of
megvii-research/US3L-CVPR2023). It declares three parts and the engine does the rest:

* the loss: US3L's machinery (methods/us3l.py) with SimSiam's switches. Without distillation
  every width trains with the base loss on its own outputs (Table 7 case 1, the preset here; the
  paper: the model collapses); with in-place distillation (``method.distill_loss: mse``, Table 7
  case 2, Yu & Huang's in-place distillation) the sub-widths regress the largest width's detached
  output of the other view with the official ``CosineSimilarity`` criterion.
* the widths: ``sampling.width_list`` (official ``MODEL.OFA.WIDTH_MULT_LIST``, default
  ``[1.0, 0.75, 0.5, 0.25]`` in ``models/OFA/slimmable_ops.py``), every listed width every
  iteration, largest first (pretrain/sampling.py).
* the BatchNorm: switchable, one private BN per listed width (``slim.SwitchableBatchNorm``, built
  by the backbone from ``model.bn_widths``, which is filled here from the list).

Differences from the official trainer, kept on purpose: the official ``workers/ssl.py`` steps the
optimizer once per width; this engine accumulates every width's gradient and steps once per
iteration (Algorithm 1, as every other method here). The BYOL config's feature distillation
(``DISTILL_FEATURE_NAME``) is not part of the paper's Table 1 (SimSiam) and is not built.
"""
from __future__ import annotations

from pretrain import slim
from pretrain.methods.us3l import table7_case

PRESET = table7_case(1)  # SimSiam under S-Net without distillation; distill_loss mse = case 2
DEFAULT_WIDTH_LIST = [1.0, 0.75, 0.5, 0.25]  # official models/OFA/slimmable_ops.py width_mult_list


def resolve_widths(cfg: dict) -> dict:
    """Check ``sampling.width_list`` and derive what follows from it: the trained range (the
    checkpoint's ``width_range``), the kNN monitor's widths, and for ``method.name=snet`` the
    backbone's switchable BN (``model.bn_widths``). Raises ConfigError (one line)."""
    from pretrain.config import ConfigError
    s, model, m = cfg["sampling"], cfg["model"], cfg["monitor"]
    snet = cfg["method"].get("name") == "snet"
    if snet and not s.get("width_list"):
        raise ConfigError(f"method.name=snet trains a fixed width list; set sampling.width_list "
                          f"(e.g. {DEFAULT_WIDTH_LIST})")
    if model.get("bn_widths") is not None and not snet:
        raise ConfigError("model.bn_widths (switchable BN) belongs to method.name=snet; remove it "
                          "or set method.name=snet")
    if not s.get("width_list"):
        return cfg
    if s["fixed_width"] is not None:
        raise ConfigError("sampling.width_list and sampling.fixed_width exclude each other; set "
                          "one of them to null")
    try:
        listed = list(slim.check_width_list(s["width_list"]))
    except ValueError as err:
        raise ConfigError(f"sampling.width_list: {err}") from None
    s["width_list"], s["min_width"], s["max_width"] = listed, listed[-1], listed[0]
    m["knn_widths"] = [w for w in m["knn_widths"] if round(float(w), 6) in listed] or listed[:1]
    if snet:
        if model.get("bn_widths") not in (None, listed):
            raise ConfigError(f"model.bn_widths {model['bn_widths']} differs from "
                              f"sampling.width_list {listed}; drop model.bn_widths (it follows "
                              f"the list)")
        model["bn_widths"] = listed
    return cfg
