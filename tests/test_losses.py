"""The losses: values against the paper's formulas, gradients against Eq. 8 and Eq. 9, AMP safety."""
import math

import pytest
import torch
import torch.nn.functional as F

from pretrain import losses


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).float()


def test_mse_distill_gradient_is_eq8():
    zs, zt = unit(6, 16, 0).requires_grad_(), unit(6, 16, 1)
    loss = losses.mse_distill(zs, zt, normalized=True)  # batch mean of Eq. 6
    loss.backward()
    assert torch.allclose(zs.grad * len(zs), -zt, atol=1e-6)  # Eq. 8: dL/dz_s = -z_t
    assert torch.allclose(loss, -(zs * zt).sum(1).mean())


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.1])
def test_nce_distill_gradient_is_eq9(tau):
    zs, zt = unit(7, 16, 2).requires_grad_(), unit(7, 16, 3)
    losses.nce_distill(zs, zt, temperature=tau, normalized=True).backward()
    with torch.no_grad():
        p = torch.softmax(zs @ zt.t() / tau, dim=1)           # P_j of Eq. 9
        expected = (-zt + p @ zt) / tau                       # -z_t^i + sum_j P_j z_t^j
    assert torch.allclose(zs.grad * len(zs), expected, atol=1e-5)


def test_nce_distill_value_is_eq7():
    zs, zt = unit(5, 8, 4), unit(5, 8, 5)
    eq7 = [-(zs[i] @ zt[i]) + torch.logsumexp(zs[i] @ zt.t(), 0) for i in range(5)]
    assert torch.allclose(losses.nce_distill(zs, zt, 1.0, normalized=True), torch.stack(eq7).mean(),
                          atol=1e-6)


def test_info_nce_is_eq2():
    z1, z2, tau = unit(4, 8, 6), unit(4, 8, 7), 0.5
    views = torch.cat([z1, z2])
    terms = []
    for a in range(8):
        pos = (a + 4) % 8
        others = [b for b in range(8) if b != a]
        logits = torch.stack([views[a] @ views[b] / tau for b in others])
        terms.append(-(views[a] @ views[pos] / tau) + torch.logsumexp(logits, 0))
    assert torch.allclose(losses.info_nce(z1, z2, tau), torch.stack(terms).mean(), atol=1e-5)


def test_info_nce_target_with_queue():
    q, k, queue = unit(4, 8, 8), unit(4, 8, 9), unit(6, 8, 10)
    logits = torch.cat([q @ k.t(), q @ queue.t()], 1) / 0.2
    expected = F.cross_entropy(logits, torch.arange(4))
    assert torch.allclose(losses.info_nce_target(q, k, 0.2, queue), expected, atol=1e-6)


def test_negative_cosine_normalises_and_stops_gradient_only_where_told():
    p = torch.randn(3, 5, requires_grad=True)
    z = torch.randn(3, 5, requires_grad=True)
    assert torch.allclose(losses.negative_cosine(p, 3.0 * p.detach()), torch.tensor(-1.0))
    losses.mse_distill(p, z).backward()
    assert z.grad is None and p.grad is not None  # the distillation target is detached


def test_losses_safe_for_half_inputs_and_tiny_temperature():
    z1 = (unit(8, 16, 11) * 300).half()
    z2 = (unit(8, 16, 12) * 300).half()
    for value in (losses.info_nce(z1, z2, 0.01), losses.nce_distill(z1, z2, 0.01),
                  losses.info_nce_target(z1, z2, 0.01), losses.negative_cosine(z1, z2)):
        assert value.dtype == torch.float32 and torch.isfinite(value)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = losses.info_nce(torch.randn(8, 16), torch.randn(8, 16), 0.05)
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_embedding_std_detects_collapse():
    assert losses.embedding_std(torch.ones(64, 32) + 1e-3 * torch.randn(64, 32)) < 1e-3
    spread = losses.embedding_std(torch.randn(4096, 64))
    assert abs(spread - 1 / math.sqrt(64)) < 0.01


# --- Eq. 2 in its 2B form against a detached target (issue 12) ---------------------------------
def official_nt_xentv2(f1, f2, t=0.5):
    """megvii-research/US3L-CVPR2023 losses/criterions/InfoNCEv2_distill.py ``nt_xentv2``,
    transcribed (raw exp: only for these small, well-conditioned test inputs)."""
    f1, f2 = F.normalize(f1, dim=1), F.normalize(f2, dim=1)
    x = torch.cat([f1, f2], dim=0)
    b = f1.size(0)
    sim = torch.exp(torch.mm(x, x.t().contiguous()) / t)
    mask = (torch.ones_like(sim) - torch.eye(2 * b)).bool()
    sim = sim.masked_select(mask).view(2 * b, -1)
    pos = torch.exp(torch.sum(f1 * f2, dim=-1) / t)
    pos = torch.cat([pos, pos], dim=0)
    return (-torch.log(pos / sim.sum(dim=-1))).mean()


