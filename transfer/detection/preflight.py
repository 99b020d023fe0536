"""Checks before a detection run starts, shared by both engines and tools/train_det.sh.

Why here: a wrong export folder or data root should fail once, in one line, before an engine
spawns N workers that each fail deep inside a data loader. Also picks the project config for
(engine, task, arch) so that train_det.sh needs no knowledge of file names.

What is checked, before any engine sees a file (every failure: one ``PreflightError`` line, exit
2, no run folder claimed or written):

* the export folder: a finished width folder of tools/convert_width.py (not a hidden/temporary
  folder a killed converter left, not the converter's ``--out`` folder, a width that was
  exported), its ``meta.json`` (a detector-ready ResNet with a width, a source checkpoint, params
  and MACs), and its engine file: ``detectron2.pkl`` through the restricted unpickler (detectron2
  unpickles with plain ``pickle``: code in it would run), ``mmdet.pth`` with
  ``weights_only=True``; NaN or Inf weights are reported as such;
* the data root's VOC/COCO layout, the GPU count, the batch split;
* the run folder (``--out``): not under a regular file, owned by this engine, task and export
  (``identity.claim``), something to resume for ``--resume``, a checkpoint to evaluate for
  ``--eval-only --resume``.

CLI (used by tools/train_det.sh before torchrun starts N workers): ``python -m
transfer.detection.preflight ENGINE TASK EXPORT --out DIR [--gpus N | --cpu] [--world N]
[--total-batch B] [--ims-per-gpu M] [--resume] [--eval-only]`` checks, records DIR/run.json,
prints DIR and exits 0, or prints one error line and exits 2.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pretrain import cli
from transfer.detection import identity
from transfer.detection.datasets import TASKS, DatasetLayoutError, check_layout

REPO = Path(__file__).resolve().parents[2]
ENGINES = ("detectron2", "mmdet")
EXPORT_FILES = {"detectron2": "detectron2.pkl", "mmdet": "mmdet.pth"}
# the file each engine's checkpointer writes in OUT/ENGINE/ naming its latest checkpoint
LAST_CHECKPOINT = "last_checkpoint"
_ARCH_TAG = {"resnet50": ("R_50", "r50"), "resnet18": ("R_18", "r18")}
_CONFIGS = {
    ("detectron2", "voc"): "configs/detectron2/faster_rcnn_{d2}_FPN_voc0712_us3l.yaml",
    ("detectron2", "coco"): "configs/detectron2/mask_rcnn_{d2}_FPN_1x_coco_us3l.yaml",
    ("mmdet", "voc"): "configs/mmdet/faster-rcnn_{mm}_fpn_voc0712_us3l.py",
    ("mmdet", "coco"): "configs/mmdet/mask-rcnn_{mm}_fpn_1x_coco_us3l.py",
}


class PreflightError(ValueError):
    """Something the run cannot start with (one line)."""


def _published_under(folder: Path, pattern: str) -> list[Path]:
    """``folder.glob(pattern)`` without hidden or temporary entries below ``folder`` (the
    folder's own path may lie anywhere, e.g. under ~/.cache)."""
    from pretrain import safe_io
    if not folder.is_dir():
        return []
    found = sorted(folder.glob(pattern))
    keep = {folder / p for p in safe_io.published(p.relative_to(folder) for p in found)}
    return [p for p in found if p in keep]


def exported_widths(folder: str | Path) -> list[str]:
    """The finished width folders (``w0.50``...) the converter wrote in ``folder``."""
    return [p.parent.name for p in _published_under(Path(folder), "w*/meta.json")]


def check_export_folder(export_dir: str | Path) -> Path:
    """``export_dir`` is a finished width folder of tools/convert_width.py."""
    from pretrain import safe_io
    export_dir = Path(export_dir)
    if not str(export_dir).strip():
        raise PreflightError("the export folder is empty; pass the folder tools/convert_width.py "
                             "wrote for one width (e.g. exports/w0.50)")
    if any(safe_io.is_partial(part) for part in export_dir.parts if part not in (".", "..")):
        raise PreflightError(f"export folder {export_dir} is hidden or temporary (a converter "
                             f"that was killed or still runs writes those; never read): pass a "
                             f"finished width folder such as {export_dir.parent}/w0.50")
    if not export_dir.exists():
        widths = exported_widths(export_dir.parent)
        if widths:
            raise PreflightError(f"export folder {export_dir} does not exist: this width was not "
                                 f"exported ({export_dir.parent} holds {', '.join(widths)}); pass "
                                 f"one of those or run tools/convert_width.py --widths for it")
        raise PreflightError(f"export folder {export_dir} does not exist; pass the folder "
                             f"tools/convert_width.py wrote (e.g. exports/w0.50)")
    if not export_dir.is_dir():
        raise PreflightError(f"export {export_dir} is a file, not a folder; pass the width folder "
                             f"tools/convert_width.py wrote (e.g. exports/w0.50)")
    if not (export_dir / "meta.json").exists():
        widths = exported_widths(export_dir)
        if widths:
            raise PreflightError(f"{export_dir} is the converter's --out folder, not one width: "
                                 f"pass one of {', '.join(str(export_dir / w) for w in widths)}")
        if any(True for _ in export_dir.iterdir()):
            raise PreflightError(f"{export_dir} holds no finished export (no meta.json; only "
                                 f"unfinished or unrelated entries); re-run tools/convert_width.py "
                                 f"for this width")
        raise PreflightError(f"export folder {export_dir} is empty; re-run "
                             f"tools/convert_width.py for this width")
    return export_dir


def check_meta(meta: dict, path: Path) -> None:
    """The fields a run reads from meta.json: a width, the source checkpoint, params and MACs."""
    from transfer.detection import metrics
    width = meta.get("width")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or \
            not math.isfinite(width) or not 0 < width <= 1:
        raise PreflightError(f"{path} has width {width!r}, not a width in (0, 1]; re-run "
                             f"tools/convert_width.py for this width")
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    sha = meta.get("source_sha256") or source.get("sha256")
    if not isinstance(sha, str) or not sha:
        raise PreflightError(f"{path} names no source checkpoint (source.sha256); re-run "
                             f"tools/convert_width.py for this width")
    try:
        metrics.export_identity(meta)
    except metrics.MetricsError as err:
        raise PreflightError(f"{path}: {err}") from None
    for key in ("params", "macs_224"):
        value = meta.get(key)
        if key in meta and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise PreflightError(f"{path} has {key} {value!r}, not a count; re-run "
                                 f"tools/convert_width.py for this width")


def read_export(export_dir: str | Path, engine: str) -> dict:
    """The export's meta.json (checked to describe a detector-ready ResNet) and its engine file."""
    from transfer.export.meta import MetaError, detector_plan, read_meta

    export_dir = check_export_folder(export_dir)
    try:
        meta = read_meta(export_dir)
        detector_plan(meta)
    except MetaError as err:
        where = export_dir / "meta.json"
        text = str(err)
        raise PreflightError(text if str(export_dir) in text else f"{where}: {text}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise PreflightError(f"{export_dir / 'meta.json'} is not a us3l export meta.json "
                             f"({type(err).__name__}: {err}); re-run tools/convert_width.py") \
            from None
    check_meta(meta, export_dir / "meta.json")
    weights = export_dir / EXPORT_FILES[engine]
    if not weights.is_file():
        raise PreflightError(f"{weights} is missing; re-run tools/convert_width.py for this "
                             f"width (it writes {', '.join(EXPORT_FILES.values())})")
    check_weights(engine, weights)
    return meta


def check_weights(engine: str, weights: Path) -> None:
    """The engine file holds plain data only, BEFORE the engine reads it: detectron2's
    checkpointer unpickles a .pkl with plain ``pickle`` (code in it would run), mmengine's
    loader would stop a hostile .pth only with a traceback. Weights holding NaN or Inf (a
    diverged run's) are refused as such."""
    import numpy as np
    import torch

    from pretrain import safe_io
    try:
        if engine == "detectron2":
            state = safe_io.load_pickle(weights, "detectron2 export")
            key = "model"
        else:
            state = safe_io.load_torch(weights, "mmdet export")
            key = "state_dict"
    except safe_io.UnsafeFileError as err:
        raise PreflightError(str(err)) from None
    if not isinstance(state, dict) or not isinstance(state.get(key), dict) or not state[key]:
        raise PreflightError(f"{weights} has no '{key}' dict of weights: not an export of "
                             f"tools/convert_width.py; re-run it for this width")
    tensors = {name: torch.from_numpy(np.asarray(value)) if isinstance(value, np.ndarray)
               and value.dtype.kind == "f" else value for name, value in state[key].items()}
    try:
        safe_io.check_finite(tensors, f"{engine} export {weights}")
    except safe_io.UnsafeFileError as err:
        raise PreflightError(str(err)) from None


def arch_of(meta: dict) -> str:
    model = meta.get("model") or {}
    return model.get("arch") or meta.get("arch") or meta.get("channel_plan", {}).get("arch")


def default_config(engine: str, task: str, arch: str) -> Path:
    """The project config for an engine, task and architecture."""
    if arch not in _ARCH_TAG:
        raise PreflightError(f"no detector config for {arch!r}; detectors take "
                             f"{sorted(_ARCH_TAG)} exports")
    d2, mm = _ARCH_TAG[arch]
    return REPO / _CONFIGS[(engine, task)].format(d2=d2, mm=mm)


def check(engine: str, task: str, export_dir: str | Path, gpus: int = 1,
          data_root: str | Path | None = None, cpu: bool = False) -> dict:
    """Everything a run needs; returns the export's meta. ``cpu``: the processes run on the CPU
    (gloo), so no CUDA device is needed."""
    if engine not in ENGINES:
        raise PreflightError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    if task not in TASKS:
        raise PreflightError(f"unknown task {task!r}; expected one of {TASKS}")
    if gpus < 1:
        raise PreflightError(f"--gpus {gpus}: pass at least 1")
    if gpus > 1 and not cpu:
        import torch
        have = torch.cuda.device_count()
        if have < gpus:
            raise PreflightError(f"--gpus {gpus} needs {gpus} CUDA devices; this machine has "
                                 f"{have} (run with --gpus 1 on a CPU)")
    meta = read_export(export_dir, engine)
    try:
        check_layout(task, data_root)
    except DatasetLayoutError as err:
        raise PreflightError(str(err)) from None
    return meta


def add_run_arguments(parser: argparse.ArgumentParser, lr_key: str) -> None:
    """The options both engines' entry points share (one text, one meaning)."""
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--export", required=True, help="folder written by tools/convert_width.py")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate without training (heads untrained: the baseline); with "
                             "--resume: the run's last checkpoint")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT (only a run of the same engine, task and "
                             "export)")
    parser.add_argument("--total-batch", type=cli.int_at_least(1), default=None,
                        help=f"images per optimizer step (default: the config's 16); the lr "
                             f"scales linearly unless {lr_key} is given")
    parser.add_argument("--ims-per-gpu", type=cli.int_at_least(1), default=None,
                        help="at most M images per process and forward: gradient accumulation")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: pretrain/device.py's choice (US3L_DEVICE, else cuda if "
                             "available)")


