"""tools/convert_width.py: one checkpoint -> per-width exports for torchvision, detectron2, mmdet.

For each width r: set r on the slimmable backbone, recalibrate BN exactly at r (bn_calibration),
take the static twin (the slicing rule lives in pretrain/slim.py), write the formats and
meta.json into a temporary folder, load each export back through its engine and compare features
(verify), then rename the folder to DIR/w{r}. Bad input is found before anything is written:
every option is typed at the edge (``pretrain.cli`` checkers: finite numbers, ranges, devices),
the checkpoint, the output path and the calibration data are checked next; one line on stderr,
exit code 2, no folder left behind. A width that fails later (verification, a write error) ends
the run with one line and exit code 1: the widths finished before it stay (each verified, listed
in verification.md/table6.md), the failed one leaves nothing. SIGINT/SIGTERM remove the width
folder being written and exit 130/143 with one line (finished widths stay); a SIGKILL leaves a
hidden ``.w0.50.<pid>.*.tmp/`` that readers ignore and the next run removes.

``--widths-range`` widths whose channel plans coincide (the width rule rounds channels to
multiples of 8, so e.g. a step of 1e-6 gives 750001 widths but a few hundred plans) are
de-duplicated, keeping the lowest width of each plan, with a note; steps below 1e-6 (the
precision widths are kept to) are refused.

An S-Net checkpoint (switchable BN, pretrain/methods/snet.py) exports its listed widths only (by
default all of them; another width is one line naming the list, exit code 2), each with that
width's own trained BN statistics, not recalibrated (meta.json ``calibration.procedure``).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pretrain import cli, slim
from pretrain.device import default_device
from pretrain.checkpoint import (CheckpointError, file_sha256, load_backbone, load_checkpoint,
                                 model_config, width_range)
from pretrain import safe_io
from pretrain.safe_io import atomic_write
from transfer.export import (bn_calibration, calib_data, detectron2_export, macs, meta as meta_mod,
                             mmdet_export, onnx_export, torchvision_export, verify)

FORMATS = ("torchvision", "detectron2", "mmdet", "onnx")
# onnx is opt-in (issue #14): deployment wants it for chosen widths only, and exporting plus
# verifying it adds ~1 s per width, which every converter run and CI test would pay otherwise
DEFAULT_FORMATS = ("torchvision", "detectron2", "mmdet")
NOT_DETECTOR_FORMATS = {"torchvision", "onnx"}
DETECTOR_ARCHS = ("resnet18", "resnet50")
DEFAULT_WIDTHS = (0.25, 0.5, 0.75, 1.0)
EXIT_BAD_INPUT, EXIT_VERIFY_FAILED = cli.EXIT_BAD_INPUT, cli.EXIT_STEP_FAILED
PROG = "convert_width.py"
MIN_STEP = 1e-6  # widths are kept to 6 decimals (folder names, meta.json)


class ConvertError(ValueError):
    """Bad input to the converter (one line for the user; exit code 2)."""


class WidthFailed(RuntimeError):
    """A width failed after others finished (exit code 1). Each width folder is published
    atomically and only after its own verification, so the finished ones stay, and the reports
    are written for exactly those; the failed width leaves nothing behind."""

    def __init__(self, width: float, cause: BaseException, done: list[float]):
        self.width, self.cause, self.done = width, cause, done
        kept = (f"kept {len(done)} finished width(s) ({' '.join(folder_name(w) for w in done)}) "
                f"and their verification.md/table6.md" if done else "nothing was written")
        what = ("verification failed" if isinstance(cause, verify.VerificationError)
                else "could not write")
        one_line = " ".join(str(cause).split())
        super().__init__(f"{what} at {folder_name(width)}: {one_line}; {kept}")


# ------------------------------------------------------------------------------------ arguments
def width_arg(text: str) -> float:
    """A width: a finite number in [slim.MIN_WIDTH, slim.MAX_WIDTH] (argparse ``type=``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"width {text!r} is not a number; pass widths such as "
                                         f"0.25 0.5 1.0") from None
    if not math.isfinite(value) or not slim.MIN_WIDTH <= value <= slim.MAX_WIDTH:
        raise argparse.ArgumentTypeError(f"width {text} is outside [{slim.MIN_WIDTH}, "
                                         f"{slim.MAX_WIDTH}]; pass widths such as 0.25 0.5 1.0")
    return value


