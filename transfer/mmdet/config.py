"""An MMDetection config for one export: the project config + the export's meta.json + the run.

Why here: configs/mmdet/*.py inherit mmdet's own base configs (``mmdet::``) and hold the
protocol (SyncBN everywhere, 4conv-1fc box head, every stage fine-tuned, VOC07 11-point metric
at IoU .50:.95), but no channel numbers and no paths. ``build_config`` fills in the backbone
(``US3LResNet`` reading meta.json), the FPN's in_channels, the pretrained weights, the data root
and work dir, turns SyncBN into BN when not distributed, and can shorten the schedule to N
iterations (``max_iters``) for CPU runs. ``check_backbone_loaded`` proves the weights arrived
(mmengine only warns about keys it could not load).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.hooks import Hook

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


def degrade_sync_bn(cfg: Config, distributed: bool) -> list[str]:
    """SyncBN -> BN everywhere (model and config variables such as ``norm_cfg``) when one process
    trains; returns the paths changed."""
    if distributed:
        return []
    changed = []
    for key in list(cfg.keys()):
        for path, node in _walk(cfg[key], key):
            if node.get("type") in ("SyncBN", "NaiveSyncBN", "MMSyncBN"):
                node["type"] = "BN"
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
    """Every ``Resize`` of the train/val/test pipelines to ``scale`` (w, h), keeping the aspect
    ratio: the knob for small-image runs (detectron2's INPUT.MIN/MAX_SIZE_*). Returns the count."""
    count = 0
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        for _, node in _walk(cfg.get(loader), loader):
            if node.get("type") == "Resize":
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
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters + 1)
    warmup = max(1, min(100, max_iters // 4))
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=warmup),
        dict(type="MultiStepLR", by_epoch=False, begin=0, end=max_iters,
             milestones=[max(warmup + 1, max_iters * 3 // 4)], gamma=0.1)]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=max_iters)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=max(1, min(50, max_iters // 10)))
    cfg.log_processor = dict(type="LogProcessor", window_size=10, by_epoch=False)


def build_config(config_file: str | Path, export_dir: str | Path, task: str,
                 data_root: str | Path, work_dir: str | Path, distributed: bool = False,
                 max_iters: int | None = None, cfg_options: dict | None = None,
                 img_scale: tuple[int, int] | None = None) -> tuple[Config, dict, list[str]]:
    """(config, export meta, paths whose SyncBN became BN)."""
    export_dir = Path(export_dir).resolve()
    meta = read_meta(export_dir)
    plan = detector_plan(meta)
    cfg = Config.fromfile(str(config_file))
    want = cfg.get("us3l_arch")
    if want is not None and want != plan["arch"]:
        raise ConfigError(f"{config_file} is a {want} config but the export is {plan['arch']}; "
                          f"pass the {plan['arch']} config")
    backbone = cfg.model.backbone
    if backbone.get("type") != "US3LResNet":
        raise ConfigError(f"{config_file}: model.backbone.type must be 'US3LResNet' (got "
                          f"{backbone.get('type')!r})")
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
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(loader) and cfg[loader].get("num_workers", 0) == 0:
            cfg[loader]["persistent_workers"] = False  # torch refuses it without workers
    changed = degrade_sync_bn(cfg, distributed)
    return cfg, meta, changed


def check_backbone_loaded(model: torch.nn.Module, weights: str | Path) -> int:
    """Every backbone tensor of ``model`` equals the export's; returns the number checked."""
    exported = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
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