def quiet_engine_warnings() -> None:
    """Deprecation notices the engines' imports print (torch.jit.script, pkg_resources ...):
    addressed to their developers, they would break the one-line rule of an error. Call it
    before importing an engine (``pretrain.cli`` owns the list)."""
    from pretrain.cli import quiet_library_warnings
    quiet_library_warnings()


def check_engine_device(engine: str, device: str) -> None:
    """MMDetection's RoI ops on a GPU need mmcv compiled with its CUDA ops; say so in one line
    instead of failing mid-run (tools/setup_env.sh builds them on a machine with a GPU and nvcc)."""
    if engine != "mmdet" or not str(device).startswith("cuda"):
        return
    from mmcv.ops import get_compiling_cuda_version
    if get_compiling_cuda_version() == "not available":
        raise PreflightError("mmcv was built without its CUDA ops, so MMDetection cannot run on "
                             "the GPU: re-run tools/setup_env.sh on this machine with CUDA's nvcc "
                             "on PATH (or CUDA_HOME set), or run on the CPU (US3L_DEVICE=cpu)")


def check_out(out: str | Path, flag: str = "--out") -> None:
    """The run folder can be a folder: neither it nor a parent of it is a regular file."""
    from transfer.pipeline import output_folder_problem
    problem = output_folder_problem(out)
    if problem:
        raise PreflightError(f"{flag} {out}: {problem}; pass another {flag}")


