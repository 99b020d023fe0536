"""An MMDetection config for one export: the project config + the export's meta.json + the run.

Why here: configs/mmdet/*.py inherit mmdet's own base configs (``mmdet::``) and hold the
protocol of ``transfer.detection.protocol`` (schedule, scales, SyncBN everywhere, 4conv-1fc box
head, every stage fine-tuned, the evaluators), but no channel numbers, paths or per-GPU batch.
``build_config`` fills in the backbone (``US3LResNet`` reading meta.json), the FPN's in_channels,
the pretrained weights, the data root and work dir; spreads the total batch over the processes
(per-process batch and gradient accumulation, lr scaled linearly when the total changes); turns
SyncBN into BN on one process (NaiveSyncBN on several CPU processes); and can shorten the
schedule to N iterations (``max_iters``) for CPU runs. ``describe`` reads back what the built
config will run, for the console and metrics.json. ``check_backbone_loaded`` proves the weights
arrived (mmengine only warns about keys it could not load).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from pretrain import safe_io
from pretrain.device import default_device
from transfer.detection import protocol
from transfer.export.meta import detector_plan, read_meta

WEIGHTS_FILE = "mmdet.pth"
PREFIX = "backbone."


class ConfigError(ValueError):
    """A config that does not fit the export or the run (one line)."""


def _walk(node: Any, path: str = ""):
    """Every dict inside ``node`` (lists and dicts, depth first) with its dotted path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


SYNC_NORMS = ("SyncBN", "NaiveSyncBN", "MMSyncBN")


def degrade_sync_bn(cfg: Config, world_size: int, device: str) -> list[str]:
    """SyncBN -> what stands for it on this run (``protocol.norm_for``: BN on one process,
    NaiveSyncBN on several CPU processes) everywhere, model and config variables such as
    ``norm_cfg``; returns the paths changed."""
    target = protocol.norm_for(world_size, device)
    if target == "SyncBN":
        return []
    changed = []
    for key in list(cfg.keys()):
        for path, node in _walk(cfg[key], key):
            if node.get("type") in SYNC_NORMS and node.get("type") != target:
                node["type"] = target
                changed.append(path)
    return changed


def _datasets(cfg: Config):
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader):
            for _, node in _walk(cfg[loader].get("dataset"), loader):
                if "ann_file" in node:
                    yield node


def set_data_root(cfg: Config, task: str, root: str | Path) -> None:
    """Point every dataset (inside Repeat/Concat wrappers too) and the COCO metric at ``root``
    (the same root detectron2 reads: VOC2007/, VOC2012/, coco/)."""
    root = Path(root).resolve()
    sub = root if task == "voc" else root / "coco"
    for node in _datasets(cfg):
        node["data_root"] = str(sub) + "/"
    for name in ("val_evaluator", "test_evaluator"):
        evaluator = cfg.get(name)
        for _, node in _walk(evaluator, name):
            if node.get("type") == "CocoMetric":
                node["ann_file"] = str(sub / "annotations" / "instances_val2017.json")


def set_image_scale(cfg: Config, scale: tuple[int, int]) -> int:
    """Every ``Resize``/``RandomChoiceResize`` of the train/val/test pipelines becomes one
    ``Resize`` to ``scale`` (w, h), keeping the aspect ratio: the knob for small-image runs
    (detectron2's INPUT.MIN/MAX_SIZE_*). Returns the count."""
    count = 0
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        for _, node in _walk(cfg.get(loader), loader):
            if node.get("type") in ("Resize", "RandomChoiceResize"):
                node.pop("scales", None)
                node["type"] = "Resize"
                node["scale"] = tuple(int(v) for v in scale)
                node["keep_ratio"] = True
                count += 1
    if not count:
        raise ConfigError("no Resize step in the pipelines to apply the image scale to")
    return count


