"""A detectron2 config for one export: the project yaml + the export's meta.json + the run.

Why here: the yaml files under configs/detectron2 hold the protocol (RGB input, torchvision
normalisation, every stage fine-tuned, SyncBN, 4conv-1fc box head, schedules) but no channel
numbers and no paths; ``build_cfg`` adds the export (backbone channels via MODEL.US3L.META, the
weights, a check that the config's depth matches the export's arch), the command-line options,
the device, and on ONE process turns SyncBN into plain BN (nothing to synchronise with).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

import transfer.detectron2.compat  # noqa: F401  (before detectron2)
from detectron2.config import CfgNode, get_cfg

from transfer.detectron2.backbone import add_us3l_config, apply_us3l_backbone
from transfer.export.meta import detector_plan, read_meta

NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
             "MODEL.ROI_MASK_HEAD.NORM")
SYNC_NORMS = ("SyncBN", "NaiveSyncBN")
DEPTH_OF = {"resnet18": 18, "resnet50": 50}
WEIGHTS_FILE = "detectron2.pkl"


class ConfigError(ValueError):
    """A config that does not fit the export or the run (one line)."""


def _get(cfg: CfgNode, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _set(cfg: CfgNode, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def degrade_sync_bn(cfg: CfgNode, world_size: int) -> list[str]:
    """SyncBN -> BN in backbone, FPN and heads when one process trains; returns the keys changed."""
    if world_size > 1:
        return []
    changed = []
    for key in NORM_KEYS:
        if _get(cfg, key) in SYNC_NORMS:
            _set(cfg, key, "BN")
            changed.append(key)
    return changed


def build_cfg(config_file: str | Path, export_dir: str | Path, opts: list[str] | None = None,
              world_size: int = 1, output_dir: str | Path | None = None,
              device: str | None = None) -> tuple[CfgNode, dict, list[str]]:
    """(frozen cfg, export meta, keys whose SyncBN became BN)."""
    export_dir = Path(export_dir)
    meta = read_meta(export_dir)
    cfg = get_cfg()
    add_us3l_config(cfg)
    try:
        cfg.merge_from_file(str(config_file))
    except (KeyError, ValueError, AssertionError, OSError) as err:
        raise ConfigError(f"{config_file} is not a detectron2 config for this project "
                          f"({str(err).splitlines()[0][:160]})") from None
    arch = detector_plan(meta)["arch"]
    if cfg.MODEL.RESNETS.DEPTH != DEPTH_OF.get(arch):
        raise ConfigError(f"{config_file} is an R-{cfg.MODEL.RESNETS.DEPTH} config but the export "
                          f"is {arch}; pass the R-{DEPTH_OF.get(arch)} config")
    apply_us3l_backbone(cfg, export_dir / "meta.json", weights=export_dir / WEIGHTS_FILE,
                        norm=cfg.MODEL.RESNETS.NORM, fpn=True)
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"detectron2 options come in KEY VALUE pairs; got {opts}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError, ValueError) as err:
            raise ConfigError(f"bad detectron2 option in {opts}: {err}") from None
    changed = degrade_sync_bn(cfg, world_size)
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if output_dir is not None:
        cfg.OUTPUT_DIR = str(output_dir)
    cfg.freeze()
    return cfg, meta, changed


def check_backbone_loaded(model: torch.nn.Module, weights: str | Path) -> int:
    """Every backbone tensor of ``model`` equals the export's (detectron2 only WARNS on a shape
    mismatch and skips the layer, so "it loaded" proves nothing). Returns the number checked.

    ``weights`` is the detectron2.pkl the project's converter wrote (a pickle by detectron2's
    design; never point this at a file from elsewhere)."""
    with open(weights, "rb") as fh:
        exported = pickle.load(fh)["model"]
    model = getattr(model, "module", model)
    bottom_up = model.backbone.bottom_up if hasattr(model.backbone, "bottom_up") else model.backbone
    state = {k: v for k, v in bottom_up.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(state) - set(exported))
    extra = sorted(set(exported) - set(state))
    if missing or extra:
        raise ConfigError(f"backbone keys differ from {weights}: {len(missing)} missing "
                          f"(e.g. {missing[:2]}), {len(extra)} unused (e.g. {extra[:2]})")
    differ = [k for k, v in state.items()
              if tuple(v.shape) != tuple(exported[k].shape)
              or not torch.equal(v.detach().cpu(), torch.as_tensor(exported[k]).to(v.dtype))]
    if differ:
        raise ConfigError(f"{len(differ)} backbone tensors were not loaded from {weights} "
                          f"(e.g. {differ[:3]}): shapes or values differ")
    return len(state)