def run_dir(engine: str, task: str, meta: dict, export_dir: str | Path,
            out: str | Path | None) -> Path:
    """``out``, or the default folder named after the source checkpoint and the width; checked
    to be usable as a folder."""
    folder = Path(out) if out else identity.default_run_dir(
        REPO / "runs" / "det", identity.identity(engine, task, meta, export_dir))
    check_out(folder)
    return folder


def check_eval_only(engine: str, out: str | Path, eval_only: bool, resume: bool) -> None:
    """``--eval-only --resume`` evaluates the run's last checkpoint: there must be one."""
    if eval_only and resume and not (Path(out) / engine / LAST_CHECKPOINT).is_file():
        raise PreflightError(f"--eval-only --resume: {Path(out) / engine} holds no checkpoint "
                             f"({LAST_CHECKPOINT}) to evaluate; train first, or drop --resume "
                             f"to evaluate the export with untrained heads")


def claim_run_dir(engine: str, task: str, meta: dict, export_dir: str | Path, out: Path,
                  resume: bool, record: bool = True) -> None:
    """The run folder belongs to this run (``record``: and say so in out/run.json; only the
    process that starts the workers records)."""
    ident = identity.identity(engine, task, meta, export_dir)
    try:
        if record:
            identity.claim(out, ident, resume)
        else:
            identity.check(out, ident, resume)
    except identity.IdentityError as err:
        raise PreflightError(str(err)) from None


