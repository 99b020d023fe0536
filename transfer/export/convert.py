"""tools/convert_width.py: one checkpoint -> per-width exports for torchvision, detectron2, mmdet.

For each width r: set r on the slimmable backbone, recalibrate BN exactly at r (bn_calibration),
take the static twin (the slicing rule lives in pretrain/slim.py), write the formats and
meta.json into a temporary folder, load each export back through its engine and compare features
(verify), then rename the folder to DIR/w{r}. Bad input is found before anything is written:
one line on stderr, exit code 2, no folder left behind. A width that fails later (verification,
a write error) ends the run with one line and exit code 1: the widths finished before it stay
(each verified, listed in verification.md/table6.md), the failed one leaves nothing.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pretrain import slim
from pretrain.device import default_device
from pretrain.checkpoint import (CheckpointError, file_sha256, load_backbone, load_checkpoint,
                                 model_config, width_range)
from pretrain import safe_io
from pretrain.safe_io import atomic_write
from transfer.export import (bn_calibration, calib_data, detectron2_export, macs, meta as meta_mod,
                             mmdet_export, torchvision_export, verify)

FORMATS = ("torchvision", "detectron2", "mmdet")
DETECTOR_ARCHS = ("resnet18", "resnet50")
DEFAULT_WIDTHS = (0.25, 0.5, 0.75, 1.0)
EXIT_BAD_INPUT, EXIT_VERIFY_FAILED = 2, 1


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
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert_width.py",
        description="Slice a US3L checkpoint at any width, recalibrate BatchNorm exactly, export "
                    "to torchvision / detectron2 / MMDetection and verify each export by loading it.")
    p.add_argument("checkpoint", help="the .pth written by tools/pretrain.py")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per width)")
    p.add_argument("--widths", type=float, nargs="+", default=None,
                   help=f"widths to export (default {' '.join(map(str, DEFAULT_WIDTHS))} within "
                        f"the checkpoint's range)")
    p.add_argument("--widths-range", default=None, metavar="LOW:HIGH:STEP",
                   help="add every width LOW, LOW+STEP, ..., HIGH (e.g. 0.25:1.0:0.05)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=None,
                   help="default: all three for an ImageNet-stem ResNet, else torchvision")
    p.add_argument("--arch", default=None, help="fail unless the checkpoint is this architecture")
    p.add_argument("--calib-data", default=None,
                   help=f"{calib_data.SPEC_HELP} (default: the checkpoint's pretraining data)")
    p.add_argument("--calib-batches", type=int, default=16, help="BN calibration batches (16)")
    p.add_argument("--calib-batch-size", type=int, default=32, help="images per batch (32)")
    p.add_argument("--calib-size", type=int, default=None,
                   help="image side (default 224 for the ImageNet stem, data.image_size for CIFAR)")
    p.add_argument("--no-verify-md5", action="store_true",
                   help="skip torchvision's MD5 check of CIFAR files (re-packed copies, fixtures)")
    p.add_argument("--verify-images", type=int, default=4, help="images compared per engine (4)")
    p.add_argument("--no-verify", action="store_true", help="skip loading the exports back")
    p.add_argument("--device", default=None, help="calibration device (default cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or rename listing")
    return p


def parse_range(text: str) -> list[float]:
    try:
        low, high, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise ConvertError(f"--widths-range {text!r} is not LOW:HIGH:STEP (e.g. 0.25:1.0:0.05)") \
            from None
    if step <= 0 or high < low:
        raise ConvertError(f"--widths-range {text!r}: need LOW <= HIGH and STEP > 0")
    count = int(math.floor((high - low) / step + 1e-9)) + 1
    return [round(low + i * step, 6) for i in range(count)]


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


def prepare(args: argparse.Namespace) -> Plan:
    """Check every input before anything is written (each failure: ConvertError & co)."""
    ckpt_path = Path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    cfg = model_config(ckpt)
    arch = cfg.get("arch")
    if args.arch is not None and args.arch != arch:
        raise ConvertError(f"checkpoint is {arch!r}, not {args.arch!r} as --arch asks")
    slimmable = load_backbone(ckpt)  # unknown arch / weights of another arch -> CheckpointError

    widths = list(args.widths or [])
    if args.widths_range:
        widths += parse_range(args.widths_range)
    low, high = width_range(ckpt)
    if not widths:
        widths = [w for w in DEFAULT_WIDTHS if low <= w <= high]
    for w in widths:
        if not slim.MIN_WIDTH <= w <= slim.MAX_WIDTH:
            raise ConvertError(f"width {w:g} is outside [{slim.MIN_WIDTH}, {slim.MAX_WIDTH}]; pass "
                               f"widths such as 0.25 0.5 1.0")
        if not low - 1e-9 <= w <= high + 1e-9:
            raise ConvertError(f"width {w:g} is outside the checkpoint's trained range "
                               f"[{low:g}, {high:g}]; pass widths inside it")
    widths = sorted(set(widths))

    stem = cfg.get("stem", "imagenet")
    detector_ok = arch in DETECTOR_ARCHS and stem == "imagenet"
    formats = list(args.formats or (FORMATS if detector_ok else ("torchvision",)))
    if not detector_ok and set(formats) - {"torchvision"}:
        why = (f"a {stem!r}-stem checkpoint (3x3 conv, no max-pool) cannot go to detectors, which "
               f"need the ImageNet stem" if arch in DETECTOR_ARCHS
               else f"detector exports take resnet18/resnet50, not {arch!r}")
        raise ConvertError(f"{why}; pass --formats torchvision")

    spec = (calib_data.parse_spec(args.calib_data) if args.calib_data
            else calib_data.spec_from_config(ckpt["config"]))
    data_cfg = ckpt["config"].get("data") if isinstance(ckpt["config"].get("data"), dict) else {}
    image_size, kind = calib_data.image_size_and_kind(cfg, ckpt["config"], slimmable, args.calib_size)
    if args.calib_batches < 1 or args.calib_batch_size < 2:
        raise ConvertError("--calib-batches must be >= 1 and --calib-batch-size >= 2 (batch "
                           "statistics need at least two images)")
    verify_md5 = not args.no_verify_md5 and bool(data_cfg.get("verify_md5", True))
    loader = calib_data.calibration_loader(spec, image_size, args.calib_batch_size,
                                           args.calib_batches, stem=kind, verify_md5=verify_md5)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConvertError(f"--out {out} exists and is not a folder; pass a folder path")
    device = torch.device(args.device) if args.device else default_device()
    return Plan(ckpt_path, file_sha256(ckpt_path), ckpt, cfg, slimmable, widths, formats, spec,
                image_size, loader, out, device, args)


# ------------------------------------------------------------------------------------ one width
def verification_input(plan: Plan) -> torch.Tensor:
    """The first calibration images (eval transforms), on CPU: what every engine is compared on."""
    images = next(iter(plan.loader))
    images = images[0] if isinstance(images, (list, tuple)) else images
    return images[: plan.args.verify_images].float().cpu()


def convert_width(plan: Plan, width: float, x: torch.Tensor, show_renames: bool) -> dict:
    """Calibrate, export and verify one width; returns its table row. Atomic per folder."""
    from pretrain.models import backbone_twin
    from pretrain.models.resnet import channel_plan

    slimmable, cfg, arch = plan.slimmable, plan.model_cfg, plan.model_cfg.get("arch")
    used = bn_calibration.recalibrate_bn(slimmable, width, plan.loader, plan.args.calib_batches,
                                         device=plan.device, progress=not plan.args.quiet)
    if used == 0 and not plan.notes:
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
                            "procedure": ("reset; train-mode no_grad forwards, momentum=None "
                                          "cumulative average; eval-time transforms") if used
                            else "none: the network has no BatchNorm layers"},
            "source": {"checkpoint": str(plan.ckpt_path.resolve()), "sha256": plan.sha256,
                       "width_range": list(width_range(plan.ckpt)),
                       "method": (plan.ckpt["config"].get("method") or {}).get("name"),
                       "iteration": plan.ckpt.get("train_state", {}).get("iteration")},
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
            row["errors"] = {r.engine: r.max_rel_error for r in results}
            row["keys"] = {r.engine: r.keys for r in results}
            meta["verification"] = {"tolerance": verify.TOLERANCE, "images": int(x.shape[0]),
                                    "image_size": int(x.shape[-1]),
                                    "max_rel_error": row["errors"], "keys": row["keys"]}
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
                  "detectron2", "mmdet")


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
            f"`{plan.spec}` at {plan.image_size} px (eval transforms, momentum=None)",
            f"- formats: {', '.join(plan.formats)}",
            (f"- verification: each export loaded by its engine's own loader with zero missing, "
             f"unexpected or shape-skipped backbone keys; features C2..C5 vs the slimmable "
             f"network at the same width in eval mode, max |a-b|/max|b| <= {verify.TOLERANCE:g}"
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
def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plan = prepare(args)
    existed = plan.out.exists()
    rows = []
    try:
        x = verification_input(plan)
        bar = None
        if not args.quiet:
            from tqdm import tqdm
            bar = tqdm(plan.widths, desc="widths", unit="width", leave=False)
        for i, width in enumerate(bar if bar is not None else plan.widths):
            try:
                row = convert_width(plan, width, x, show_renames=(i == 0 and not args.quiet))
            except (verify.VerificationError, OSError) as err:
                if rows:
                    write_reports(plan, rows)
                raise WidthFailed(width, err, [r["width"] for r in rows]) from err
            rows.append(row)
            print_row(row)
    finally:
        if not rows and not existed and plan.out.is_dir() and not any(plan.out.iterdir()):
            plan.out.rmdir()
    write_reports(plan, rows)
    print()
    print(verification_table(rows), end="")
    print(f"wrote {len(rows)} width folder(s), verification.md and table6.md to {plan.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except (ConvertError, CheckpointError, calib_data.CalibDataError, meta_mod.MetaError) as err:
        print(f"convert_width.py: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except WidthFailed as err:
        print(f"convert_width.py: {err}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
