#!/usr/bin/env python
"""The probe's 45-value C sweep: torch L-BFGS (transfer/linear/lbfgs.py) vs scikit-learn.

Both solve the same problem (multinomial logistic regression, L2 on the weights, C = 45 values
log-spaced over 1e-6..1e5, each fit warm-started from the previous, same tol and max_iter) on the
same cached-feature-like data: a 10-class Gaussian mixture pushed through a fixed random projection
+ ReLU to 512 dims (10k rows: 8k train, 2k val). One run each on this machine; prints the times,
the ratio and both validation accuracies (best over the sweep, and the largest per-C difference).

    python bench/probe_solver.py [--n 10000] [--dim 512] [--classes 10] [--max-iter 100]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
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


def sklearn_sweep(x_train, y_train, x_val, y_val, grid, max_iter, tol):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=grid[0], max_iter=max_iter, tol=tol, warm_start=True)
    curve, iterations = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in grid:
            clf.set_params(C=C)
            clf.fit(x_train, y_train)
            iterations += int(clf.n_iter_.max())
            curve.append((C, 100.0 * (clf.predict(x_val) == y_val).mean()))
    return curve, iterations


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--max-iter", type=int, default=100, help="per C, both solvers (sklearn's default)")
    p.add_argument("--tol", type=float, default=1e-4, help="max |gradient| stop, both solvers")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for BOTH solvers (torch and scikit-learn's BLAS); default: "
                        "the libraries' own defaults")
    args = p.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)

    x, y = mixture_features(args.n, args.dim, args.classes)
    n_train = int(0.8 * args.n)
    grid = sorted(lbfgs.GRID)
    device = lbfgs.default_device()
    print(f"data: {args.n} x {args.dim} features, {args.classes} classes "
          f"({n_train} train / {args.n - n_train} val); {len(grid)} C values "
          f"{grid[0]:g}..{grid[-1]:g}; max_iter {args.max_iter}, tol {args.tol:g}; "
          f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads")

    t0 = time.perf_counter()
    sk, sk_iterations = sklearn_sweep(x[:n_train].astype(np.float64), y[:n_train],
                       x[n_train:].astype(np.float64), y[n_train:], grid, args.max_iter, args.tol)
    t_sk = time.perf_counter() - t0

    t0 = time.perf_counter()
    xt = torch.from_numpy(x[:n_train]).to(device)
    yt = torch.from_numpy(y[:n_train]).to(device)
    xv = torch.from_numpy(x[n_train:]).to(device)
    yv = torch.from_numpy(y[n_train:]).to(device)
    res = lbfgs.sweep(xt, yt, xv, yv, "top1", grid, args.classes, args.max_iter, args.tol)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_torch = time.perf_counter() - t0

    best_sk = max(sk, key=lambda cv: cv[1])
    best_t = max(res.curve, key=lambda cv: cv[1])
    worst = max(abs(a[1] - b[1]) for a, b in zip(sk, res.curve))
    print(f"scikit-learn sweep: {t_sk:8.2f} s   best val acc {best_sk[1]:.2f}% at C={best_sk[0]:.3g}"
          f"  ({sk_iterations} iterations)")
    print(f"torch L-BFGS sweep: {t_torch:8.2f} s   best val acc {best_t[1]:.2f}% at "
          f"C={best_t[0]:.3g}  ({res.iterations} iterations)")
    print(f"speed-up: {t_sk / t_torch:.1f}x   largest per-C val-accuracy difference: "
          f"{worst:.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
