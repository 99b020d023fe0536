"""Cross-GPU negatives (``method.gather_negatives``, issue 19) on 2 CPU processes over gloo.

Run as a script under torchrun this file is the worker: every rank evaluates the InfoNCE-type
losses on its half of one global batch, with and without gathering, and writes the values and
the gradients w.r.t. its half. The test then compares them with ONE process on the whole batch:

* off: each rank's loss is the loss of its own half (nothing crosses processes);
* on: each rank's loss is the mean over its anchors of the whole-batch loss, the ranks' mean is
  the whole-batch loss, and the gradients, averaged over ranks as DDP does, are the whole-batch
  gradients (so the update equals the single-process one on the concatenated batch).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
N, DIM, TAU, QUEUE = 8, 6, 0.5, 5          # global batch of 8 = 4 per process


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {k: torch.randn(N if k != "queue" else QUEUE, DIM, generator=g)
           for k in ("z1", "z2", "k", "queue")}
    out["queue"] = F.normalize(out["queue"], dim=1)   # the MoCo queue holds normalised keys
    return out


def losses_on(t: dict[str, torch.Tensor], gather: bool) -> dict[str, tuple]:
    """Each InfoNCE-type loss on ``t`` (rows of this process); its value and d/d(first input)."""
    from pretrain import losses
    cases = {
        "info_nce": lambda a: losses.info_nce(a, t["z2"], TAU, gather=gather),
        "info_nce_target": lambda a: losses.info_nce_target(a, t["k"], TAU, gather=gather),
        "info_nce_queue": lambda a: losses.info_nce_target(a, t["k"], TAU, t["queue"],
                                                          gather=gather),
        "nce_distill": lambda a: losses.nce_distill(a, t["k"], TAU, gather=gather),
    }
    out = {}
    for name, fn in cases.items():
        a = t["z1"].clone().requires_grad_(True)
        loss = fn(a)
        loss.backward()
        out[name] = (loss.item(), a.grad.tolist())
    return out


def worker(out: Path) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    n = N // world
    full = batch()
    mine = {k: (v if k == "queue" else v[rank * n:(rank + 1) * n]) for k, v in full.items()}
    record = {"on": losses_on(mine, True), "off": losses_on(mine, False)}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def test_gathered_losses_equal_one_process_on_the_whole_batch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         __file__, str(tmp_path)], capture_output=True, text=True, timeout=300,
        env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    full = batch()
    whole = losses_on(full, gather=False)                      # one process, all 8 rows
    halves = [losses_on({k: (v if k == "queue" else v[r * 4:(r + 1) * 4])
                         for k, v in full.items()}, gather=False) for r in (0, 1)]
    close = dict(rtol=1e-5, atol=1e-6)
    for name, (loss, grad) in whole.items():
        on = [r["on"][name] for r in ranks]
        # each rank: its anchors against every rank's targets; their mean is the whole-batch loss
        assert torch.allclose(torch.tensor((on[0][0] + on[1][0]) / 2), torch.tensor(loss), **close)
        per_anchor = _per_anchor_loss(name, full)
        for r in (0, 1):
            assert abs(on[r][0] - per_anchor[r * 4:(r + 1) * 4].mean().item()) < 1e-5, name
        # DDP averages the ranks' gradients: the rows' gradient / world is the whole-batch one
        got = torch.cat([torch.tensor(o[1]) for o in on]) / 2
        assert torch.allclose(got, torch.tensor(grad), **close), name
        for r in (0, 1):                                        # off: the rank's own half only
            off, alone = ranks[r]["off"][name], halves[r][name]
            assert abs(off[0] - alone[0]) < 1e-6 and torch.allclose(
                torch.tensor(off[1]), torch.tensor(alone[1]), **close), name
        assert abs(ranks[0]["off"][name][0] - loss) > 1e-4     # local negatives: a different loss


def _per_anchor_loss(name: str, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The whole-batch loss of each anchor row i (both directions averaged for info_nce)."""
    z1, z2, k = (F.normalize(t[x], dim=1) for x in ("z1", "z2", "k"))
    if name == "info_nce":
        z = torch.cat([z1, z2])
        logits = (z @ z.t() / TAU).masked_fill(torch.eye(2 * N, dtype=torch.bool), float("-inf"))
        target = torch.cat([torch.arange(N, 2 * N), torch.arange(N)])
        each = F.cross_entropy(logits, target, reduction="none")
        return (each[:N] + each[N:]) / 2
    logits = z1 @ k.t()
    if name == "info_nce_queue":
        logits = torch.cat([logits, z1 @ t["queue"].t()], dim=1)
    return F.cross_entropy(logits / TAU, torch.arange(N), reduction="none")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    worker(Path(sys.argv[1]))
