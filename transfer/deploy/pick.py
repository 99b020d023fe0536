"""tools/pick_width.py: the most accurate width that runs within a budget on this machine.

    pick_width.py (--ckpt CKPT | --export DIR) --latency-ms 8 [--memory-mb 200] [--batch 1]
                  [--backend onnxruntime] [--metric cifar100|voc_ap50|...] [--export-to DIR]

``--export DIR``: every exported width is a candidate; its latency.json is reused when it holds the
backend at the batch with the same thread count (and memory when a memory budget is given), else
the width is measured now and its latency.json written. ``--ckpt CKPT``: the candidates are the
checkpoint's trained range, one width per distinct channel plan (an S-Net checkpoint: its listed
widths); ``picker.search`` bisects on measured latency, converting each candidate (BN recalibrated,
verified) into ``--cache`` (default ``CKPT_DIR/CKPT_STEM.pick/``) with its latency.json, so every
measurement is kept and a later run reuses it. Accuracy comes from probe/detection results
(``--results``, default the run folder above ``--export``) and is interpolated between measured
widths, and the table says so. Prints the candidate table and why the chosen width wins;
``--export-to`` writes the chosen width's export (copied from DIR, or converted from CKPT to every
format it takes plus onnx).

Exit status: 0 chosen; 2 bad input (a negative/NaN/zero budget, an unknown metric or backend,
a missing checkpoint or folder), or nothing fits (one line with the fastest width's figures).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from pretrain import cli, safe_io, slim
from pretrain.checkpoint import CheckpointError, width_range
from transfer.deploy import bench, exports, picker, results
from transfer.export import calib_data, convert
from transfer.export import meta as meta_mod

PROG = "pick_width.py"
BACKENDS = ("onnxruntime", "torch", "onnxruntime-cuda", "torch-cuda")
SEARCH_STEP = 0.005  # width grid before de-duplicating channel plans (multiples of 8 channels)


class PickError(ValueError):
    """Bad input (one line, exit 2)."""


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="a checkpoint: search its trained width range")
    src.add_argument("--export", help="a tools/convert_width.py folder: its widths are the "
                                      "candidates")
    p.add_argument("--latency-ms", type=cli.positive_float, required=True,
                   help="latency budget: median ms per call at --batch")
    p.add_argument("--memory-mb", type=cli.positive_float, default=None,
                   help="peak memory budget in MiB (measured only when given)")
    p.add_argument("--batch", type=cli.int_at_least(1), default=1, help="batch per call (1)")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                   help="onnxruntime (default), torch (eager), or either on CUDA")
    p.add_argument("--metric", choices=results.METRICS, default=None,
                   help="accuracy to maximise (default: the first with results)")
    p.add_argument("--results", default=None, help="run folder with probe/ or det/ results")
    p.add_argument("--export-to", default=None, help="write the chosen width's export here")
    p.add_argument("--cache", default=None, help="--ckpt: where candidates are converted")
    p.add_argument("--calib-data", default=None, help="--ckpt: BN calibration data "
                                                       "(tools/convert_width.py)")
    p.add_argument("--calib-batches", type=cli.int_at_least(1), default=None)
    p.add_argument("--calib-batch-size", type=cli.int_at_least(2), default=None)
    p.add_argument("--calib-size", type=cli.int_at_least(8), default=None)
    bench.add_measure_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def convert_args(args, out, formats, widths=None) -> list[str]:
    argv = [args.ckpt, "--out", str(out), "--formats", *formats]
    argv += ["--widths", *map(str, widths)] if widths else []
    for opt in ("calib_data", "calib_batches", "calib_batch_size", "calib_size"):
        if getattr(args, opt) is not None:
            argv += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
    return argv + ["--quiet"]


def check(args) -> None:
    if args.backend.endswith("-cuda") and not torch.cuda.is_available():
        raise PickError(f"--backend {args.backend}: CUDA is not available on this machine; pass "
                        f"--backend {args.backend[:-5]}")
    for opt in ("export", "results"):
        value = getattr(args, opt)
        if value is not None and not Path(value).is_dir():
            raise PickError(f"--{opt} {value} is not a folder; pass an existing folder")
    if args.export_to is not None:
        convert.check_output_folder(args.export_to, "--export-to", PickError)


class Measurer:
    """Measure (or reuse) one width folder's latency for the budget's backend and batch."""

    def __init__(self, args, budget: picker.Budget):
        self.args, self.budget = args, budget
        self.backend = budget.backend.removesuffix("-cuda")
        self.device = torch.device("cuda" if budget.backend.endswith("-cuda") else "cpu")
        args.no_memory = budget.memory_mb is None

    def reusable(self, rec: dict | None) -> bool:
        entry = ((rec or {}).get("backends") or {}).get(self.budget.backend) or {}
        return (entry.get("threads") == self.args.threads
                and results.figure(rec, self.budget.backend, self.budget.batch) is not None
                and (self.budget.memory_mb is None or results.figure(
                    rec, self.budget.backend, self.budget.batch, "peak_memory_mb") is not None))

    def __call__(self, folder: Path) -> picker.Candidate:
        meta = exports.read_meta(folder)
        rec = results.read_latency(folder)
        if not self.reusable(rec):
            if self.backend not in exports.backends_of(folder, meta):
                raise PickError(f"{folder} has no {self.backend} file; convert with --formats "
                                f"{'onnx' if self.backend == 'onnxruntime' else 'torchvision'}")
            fresh = bench.measure_width(folder, meta, [self.budget.batch], self.args,
                                        backends=[self.backend], on=[self.device])
            if rec:  # keep what was measured before for other backends/batches
                fresh["backends"] = {**rec["backends"], **fresh["backends"]}
            rec = fresh
            bench.write_latency(folder, rec)
        b, n = self.budget.backend, self.budget.batch
        return picker.Candidate(float(meta["width"]), results.figure(rec, b, n),
                                results.figure(rec, b, n, "p90_ms"),
                                results.figure(rec, b, n, "peak_memory_mb"), folder=str(folder))


def from_export(args, measure: Measurer) -> list[picker.Candidate]:
    folders = exports.width_folders(args.export)
    if not folders:
        raise PickError(f"{args.export} holds no width export; run tools/convert_width.py first")
    return [measure(f) for f in folders]


def from_checkpoint(args, measure: Measurer, budget: picker.Budget):
    cache = convert.check_output_folder(args.cache or Path(args.ckpt).with_suffix(".pick"),
                                        "--cache", PickError)
    formats = ["onnx"] if measure.backend == "onnxruntime" else ["torchvision"]
    plan = convert.prepare(convert.parser().parse_args(convert_args(args, cache, formats)))
    low, high = width_range(plan.ckpt)
    grid = convert.WidthRange(low, high, SEARCH_STEP, "").widths()
    widths = convert.distinct_plans(sorted(set(grid) | {high}), convert.channel_key(
        plan.model_cfg.get("arch"), plan.slimmable))
    widths[-1] = high  # the widest plan is named by the trained maximum, not its lowest width
    listed = slim.listed_widths(plan.slimmable)
    if listed:  # S-Net (switchable BN): only the trained width list exists
        widths = sorted(listed)
    print(f"searching {len(widths)} distinct widths in [{low:g}, {high:g}] by bisection on "
          f"measured latency; candidates are kept in {cache}", flush=True)
    x = convert.verification_input(plan)
    detector_ok = (plan.model_cfg.get("arch") in convert.DETECTOR_ARCHS
                   and plan.model_cfg.get("stem", "imagenet") == "imagenet")
    args.export_formats = list(convert.DEFAULT_FORMATS if detector_ok else ("torchvision",))

    def one(width: float) -> picker.Candidate:
        folder = cache / convert.folder_name(width)
        if not (folder / meta_mod.META_NAME).is_file() or measure.backend not in \
                exports.backends_of(folder, exports.read_meta(folder)):
            convert.convert_width(plan, width, x, show_renames=False)
        c = measure(folder)
        if not args.quiet:
            print(f"  {width:g}x: {c.latency_ms:.2f} ms"
                  + ("" if c.memory_mb is None else f", {c.memory_mb:.0f} MiB"), flush=True)
        return c

    return picker.search(widths, one, budget), cache


def write_export(args, chosen: picker.Candidate) -> Path:
    out = Path(args.export_to)
    if args.ckpt:
        code = convert.main(convert_args(args, out, args.export_formats + ["onnx"],
                                         [chosen.width]))
        if code != 0:
            raise PickError(f"converting {chosen.width:g}x into {out} failed (exit {code})")
        return out / convert.folder_name(chosen.width)
    src = Path(chosen.folder)
    final = out / src.name
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=safe_io.temp_prefix(src.name), suffix=safe_io.TEMP_SUFFIX,
                                dir=out))
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    convert._replace_dir(tmp, final)
    return final


def run(argv=None) -> int:
    args = parser().parse_args(argv)
    check(args)
    budget = picker.Budget(args.latency_ms, args.memory_mb, args.batch, args.backend)
    torch.set_num_threads(args.threads)
    measure = Measurer(args, budget)
    if args.export:
        cands = from_export(args, measure)
        run_folder = args.results or str(Path(args.export).resolve().parent)
    else:
        cands, _ = from_checkpoint(args, measure, budget)
        run_folder = args.results
    metrics = [args.metric] if args.metric else list(results.METRICS)
    known, source = {}, "no results folder"
    for metric in metrics:
        known, source = results.accuracy_by_width(run_folder, metric)
        if known:
            break
    if not known and not args.metric:
        source = f"no probe or detection results in {run_folder or '(no --results)'}"
    if args.metric and not known:
        raise PickError(f"--metric {args.metric}: {source}; pass --results RUN_FOLDER or "
                        f"another --metric")
    picker.attach_accuracy(cands, known, source, results.interpolate)
    chosen = None
    try:
        chosen, why = picker.choose(cands, budget)
    finally:
        print(f"\ncandidates measured ({args.backend}, batch {args.batch}, {args.threads} "
              f"threads; accuracy: {source}):")
        print(picker.table(cands, budget, chosen), end="")
    if any("interpolated" in c.accuracy_note for c in cands):
        print("note: accuracy marked 'interpolated' is linear in width between the nearest "
              "measured widths, not measured")
    print(f"chosen: {chosen.width:g}x -- {why}")
    if args.export_to:
        print(f"wrote the chosen width's export to {write_export(args, chosen)}")
    return 0


def main(argv=None) -> int:
    errors = (PickError, picker.NothingFits, convert.ConvertError, CheckpointError,
              calib_data.CalibDataError)
    return bench.run_reporting(run, argv, PROG, errors + bench.BAD_INPUT)
