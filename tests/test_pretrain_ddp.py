"""Distributed pretraining: 2 CPU processes over gloo, started by torchrun on tools/pretrain.py.

The only multi-process test of the pretrainer. Eight iterations of Algorithm 1 (T_p = 2), so the
run goes through one-width iterations (the base network alone: the case that crashed with
"Expected to mark a variable ready only once", issue 19) and three-width ones.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddp_pretrain_worker import digest
from pretrain.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--no-progress", "model.arch=resnet18", "model.stem=cifar", "data.image_size=16",
        "data.batch_size=16", "data.num_workers=0", "data.synthetic.train_size=64",
        "data.synthetic.val_size=0", "heads.projector.hidden=64", "heads.projector.out=32",
        "heads.distill_head.hidden=64", "schedule.iters=8", "optim.warmup_epochs=0.5",
        "monitor.knn_every=0", "monitor.log_every=1", "monitor.tensorboard=false",
        "checkpoint.every_iters=0"]


def torchrun(root: Path, device: str, *extra: str) -> dict:
    """tools/pretrain.py on 2 processes (through the recording worker); the run and rank records."""
    run, records = root / "run", root / "records"
    records.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "US3L_DEVICE": device}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "ddp_pretrain_worker.py"), str(records), *TINY, f"output.dir={run}",
         *extra], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"proc": proc, "run": run, "ranks": ranks}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    return torchrun(tmp_path_factory.mktemp("ddp"), "cpu")


def test_two_processes_train_through_one_and_three_width_iterations(ddp_run):
    ranks = ddp_run["ranks"]
    assert [(r["rank"], r["world"], r["rc"]) for r in ranks] == [(0, 2, 0), (1, 2, 0)]
    assert all(r["ddp"] and r["find_unused"] and r["device"] == "cpu" for r in ranks)
    widths = ranks[0]["widths"]
    assert widths == ranks[1]["widths"]            # the same sampled widths on every rank
    assert widths[:2] == [[1.0], [1.0]] and all(len(w) == 3 for w in widths[2:])
    assert len(widths) == 8
    # gradients all-reduced, the regularizer's gradient counted once: the ranks' weights (online,
    # momentum encoder) end bit-identical. Not the heads' BN running statistics: without SyncBN
    # (CPU) each process averages its own batches into them; training never reads them.
    assert ranks[0]["params"] == ranks[1]["params"]


def test_sampler_splits_every_epoch_disjointly_and_completely(ddp_run):
    ranks = ddp_run["ranks"]
    for epoch in (0, 1):                           # 8 iterations of 64 // 16 batches: 2 epochs
        parts = [[i for e, i in r["indices"] if e == epoch] for r in ranks]
        assert [len(p) for p in parts] == [32, 32]  # 4 global batches of 16, 8 per rank
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == list(range(64))


def test_sync_bn_choice_on_cpu(ddp_run):
    """torch's SyncBatchNorm has no CPU kernels: a gloo-on-CPU run keeps per-process BN and says
    so once (the conversion itself is checked by test_pretrain_engine's convert test and, on a
    GPU, by test_gpu.py)."""
    ranks, out = ddp_run["ranks"], ddp_run["proc"].stdout
    assert all(r["sync_bn"] is False and r["plain_bn"] > 0 for r in ranks)
    assert out.count("BatchNorm statistics stay per process") == 1


def test_checkpoint_and_logs_written_once_and_loadable(ddp_run):
    run, ranks, out = ddp_run["run"], ddp_run["ranks"], ddp_run["proc"].stdout
    assert sorted(p.name for p in run.iterdir() if p.suffix in (".pth", ".tmp") or
                  p.name.startswith(".")) == ["checkpoint.pth"]
    ckpt = load_checkpoint(run / "checkpoint.pth")
    assert ckpt["train_state"]["iteration"] == 8
    assert digest(ckpt["state"]["backbone"]) == ranks[0]["backbone"] == ranks[1]["backbone"]
    assert (run / "train.csv").read_text().count("\n") == 1 + 8      # rank 0 logs, once
    assert out.count("done: 8/8 iterations") == 1


@pytest.mark.gpu
def test_two_processes_on_one_gpu_use_sync_bn(tmp_path):
    """The CUDA path of the same run (both ranks on GPU 0, gloo: NCCL refuses two ranks on one
    GPU): every BatchNorm synchronises, and the ranks still end bit-identical."""
    result = torchrun(tmp_path, "cuda:0", "dist.backend=gloo", "amp=false")
    ranks = result["ranks"]
    assert all(r["device"] == "cuda:0" and r["sync_bn"] and r["plain_bn"] == 0 for r in ranks)
    assert ranks[0]["widths"][:2] == [[1.0], [1.0]]
    assert ranks[0]["method"] == ranks[1]["method"]      # BN statistics too: they are global
    assert "stay per process" not in result["proc"].stdout
