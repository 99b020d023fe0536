"""Where the probed backbone at width r comes from: a pretraining checkpoint or the converter's export.

``CheckpointSource``: the slimmable backbone of a US3L checkpoint, recalibrated at r and turned into
the plain network at r by the converter's own code (``transfer.export.bn_calibration.recalibrate_bn``
on ``transfer.export.calib_data``'s loader, then ``backbone_twin``), with the converter's defaults:
calibration on the checkpoint's pretraining data unless ``calib_data`` says otherwise. So
``--ckpt`` probes the same network that ``tools/convert_width.py`` would export.
``ExportSource``: ``DIR/w0.50/{torchvision.pth,meta.json}``, built with ``build_backbone`` at the
meta's width and loaded strictly. Either way the probe gets a plain eval-mode network returning
pooled features.

Nothing read runs code or is half-written: only published width folders are read (a killed
converter's hidden ``.w0.50.<pid>.*.tmp/`` is ignored), meta.json is checked field by field, and
``check(width)`` loads each export with ``weights_only=True``, refuses NaN/Inf weights and loads
it strictly, all before the probe writes anything.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch
import torch.nn as nn

from pretrain import checkpoint as ckpt_lib
from pretrain import safe_io, slim
from pretrain.models import backbone_twin, build_backbone

DEFAULT_WIDTHS = (1.0, 0.75, 0.5, 0.25)  # --ckpt without --widths: these, within the trained range
from transfer.export import bn_calibration, calib_data, macs
from transfer.export import meta as meta_mod


class SourceError(ValueError):
    """An unusable --ckpt/--export argument (one line for the user)."""


class CheckpointSource:
    """A US3L pretraining checkpoint; any width in its trained range."""

    kind = "ckpt"

    def __init__(self, path: str | os.PathLike, calib: str | None = None,
                 calib_batches: int = bn_calibration.DEFAULT_BATCHES,
                 calib_batch_size: int = bn_calibration.DEFAULT_BATCH_SIZE,
                 calib_size: int | None = None,
                 verify_md5: bool = True, workers: int = 0):
        self.path = Path(path)
        self.ckpt = ckpt_lib.load_checkpoint(self.path)  # CheckpointError names the problem
        self.sha = ckpt_lib.file_sha256(self.path)
        self.model_cfg = ckpt_lib.model_config(self.ckpt)
        self.slimmable = ckpt_lib.load_backbone(self.ckpt)
        stem = self.model_cfg.get("stem", "imagenet")
        data_cfg = self.ckpt["config"].get("data")
        data_cfg = data_cfg if isinstance(data_cfg, dict) else {}
        if calib_batches < 1 or calib_batch_size < 2:
            raise SourceError("--calib-batches must be >= 1 and --calib-batch-size >= 2 (batch "
                              "statistics need at least two images)")
        # The converter's rules (transfer/export/convert.py: prepare), so --ckpt == --export.
        self.spec = (calib_data.parse_spec(calib) if calib
                     else calib_data.spec_from_config(self.ckpt["config"]))
        self.calib_size = calib_size or (224 if stem == "imagenet"
                                         else int(data_cfg.get("image_size", 32)))
        self.calib_batches, self.calib_batch_size = calib_batches, calib_batch_size
        self.loader = calib_data.calibration_loader(
            self.spec, self.calib_size, calib_batch_size, calib_batches, stem=stem,
            augment=data_cfg.get("augment"), workers=workers, verify_md5=verify_md5 and bool(data_cfg.get("verify_md5", True)))

    def widths(self) -> list[float] | None:
        """The default widths that lie in the checkpoint's trained range (an imported fixed-width
        checkpoint has [1, 1]: it is probed at 1.0 only); None = the caller's defaults."""
        low, high = ckpt_lib.width_range(self.ckpt)
        inside = [w for w in DEFAULT_WIDTHS if low - 1e-9 <= w <= high + 1e-9]
        return inside or [high]

    def check(self, width: float) -> None:
        """Everything about ``width`` that can be checked before the probe writes anything."""
        self.check_width(width)

    def check_width(self, width: float) -> float:
        low, high = ckpt_lib.width_range(self.ckpt)
        try:
            return slim.check_width(width, low, high)
        except ValueError as err:
            raise SourceError(str(err)) from None

    def tag(self, width: float) -> dict:
        """What identifies this backbone's features (the cache key's backbone part)."""
        return {"sha": self.sha, "width": float(width),
                "calibration": {"data": str(self.spec), "batches": self.calib_batches,
                                "batch_size": self.calib_batch_size,
                                "image_size": self.calib_size}}

    def model(self, width: float, device: torch.device | str = "cpu") -> nn.Module:
        """The plain network at ``width``, BN statistics recalibrated at ``width``."""
        width = self.check_width(width)
        bn_calibration.recalibrate_bn(self.slimmable, width, self.loader, self.calib_batches,
                                      device=device)
        static = backbone_twin(self.slimmable.cpu(), self.model_cfg, width)
        return static.eval().to(device)

    def costs(self, width: float, image_size: int) -> dict:
        static = build_backbone(self.model_cfg, width=self.check_width(width))
        return {"params": macs.count_params(static), "macs": macs.count_macs(static, image_size),
                "macs_from": f"torch.utils.flop_counter at {image_size}px"}

    def describe(self) -> dict:
        return {"kind": "ckpt", "path": str(self.path), "sha256": self.sha,
                "model": self.model_cfg, "calibration": self.tag(1.0)["calibration"]}


