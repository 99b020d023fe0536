#!/usr/bin/env python
"""Slice a US3L checkpoint at any width, recalibrate BN, export to torchvision/detectron2/mmdet
and verify every export by loading it (see transfer/export/convert.py; --help for options).

    python tools/convert_width.py CKPT --out DIR [--widths 0.25 0.5 0.75 1.0]
           [--widths-range 0.25:1.0:0.05] [--formats torchvision detectron2 mmdet]
           [--calib-data synthetic|digits|cifar10:ROOT|cifar100:ROOT|folder:DIR] [--calib-batches N]
           [--calib-transform train|eval]  (train: the official training augmentations)

Exit status: 0 done; 1 a width failed after others finished (they stay, verified); 2 bad input
(one line on stderr, nothing written); 130/143 SIGINT/SIGTERM (the unfinished width removed).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain import cli  # noqa: E402
from transfer.export.convert import PROG, main  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
