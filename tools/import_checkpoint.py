#!/usr/bin/env python
"""Import a self-supervised ResNet-18/50 or MobileNetV2 from another codebase as a US3L checkpoint.

    python tools/import_checkpoint.py SRC --from us3l-official|torchvision|timm|solo-learn|mmpretrain
           --arch resnet18|resnet50|mobilenetv2 --out CKPT
           [--stem imagenet|cifar] [--width-range LOW:HIGH] [--source-config FILE] [--label TEXT]

The written CKPT is this suite's checkpoint format: tools/convert_width.py, tools/linear_probe.py
--ckpt and tools/train_det.sh (through the converter's exports) take it unchanged. Only the online
backbone is taken; every other key is dropped by name (printed, and stored in the checkpoint under
"source") or the import fails. The source is read with torch.load(weights_only=True), never
running code from it, and the imported network's features are compared with the source network's
before anything is written. Exit status: 0 done, 1 features differ (nothing written), 2 bad input.
See docs/import.md.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain import cli, safe_io  # noqa: E402
from transfer.imports import ARCHS, FORMATS, ImportFailed, VerificationFailed  # noqa: E402

PROG = "import_checkpoint.py"


def width_range(text: str) -> tuple[float, float]:
    import argparse
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW:HIGH (e.g. 0.25:1.0)") from None
    return low, high


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="the source checkpoint file")
    p.add_argument("--from", dest="fmt", required=True, choices=list(FORMATS),
                   help="the codebase that wrote SRC")
    p.add_argument("--arch", required=True, choices=ARCHS, help="the network SRC holds")
    p.add_argument("--out", required=True, help="the US3L checkpoint to write (.pth)")
    p.add_argument("--stem", choices=("imagenet", "cifar"), default=None,
                   help="default: read from the file (official US3L: its arch name; ResNets: "
                        "the first conv's kernel)")
    p.add_argument("--width-range", type=width_range, default=None, metavar="LOW:HIGH",
                   help="slimmable sources: the trained width range (default: the source "
                        "config's, else the official configs' 0.25:1.0); fixed-width sources "
                        "have exactly 1.0")
    p.add_argument("--source-config", default=None,
                   help="the source's training config (JSON/YAML), recorded; official US3L: its "
                        "MODEL.ARCH and MODEL.OFA.WIDTH_MULT_RANGE are used")
    p.add_argument("--label", default=None,
                   help="the name reports give this checkpoint (default: FORMAT METHOD)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the feature comparison with the source network")
    p.add_argument("--verbose", action="store_true", help="print every dropped key")
    return p


def report(rec: dict, verbose: bool) -> None:
    from transfer.imports.core import common_prefixes
    ident = ", ".join(f"{k} {rec[k]}" for k in ("epoch", "global_step", "iter", "arch_in_file")
                      if rec.get(k) is not None)
    print(f"source: {rec['format']} {rec['file']} sha256 {rec['sha256'][:16]}"
          f"{' (' + ident + ')' if ident else ''}")
    kind = (f"slimmable, widths {rec['width_range'][0]:g}..{rec['width_range'][1]:g}"
            if rec["slimmable"] else "fixed width 1.0")
    print(f"took {rec['taken_count']} backbone tensors -> {rec['arch']} ({rec['stem']} stem), "
          f"{kind}")
    print(f"dropped {rec['dropped_count']} keys by name:")
    for why, keys in rec["dropped"].items():
        shown = keys if verbose else common_prefixes(keys)
        print(f"  {why}: {len(keys)}: {', '.join(shown)}")
    if rec["filled"]:
        print(f"filled {len(rec['filled'])} absent BatchNorm buffers with initial values "
              f"(BN statistics: {rec['bn_statistics']})")
    for note in rec["notes"]:
        print(f"note: {note}")
    ver = rec["verification"]
    if "max_rel_error" in ver:
        errs = ", ".join(f"w{w} {e:.1e}" for w, e in ver["max_rel_error"].items())
        print(f"verified against {ver['reference']} ({ver['bn']}): max rel error {errs} "
              f"(tolerance {ver['tolerance']:g})")
    else:
        print(f"not verified ({ver['skipped']})")
    print(f"wrote {rec['out']} (label: {rec['label']})")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from transfer.imports import import_checkpoint
    try:
        rec = import_checkpoint(args.src, args.fmt, args.arch, args.out, stem=args.stem,
                                width_range=args.width_range, source_config=args.source_config,
                                label=args.label, verify=not args.no_verify)
    except (ImportFailed, safe_io.UnsafeFileError) as err:
        print(f"{PROG}: error: {cli.one_line(err)}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    except VerificationFailed as err:
        print(f"{PROG}: verification failed: {cli.one_line(err)}", file=sys.stderr)
        return cli.EXIT_STEP_FAILED
    report(rec, args.verbose)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
