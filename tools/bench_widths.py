#!/usr/bin/env python
"""Measure every exported width on this machine: latency (batch 1 and --batch, median/p90),
throughput, peak memory, torch eager and onnxruntime; writes latency.json per width, a table and
the accuracy-vs-latency Pareto plot (see transfer/deploy/bench.py; --help for options).

    python tools/bench_widths.py EXPORT_DIR [--threads N] [--batch 8] [--reps 50]

Exit status: 0 done; 2 bad input (one line on stderr); 130/143 interrupted.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain import cli  # noqa: E402
from transfer.deploy.bench import PROG, main  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