@dataclass(frozen=True)
class WidthRange:
    """``--widths-range LOW:HIGH:STEP``, checked: finite, LOW <= HIGH inside the width limits,
    STEP >= ``MIN_STEP``."""
    low: float
    high: float
    step: float
    text: str

    def widths(self) -> list[float]:
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return sorted({round(self.low + i * self.step, 6) for i in range(count)})


def range_arg(text: str) -> WidthRange:
    """argparse ``type=`` for ``--widths-range``."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        low, high, step = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW:HIGH:STEP (e.g. 0.25:1.0:0.05)") \
            from None
    bad = [name for name, v in (("LOW", low), ("HIGH", high), ("STEP", step))
           if not math.isfinite(v)]
    if bad:
        raise argparse.ArgumentTypeError(f"{text!r}: {bad[0]} is not a finite number; pass e.g. "
                                         f"0.25:1.0:0.05")
    for v in (low, high):
        if not slim.MIN_WIDTH <= v <= slim.MAX_WIDTH:
            raise argparse.ArgumentTypeError(f"{text!r}: width {v:g} is outside [{slim.MIN_WIDTH}"
                                             f", {slim.MAX_WIDTH}]; pass e.g. 0.25:1.0:0.05")
    if high < low:
        raise argparse.ArgumentTypeError(f"{text!r}: LOW {low:g} is above HIGH {high:g}; pass "
                                         f"LOW <= HIGH")
    if not step >= MIN_STEP:
        raise argparse.ArgumentTypeError(f"{text!r}: STEP {step:g} is below {MIN_STEP:g} (widths "
                                         f"are kept to 6 decimals); pass a larger STEP such as "
                                         f"0.05")
    return WidthRange(low, high, step, text)


def device_arg(text: str) -> torch.device:
    """cpu, cuda or cuda:N, and only a GPU this machine has (argparse ``type=``)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; pass cpu, cuda or cuda:N") \
            from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device this tool runs on; pass cpu, "
                                         f"cuda or cuda:N")
    problem = cuda_problem(device)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return device


