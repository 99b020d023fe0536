"""Method presets and the resolution of the ``method`` config section into explicit switches.

Every method is the one ``US3L`` loss machinery (methods/us3l.py) with different switches; the
named presets live in their own small modules. A switch left null comes from ``table7_case`` when
that is set, else from the preset of ``name``; a switch given explicitly always wins.
"""
from __future__ import annotations

from pretrain.methods import byol, moco, seed, simclr, simsiam, snet
from pretrain.methods.us3l import PRESET as US3L_PRESET
from pretrain.methods.us3l import SWITCHES, US3L, OnlineNetwork, table7_case  # noqa: F401

# The class that trains each method name (a method that needs more than US3L's switches, such as
# a frozen teacher, declares its own class in its own file and registers it here). Names not
# listed train with US3L.
CLASSES: dict[str, type] = {}
CLASSES.update(seed=seed.SEED, seed_mse=seed.SEED)  # frozen-teacher distillation (Table 2)


def build_method(backbone, cfg: dict):
    """The training module for ``cfg["method"]["name"]`` over ``backbone``."""
    return CLASSES.get(cfg["method"].get("name"), US3L)(backbone, cfg)

PRESETS = {
    "us3l": US3L_PRESET,
    "simclr": simclr.PRESET,
    "simsiam": simsiam.PRESET,
    "byol": byol.PRESET,
    "mocov2": moco.PRESET_V2,
    "mocov3": moco.PRESET_V3,
    "seed": seed.PRESET_SEED,
    "seed_mse": seed.PRESET_SEED_MSE,
    "custom": {},
    "snet": snet.PRESET,  # S-Net (Table 1): SimSiam switches, fixed width list, switchable BN
}
_CHOICES = {"base_loss": ("mse", "infonce"), "distill_loss": ("none", "mse", "infonce")}

# method.gather_negatives when left null: do the InfoNCE-type losses take their negatives/targets
# from every process? What each method's reference code does:
# - us3l, simclr and every Table 7 case: no. The official US3L CNN code computes InfoNCE on the
#   local batch (megvii-research/US3L-CVPR2023, losses/criterions/InfoNCEv2.py, nt_xentv2, and
#   InfoNCEv2_distill.py / InfoNCEv2MSE_distill.py for the distillation losses). (SimCLR's own TF
#   code gathers across TPU cores; set true to follow it.) Its ViT code does gather: the ViT
#   configs (configs/pretrain/_cifar10_vit.yaml) set true.
# - mocov3: yes. MoCo v3's contrastive_loss gathers the keys with concat_all_gather
#   (facebookresearch/moco-v3 moco/builder.py; the same in US3L's ViT_experiments/moco/builder.py).
# - mocov2: no. MoCo v2's negatives are the queue; the keys are gathered only to be enqueued
#   (facebookresearch/moco moco/builder.py), which methods/us3l.py's enqueue does regardless.
# - simsiam, byol: no negatives (negative cosine); the switch has no effect.
GATHER_NEGATIVES = {"mocov3": True}

# method.infonce_form when left null: the form of InfoNCE against a detached target (the momentum
# base loss, NCE distillation; pretrain/losses.py). US3L and every Table 7 case: Eq. 2's 2B form,
# the official nt_xentv2 over [q; sg(k)] (losses/criterions/InfoNCEv2_distill.py, the criterion
# of configs/*/us_*_simclr_featdistill_*.yaml). MoCo v2 / v3: their own B form (the queue is
# MoCo's negatives; MoCo v3's contrastive_loss in facebookresearch/moco-v3 moco/builder.py).
INFONCE_FORMS = ("simclr2b", "moco")
INFONCE_FORM = {"mocov2": "moco", "mocov3": "moco"}


def resolve_method(m: dict) -> dict:
    """The ``method`` section with every switch filled and checked (raises ConfigError)."""
    from pretrain.config import ConfigError
    m = dict(m)
    if m.get("table7_case") is not None:
        try:
            start = table7_case(int(m["table7_case"]))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"method.table7_case: {err}") from None
    elif m.get("name") in PRESETS:
        start = PRESETS[m["name"]]
    else:
        raise ConfigError(f"method.name={m.get('name')!r} is not one of {sorted(PRESETS)} "
                          f"(or set method.table7_case)")
    for key in SWITCHES:
        if m.get(key) is None:
            if key not in start:
                raise ConfigError(f"method.{key} is not set; give it or use a preset/table7_case")
            m[key] = start[key]
    for key, allowed in _CHOICES.items():
        if m[key] not in allowed:
            raise ConfigError(f"method.{key}={m[key]!r} is not one of {list(allowed)}")
    for key in ("aux_distill_head", "momentum_base", "momentum_sub"):
        if not isinstance(m[key], bool):
            raise ConfigError(f"method.{key} must be true or false, got {m[key]!r}")
    if m["distill_loss"] == "none" and (m["momentum_sub"] or m["aux_distill_head"]):
        raise ConfigError("method.distill_loss=none (sub-networks use the base loss) cannot take "
                          "momentum_sub or aux_distill_head; set them false or pick a distill loss")
    if m.get("gather_negatives") is None:
        m["gather_negatives"] = (GATHER_NEGATIVES.get(m.get("name"), False)
                                 if m.get("table7_case") is None else False)
    if not isinstance(m["gather_negatives"], bool):
        raise ConfigError(f"method.gather_negatives must be true or false, got "
                          f"{m['gather_negatives']!r}")
    if m.get("infonce_form") is None:
        m["infonce_form"] = (INFONCE_FORM.get(m.get("name"), "simclr2b")
                             if m.get("table7_case") is None else "simclr2b")
    if m["infonce_form"] not in INFONCE_FORMS:
        raise ConfigError(f"method.infonce_form={m['infonce_form']!r} is not one of "
                          f"{list(INFONCE_FORMS)}")
    if m["predictor"] == "auto":
        m["predictor"] = m["base_loss"] == "mse"
    if not isinstance(m["predictor"], bool):
        raise ConfigError(f"method.predictor must be auto, true or false, got {m['predictor']!r}")
    if m["momentum_schedule"] not in ("fixed", "cosine"):
        raise ConfigError(f"method.momentum_schedule={m['momentum_schedule']!r} is not fixed|cosine")
    if int(m.get("queue_size") or 0) and not (m["momentum_base"] and m["base_loss"] == "infonce"):
        raise ConfigError("method.queue_size needs base_loss infonce with momentum_base true (MoCo)")
    if int(m.get("queue_size") or 0) and m["infonce_form"] != "moco":
        raise ConfigError("method.queue_size (MoCo v2's negatives) needs method.infonce_form=moco; "
                          "set infonce_form moco or queue_size 0")
    return m
