#!/usr/bin/env python
"""Linear-probe a US3L backbone at several widths on the recognition transfer datasets.

    python tools/linear_probe.py --ckpt CKPT | --export DIR --widths 1.0 0.5 0.25 \\
        --datasets cifar10 cifar100 flowers102 pets dtd --data-root ROOT \\
        [--protocol lbfgs|sgd] [--solver sklearn|converged] [--no-verify-md5] [--image-size N] \
        --out DIR

--ckpt: a pretraining checkpoint, sliced to each width with BN recalibrated there by the converter's
code (on the pretraining data by default, as tools/convert_width.py does). --export: tools/convert_width.py's output (DIR/w0.50/{torchvision.pth,meta.json}).
--protocol lbfgs (default): ssl-transfer's linear.py selection on cached features: weight decay
over logspace(-6, 5, 45), C = 1/wd swept from 1e6 down to 1e-5 by scikit-learn's
LogisticRegression (lbfgs, its defaults: max_iter 100, float64), warm-started from fit to fit, ties
to the larger C, final refit on train+val warm-started (--solver converged: torch L-BFGS, every
fit to tolerance). --protocol sgd: the official US3L workers/linear.py (Table 2): BN recalibrated
on the downstream training set, then SGD lr 30, batch 512, 100 epochs, x0.1 at 60 and 80,
RandomResizedCrop(32, 0.8-1, bicubic) + flip; Resize 36 + CenterCrop 32 for test (32 px by default
on CIFAR). --image-size defaults: 224 (lbfgs); sgd: 32 when every dataset is CIFAR/digits, else 224.

Writes DIR/results.json, results.md, acc_vs_width.png, acc_vs_macs.png and config.json (the exact
command). ``--datasets digits`` (scikit-learn's digits, built in) needs no --data-root.

Exit status: 0 done; 2 bad input (one line on stderr, nothing written: every option is typed and
every input checked before the output folder is created); 3 a SGD probe diverged (non-finite
loss; lower --sgd-lr); 130/143 SIGINT/SIGTERM (finished probes kept in results.partial.json).
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain import cli, safe_io  # noqa: E402
from pretrain.checkpoint import CheckpointError  # noqa: E402
from transfer import datasets as D  # noqa: E402
from transfer.export import bn_calibration  # noqa: E402
from transfer.export.calib_data import CalibDataError  # noqa: E402
from transfer.export.convert import check_output_folder, width_arg  # noqa: E402
from transfer.linear.backbones import (DEFAULT_WIDTHS, CheckpointSource, ExportSource,  # noqa: E402
                                       SourceError)
from transfer.linear import lbfgs  # noqa: E402
from transfer.linear.sgd import RECIPES, SGDConfig, default_image_size  # noqa: E402

PROG = "linear_probe.py"
DEFAULT_DATASETS = ["cifar10", "cifar100", "flowers102", "pets", "dtd"]
DEFAULT_CKPT_WIDTHS = list(DEFAULT_WIDTHS)  # within the checkpoint's trained range
MAX_GRID = 1000


def momentum_arg(text: str) -> float:
    """SGD momentum: a finite number in [0, 1)."""
    value = cli.float_in(0.0, 1.0)(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} must be below 1 (momentum 1 never forgets)")
    return value


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=__doc__.split("\n\n", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="US3L pretraining checkpoint (.pth)")
    src.add_argument("--export", help="folder written by tools/convert_width.py")
    p.add_argument("--widths", type=width_arg, nargs="+",
                   help=f"widths to probe (default: --ckpt {DEFAULT_CKPT_WIDTHS}, --export all)")
    p.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, choices=D.NAMES)
    p.add_argument("--data-root", help="folder holding the datasets in torchvision's layouts")
    p.add_argument("--protocol", choices=("lbfgs", "sgd"), default="lbfgs",
                   help="lbfgs: cached features + logistic regression (standard transfer); "
                        "sgd: the paper's SGD linear evaluation on augmented images")
    p.add_argument("--no-verify-md5", dest="verify_md5", action="store_false",
                   help="skip torchvision's MD5 check (re-packed copies, fixtures)")
    p.add_argument("--image-size", type=cli.int_at_least(8), default=None,
                   help="image side, at least 8 (default: 224 for lbfgs; for sgd 32 when every "
                        "dataset is CIFAR/digits, else 224); smaller for CPU demos")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cache-dir", help="feature cache (default: $US3L_CACHE/features or "
                                       "~/.cache/us3l/features)")
    p.add_argument("--batch-size", type=cli.int_at_least(1), default=256,
                   help="feature-extraction batch size")
    p.add_argument("--workers", type=cli.int_at_least(0), default=None,
                   help="data-loading processes (default: 0 on CPU, up to 8 with a GPU)")
    g = p.add_argument_group("lbfgs protocol (defaults: ssl-transfer's linear.py)")
    g.add_argument("--solver", choices=lbfgs.SOLVERS, default=lbfgs.DEFAULT_SOLVER,
                   help="sklearn: ssl-transfer's selection (scikit-learn LogisticRegression, "
                        "max_iter 100, warm starts, C descending); converged: torch L-BFGS, "
                        "each fit to tolerance (max_iter 1000)")
    grids = g.add_mutually_exclusive_group()
    grids.add_argument("--grid", type=cli.positive_float, nargs=3,
                       metavar=("LOW", "HIGH", "COUNT"), default=None,
                       help=f"C values: COUNT (an integer, 1..{MAX_GRID}) log-spaced over "
                            f"LOW..HIGH (default: --wd-grid 1e-6 1e5 45, i.e. C 1e-5..1e6)")
    grids.add_argument("--wd-grid", type=cli.positive_float, nargs=3,
                       metavar=("LOW", "HIGH", "COUNT"), default=None,
                       help="weight decays as ssl-transfer: torch.logspace over LOW..HIGH, "
                            "C = 1/wd (default 1e-6 1e5 45)")
    g.add_argument("--max-iter", type=cli.int_at_least(1), default=None,
                   help=f"L-BFGS iterations per C (default: {lbfgs.SKLEARN_MAX_ITER} for "
                        f"--solver sklearn, {lbfgs.CONVERGED_MAX_ITER} for converged)")
    c = p.add_argument_group("--ckpt: BN recalibration at each width (the converter's defaults)")
    c.add_argument("--calib-data", default=None,
                   help="synthetic | digits | cifar10:ROOT | cifar100:ROOT | folder:DIR "
                        "(default: the checkpoint's pretraining data)")
    c.add_argument("--calib-batches", type=cli.int_at_least(1),
                   default=bn_calibration.DEFAULT_BATCHES,
                   help=f"(default {bn_calibration.DEFAULT_BATCHES}: US-Net's bn_cal_batch_num)")
    c.add_argument("--calib-batch-size", type=cli.int_at_least(2),
                   default=bn_calibration.DEFAULT_BATCH_SIZE,
                   help=f"(default {bn_calibration.DEFAULT_BATCH_SIZE})")
    c.add_argument("--calib-size", type=cli.int_at_least(8), default=None,
                   help="image side (default 224 for the ImageNet stem, the pretraining size "
                        "for the CIFAR stem)")
    s = p.add_argument_group("sgd protocol (defaults: the official US3L CIFAR linear evaluation)")
    d = SGDConfig()
    s.add_argument("--sgd-lr", type=cli.positive_float, default=d.lr)
    s.add_argument("--sgd-epochs", type=cli.int_at_least(1), default=d.epochs)
    s.add_argument("--sgd-milestones", type=cli.int_at_least(1), nargs="*",
                   default=list(d.milestones))
    s.add_argument("--sgd-batch-size", type=cli.int_at_least(1), default=d.batch_size)
    s.add_argument("--sgd-weight-decay", type=cli.nonnegative_float, default=d.weight_decay)
    s.add_argument("--sgd-momentum", type=momentum_arg, default=d.momentum,
                   help="in [0, 1)")
    s.add_argument("--sgd-recipe", choices=RECIPES, default=d.recipe,
                   help="transforms: cifar (crop 0.8-1 bicubic; resize 8/7 + center crop; CIFAR "
                        "normalisation), imagenet (crop 0.08-1; resize 256/224 + center crop), "
                        "auto: cifar for CIFAR/digits, else imagenet")
    s.add_argument("--sgd-bn-calib-epochs", type=cli.int_at_least(0), default=d.bn_calib_epochs,
                   help="epochs of downstream training images through BN's running average "
                        "before training (3 as the official code; 0: off)")
    s.add_argument("--sgd-bn-calib-batch-size", type=cli.int_at_least(2),
                   default=d.bn_calib_batch_size)
    return p


def check_args(args) -> None:
    """Argument errors that argparse cannot see (raised as ValueError, one line each); nothing
    is created."""
    if args.data_root is None and any(n != "digits" for n in args.datasets):
        raise ValueError("--data-root is required for datasets other than digits (it holds e.g. "
                         "ROOT/cifar-10-batches-py/)")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise ValueError(f"--data-root {args.data_root} is not a folder")
    check_output_folder(args.out, "--out", ValueError)
    if args.cache_dir:
        check_output_folder(args.cache_dir, "--cache-dir", ValueError)
    option, grid = ("--wd-grid", args.wd_grid) if args.wd_grid else ("--grid", args.grid)
    if grid is not None:
        low, high, count = grid
        if not low <= high or count != int(count) or not 1 <= count <= MAX_GRID:
            raise ValueError(f"{option} {low:g} {high:g} {count:g}: need 0 < LOW <= HIGH and an "
                             f"integer COUNT in 1..{MAX_GRID}")
        if not math.isfinite(math.log10(high) - math.log10(low)):
            raise ValueError(f"{option} {low:g} {high:g}: LOW and HIGH must be positive and "
                             f"finite")
        f32 = np.finfo(np.float32)
        if option == "--wd-grid" and not float(f32.tiny) <= low <= high <= float(f32.max):
            raise ValueError(f"--wd-grid {low:g} {high:g}: weight decays are float32 there "
                             f"(as ssl-transfer's torch.logspace); keep LOW and HIGH within "
                             f"{float(f32.tiny):.3g}..{float(f32.max):.3g}")
    if len(set(args.datasets)) != len(args.datasets):
        raise ValueError("--datasets lists a dataset twice")


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (a DataLoader worker's re-raised error carries the
    worker's traceback: keep only its last line)."""
    text = str(err)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return cli.one_line(text)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status: 0 done, 2 bad input (one line, nothing
    written), 3 a SGD probe diverged, 130/143 interrupted (through ``cli.run``)."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as err:  # --help (0) or argparse's one-line error (2), already printed
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 2)
    from transfer.linear.runner import ProbeDiverged, ProbeSettings, run
    try:
        check_args(args)
        from pretrain.device import uses_cuda
        workers = args.workers if args.workers is not None else (
            min(8, os.cpu_count() or 1) if uses_cuda() else 0)
        src = (CheckpointSource(args.ckpt, args.calib_data, args.calib_batches,
                                args.calib_batch_size, args.calib_size, args.verify_md5, workers)
               if args.ckpt else ExportSource(args.export))
        widths = list(dict.fromkeys(args.widths or src.widths()))
        if args.image_size is None:  # resolved here, recorded in config.json
            args.image_size = (default_image_size(args.datasets) if args.protocol == "sgd"
                               else 224)
        if args.wd_grid is not None:
            grid = lbfgs.wd_grid(args.wd_grid[0], args.wd_grid[1], int(args.wd_grid[2]))
        elif args.grid is not None:
            grid = lbfgs.c_grid(args.grid[0], args.grid[1], int(args.grid[2]))
        else:
            grid = lbfgs.GRID
        settings = ProbeSettings(
            root=args.data_root, out=Path(args.out), protocol=args.protocol,
            image_size=args.image_size, verify_md5=args.verify_md5,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            batch_size=args.batch_size, workers=workers,
            grid=grid, max_iter=args.max_iter, solver=args.solver,
            sgd=SGDConfig(lr=args.sgd_lr, momentum=args.sgd_momentum,
                          weight_decay=args.sgd_weight_decay, batch_size=args.sgd_batch_size,
                          epochs=args.sgd_epochs, milestones=tuple(args.sgd_milestones),
                          recipe=args.sgd_recipe, bn_calib_epochs=args.sgd_bn_calib_epochs,
                          bn_calib_batch_size=args.sgd_bn_calib_batch_size, workers=workers))
        config = {"command": shlex.join([sys.executable, *sys.argv]) if argv is None
                  else shlex.join(["tools/linear_probe.py", *argv]),
                  "args": vars(args), "widths": widths}
    except (CheckpointError, SourceError, ValueError) as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    try:
        results = run(src, widths, args.datasets, settings, config)
    except (D.DatasetError, CheckpointError, SourceError, CalibDataError,
            safe_io.UnsafeFileError, cli.WriteError) as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    except ProbeDiverged as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return cli.EXIT_DIVERGED
    from transfer.report.tables import markdown_table
    print(markdown_table(results))
    print(f"wrote {Path(args.out) / 'results.json'}, results.md, plots and config.json")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
