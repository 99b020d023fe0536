"""Distributed pretraining: 2 CPU processes over gloo, started by torchrun on tools/pretrain.py.

The multi-process tests of the pretrainer (issue 19). Eight iterations of Algorithm 1 (T_p = 2),
so the run goes through one-width iterations (the base network alone: the case that crashed with
"Expected to mark a variable ready only once") and three-width ones. A second launch runs every
method and sampling mode (each Table 7 case, the US-Net sandwich, a fixed width, MoCo v2's queue,
MoCo v3, cross-GPU negatives) a few iterations each, plus the first half of a run that a single
process then resumes (saved on 2 processes, resumed on 1). A third shows a global batch that the
processes cannot split is one line and exit status 2.
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


WORKER = str(ROOT / "tests" / "ddp_pretrain_worker.py")
# Smaller still for the sweep over methods (MobileNetV2 at 8 px: the same engine paths at a
# fraction of ResNet-18's parameters, which dominate a CPU step): 4 images per process, 4
# iterations of Algorithm 1 (T_p = 1: one one-width iteration, then three three-width ones).
# The projector keeps a BN on its output (demo.yaml, like the paper's US3L, has none since issue
# 12): with 4 images per process at lr 0.1, cases 11, 12 and 14 diverge without it.
SMALL = ["--no-progress", "heads.projector.bn_last=true",
         "model.arch=mobilenetv2", "model.stem=cifar", "data.image_size=8",
         "data.batch_size=8", "data.num_workers=0", "data.synthetic.train_size=32",
         "data.synthetic.val_size=0", "heads.projector.hidden=32", "heads.projector.out=16",
         "heads.predictor.hidden=16", "heads.distill_head.hidden=32", "schedule.iters=4",
         "optim.warmup_epochs=0.5", "monitor.knn_every=0", "monitor.log_every=1",
         "monitor.tensorboard=false", "checkpoint.every_iters=0"]
# Table 7 cases: the base and ONE sub-network per multi-width iteration (every loss path; the
# random width adds nothing the other runs do not cover).
SWEEP = {f"case{n}": [f"method.table7_case={n}", "sampling.num_random=0"] for n in range(1, 18)}
SWEEP.update({
    "usnet": ["sampling.dynamic=false", "sampling.num_random=2", "schedule.iters=2"],  # _us.yaml
    "fixed": ["sampling.fixed_width=0.5", "schedule.iters=2",
              "optim.lr=0.01"],  # _single.yaml; 4 images per process diverge at lr 0.1
    "mocov2": ["method.name=mocov2", "method.queue_size=16", "heads.projector.bn_last=false"],
    "mocov3": ["method.name=mocov3", "method.predictor=true"],     # gathers keys by default
    "case14_gather": ["method.table7_case=14", "method.gather_negatives=true"],
    "case17_gather": ["method.table7_case=17", "method.gather_negatives=true"],
})


def _env(device: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "US3L_DEVICE": device}


def launch(*args: str, device: str = "cpu", nproc: int = 2) -> subprocess.CompletedProcess:
    """The recording worker on ``nproc`` processes under torchrun (nproc=0: a plain process)."""
    cmd = [sys.executable, WORKER, *args] if nproc == 0 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={nproc}", WORKER, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(device),
                          cwd=ROOT)


def rank_records(records: Path, n: int = 2) -> list[dict]:
    return [json.loads((records / f"rank{r}.json").read_text()) for r in range(n)]


def torchrun(root: Path, device: str, *extra: str) -> dict:
    """tools/pretrain.py on 2 processes (through the recording worker); the run and rank records."""
    run, records = root / "run", root / "records"
    records.mkdir(parents=True)
    proc = launch(str(records), *TINY, f"output.dir={run}", *extra, device=device)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"proc": proc, "run": run, "ranks": rank_records(records)}


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


# --- every method and sampling mode, and a run saved on 2 processes --------------------------------
# TINY's data, batch, sampling and schedule (so the same batches and widths as ddp_run) on a
# cheaper network.
RESUME = [*TINY, "model.arch=mobilenetv2", "data.image_size=8"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """ONE torchrun launch: every SWEEP run, then TINY stopped at iteration 4 (the resume source)."""
    root = tmp_path_factory.mktemp("sweep")
    runs = [{"name": name, "args": [*SMALL, *extra, f"output.dir={root / 'runs' / name}"]}
            for name, extra in SWEEP.items()]
    runs.append({"name": "resume_src", "args": [*RESUME, f"output.dir={root / 'runs' / 'resume'}",
                                                "--stop-after", "4"]})
    (root / "spec.json").write_text(json.dumps(runs))
    proc = launch("--runs", str(root / "spec.json"), str(root / "records"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"proc": proc, "root": root,
            "ranks": {r["name"]: rank_records(root / "records" / r["name"]) for r in runs}}


@pytest.mark.parametrize("name", list(SWEEP))
def test_every_method_and_sampling_mode_finishes_distributed(sweep, name):
    a, b = sweep["ranks"][name]
    assert (a["rc"], b["rc"], a["world"], b["world"]) == (0, 0, 2, 2)
    assert a["widths"] == b["widths"] and a["params"] == b["params"]   # bit-identical weights
    widths = a["widths"]
    if name == "usnet":                      # the sandwich: max, min, 2 random widths, always
        assert [len(w) for w in widths] == [4, 4] and all(w[:2] == [1.0, 0.25] for w in widths)
    elif name == "fixed":
        assert widths == [[0.5], [0.5]]
    else:                   # Algorithm 1: the base alone, then the base and 1 (+ 1 random) widths
        n = 2 if name.startswith("case") and "gather" not in name else 3
        assert widths[0] == [1.0] and [len(w) for w in widths[1:]] == [n] * 3
        assert [w[1] for w in widths[1:]] == [0.5, 0.25, 0.25]    # R_min: 1 - 0.25 floor(t / 1)
    assert a["gather"] is (name in ("mocov3", "case14_gather", "case17_gather"))
    assert a["queue"] is (name == "mocov2")


def test_saved_on_two_processes_resumes_on_one(sweep, ddp_run, tmp_path):
    """N=2 -> M=1: the 1-process run continues at iteration 5 with the widths and the global
    batches the uninterrupted 2-process run (ddp_run, same config) had, each batch now whole."""
    src = sweep["ranks"]["resume_src"]
    assert [r["iterations"] for r in src] == [[1, 2, 3, 4]] * 2
    assert src[0]["widths"] == ddp_run["ranks"][0]["widths"][:4]
    assert sweep["proc"].stdout.count("stopped: 4/8 iterations") == 1
    run = sweep["root"] / "runs" / "resume"
    saved = load_checkpoint(run / "checkpoint.pth")["train_state"]
    assert saved["iteration"] == 4 and saved["world_size"] == 2 and len(saved["rng_per_rank"]) == 2

    proc = launch(str(tmp_path), "--resume", *RESUME, f"output.dir={run}", nproc=0)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = rank_records(tmp_path, 1)[0]
    assert (rec["world"], rec["iterations"]) == (1, [5, 6, 7, 8])
    assert rec["widths"] == ddp_run["ranks"][0]["widths"][4:]       # the shared width RNG
    # Data order: iterations 5-8 are epoch 1 (4 batches of 16); batch b is rank 0's 8 images then
    # rank 1's 8 of the same batch of the 2-process run.
    r0, r1 = ([i for e, i in r["indices"] if e == 1] for r in ddp_run["ranks"])
    whole = [i for b in range(4) for i in r0[8 * b:8 * b + 8] + r1[8 * b:8 * b + 8]]
    assert [i for e, i in rec["indices"]] == whole and {e for e, _ in rec["indices"]} == {1}
    assert "done: 8/8 iterations" in proc.stdout
    rows = (run / "train.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(1, 9))  # no iteration twice
    ts = load_checkpoint(run / "checkpoint.pth")["train_state"]
    assert ts["iteration"] == 8 and ts["world_size"] == 1 and len(ts["rng_per_rank"]) == 1


def test_batch_not_divisible_by_processes_is_one_line_and_exit_2(tmp_path):
    """tools/pretrain.py as torchrun starts it (RANK/WORLD_SIZE set; two processes side by side,
    the check comes before any rendezvous): each rank exits 2, only rank 0 prints, one line.
    (torchrun itself then adds its own failure summary; that is the launcher's, not ours.)"""
    procs = []
    for rank in (0, 1):
        env = {**_env("cpu"), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / "pretrain.py"), *TINY, "data.batch_size=15",
             f"output.dir={tmp_path / 'run'}"], env=env, cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    (out0, err0), (out1, err1) = (p.communicate(timeout=120) for p in procs)
    assert [p.returncode for p in procs] == [2, 2]
    assert err0 == ("error: data.batch_size=15 (the global batch) is not divisible by the 2 "
                    "processes; set data.batch_size to a multiple of 2 (e.g. 14 or 16) or start a "
                    "number of processes that divides it\n")
    assert (out0, out1, err1) == ("", "", "")                    # the other rank exits quietly
    assert not (tmp_path / "run").exists()