def short_schedule(cfg: Config, max_iters: int) -> None:
    """An N-iteration schedule (CPU runs, tests): linear warm-up, one LR step at 3/4, no
    validation during training (the run ends with one test), a checkpoint at the end."""
    if max_iters < 1:
        raise ConfigError(f"--max-iters {max_iters}: pass at least 1")
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters)
    warmup = max(1, min(100, max_iters // 4))
    cfg.param_scheduler = [
        # mmengine's LinearLR reaches the full lr at step end - 1 (detectron2's at WARMUP_ITERS)
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=warmup + 1),
        dict(type="MultiStepLR", by_epoch=False, begin=0, end=max_iters,
             milestones=[max(warmup + 1, max_iters * 3 // 4)], gamma=0.1)]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=max_iters)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=max(1, min(50, max_iters // 10)))
    cfg.log_processor = dict(type="LogProcessor", window_size=10, by_epoch=False)


LR_KEY = "optim_wrapper.optimizer.lr"
PER_GPU_BATCH_KEY = "train_dataloader.batch_size"


def set_batch(cfg: Config, world_size: int, total_batch: int | None = None,
              ims_per_gpu: int | None = None, explicit_lr: float | None = None) -> str:
    """Spread the total batch (``us3l_total_batch`` unless ``total_batch``) over ``world_size``
    processes: per-process ``batch_size`` and ``accumulative_counts``; the lr scales linearly
    unless ``explicit_lr``. Returns the lr note."""
    total = int(total_batch or cfg.get("us3l_total_batch") or protocol.REFERENCE_BATCH)
    try:
        batching = protocol.split_batch(total, world_size, ims_per_gpu)
    except protocol.ProtocolError as err:
        raise ConfigError(str(err)) from None
    lr, note = protocol.scaled_lr(total, explicit_lr)
    cfg.us3l_total_batch = total
    cfg.train_dataloader.batch_size = batching.per_process
    cfg.optim_wrapper.optimizer.lr = lr
    cfg.optim_wrapper.accumulative_counts = batching.accumulation
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=protocol.REFERENCE_BATCH)
    return note


def build_config(config_file: str | Path, export_dir: str | Path, task: str,
                 data_root: str | Path, work_dir: str | Path, world_size: int = 1,
                 device: str | None = None, max_iters: int | None = None,
                 cfg_options: dict | None = None, img_scale: tuple[int, int] | None = None,
                 total_batch: int | None = None, ims_per_gpu: int | None = None
                 ) -> tuple[Config, dict, list[str], str]:
    """(config, export meta, paths whose SyncBN was replaced, lr note)."""
    export_dir = Path(export_dir).resolve()
    meta = read_meta(export_dir)
    plan = detector_plan(meta)
    device = device or default_device().type
    cfg = Config.fromfile(str(config_file))
    want = cfg.get("us3l_arch")
    if want is not None and want != plan["arch"]:
        raise ConfigError(f"{config_file} is a {want} config but the export is {plan['arch']}; "
                          f"pass the {plan['arch']} config")
    backbone = cfg.model.backbone
    if backbone.get("type") != "US3LResNet":
        raise ConfigError(f"{config_file}: model.backbone.type must be 'US3LResNet' (got "
                          f"{backbone.get('type')!r})")
    options = dict(cfg_options or {})
    if PER_GPU_BATCH_KEY in options:
        raise ConfigError(f"--cfg-options {PER_GPU_BATCH_KEY}: the per-GPU batch follows from "
                          f"the total batch; pass --total-batch N (and --ims-per-gpu M to "
                          f"accumulate gradients) instead")
    explicit_lr = options.pop(LR_KEY, None)
    backbone.pop("depth", None)  # the export decides the structure
    backbone["meta"] = str(export_dir / "meta.json")
    backbone["init_cfg"] = dict(type="Pretrained", checkpoint=str(export_dir / WEIGHTS_FILE),
                                prefix=PREFIX)
    cfg.model.neck["in_channels"] = list(plan["out"])
    set_data_root(cfg, task, data_root)
    cfg.work_dir = str(work_dir)
    if max_iters:
        short_schedule(cfg, max_iters)
    if img_scale:
        set_image_scale(cfg, img_scale)
    if options:
        cfg.merge_from_dict(options)
    lr_note = set_batch(cfg, world_size, total_batch, ims_per_gpu, explicit_lr)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader) and cfg[loader].get("num_workers", 0) == 0:
            cfg[loader]["persistent_workers"] = False  # torch refuses it without workers
    if world_size > 1 and device != "cuda":
        # torch's DDP takes no device_ids for a CPU module (mmengine passes LOCAL_RANK).
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None,
                                     broadcast_buffers=False)
        cfg.env_cfg = dict(cfg.get("env_cfg") or {}, dist_cfg=dict(backend="gloo"))
    changed = degrade_sync_bn(cfg, world_size, device)
    return cfg, meta, changed, lr_note


def _first(cfg: Config, loader: str, types: tuple[str, ...]) -> dict | None:
    return next((node for _, node in _walk(cfg.get(loader), loader)
                 if node.get("type") in types), None)


def _short_sides(node: dict | None) -> tuple[list[int], int | None]:
    if node is None:
        return [], None
    scales = node.get("scales") or [node.get("scale")]
    return [int(min(s)) for s in scales], int(max(max(s) for s in scales))


def describe(cfg: Config, world_size: int) -> dict:
    """What this config runs, in the fields of ``protocol.expected`` (read from the config that
    will be built, not from what was asked for)."""
    per_process = int(cfg.train_dataloader.batch_size)
    accumulation = int(cfg.optim_wrapper.get("accumulative_counts", 1))
    loop = cfg.train_cfg
    schedulers = cfg.param_scheduler if isinstance(cfg.param_scheduler, list) else \
        [cfg.param_scheduler]
    warmup = next((s for s in schedulers if s["type"] == "LinearLR"), None)
    steps = next((s for s in schedulers if s["type"] == "MultiStepLR"), None)
    train_sides, train_max = _short_sides(_first(cfg, "train_dataloader",
                                                 ("Resize", "RandomChoiceResize")))
    test_sides, test_max = _short_sides(_first(cfg, "test_dataloader", ("Resize",)))
    datasets = [node for _, node in _walk(cfg.train_dataloader.get("dataset"), "d")
                if "ann_file" in node]
    # VOCDataset ignores boxes under bbox_min_size; filter_cfg.min_size drops small IMAGES
    min_sizes = {int((node.get("filter_cfg") or {}).get("bbox_min_size", 0)) for node in datasets}
    model = cfg.model
    norm = {"backbone": model.backbone.norm_cfg["type"], "fpn": model.neck.norm_cfg["type"],
            "box_head": model.roi_head.bbox_head.norm_cfg["type"]}
    if model.roi_head.get("mask_head"):
        norm["mask_head"] = model.roi_head.mask_head.norm_cfg["type"]
    iterations = loop.get("max_iters") if loop.get("type") == "IterBasedTrainLoop" else None
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else \
        [cfg.test_evaluator]
    return {
        "total_batch": per_process * world_size * accumulation, "processes": world_size,
        "per_process_batch": per_process, "accumulation": accumulation,
        "lr": float(cfg.optim_wrapper.optimizer.lr),
        "iterations": iterations if iterations is not None else f"{loop.get('max_epochs')} epochs",
        "warmup_iters": int(warmup["end"]) - 1 if warmup else 0,  # full lr at step end - 1
        "warmup_factor": float(warmup["start_factor"]) if warmup else 1.0,
        "steps": [int(m) for m in steps["milestones"]] if steps else [],
        "train_short_sides": train_sides, "train_max_size": train_max,
        "test_short_side": test_sides[0] if test_sides else None, "test_max_size": test_max,
        "min_box_size": max(min_sizes) if min_sizes else 0, "norm": norm,
        "evaluator": ", ".join(
            e["type"] + (f"({'+'.join(e['metric'])})" if isinstance(e.get("metric"), list)
                         else f"({e['metric']})" if e.get("metric") else "")
            for e in evaluators),
    }


def check_backbone_loaded(model: torch.nn.Module, weights: str | Path) -> int:
    """Every backbone tensor of ``model`` equals the export's; returns the number checked."""
    exported = safe_io.load_torch(weights, "mmdet export")["state_dict"]
    exported = {k[len(PREFIX):]: v for k, v in exported.items() if k.startswith(PREFIX)}
    model = getattr(model, "module", model)
    state = {k: v for k, v in model.backbone.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    exported = {k: v for k, v in exported.items() if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(set(state) - set(exported)), sorted(set(exported) - set(state))
    if missing or extra:
        raise ConfigError(f"backbone keys differ from {weights}: {len(missing)} missing "
                          f"(e.g. {missing[:2]}), {len(extra)} unused (e.g. {extra[:2]})")
    differ = [k for k, v in state.items()
              if v.shape != exported[k].shape or not torch.equal(v.detach().cpu(), exported[k])]
    if differ:
        raise ConfigError(f"{len(differ)} backbone tensors were not loaded from {weights} "
                          f"(e.g. {differ[:3]})")
    return len(state)


class BackboneLoadedCheck(Hook):
    """Before training (after mmengine initialised the weights): the backbone is the export."""

    priority = "VERY_LOW"

    def __init__(self, weights: str | Path):
        self.weights = str(weights)

    def before_train(self, runner) -> None:
        n = check_backbone_loaded(runner.model, self.weights)
        runner.logger.info(f"backbone: {n} tensors equal to {self.weights}")
