#!/usr/bin/env python
"""Pick the most accurate width within a latency/memory budget on this machine (see
transfer/deploy/pick.py; --help for options).

    python tools/pick_width.py --ckpt CKPT|--export DIR --latency-ms 8 [--memory-mb 200]
           [--batch 1] [--backend onnxruntime] [--metric cifar100|voc_ap50|...] [--export-to DIR]

Exit status: 0 done; 2 bad input or nothing fits (one line on stderr); 130/143 interrupted.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain import cli  # noqa: E402
from transfer.deploy.pick import PROG, main  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