def eq2_2b_by_hand(q, k, tau):
    """Eq. 2 over the 2B set [q; k], every row an anchor, written out term by term: value and
    the analytic gradient w.r.t. q with k a constant (float64, unit vectors)."""
    rows = torch.cat([q, k])
    n2, b = len(rows), len(q)
    pos = [(a + b) % n2 for a in range(n2)]
    value, p = 0.0, torch.zeros(n2, n2, dtype=torch.float64)
    for a in range(n2):
        others = [c for c in range(n2) if c != a]
        logits = torch.stack([rows[a] @ rows[c] / tau for c in others])
        value += -(rows[a] @ rows[pos[a]]) / tau + torch.logsumexp(logits, 0)
        p[a, others] = torch.softmax(logits, 0)          # P_a(c), the row's softmax
    grad = torch.zeros_like(q)
    for i in range(b):
        # row q_i: -k_i + sum_c P_{q_i}(c) x_c; rows a != q_i where q_i is a column:
        # (P_a(q_i) - [q_i is a's positive]) x_a   (q_i is the positive of k_i only)
        g = -k[i] + p[i] @ rows
        for a in range(n2):
            if a != i:
                g = g + (p[a, i] - (1.0 if a == i + b else 0.0)) * rows[a]
        grad[i] = g / (tau * n2)
    return value / n2, grad


def unit64(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.2])
def test_info_nce_2b_value_and_gradient_are_eq2_2b(tau):
    q, k = unit64(6, 12, 20), unit64(6, 12, 21)
    value, grad = eq2_2b_by_hand(q, k, tau)
    z = q.clone().float().requires_grad_(True)
    t = k.clone().float().requires_grad_(True)
    loss = losses.info_nce_2b(z, t, tau, normalized=True)
    loss.backward()
    assert loss.item() == pytest.approx(value.item(), abs=1e-5)
    assert torch.allclose(z.grad.double(), grad, atol=1e-6)
    assert t.grad is None                                   # the target is detached
    # the official implementation gives the same value (normalising itself)
    assert loss.item() == pytest.approx(official_nt_xentv2(5 * q, 3 * k, tau).item(), abs=1e-6)
    assert losses.info_nce_2b(5 * q, 3 * k, tau).item() == pytest.approx(loss.item(), abs=1e-6)


def test_info_nce_2b_has_online_negatives_and_differs_from_moco_form():
    """The 2B form contrasts q_i with the other online outputs q_j: the gradient on q_0 changes
    when only q_3 moves. MoCo's B form (``info_nce_target``) contrasts q_0 with the keys only:
    its gradient on q_0 does not depend on q_3."""
    q, k = unit(5, 8, 22), unit(5, 8, 23)
    moved = q.clone()
    moved[3] = F.normalize(q[0] + 0.5 * q[3], dim=0)        # q_3 moves towards q_0; k fixed

    def grad_q0(fn, x):
        x = x.clone().requires_grad_(True)
        fn(x, k, 0.5, normalized=True).backward()
        return x.grad[0]
    assert not torch.allclose(grad_q0(losses.info_nce_2b, q), grad_q0(losses.info_nce_2b, moved),
                              atol=1e-4)
    assert torch.allclose(grad_q0(losses.info_nce_target, q),
                          grad_q0(losses.info_nce_target, moved), atol=1e-7)
    assert losses.info_nce_2b(q, k, 0.5).item() != pytest.approx(
        losses.info_nce_target(q, k, 0.5).item(), abs=1e-3)