def _model_cfg(meta: dict) -> dict:
    if isinstance(meta.get("model"), dict):
        return dict(meta["model"])
    return {"arch": meta["arch"], "stem": meta.get("stem", "imagenet")}


_WIDTH_FOLDER = re.compile(r"^w\d")


def _checked_meta(meta_path: Path) -> tuple[float, dict]:
    """(width, meta) of one export's meta.json, every field the probe uses checked."""
    from pretrain.models import known_archs
    try:
        meta = meta_mod.read_meta(meta_path)
    except meta_mod.MetaError as err:
        raise SourceError(str(err)) from None
    width = meta.get("width")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or \
            not math.isfinite(width) or not slim.MIN_WIDTH <= width <= slim.MAX_WIDTH:
        raise SourceError(f"{meta_path} has width {width!r}, not a number in [{slim.MIN_WIDTH}, "
                          f"{slim.MAX_WIDTH}]; re-run tools/convert_width.py")
    model = meta.get("model") if isinstance(meta.get("model"), dict) else meta
    if model.get("arch") not in known_archs():
        raise SourceError(f"{meta_path} names architecture {model.get('arch')!r}, not one of "
                          f"{', '.join(known_archs())}; re-run tools/convert_width.py")
    for key in ("params", "params_fc1000", "macs", "macs_224", "macs_32"):
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise SourceError(f"{meta_path} has {key} {value!r}, not a count; re-run "
                              f"tools/convert_width.py")
    files = meta.get("files", {})
    name = files.get("torchvision", "torchvision.pth") if isinstance(files, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name or \
            safe_io.is_partial(name):
        raise SourceError(f"{meta_path} has a malformed 'files' entry ({files!r}); re-run "
                          f"tools/convert_width.py")
    return float(width), meta


class ExportSource:
    """tools/convert_width.py's output folder: one sub-folder per width (torchvision.pth + meta.json)."""

    kind = "export"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"export folder {self.path} does not exist; pass the --out folder "
                              f"of tools/convert_width.py (DIR/w0.50/{{torchvision.pth,meta.json}})")
        self.by_width: dict[float, tuple[Path, dict]] = {}
        # published folders only: a killed converter's .w0.50.*.tmp/ is never read
        for folder in safe_io.published(sorted(p for p in self.path.iterdir() if p.is_dir())):
            meta_path = folder / meta_mod.META_NAME
            if not meta_path.is_file():
                if _WIDTH_FOLDER.match(folder.name) or (folder / "torchvision.pth").exists():
                    raise SourceError(f"{folder} has no {meta_mod.META_NAME}; re-run "
                                      f"tools/convert_width.py for that width or remove the "
                                      f"folder")
                continue  # not an export folder (plots, notes)
            width, meta = _checked_meta(meta_path)
            if width in self.by_width:
                raise SourceError(f"{folder} and {self.by_width[width][0]} both hold width "
                                  f"{width:g}; keep one")
            self.by_width[width] = (folder, meta)
        if not self.by_width:
            raise SourceError(f"no exported width under {self.path}; expected DIR/w0.50/"
                              f"{{torchvision.pth,meta.json}} written by tools/convert_width.py")

    def widths(self) -> list[float]:
        return sorted(self.by_width, reverse=True)

    def check_width(self, width: float) -> float:
        for w in self.by_width:
            if abs(w - width) < 1e-9:
                return w
        raise SourceError(f"width {width:g} was not exported under {self.path} (it has "
                          f"{', '.join(f'{w:g}' for w in self.widths())}); export it with "
                          f"tools/convert_width.py or drop it from --widths")

    def _weights(self, width: float) -> Path:
        folder, meta = self.by_width[self.check_width(width)]
        path = folder / (meta.get("files") or {}).get("torchvision", "torchvision.pth")
        if not path.is_file():
            raise SourceError(f"{path} is missing; re-run tools/convert_width.py with "
                              f"--formats torchvision for width {width:g}")
        return path

    def tag(self, width: float) -> dict:
        return {"sha": ckpt_lib.file_sha256(self._weights(width)), "width": float(width)}

    def check(self, width: float) -> None:
        """Load ``width``'s export as ``model`` will (weights only, finite, strict): a file that
        fails is refused before the probe writes anything."""
        self.model(width)

    def model(self, width: float, device: torch.device | str = "cpu") -> nn.Module:
        path = self._weights(width)
        _, meta = self.by_width[self.check_width(width)]
        cfg = _model_cfg(meta)
        try:
            model = build_backbone(cfg, width=float(meta["width"]))
        except (ValueError, TypeError) as err:
            raise SourceError(f"{path.parent / meta_mod.META_NAME} describes an unusable model "
                              f"({' '.join(str(err).split())[:160]}); re-run "
                              f"tools/convert_width.py") from None
        try:
            state = safe_io.load_torch(path, "torchvision export")
            if not isinstance(state, dict):
                raise SourceError(f"torchvision export {path} is not a state dict; re-run "
                                  f"tools/convert_width.py")
            safe_io.check_finite(state, f"torchvision export {path}")
            model.load_state_dict(state, strict=True)
        except safe_io.UnsafeFileError as err:
            raise SourceError(str(err)) from None
        except SourceError:
            raise
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SourceError(f"{path} does not load into {cfg.get('arch')} at "
                              f"width {meta['width']:g} ({first[:160]})") from None
        return model.eval().to(device)

    def costs(self, width: float, image_size: int) -> dict:
        """The converter's counts from meta.json (MACs at this image size if it has them)."""
        _, meta = self.by_width[self.check_width(width)]
        params = meta.get("params")
        mac = meta.get(f"macs_{image_size}", meta.get("macs"))
        if params is not None and mac is not None:
            return {"params": params, "macs": mac, "macs_from": "converter meta.json"}
        static = build_backbone(_model_cfg(meta), width=float(meta["width"]))
        return {"params": params if params is not None else macs.count_params(static),
                "macs": macs.count_macs(static, image_size),
                "macs_from": f"torch.utils.flop_counter at {image_size}px"}

    def describe(self) -> dict:
        first = next(iter(self.by_width.values()))[1]
        return {"kind": "export", "path": str(self.path), "model": _model_cfg(first),
                "widths": self.widths()}
