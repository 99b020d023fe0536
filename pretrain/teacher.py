"""The frozen, separately pretrained teacher of SEED / SEED-MSE (Table 2; pretrain/methods/seed.py).

Why its own module: a teacher is read from a file the user names (any checkpoint of this suite,
or one made by tools/import_checkpoint.py), so every way that file can be wrong must become one
line before anything is built or written, and what was read must be recorded so that a student
checkpoint says which teacher taught it.

* Loading reuses pretrain/checkpoint.py (``load_checkpoint``: weights_only, format, NaN/Inf;
  ``load_backbone``: strict architecture check) and builds the teacher's projector from the
  teacher's own ``heads.projector`` config. The embedding is the projector's output, as in the
  official ``utils/ssl_algorithms/seed.py`` (``encoder_k`` = backbone + its 3-layer fc).
* Width: the teacher runs at ``teacher.width`` (null = the largest width it was trained at; the
  official code sets ``encoder_k`` to width 1.0), which must lie in the checkpoint's width range.
* Frozen: no parameter requires grad, and the module stays in eval mode whatever ``train()`` is
  called with (the engine calls ``method.train()``), so its BN statistics never move in training.
* BN statistics: this suite's slimmable BN keeps no running statistics in training
  (pretrain/slim.py), so before the first step they are calibrated once at the teacher width on
  ``teacher.calibration_batches`` training batches (both views; null = one epoch, as the official
  ``SEED_MSE.calibrate_teacher`` loops over the whole train loader; 0 = keep the checkpoint's own
  statistics, for imported teachers that carry them). Deterministic: a resumed run calibrates
  the same.
* Identity: ``identity()`` = {sha256 of the file, arch, width}; the SEED method writes it into
  the run's resolved ``teacher`` config section, which the student's checkpoint stores.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from pretrain import checkpoint as ckpt_io
from pretrain import heads, slim

SEED_METHODS = ("seed", "seed_mse")


def check_section(cfg: dict) -> None:
    """The relations of the ``teacher`` section to ``method.name`` (ConfigError, one line)."""
    from pretrain.config import ConfigError
    name, path = cfg["method"].get("name"), cfg["teacher"]["checkpoint"]
    if name in SEED_METHODS and path is None:
        raise ConfigError(f"method.name={name} distils from a frozen teacher: set "
                          f"teacher.checkpoint=PATH (a checkpoint of tools/pretrain.py or "
                          f"tools/import_checkpoint.py)")
    if name not in SEED_METHODS and path is not None:
        raise ConfigError(f"teacher.checkpoint is used by method.name seed or seed_mse only "
                          f"(method.name is {name}); remove it or set method.name=seed")


class FrozenTeacher(nn.Module):
    """Backbone + projector at one width; no gradient, eval mode except while calibrating."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, width: float,
                 identity: dict):
        super().__init__()
        self.backbone, self.projector, self.width = backbone, projector, float(width)
        self._identity = dict(identity)
        self._calibrating = False
        self.calibrated = False
        slim.set_width(self.backbone, self.width)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # frozen: eval unless calibrating its BN statistics
        return super().train(mode and self._calibrating)

    def identity(self) -> dict:
        return dict(self._identity)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def calibrate(self, batches, device: torch.device, limit: int | None,
                  progress: bool = True) -> int:
        """BN statistics at the teacher width over ``limit`` batches of (view1, view2, ...)
        (None = all); returns the number of batches used. The module is back in eval mode."""
        used = 0
        if limit == 0:
            self.calibrated = True
            return 0
        if progress:
            print(f"teacher: calibrating BN statistics at width {self.width:g} on "
                  f"{'one epoch' if limit is None else f'{limit} batch(es)'}", flush=True)
        self._calibrating = True
        try:
            with slim.calibrating(self), torch.autocast(device.type, enabled=False):
                for views in batches:
                    if limit is not None and used >= limit:
                        break
                    for x in views[:2]:
                        self(x.to(device, non_blocking=True))
                    used += 1
        finally:
            self._calibrating = False
            self.eval()
        self.calibrated = True
        return used


def _fail(message: str) -> Exception:
    from pretrain.config import ConfigError
    return ConfigError(message)


def load_teacher(path: str | Path, width: float | None = None,
                 expect: dict | None = None) -> FrozenTeacher:
    """The frozen teacher of checkpoint ``path`` at ``width`` (None = its largest width).

    ``expect``: recorded identity keys (``sha256``, ``arch``) the file must match (a resumed
    run). Raises ``CheckpointError`` for an unreadable/corrupt/NaN file and ``ConfigError`` for a
    width it does not have, a missing projector or a mismatched identity; both are one line."""
    path = Path(path)
    ckpt = ckpt_io.load_checkpoint(path, map_location="cpu")
    sha = ckpt_io.file_sha256(path)
    arch = ckpt["config"]["model"].get("arch")
    expect = expect or {}
    for key, found in (("sha256", sha), ("arch", arch)):
        if expect.get(key) is not None and expect[key] != found:
            raise _fail(f"teacher.{key}={expect[key]} is recorded but {path} has {found}: the "
                        f"teacher file changed; pass the original teacher file, or leave "
                        f"teacher.{key} null for a new run")
    low, high = ckpt_io.width_range(ckpt)
    width = high if width is None else float(width)
    if not low <= width <= high:
        raise _fail(f"teacher.width={width:g} is outside the widths teacher {path} was trained "
                    f"at [{low:g}, {high:g}]; pass a teacher.width in that range")
    if "projector" not in ckpt["state"]:
        raise _fail(f"teacher {path} holds no projector: SEED distils the teacher's projector "
                    f"embedding; pass a checkpoint saved with its projector (tools/pretrain.py)")
    backbone = ckpt_io.load_backbone(ckpt)
    from pretrain.config import DEFAULTS
    proj_cfg = {**DEFAULTS["heads"]["projector"],
                **((ckpt["config"].get("heads") or {}).get("projector") or {})}
    try:
        projector = heads.projector(backbone.feature_dim, **proj_cfg)
    except (TypeError, ValueError) as err:
        raise ckpt_io.CheckpointError(f"teacher {path}: its heads.projector config {proj_cfg} "
                                      f"is unusable ({err})") from None
    mismatch = ckpt_io.state_mismatch(projector.state_dict(), ckpt["state"]["projector"])
    if mismatch:
        raise ckpt_io.CheckpointError(f"teacher {path}: the projector weights do not match its "
                                      f"heads.projector config ({mismatch}); the file was "
                                      f"altered or mixed from two runs")
    projector.load_state_dict(ckpt["state"]["projector"], strict=True)
    return FrozenTeacher(backbone, projector, width,
                         {"sha256": sha, "arch": arch, "width": width,
                          "out": int(proj_cfg["out"])})


def calibration_loader(data_cfg: dict, seed: int) -> DataLoader:
    """Training images as two augmented views, in dataset order (deterministic)."""
    from pretrain import data as data_mod
    train, _ = data_mod.build_datasets(data_cfg)
    views = data_mod.TwoViews(train, data_mod.view_pair(data_cfg["augment"],
                                                         data_cfg["image_size"]), seed)
    return DataLoader(views, batch_size=int(data_cfg["batch_size"]), shuffle=False,
                      num_workers=int(data_cfg["num_workers"]), drop_last=False)
