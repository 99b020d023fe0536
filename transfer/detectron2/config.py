"""A detectron2 config for one export: the project yaml + the export's meta.json + the run.

Why here: the yaml files under configs/detectron2 hold the protocol of
``transfer.detection.protocol`` (RGB input, torchvision normalisation, every stage fine-tuned,
SyncBN, 4conv-1fc box head, schedules, scales) but no channel numbers and no paths;
``build_cfg`` adds the export (backbone channels via MODEL.US3L.META, the weights, a check that
the config's depth matches the export's arch), the command-line options, the device; keeps the
total batch (``SOLVER.IMS_PER_BATCH``, global in detectron2) reachable on any number of processes
(``SOLVER.ACCUMULATION_STEPS``), scales the lr linearly when the total changes, and replaces
SyncBN by what stands for it (BN on one process, naiveSyncBN on several CPU processes).
``describe`` reads back what the built config runs, for the console and metrics.json.
"""
from __future__ import annotations

from pathlib import Path

import torch

import transfer.detectron2.compat  # noqa: F401  (before detectron2)
from detectron2.config import CfgNode, get_cfg

from pretrain import safe_io
from pretrain.cli import one_line
from pretrain.device import default_device
from transfer.detection import protocol
from transfer.detectron2.backbone import add_us3l_config, apply_us3l_backbone
from transfer.export.meta import detector_plan, read_meta

NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
             "MODEL.ROI_MASK_HEAD.NORM")
SYNC_NORMS = ("SyncBN", "naiveSyncBN")
# protocol.norm_for's names -> detectron2's get_norm names
D2_NORM = {"BN": "BN", "SyncBN": "SyncBN", "NaiveSyncBN": "naiveSyncBN"}
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


def degrade_sync_bn(cfg: CfgNode, world_size: int, device: str = "cuda") -> list[str]:
    """SyncBN -> what stands for it on this run (``protocol.norm_for``) in backbone, FPN and
    heads; returns the keys changed."""
    target = D2_NORM[protocol.norm_for(world_size, device)]
    changed = []
    for key in NORM_KEYS:
        if _get(cfg, key) in SYNC_NORMS and _get(cfg, key) != target:
            _set(cfg, key, target)
            changed.append(key)
    return changed


def _option(opts: list[str], key: str) -> str | None:
    values = [opts[i + 1] for i in range(0, len(opts) - 1, 2) if opts[i] == key]
    return values[-1] if values else None


# KEY -> (lowest allowed, kind): the values a command line can set that must be in range (a
# schedule of 0 iterations or a NaN lr would run and report garbage instead of failing)
_RANGES = {"SOLVER.MAX_ITER": (1, int), "SOLVER.IMS_PER_BATCH": (1, int),
           "SOLVER.CHECKPOINT_PERIOD": (1, int), "SOLVER.WARMUP_ITERS": (0, int),
           "DATALOADER.NUM_WORKERS": (0, int), "TEST.DETECTIONS_PER_IMAGE": (1, int),
           "SOLVER.BASE_LR": (0.0, float), "SOLVER.MOMENTUM": (0.0, float),
           "SOLVER.WEIGHT_DECAY": (0.0, float), "MODEL.ROI_HEADS.SCORE_THRESH_TEST": (0.0, float)}


def check_values(cfg: CfgNode) -> None:
    """Every range-checked key (``_RANGES``) holds a finite number in range (one line)."""
    import math
    for key, (low, kind) in _RANGES.items():
        value = _get(cfg, key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value) and value >= low and (kind is float or float(value).is_integer())
        if key == "SOLVER.BASE_LR" and ok:
            ok = value > 0
        if key == "MODEL.ROI_HEADS.SCORE_THRESH_TEST" and ok:
            ok = value <= 1
        if not ok:
            want = {"SOLVER.BASE_LR": "a finite number > 0",
                    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": "a number in [0, 1]"}.get(
                        key, f"{'an integer' if kind is int else 'a finite number'} >= {low}")
            raise ConfigError(f"{key} {value!r}: pass {want}")


