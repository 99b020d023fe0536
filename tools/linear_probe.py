#!/usr/bin/env python
"""Linear-probe a US3L backbone at several widths on the recognition transfer datasets.

    python tools/linear_probe.py --ckpt CKPT | --export DIR --widths 1.0 0.5 0.25 \\
        --datasets cifar10 cifar100 flowers102 pets dtd --data-root ROOT \\
        [--protocol lbfgs|sgd] [--no-verify-md5] [--image-size 224] --out DIR

--ckpt: a pretraining checkpoint, sliced to each width with BN recalibrated there by the converter's
code (on the pretraining data by default, as tools/convert_width.py does). --export: tools/convert_width.py's output (DIR/w0.50/{torchvision.pth,meta.json}).
Writes DIR/results.json, results.md, acc_vs_width.png, acc_vs_macs.png and config.json (the exact
command). ``--datasets digits`` (scikit-learn's digits, built in) needs no --data-root.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.checkpoint import CheckpointError  # noqa: E402
from transfer import datasets as D  # noqa: E402
from transfer.linear.backbones import CheckpointSource, ExportSource, SourceError  # noqa: E402
from transfer.linear.sgd import SGDConfig  # noqa: E402

DEFAULT_DATASETS = ["cifar10", "cifar100", "flowers102", "pets", "dtd"]
DEFAULT_CKPT_WIDTHS = [1.0, 0.75, 0.5, 0.25]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="US3L pretraining checkpoint (.pth)")
    src.add_argument("--export", help="folder written by tools/convert_width.py")
    p.add_argument("--widths", type=float, nargs="+",
                   help=f"widths to probe (default: --ckpt {DEFAULT_CKPT_WIDTHS}, --export all)")
    p.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, choices=D.NAMES)
    p.add_argument("--data-root", help="folder holding the datasets in torchvision's layouts")
    p.add_argument("--protocol", choices=("lbfgs", "sgd"), default="lbfgs",
                   help="lbfgs: cached features + logistic regression (standard transfer); "
                        "sgd: the paper's SGD linear evaluation on augmented images")
    p.add_argument("--no-verify-md5", dest="verify_md5", action="store_false",
                   help="skip torchvision's MD5 check (re-packed copies, fixtures)")
    p.add_argument("--image-size", type=int, default=224,
                   help="resize (bicubic) + center-crop side; smaller for CPU demos")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cache-dir", help="feature cache (default: $US3L_CACHE/features or "
                                       "~/.cache/us3l/features)")
    p.add_argument("--batch-size", type=int, default=256, help="feature-extraction batch size")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loading processes (default: 0 on CPU, up to 8 with a GPU)")
    g = p.add_argument_group("lbfgs protocol")
    g.add_argument("--grid", type=float, nargs=3, metavar=("LOW", "HIGH", "COUNT"),
                   default=[1e-6, 1e5, 45], help="C values: COUNT log-spaced over LOW..HIGH")
    g.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations per C")
    c = p.add_argument_group("--ckpt: BN recalibration at each width (the converter's defaults)")
    c.add_argument("--calib-data", default=None,
                   help="synthetic | digits | cifar10:ROOT | cifar100:ROOT | folder:DIR "
                        "(default: the checkpoint's pretraining data)")
    c.add_argument("--calib-batches", type=int, default=16)
    c.add_argument("--calib-batch-size", type=int, default=32)
    c.add_argument("--calib-size", type=int, default=None,
                   help="image side (default 224 for the ImageNet stem, the pretraining size "
                        "for the CIFAR stem)")
    s = p.add_argument_group("sgd protocol (defaults: the paper's CIFAR linear evaluation)")
    d = SGDConfig()
    s.add_argument("--sgd-lr", type=float, default=d.lr)
    s.add_argument("--sgd-epochs", type=int, default=d.epochs)
    s.add_argument("--sgd-milestones", type=int, nargs="*", default=list(d.milestones))
    s.add_argument("--sgd-batch-size", type=int, default=d.batch_size)
    s.add_argument("--sgd-weight-decay", type=float, default=d.weight_decay)
    s.add_argument("--sgd-momentum", type=float, default=d.momentum)
    return p


def check_args(args) -> None:
    """Argument errors that argparse cannot see (raised as ValueError, one line each)."""
    if args.data_root is None and any(n != "digits" for n in args.datasets):
        raise ValueError("--data-root is required for datasets other than digits (it holds e.g. "
                         "ROOT/cifar-10-batches-py/)")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise ValueError(f"--data-root {args.data_root} is not a folder")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} exists and is not a folder")
    low, high, count = args.grid
    if not (0 < low <= high) or count < 1 or count != int(count):
        raise ValueError(f"--grid {low:g} {high:g} {count:g}: need 0 < LOW <= HIGH and an "
                         f"integer COUNT >= 1")
    if args.image_size < 8:
        raise ValueError(f"--image-size {args.image_size} is too small (at least 8)")
    if len(set(args.datasets)) != len(args.datasets):
        raise ValueError("--datasets lists a dataset twice")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from transfer.linear.runner import ProbeSettings, run
    try:
        check_args(args)
        from pretrain.device import uses_cuda
        workers = args.workers if args.workers is not None else (
            min(8, os.cpu_count() or 1) if uses_cuda() else 0)
        src = (CheckpointSource(args.ckpt, args.calib_data, args.calib_batches,
                                args.calib_batch_size, args.calib_size, args.verify_md5, workers)
               if args.ckpt else ExportSource(args.export))
        widths = args.widths or (src.widths() or DEFAULT_CKPT_WIDTHS)
        settings = ProbeSettings(
            root=args.data_root, out=Path(args.out), protocol=args.protocol,
            image_size=args.image_size, verify_md5=args.verify_md5,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            batch_size=args.batch_size, workers=workers,
            grid=tuple(float(c) for c in np.logspace(np.log10(args.grid[0]),
                                                     np.log10(args.grid[1]), int(args.grid[2]))),
            max_iter=args.max_iter,
            sgd=SGDConfig(lr=args.sgd_lr, momentum=args.sgd_momentum,
                          weight_decay=args.sgd_weight_decay, batch_size=args.sgd_batch_size,
                          epochs=args.sgd_epochs, milestones=tuple(args.sgd_milestones),
                          workers=workers))
        config = {"command": shlex.join([sys.executable, *sys.argv]) if argv is None
                  else shlex.join(["tools/linear_probe.py", *argv]),
                  "args": vars(args), "widths": widths}
    except (CheckpointError, SourceError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        results = run(src, widths, args.datasets, settings, config)
    except (D.DatasetError, CheckpointError, SourceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from transfer.report.tables import markdown_table
    print(markdown_table(results))
    print(f"wrote {Path(args.out) / 'results.json'}, results.md, plots and config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