PROG = "train_det.sh"  # what the user typed: this CLI runs inside it


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description="check a detection run before torchrun "
                                "starts its workers; prints the run folder")
    parser.add_argument("engine", choices=ENGINES)
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("export")
    parser.add_argument("--gpus", type=cli.int_at_least(1), default=1, help="GPUs per machine")
    parser.add_argument("--cpu", action="store_true", help="the processes run on the CPU")
    parser.add_argument("--world", type=cli.int_at_least(1), default=1, help="processes in all")
    parser.add_argument("--total-batch", type=cli.int_at_least(1), default=None)
    parser.add_argument("--ims-per-gpu", type=cli.int_at_least(1), default=None)
    parser.add_argument("--out", default="")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--eval-only", action="store_true")
    args = parser.parse_args(argv)
    from transfer.detection import protocol
    try:
        if args.out:
            check_out(args.out)
        meta = check(args.engine, args.task, args.export, args.gpus, cpu=args.cpu)
        protocol.split_batch(args.total_batch or protocol.REFERENCE_BATCH, args.world,
                             args.ims_per_gpu)
        out = run_dir(args.engine, args.task, meta, args.export, args.out)
        check_eval_only(args.engine, out, args.eval_only, args.resume)
        claim_run_dir(args.engine, args.task, meta, args.export, out, args.resume)
    except (PreflightError, protocol.ProtocolError) as err:
        print(f"{PROG}: error: {cli.one_line(err, 600)}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