def cuda_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot be used on this machine (None: it can)."""
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return f"{device} was asked for but CUDA is not available on this machine; pass cpu"
    if device.index is not None and device.index >= torch.cuda.device_count():
        return (f"{device} was asked for but this machine has {torch.cuda.device_count()} GPU(s); "
                f"pass cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return None


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog=PROG,
        description="Slice a US3L checkpoint at any width, recalibrate BatchNorm exactly, export "
                    "to torchvision / detectron2 / MMDetection and verify each export by loading "
                    "it. Exit status: 0 done, 1 a width failed after others finished (they stay),"
                    " 2 bad input (nothing written), 130/143 interrupted.")
    p.add_argument("checkpoint", help="the .pth written by tools/pretrain.py")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per width)")
    p.add_argument("--widths", type=width_arg, nargs="+", default=None,
                   help=f"widths to export (default {' '.join(map(str, DEFAULT_WIDTHS))} within "
                        f"the checkpoint's range)")
    p.add_argument("--widths-range", type=range_arg, default=None, metavar="LOW:HIGH:STEP",
                   help="add every width LOW, LOW+STEP, ..., HIGH (e.g. 0.25:1.0:0.05); widths "
                        "with the same channel plan are exported once (the lowest)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=None,
                   help="default: torchvision detectron2 mmdet for an ImageNet-stem ResNet, else "
                        "torchvision; onnx (model.onnx, dynamic batch axis, verified with "
                        "onnxruntime) only when asked")
    p.add_argument("--arch", default=None, help="fail unless the checkpoint is this architecture")
    p.add_argument("--calib-data", default=None,
                   help=f"{calib_data.SPEC_HELP} (default: the checkpoint's pretraining data)")
    p.add_argument("--calib-transform", choices=calib_data.TRANSFORMS,
                   default=calib_data.DEFAULT_TRANSFORM,
                   help="BN calibration images: train = the checkpoint's data.augment training "
                        "augmentations, seeded (default; US3L workers/calibrate.py), eval = "
                        "resize + center crop (the earlier behaviour)")
    p.add_argument("--calib-batches", type=cli.int_at_least(1),
                   default=bn_calibration.DEFAULT_BATCHES,
                   help=f"BN calibration batches ({bn_calibration.DEFAULT_BATCHES}, at least 1; "
                        f"US-Net's bn_cal_batch_num)")
    p.add_argument("--calib-batch-size", type=cli.int_at_least(2),
                   default=bn_calibration.DEFAULT_BATCH_SIZE,
                   help=f"images per batch ({bn_calibration.DEFAULT_BATCH_SIZE}, at least 2: "
                        f"batch statistics; US-Net's and US3L's per-GPU batch)")
    p.add_argument("--calib-size", type=cli.int_at_least(8), default=None,
                   help="image side, at least 8 (default 224 for the ImageNet stem, "
                        "data.image_size for CIFAR)")
    p.add_argument("--no-verify-md5", action="store_true",
                   help="skip torchvision's MD5 check of CIFAR files (re-packed copies, fixtures)")
    p.add_argument("--verify-images", type=cli.int_at_least(1), default=4,
                   help="images compared per engine (4, at least 1)")
    p.add_argument("--no-verify", action="store_true", help="skip loading the exports back")
    p.add_argument("--device", type=device_arg, default=None,
                   help="calibration device: cpu, cuda or cuda:N (default: pretrain/device.py's "
                        "choice, US3L_DEVICE or cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or rename listing")
    return p


def parse_range(text: str) -> list[float]:
    """The widths of ``LOW:HIGH:STEP`` (ConvertError on a bad range)."""
    try:
        return range_arg(text).widths()
    except argparse.ArgumentTypeError as err:
        raise ConvertError(f"--widths-range {err}") from None


def check_output_folder(path: str | os.PathLike, option: str = "--out",
                        error: type[Exception] | None = None) -> Path:
    """``path`` can become a folder we write: it is one, or its first existing ancestor is a
    writable folder. Raises ``error`` (default ``ConvertError``) with one line; creates nothing."""
    error = error or ConvertError
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise error(f"{option} {path} exists and is not a folder; pass a folder path")
        target = path
    else:
        target = path.absolute().parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise error(f"{option} {path}: {target} is a file, not a folder; pass another path")
    if not os.access(target, os.W_OK | os.X_OK):
        raise error(f"{option} {path}: {target} is not writable; pass a folder you can write")
    return path


def channel_key(arch: str | None, slimmable: torch.nn.Module):
    """A function width -> what the static network at that width is made of (its channel plan):
    two widths with equal keys export identical networks. ResNets: ``channel_plan``; other
    backbones: the width rule applied to every full channel count of the slimmable weights."""
    from pretrain.models.resnet import ARCHS, channel_plan
    if arch in ARCHS:
        def key(width: float):
            cp = channel_plan(arch, width)
            return cp["stem"], tuple(cp["inner"]), tuple(cp["out"])
        return key
    sizes = {d for t in slimmable.state_dict().values() for d in t.shape if d >= 8}
    sizes |= {m.out_features // m.out_groups if isinstance(m, torch.nn.Linear)
              else m.out_channels // m.out_groups
              for m in slimmable.modules() if isinstance(m, slim.SlimMixin) and m.out_groups > 1}
    sizes = sorted(sizes)
    return lambda width: tuple(slim.channels_at(c, width) for c in sizes)


def distinct_plans(widths: list[float], key) -> list[float]:
    """The lowest width of each channel plan among sorted ``widths``. The width rule is monotone
    (more width never means fewer channels), so equal plans form runs: each run's end is found
    by bisection, a few thousand evaluations even for 750001 widths."""
    keep, i, n = [], 0, len(widths)
    while i < n:
        k = key(widths[i])
        lo, hi = i, n - 1           # widths[lo] has plan k; find the last index with plan k
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if key(widths[mid]) == k:
                lo = mid
            else:
                hi = mid - 1
        keep.append(widths[i])
        i = lo + 1
    return keep


def folder_name(width: float) -> str:
    return f"w{width:.2f}" if round(width, 2) == width else f"w{width:g}"


# ------------------------------------------------------------------------------------ the plan
@dataclass
class Plan:
    ckpt_path: Path
    sha256: str
    ckpt: dict
    model_cfg: dict
    slimmable: torch.nn.Module
    widths: list[float]
    formats: list[str]
    spec: calib_data.CalibSpec
    image_size: int
    loader: torch.utils.data.DataLoader
    out: Path
    device: torch.device
    args: argparse.Namespace
    notes: list[str] = field(default_factory=list)
    range_notes: list[str] = field(default_factory=list)
    calib_preset: str = "imagenet"  # the data.augment preset of --calib-transform train


def prepare(args: argparse.Namespace) -> Plan:
    """Check every input before anything is written (each failure: ConvertError & co)."""
    out = check_output_folder(args.out)
    device = args.device
    if device is None:
        try:
            device = default_device()
        except ValueError as err:
            raise ConvertError(f"{err} (or pass --device)") from None
        problem = cuda_problem(device)
        if problem:
            raise ConvertError(f"{problem} (set by US3L_DEVICE; or pass --device cpu)")

    ckpt_path = Path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)  # NaN/Inf weights, code, truncation -> CheckpointError
    cfg = model_config(ckpt)
    arch = cfg.get("arch")
    if args.arch is not None and args.arch != arch:
        raise ConvertError(f"checkpoint is {arch!r}, not {args.arch!r} as --arch asks")
    slimmable = load_backbone(ckpt)  # unknown arch / weights of another arch -> CheckpointError

    widths = sorted(set(args.widths or []))
    low, high = width_range(ckpt)
    notes = []
    if args.widths_range:
        ranged = args.widths_range.widths()
        for w in (ranged[0], ranged[-1]):
            if not low - 1e-9 <= w <= high + 1e-9:
                raise ConvertError(f"width {w:g} is outside the checkpoint's trained range "
                                   f"[{low:g}, {high:g}]; pass widths inside it")
        key = channel_key(arch, slimmable)
        distinct = distinct_plans(ranged, key)
        taken = {key(w) for w in widths}
        fresh = [w for w in distinct if key(w) not in taken]
        if len(fresh) < len(ranged):
            also = (f" ({len(distinct) - len(fresh)} of them already given by --widths)"
                    if len(fresh) < len(distinct) else "")
            notes.append(f"note: {args.widths_range.text} gives {len(ranged)} widths but only "
                         f"{len(distinct)} distinct channel plans{also}; exporting "
                         f"{len(fresh)} (the lowest width of each plan)")
        widths = sorted(set(widths) | set(fresh))
    listed = slim.listed_widths(slimmable)  # S-Net: only its listed widths have their own BN
    if not widths:
        widths = list(listed) if listed else [w for w in DEFAULT_WIDTHS if low <= w <= high]
    for w in widths if listed else ():
        if all(abs(w - v) >= 1e-6 for v in listed):
            raise ConvertError(f"width {w:g} is not in the checkpoint's trained width list "
                               f"{sorted(listed)} (S-Net, switchable BN); pass --widths from it")
    for w in widths:
        if not slim.MIN_WIDTH <= w <= slim.MAX_WIDTH:
            raise ConvertError(f"width {w:g} is outside [{slim.MIN_WIDTH}, {slim.MAX_WIDTH}]; pass "
                               f"widths such as 0.25 0.5 1.0")
        if not low - 1e-9 <= w <= high + 1e-9:
            raise ConvertError(f"width {w:g} is outside the checkpoint's trained range "
                               f"[{low:g}, {high:g}]; pass widths inside it")
    if not widths:
        raise ConvertError(f"no default width lies in the checkpoint's trained range "
                           f"[{low:g}, {high:g}]; pass --widths")

    stem = cfg.get("stem", "imagenet")
    detector_ok = arch in DETECTOR_ARCHS and stem == "imagenet"
    formats = list(dict.fromkeys(args.formats or (DEFAULT_FORMATS if detector_ok
                                                  else ("torchvision",))))
    if not detector_ok and set(formats) - NOT_DETECTOR_FORMATS:
        why = (f"a {stem!r}-stem checkpoint (3x3 conv, no max-pool) cannot go to detectors, which "
               f"need the ImageNet stem" if arch in DETECTOR_ARCHS
               else f"detector exports take resnet18/resnet50, not {arch!r}")
        raise ConvertError(f"{why}; pass --formats torchvision")

    config = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
    spec = (calib_data.parse_spec(args.calib_data) if args.calib_data
            else calib_data.spec_from_config(config))
    data_cfg = config.get("data") if isinstance(config.get("data"), dict) else {}
    fixed = cfg.get("image_size") or getattr(slimmable, "image_size", None)
    if args.calib_size is not None and fixed and int(fixed) != args.calib_size:
        raise ConvertError(f"--calib-size {args.calib_size}: this {arch} takes {fixed}x{fixed} "
                           f"images only; drop --calib-size")
    image_size, kind = calib_data.image_size_and_kind(cfg, config, slimmable, args.calib_size)
    verify_md5 = not args.no_verify_md5 and bool(data_cfg.get("verify_md5", True))
    augment = data_cfg.get("augment")
    loader = calib_data.calibration_loader(spec, image_size, args.calib_batch_size,
                                           args.calib_batches, stem=kind, verify_md5=verify_md5,
                                           transform=args.calib_transform, augment=augment)
    return Plan(ckpt_path, file_sha256(ckpt_path), ckpt, cfg, slimmable, widths, formats, spec,
                image_size, loader, out, device, args, range_notes=notes,
                calib_preset=calib_data.augment_preset(spec, kind, augment))


# ------------------------------------------------------------------------------------ one width
def verification_input(plan: Plan) -> torch.Tensor:
    """The first calibration images (--calib-transform, seeded), on CPU: what every engine is
    compared on."""
    images = next(iter(plan.loader))
    images = images[0] if isinstance(images, (list, tuple)) else images
    return images[: plan.args.verify_images].float().cpu()


def convert_width(plan: Plan, width: float, x: torch.Tensor, show_renames: bool) -> dict:
    """Calibrate, export and verify one width; returns its table row. Atomic per folder."""
    from pretrain.models import backbone_twin
    from pretrain.models.resnet import channel_plan

    slimmable, cfg, arch = plan.slimmable, plan.model_cfg, plan.model_cfg.get("arch")
    switchable = slim.listed_widths(slimmable) is not None
    if switchable:  # S-Net: each listed width keeps its own trained BN statistics (no calibration)
        slim.set_width(slimmable, width)
        slimmable.eval()
        used = 0
    else:
        used = bn_calibration.recalibrate_bn(slimmable, width, plan.loader,
                                             plan.args.calib_batches, device=plan.device,
                                             progress=not plan.args.quiet)
    if used == 0 and not plan.notes and not switchable:
        plan.notes.append(f"{arch} has no BatchNorm layers: nothing to recalibrate")
        print(plan.notes[-1])
    slimmable.cpu()
    static = backbone_twin(slimmable, cfg, width).eval()
    state = torchvision_export.torchvision_state_dict(static)
    cplan = channel_plan(arch, width) if arch in DETECTOR_ARCHS else None
    counted = macs.static_macs(cfg, width, (224, 32))
    row = {"width": width, "arch": arch, "channel_plan": cplan,
           "params": macs.count_params(static), "params_fc1000": None,
           "macs_224": counted[224], "macs_32": counted[32], "errors": {}, "keys": {}}
    if cplan is not None:  # the paper's Table 6 counts a 1000-way classifier on top
        row["params_fc1000"] = row["params"] + macs.classifier_params(cplan["out"][-1])

    plan.out.mkdir(parents=True, exist_ok=True)
    final = plan.out / folder_name(width)
    # a killed earlier run's half-written .w0.50.*.tmp/ (and swapped-out old folder): ours to remove
    safe_io.remove_stale(plan.out, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=safe_io.temp_prefix(final.name), suffix=safe_io.TEMP_SUFFIX,
                                dir=plan.out))
    try:
        files = {}
        meta = {
            "arch": arch, "stem": cfg.get("stem", "imagenet" if arch in DETECTOR_ARCHS else None),
            "width": width,
            "channel_plan": cplan, "width_rule": slim.WIDTH_RULE,
            "params": row["params"], "params_fc1000": row["params_fc1000"],
            "macs_224": row["macs_224"], "macs_32": row["macs_32"], "macs_counted": macs.COUNTED,
            "calibration": {"data": str(plan.spec), "batches": used,
                            "batch_size": plan.args.calib_batch_size,
                            "image_size": plan.image_size, "device": str(plan.device),
                            "transform": plan.args.calib_transform,
                            "augment": (plan.calib_preset if plan.args.calib_transform == "train"
                                        else None),
                            "procedure": ("reset; train-mode no_grad forwards, momentum=None "
                                          "cumulative average; " + calib_data.describe(
                                              plan.args.calib_transform, plan.calib_preset)) if used
                            else bn_calibration.SWITCHABLE_PROCEDURE if switchable
                            else "none: the network has no BatchNorm layers"},
            "source": {"checkpoint": str(plan.ckpt_path.resolve()), "sha256": plan.sha256,
                       "width_range": list(width_range(plan.ckpt)),
                       "method": (plan.ckpt["config"].get("method") or {}).get("name"),
                       "iteration": plan.ckpt.get("train_state", {}).get("iteration"),
                       # a checkpoint made by tools/import_checkpoint.py: where it came from
                       "imported_from": plan.ckpt.get("source")},
            "versions": meta_mod.versions(),
            "files": {},
        }
        if "torchvision" in plan.formats:
            files["torchvision"] = torchvision_export.write(tmp / torchvision_export.FILENAME, state)
        if "detectron2" in plan.formats:
            d2_model, renames = detectron2_export.rename_state_dict(state)
            files["detectron2"] = detectron2_export.write(tmp / detectron2_export.FILENAME, d2_model)
            if show_renames:
                print("detectron2 key renaming (the same at every width):")
                print(detectron2_export.format_renames(renames))
        if "mmdet" in plan.formats:
            files["mmdet"] = mmdet_export.write(
                tmp / mmdet_export.FILENAME,
                mmdet_export.mmdet_checkpoint(state, {"arch": arch, "width": width,
                                                      "source_sha256": plan.sha256}))
        if "onnx" in plan.formats:
            files["onnx"], meta["onnx"] = onnx_export.write(tmp / onnx_export.FILENAME, static,
                                                            plan.image_size)
        meta["files"] = {k: p.name for k, p in files.items()}
        meta_path = meta_mod.write_meta(tmp / meta_mod.META_NAME, meta)

        if not plan.args.no_verify:
            refs = verify.reference_features(slimmable, width, x)
            results = []
            if "torchvision" in files:
                results += verify.verify_torchvision(files["torchvision"], cfg, width, x, refs)
            if "detectron2" in files:
                results.append(verify.verify_detectron2(files["detectron2"], meta_path, x, refs))
            if "mmdet" in files:
                results.append(verify.verify_mmdet(files["mmdet"], meta_path, x, refs))
            if "onnx" in files:
                results.append(verify.verify_onnx(files["onnx"], x, refs))
            row["errors"] = {r.engine: r.max_rel_error for r in results}
            row["keys"] = {r.engine: r.keys for r in results}
            meta["verification"] = {"tolerance": verify.TOLERANCE, "images": int(x.shape[0]),
                                    "image_size": int(x.shape[-1]),
                                    "max_rel_error": row["errors"], "keys": row["keys"]}
            if "onnx" in files:
                meta["verification"]["tolerance_onnxruntime"] = verify.ONNX_TOLERANCE
            meta_mod.write_meta(meta_path, meta)
        _publish(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    row["folder"] = str(final)
    return row


def _publish(folder: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; give them the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an older ``final`` is swapped out first, then removed."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{time.time_ns()}{safe_io.TEMP_SUFFIX}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------ reports
ENGINE_COLUMNS = ("torchvision", "torchvision.models.resnet18", "torchvision.models.resnet50",
                  "detectron2", "mmdet", "onnxruntime")


def _fmt_err(row: dict, engine: str) -> str:
    if engine not in row["errors"]:
        return "-"
    return f"{row['errors'][engine]:.1e}"


def verification_table(rows: list[dict]) -> str:
    engines = [e for e in ENGINE_COLUMNS if any(e in r["errors"] for r in rows)]
    head = ["width", "stem", "inner (res2-5)", "out (res2-5)", "params", "MACs@224", "MACs@32"]
    head += [f"max rel err {e}" for e in engines]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cp = r["channel_plan"]
        cells = [macs.width_label(r["width"]), str(cp["stem"]) if cp else "-",
                 " ".join(map(str, cp["inner"])) if cp else "-",
                 " ".join(map(str, cp["out"])) if cp else "-",
                 macs.human(r["params"], "M"), macs.human(r["macs_224"], "G"),
                 macs.human(r["macs_32"], "M")]
        cells += [_fmt_err(r, e) for e in engines]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reports(plan: Plan, rows: list[dict]) -> None:
    verified = not plan.args.no_verify
    text = [f"# Export verification: {plan.ckpt_path.name}", "",
            f"- source sha256: `{plan.sha256}`",
            f"- architecture: {plan.model_cfg.get('arch')} (stem {plan.model_cfg.get('stem', 'imagenet')})",
            f"- BN calibration: {plan.args.calib_batches} x {plan.args.calib_batch_size} images of "
            f"`{plan.spec}` at {plan.image_size} px ("
            f"{calib_data.describe(plan.args.calib_transform, plan.calib_preset)}, momentum=None)",
            f"- formats: {', '.join(plan.formats)}",
            (f"- verification: each export loaded by its engine's own loader with zero missing, "
             f"unexpected or shape-skipped backbone keys; features C2..C5 vs the slimmable "
             f"network at the same width in eval mode, max |a-b|/max|b| <= {verify.TOLERANCE:g}"
             + (f" (onnxruntime: <= {verify.ONNX_TOLERANCE:g}, onnx.checker passing)"
                if "onnx" in plan.formats else "")
             if verified else "- verification: skipped (--no-verify)"),
            f"- {macs.COUNTED}", "", verification_table(rows)]
    reports = {"verification.md": "\n".join(text),
               "table6.md": f"# Params and MACs ({plan.ckpt_path.name})\n\n" + macs.table6_markdown(rows)}
    for name, body in reports.items():
        atomic_write(plan.out / name, lambda tmp, body=body: Path(tmp).write_text(body))
        os.chmod(plan.out / name, 0o644)


def print_row(row: dict) -> None:
    cp = row["channel_plan"]
    chans = (f" stem {cp['stem']} | inner {cp['inner']} | out {cp['out']} |" if cp else "")
    errs = ", ".join(f"{e} {v:.1e}" for e, v in row["errors"].items()) or "not verified"
    print(f"{folder_name(row['width'])}:{chans} params {macs.human(row['params'], 'M')} | "
          f"MACs {macs.human(row['macs_224'], 'G')}@224 {macs.human(row['macs_32'], 'M')}@32 | "
          f"max rel err: {errs}", flush=True)


# ------------------------------------------------------------------------------------ entry point
_STALE = re.compile(r"^\.(w\d+(?:\.\d+)?)\..+" + re.escape(safe_io.TEMP_SUFFIX) + "$")


def remove_stale_widths(out: Path) -> list[Path]:
    """The hidden leftovers of killed converter runs in ``out`` (``.w0.50.<pid>.*.tmp/`` being
    written, ``.w0.50.old-*.tmp/`` being swapped out): only this pattern, never a live run's."""
    if not out.is_dir():
        return []
    names = {m.group(1) for m in map(_STALE.match, (e.name for e in out.iterdir())) if m}
    removed = []
    for name in sorted(names):
        removed += safe_io.remove_stale(out, name)
    return removed


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plan = prepare(args)
    for note in plan.range_notes:
        print(note, flush=True)
    existed = plan.out.exists()
    rows = []
    try:
        x = verification_input(plan)  # reads images: a corrupt file stops here, nothing written
        stale = remove_stale_widths(plan.out)
        if stale and not args.quiet:
            print(f"removed {len(stale)} unfinished folder(s) of killed earlier runs: "
                  f"{' '.join(p.name for p in stale)}")
        bar = None
        if not args.quiet:
            from tqdm import tqdm
            bar = tqdm(plan.widths, desc="widths", unit="width", leave=False, disable=None)
        for i, width in enumerate(bar if bar is not None else plan.widths):
            try:
                row = convert_width(plan, width, x, show_renames=(i == 0 and not args.quiet))
            except (verify.VerificationError, OSError, calib_data.CalibDataError) as err:
                if not rows and isinstance(err, calib_data.CalibDataError):
                    raise  # bad calibration data, found before anything was written
                if not rows and isinstance(err, OSError) and cli.is_write_failure(err):
                    raise (err if isinstance(err, cli.WriteError) else
                           cli.write_error(err.filename or plan.out, err)) from None
                if rows:
                    write_reports(plan, rows)
                raise WidthFailed(width, err, [r["width"] for r in rows]) from err
            rows.append(row)
            print_row(row)
    except KeyboardInterrupt:  # SIGINT, or SIGTERM through cli.run: the width being written is gone
        for width in plan.widths:  # even one whose temp folder was made a moment before the signal
            safe_io.remove_own(plan.out, folder_name(width))
        if rows:
            write_reports(plan, rows)
        raise
    finally:
        if not rows and not existed and plan.out.is_dir() and not any(plan.out.iterdir()):
            plan.out.rmdir()
    write_reports(plan, rows)
    print()
    print(verification_table(rows), end="")
    print(f"wrote {len(rows)} width folder(s), verification.md and table6.md to {plan.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (see pretrain/cli.py). ``__main__`` runs it
    through ``cli.run`` (SIGTERM/SIGINT: one line, exit 143/130)."""
    try:
        return run(argv)
    except SystemExit as err:  # argparse: --help (0) or its one-line error (2), already printed
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 2)
    except (ConvertError, CheckpointError, calib_data.CalibDataError, meta_mod.MetaError,
            safe_io.UnsafeFileError, cli.WriteError) as err:
        print(f"{PROG}: error: {cli.one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except WidthFailed as err:
        print(f"{PROG}: {cli.one_line(err)}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