def test_us3l_base_and_nce_distill_use_the_configured_form():
    """Case 13 (US3L) and 17: the momentum base loss is 0.5 (2B(q1, k2) + 2B(q2, k1)), NCE
    distillation 0.5 (2B(s1, t2) + 2B(s2, t1)); infonce_form=moco gives MoCo v3's B form and
    Eq. 7; mocov3 and mocov2 default to the B form."""
    from pretrain.config import load_config
    from pretrain.methods import US3L
    from pretrain.models import build_backbone
    small = ["heads.projector.hidden=16", "heads.projector.out=8", "heads.distill_head.hidden=16",
             "heads.predictor.hidden=16"]
    q1, q2, k1, k2, s1, s2 = (unit(4, 8, 30 + i) for i in range(6))
    o1, o2 = {"q": q1, "z": q1}, {"q": q2, "z": q2}
    d1, d2 = {"s": s1}, {"s": s2}
    for case, form in ((13, "simclr2b"), (17, "simclr2b"), (17, "moco")):
        cfg = load_config(None, [f"method.table7_case={case}", f"method.infonce_form={form}", *small])
        m = US3L(build_backbone({"arch": "mobilenetv2", "stem": "cifar"}), cfg)
        base = m.base_loss(o1, o2, k1, k2)
        if form == "simclr2b":
            want = 0.5 * (losses.info_nce_2b(q1, k2, 0.5) + losses.info_nce_2b(q2, k1, 0.5))
        else:
            want = 0.5 * (losses.info_nce_target(q1, k2, 0.5) + losses.info_nce_target(q2, k1, 0.5))
        assert torch.allclose(base, want, atol=1e-6), (case, form)
        if case == 17:
            sub = m.sub_loss(d1, d2, k1, k2)
            fn = losses.info_nce_2b if form == "simclr2b" else losses.nce_distill
            assert torch.allclose(sub, 0.5 * (fn(s1, k2, 0.5) + fn(s2, k1, 0.5)), atol=1e-6)
    resolved = {name: load_config(None, [f"method.name={name}", *extra])["method"]["infonce_form"]
                for name, extra in (("us3l", []), ("mocov3", []), ("simclr", []),
                                    ("mocov2", ["method.queue_size=8"]))}
    assert resolved == {"us3l": "simclr2b", "mocov3": "moco", "simclr": "simclr2b", "mocov2": "moco"}


def test_info_nce_2b_safe_for_half_inputs_and_tiny_temperature():
    z1, z2 = (unit(8, 16, 11) * 300).half(), (unit(8, 16, 12) * 300).half()
    value = losses.info_nce_2b(z1, z2, 0.01)
    assert value.dtype == torch.float32 and torch.isfinite(value)


# --- bad values of the new key: one line, exit 2, nothing written ---------------------------------
def _pretrain_tool():
    import importlib.util
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("pretrain_tool_losses", root / "tools" / "pretrain.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.parametrize("argv,words", [
    (["method.infonce_form=simclr"], ["'method.infonce_form'", "simclr2b", "moco"]),
    (["method.name=mocov2", "method.queue_size=16", "method.infonce_form=simclr2b"],
     ["queue_size", "infonce_form=moco"]),
])
def test_bad_infonce_form_is_one_line(tmp_path, capsys, argv, words):
    from bad_input_helpers import call_main
    out = tmp_path / "run"
    call_main(_pretrain_tool().main, ["--no-progress", *argv, f"output.dir={out}"], "pretrain.py",
              capsys, want_code=2, must_mention=words, unchanged=out)
    assert not out.exists()


# --- the 2B form under DDP: 2 CPU processes over gloo (run as a script, this file is the worker) --
GATHER_N, GATHER_DIM, GATHER_TAU = 8, 6, 0.5


def _gather_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(GATHER_N, GATHER_DIM, generator=g), torch.randn(GATHER_N, GATHER_DIM, generator=g)


def _gather_worker(out):
    import json

    import torch.distributed as dist
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    n = GATHER_N // world
    z, k = (x[rank * n:(rank + 1) * n] for x in _gather_batch())
    z = z.clone().requires_grad_(True)
    loss = losses.info_nce_2b(z, k, GATHER_TAU, gather=True)
    loss.backward()
    (out / f"rank{rank}.json").write_text(json.dumps({"loss": loss.item(), "grad": z.grad.tolist()}))
    dist.destroy_process_group()


def test_info_nce_2b_gathered_equals_one_process_on_the_whole_batch(tmp_path):
    """With gather_negatives each rank contrasts its 2b rows against all 2B rows: the ranks'
    mean loss is the one-process loss on the whole batch, and the DDP-averaged gradients are its
    gradients (so the update is the single-process one)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         __file__, str(tmp_path)], capture_output=True, text=True, timeout=300,
        env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    z, k = _gather_batch()
    z = z.clone().requires_grad_(True)
    whole = losses.info_nce_2b(z, k, GATHER_TAU)
    whole.backward()
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(whole.item(), abs=1e-6)
    got = torch.cat([torch.tensor(r["grad"]) for r in ranks]) / 2
    assert torch.allclose(got, z.grad, rtol=1e-5, atol=1e-7)
    half = losses.info_nce_2b(z[:4].detach(), k[:4], GATHER_TAU).item()
    assert abs(ranks[0]["loss"] - half) > 1e-4              # not the local-only loss


if __name__ == "__main__":
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    _gather_worker(Path(sys.argv[1]))
