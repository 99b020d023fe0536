#!/usr/bin/env python
"""Does a short pretraining run learn? Digits linear probe: pretrained vs random encoder, per seed.

What a 20-iteration run learns is noisy, so it is measured over several seeds and printed as
mean +- spread (seen here: +14.1 +- 3.9 points over seeds 0-2, min +9.6), not asserted in a unit
test (tests/test_linear_probe.py checks the same path's properties). Each seed: 20 SimCLR
iterations (tools/pretrain.py's engine) of ResNet-18 at width 0.25 on digit glyphs written as a
CIFAR-10-format fixture, then tools/linear_probe.py on scikit-learn's digits for the trained and
for a random encoder of the same seed.

    python bench/probe_learning.py [--seeds 0 1 2] [--iters 20]   # about 15 s per seed, 2 CPU cores
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tools"))


def probe(ckpt: Path, out: Path, cache: Path) -> float:
    import linear_probe
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = linear_probe.main([str(a) for a in [
            "--ckpt", ckpt, "--datasets", "digits", "--widths", 0.25, "--image-size", 16,
            "--calib-data", "digits", "--grid", 1e-3, 1e2, 11, "--out", out, "--cache-dir", cache]])
    if code != 0:
        raise SystemExit(f"linear_probe.py failed on {ckpt} (exit {code})")
    return json.loads((out / "results.json").read_text())["rows"][0]["datasets"]["digits"]["value"]


def one_seed(seed: int, iters: int, work: Path) -> tuple[float, float]:
    import torch

    from pretrain.checkpoint import save_checkpoint
    from pretrain.config import load_config
    from pretrain.engine import Trainer
    from pretrain.models import build_backbone
    from transfer import fixtures
    data = work / "data"
    if not data.exists():
        fixtures.write_cifar(data, 10, train_per_class=30, test_per_class=2)
    cfg = load_config(ROOT / "configs" / "pretrain" / "_simclr.yaml", [
        "model={arch: resnet18, stem: cifar}", f"data.root={data}", "data.name=cifar10",
        "data.verify_md5=false", "data.image_size=16", "data.batch_size=64", "data.num_workers=0",
        "sampling.fixed_width=0.25", "heads.projector={hidden: 256, out: 64}",
        f"schedule.iters={iters}", "optim.lr=0.3", "optim.warmup_epochs=0",
        "method.temperature=0.2", "monitor.tensorboard=false", "monitor.log_every=1000",
        "checkpoint.every_iters=100000", f"seed={seed}", f"output.dir={work / f'run{seed}'}"])
    trained = Path(Trainer(cfg, progress=False).train()["checkpoint"])
    torch.manual_seed(seed)
    model = {"arch": "resnet18", "stem": "cifar"}
    random_ckpt = save_checkpoint(work / f"random{seed}.pth",
                                  config={"model": model, "data": {"name": "digits", "image_size": 16}},
                                  state={"backbone": build_backbone(model).state_dict()})
    cache = work / "cache"
    return (probe(trained, work / f"probe{seed}", cache),
            probe(Path(random_ckpt), work / f"probe_random{seed}", cache))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    gains = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            trained, rand = one_seed(seed, args.iters, Path(tmp))
            gains.append(trained - rand)
            print(f"seed {seed}: pretrained {trained:.1f}%  random {rand:.1f}%  gain {gains[-1]:+.1f}",
                  flush=True)
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(f"gain over {len(gains)} seeds: {statistics.mean(gains):+.1f} +- {spread:.1f} points "
          f"(min {min(gains):+.1f}, max {max(gains):+.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