def build_cfg(config_file: str | Path, export_dir: str | Path, opts: list[str] | None = None,
              world_size: int = 1, output_dir: str | Path | None = None,
              device: str | None = None, total_batch: int | None = None,
              ims_per_gpu: int | None = None) -> tuple[CfgNode, dict, list[str], str]:
    """(frozen cfg, export meta, keys whose SyncBN was replaced, lr note)."""
    export_dir = Path(export_dir)
    meta = read_meta(export_dir)
    cfg = get_cfg()
    add_us3l_config(cfg)
    cfg.SOLVER.ACCUMULATION_STEPS = 1
    import yaml
    try:  # safe YAML only: detectron2's default (allow_unsafe) would construct Python objects
        cfg.merge_from_file(str(config_file), allow_unsafe=False)
    except yaml.constructor.ConstructorError as err:
        raise ConfigError(f"{config_file} holds Python object tags (refused, nothing from it ran: "
                          f"{one_line(getattr(err, 'problem', err), 120)}); a detectron2 config "
                          f"is plain YAML") from None
    except (KeyError, ValueError, AssertionError, OSError, TypeError, yaml.YAMLError) as err:
        raise ConfigError(f"{config_file} is not a detectron2 config for this project "
                          f"({one_line(err, 160)})") from None
    arch = detector_plan(meta)["arch"]
    if cfg.MODEL.RESNETS.DEPTH != DEPTH_OF.get(arch):
        raise ConfigError(f"{config_file} is an R-{cfg.MODEL.RESNETS.DEPTH} config but the export "
                          f"is {arch}; pass the R-{DEPTH_OF.get(arch)} config")
    apply_us3l_backbone(cfg, export_dir / "meta.json", weights=export_dir / WEIGHTS_FILE,
                        norm=cfg.MODEL.RESNETS.NORM, fpn=True)
    opts = list(opts or [])
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"detectron2 options come in KEY VALUE pairs; got {opts}")
        if _option(opts, "SOLVER.ACCUMULATION_STEPS") is not None:
            raise ConfigError("SOLVER.ACCUMULATION_STEPS follows from the total batch; pass "
                              "--ims-per-gpu M to accumulate gradients")
        try:
            cfg.merge_from_list(opts)
        except (KeyError, AssertionError, ValueError, TypeError, SyntaxError) as err:
            raise ConfigError(f"bad detectron2 option in {opts}: {err}") from None
    check_values(cfg)
    asked = _option(opts, "SOLVER.IMS_PER_BATCH")
    if total_batch is not None and asked is not None and \
            int(cfg.SOLVER.IMS_PER_BATCH) != int(total_batch):
        raise ConfigError(f"--total-batch {total_batch} and SOLVER.IMS_PER_BATCH {asked} differ; "
                          f"pass one")
    total = int(total_batch or cfg.SOLVER.IMS_PER_BATCH)
    try:
        batching = protocol.split_batch(total, world_size, ims_per_gpu)
    except protocol.ProtocolError as err:
        raise ConfigError(str(err)) from None
    explicit = _option(opts, "SOLVER.BASE_LR")
    lr, lr_note = protocol.scaled_lr(total, float(cfg.SOLVER.BASE_LR) if explicit is not None
                                     else None)
    cfg.SOLVER.IMS_PER_BATCH = total
    cfg.SOLVER.ACCUMULATION_STEPS = batching.accumulation
    cfg.SOLVER.BASE_LR = lr
    cfg.MODEL.DEVICE = device or default_device().type
    changed = degrade_sync_bn(cfg, world_size, cfg.MODEL.DEVICE)
    if output_dir is not None:
        cfg.OUTPUT_DIR = str(output_dir)
    cfg.freeze()
    return cfg, meta, changed, lr_note


_NORM_NAME = {"naiveSyncBN": "NaiveSyncBN"}


def describe(cfg: CfgNode, world_size: int) -> dict:
    """What this config runs, in the fields of ``protocol.expected`` (read from the config)."""
    accumulation = int(cfg.SOLVER.ACCUMULATION_STEPS)
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    norm = {"backbone": cfg.MODEL.RESNETS.NORM, "fpn": cfg.MODEL.FPN.NORM,
            "box_head": cfg.MODEL.ROI_BOX_HEAD.NORM}
    if cfg.MODEL.MASK_ON:
        norm["mask_head"] = cfg.MODEL.ROI_MASK_HEAD.NORM
    sides = cfg.INPUT.MIN_SIZE_TRAIN
    sides = [int(sides)] if isinstance(sides, int) else [int(s) for s in sides]
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range":
        sides = list(range(sides[0], sides[-1] + 1))
    test_eval = "PascalVOCDetectionEvaluator(VOC07 11-point)" if not cfg.MODEL.MASK_ON and \
        any(name.startswith("voc") for name in cfg.DATASETS.TEST) else \
        "COCOEvaluator(" + "+".join(("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)) + ")"
    return {
        "total_batch": total, "processes": world_size,
        "per_process_batch": total // (world_size * accumulation), "accumulation": accumulation,
        "lr": float(cfg.SOLVER.BASE_LR), "iterations": int(cfg.SOLVER.MAX_ITER),
        "warmup_iters": int(cfg.SOLVER.WARMUP_ITERS),
        "warmup_factor": float(cfg.SOLVER.WARMUP_FACTOR),
        "steps": [int(s) for s in cfg.SOLVER.STEPS],
        "train_short_sides": sides, "train_max_size": int(cfg.INPUT.MAX_SIZE_TRAIN),
        "test_short_side": int(cfg.INPUT.MIN_SIZE_TEST),
        "test_max_size": int(cfg.INPUT.MAX_SIZE_TEST),
        "min_box_size": 0,  # detectron2 filters empty images only (FILTER_EMPTY_ANNOTATIONS)
        "norm": {k: _NORM_NAME.get(v, v) for k, v in norm.items()},
        "evaluator": test_eval,
    }


def check_backbone_loaded(model: torch.nn.Module, weights: str | Path) -> int:
    """Every backbone tensor of ``model`` equals the export's (detectron2 only WARNS on a shape
    mismatch and skips the layer, so "it loaded" proves nothing). Returns the number checked.

    ``weights`` is read with the restricted unpickler (plain data and arrays only)."""
    exported = safe_io.load_pickle(weights, "detectron2 export")["model"]
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
