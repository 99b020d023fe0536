#!/usr/bin/env python
"""The probe's two solvers side by side: ssl-transfer's selection (the default) vs the converged one.

Both run the probe's whole protocol (sweep C on val, refit on train+val, score on test) over the
default grid (ssl-transfer's: wd = logspace(-6, 5, 45), C = 1/wd, 1e6 .. 1e-5) on the same
cached-feature-like data: a 10-class Gaussian mixture pushed through a fixed random projection +
ReLU (n rows: 64% train, 16% val, 20% test).
  sklearn:   scikit-learn LogisticRegression, max_iter 100, C descending, warm starts, ties to
             the larger C (transfer/linear/lbfgs.py: sklearn_probe) -- ssl-transfer's linear.py
  converged: torch L-BFGS, each fit to tol 1e-4 (max_iter 1000), C ascending, extrapolated warm
             starts (lbfgs.probe(solver="converged"))
One run each on this machine; prints the time, the chosen C, val and test accuracy, the solver
iterations, and how far apart the two validation curves are.

    python bench/probe_solver.py [--n 10000] [--dim 512] [--classes 10] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transfer.linear import lbfgs  # noqa: E402


def mixture_features(n: int, dim: int, classes: int, latent: int = 32, seed: int = 0):
    """Features like a backbone's: a Gaussian mixture in ``latent`` dims, random projection, ReLU."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.5, size=(classes, latent))  # overlapping: ~85% accuracy
    y = rng.integers(0, classes, size=n)
    z = centers[y] + rng.normal(0, 1.0, size=(n, latent))
    proj = rng.normal(0, 1.0 / np.sqrt(latent), size=(latent, dim))
    x = np.maximum(z @ proj + rng.normal(0, 0.3, size=(n, dim)), 0.0)
    return x.astype(np.float32), y


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for BOTH solvers (torch and scikit-learn's BLAS); default: "
                        "the libraries' own defaults")
    args = p.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)

    x, y = mixture_features(args.n, args.dim, args.classes)
    a, b = int(0.64 * args.n), int(0.8 * args.n)
    feats = {"train": (torch.from_numpy(x[:a]), torch.from_numpy(y[:a])),
             "val": (torch.from_numpy(x[a:b]), torch.from_numpy(y[a:b])),
             "test": (torch.from_numpy(x[b:]), torch.from_numpy(y[b:]))}
    device = lbfgs.default_device()
    print(f"data: {args.n} x {args.dim} features, {args.classes} classes ({a} train / {b - a} val"
          f" / {args.n - b} test); {len(lbfgs.GRID)} C values {min(lbfgs.GRID):.3g}.."
          f"{max(lbfgs.GRID):.3g}; torch {torch.__version__} on {device}, "
          f"{torch.get_num_threads()} threads")
    runs = {}
    for solver in lbfgs.SOLVERS:
        t0 = time.perf_counter()
        res = lbfgs.probe(feats, "top1", args.classes, device=device, solver=solver)
        if device.type == "cuda":
            torch.cuda.synchronize()
        runs[solver] = (time.perf_counter() - t0, res)
        print(f"{solver:>9}: {runs[solver][0]:8.2f} s   C={res['C']:.3g}  val {res['val_value']:.2f}%"
              f"  test {res['value']:.2f}%  ({res['solver_iterations']} iterations, max_iter "
              f"{res['max_iter']})")
    curves = {s: dict((round(np.log10(c), 6), v) for c, v in r[1]["val_curve"])
              for s, r in runs.items()}
    common = sorted(set(curves["sklearn"]) & set(curves["converged"]))
    worst = max(abs(curves["sklearn"][k] - curves["converged"][k]) for k in common)
    print(f"time ratio sklearn/converged: {runs['sklearn'][0] / runs['converged'][0]:.1f}x   "
          f"largest per-C val-accuracy difference: {worst:.2f} points   test difference: "
          f"{runs['sklearn'][1]['value'] - runs['converged'][1]['value']:+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
