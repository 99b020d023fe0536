"""Shared test set-up: detectron2 always through the compat layer; quiet, deterministic, CPU."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import transfer.detectron2.compat  # noqa: E402,F401  (before any detectron2 import)
import torch  # noqa: E402

torch.set_num_threads(2)
