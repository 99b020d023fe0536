"""US3L (paper §3.2, Eq. 3) and every loss design of Table 7 as five switches.

Switches: ``base_loss`` (mse | infonce) for the base (largest) network; ``distill_loss``
(none | mse | infonce) for the sub-networks, where none means each sub-network trains with the
base loss on its own outputs (no distillation); ``aux_distill_head`` (the g of Eq. 3 on the
sub-networks' outputs); ``momentum_base`` / ``momentum_sub`` (the base network's / the
sub-networks' target is the momentum encoder's output instead of the base network's own).

Table 7 as read here (the text extraction of the paper lost some check marks; this is the
reading consistent with the paper's discussion -- case 3 adds a momentum teacher to case 2, case 6
vs 7 differ only in the base network's target, the last row of each block adds the head):

    case  base     distill  head  mom.base  mom.sub
      1   mse      none     no    no        no      (US-Net + SimSiam without distillation)
      2   mse      mse      no    no        no      (US+SimSiam)
      3   mse      mse      no    yes       yes     (US+BYOL)
      4   mse      mse      yes   yes       yes
      5   mse      infonce  no    no        no
      6   mse      infonce  no    no        yes
      7   mse      infonce  no    yes       yes
      8   mse      infonce  yes   yes       yes
      9   infonce  none     no    no        no
     10   infonce  mse      no    no        no
     11   infonce  mse      no    no        yes
     12   infonce  mse      no    yes       yes
     13   infonce  mse      yes   yes       yes     (US3L, the default)
     14   infonce  infonce  no    no        no      (US+SimCLR)
     15   infonce  infonce  no    no        yes
     16   infonce  infonce  no    yes       yes     (US+MoCo v3 without predictor)
     17   infonce  infonce  yes   yes       yes

Outputs: z = projector output; the base network's query q = predictor(z) when a predictor is
used (SimSiam/BYOL style: by default with the mse base loss), else z. A sub-network's student
output s = g(z) with the auxiliary head, else q. Its target is the momentum encoder's z (momentum
target for sub-networks) or the base network's z, detached, of the OTHER view (Algorithm 1 line
15). Symmetric losses are the mean of the two directions. The momentum encoder is an EMA of
backbone + projector at the largest width, run in train mode (batch statistics).

InfoNCE against a detached target (the momentum base loss of cases 12, 13, 16, 17; NCE
distillation) takes the form ``method.infonce_form`` names: ``simclr2b`` (Eq. 2's 2B form, the
official US3L ``nt_xentv2`` over [q; sg(k)] in ``InfoNCEv2_distill.py``: both sides anchored,
2B-2 negatives including online-online pairs; the default of US3L and every Table 7 case) or
``moco`` (MoCo v3's ``contrastive_loss``: q against the B keys, B-1 negatives, plus MoCo v2's
queue; Eq. 7 as printed for distillation; the default of mocov2/mocov3). InfoNCE without a
momentum target (cases 9-11, 14, 15) is SimCLR's NT-Xent over [q1; q2], gradients on both sides,
as the official ``InfoNCEv2.py``. MSE distillation is the official ``CosineSimilarity.py``:
-cos(g(z_s) of view 1, z_t of view 2), averaged with the other direction.

Under DDP, ``method.gather_negatives`` makes the InfoNCE-type losses (base and NCE distillation)
contrast against every process's targets instead of the local batch (pretrain/losses.py; the
default per method is in methods/__init__.py).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain import distributed, heads, losses, slim

SWITCHES = ("base_loss", "distill_loss", "aux_distill_head", "momentum_base", "momentum_sub")
_Y, _N = True, False
_TABLE7 = {
    1: ("mse", "none", _N, _N, _N), 2: ("mse", "mse", _N, _N, _N), 3: ("mse", "mse", _N, _Y, _Y),
    4: ("mse", "mse", _Y, _Y, _Y), 5: ("mse", "infonce", _N, _N, _N),
    6: ("mse", "infonce", _N, _N, _Y), 7: ("mse", "infonce", _N, _Y, _Y),
    8: ("mse", "infonce", _Y, _Y, _Y), 9: ("infonce", "none", _N, _N, _N),
    10: ("infonce", "mse", _N, _N, _N), 11: ("infonce", "mse", _N, _N, _Y),
    12: ("infonce", "mse", _N, _Y, _Y), 13: ("infonce", "mse", _Y, _Y, _Y),
    14: ("infonce", "infonce", _N, _N, _N), 15: ("infonce", "infonce", _N, _N, _Y),
    16: ("infonce", "infonce", _N, _Y, _Y), 17: ("infonce", "infonce", _Y, _Y, _Y),
}
PRESET = dict(zip(SWITCHES, _TABLE7[13]))


def table7_case(n: int) -> dict:
    """The five switches of Table 7 case ``n`` (1-17)."""
    if n not in _TABLE7:
        raise ValueError(f"Table 7 has cases 1-17, got {n!r}")
    return dict(zip(SWITCHES, _TABLE7[n]))


class OnlineNetwork(nn.Module):
    """Backbone + projector (+ predictor, + distillation head): the trained weights."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module | None,
                 distill_head: nn.Module | None):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.predictor, self.distill_head = predictor, distill_head

    def forward(self, *views: torch.Tensor, student: bool = False) -> list[dict[str, torch.Tensor]]:
        """Each view separately (its own BN batch statistics, as ``z1 = M(x1), z2 = M(x2)``);
        one call per width, so DDP sees one forward per backward."""
        return [self._one(x, student) for x in views]

    def _one(self, x: torch.Tensor, student: bool) -> dict[str, torch.Tensor]:
        z = self.projector(self.backbone(x))
        q = self.predictor(z) if self.predictor is not None else z
        out = {"z": z, "q": q}
        if student:
            out["s"] = self.distill_head(z) if self.distill_head is not None else q
        return out


class US3L(nn.Module):
    """The losses of one method configuration over an ``OnlineNetwork`` and a momentum encoder."""

    def __init__(self, backbone: nn.Module, cfg: dict):
        super().__init__()
        m, h = cfg["method"], cfg["heads"]
        self.cfg = m
        self.base, self.distill = m["base_loss"], m["distill_loss"]
        self.tau = float(m["temperature"])
        self.distill_tau = float(m["distill_temperature"] or m["temperature"])
        self.max_width = float(cfg["sampling"]["max_width"])
        proj = heads.projector(backbone.feature_dim, **h["projector"])
        out_dim = h["projector"]["out"]
        pred = (heads.predictor(out_dim, h["predictor"]["hidden"],
                                bn_last=bool(h["predictor"].get("bn_last", False)))
                if m["predictor"] else None)
        dhead = (heads.distill_head(out_dim, h["distill_head"]["hidden"],
                                    bn_last=bool(h["distill_head"].get("bn_last", False)))
                 if m["aux_distill_head"] else None)
        self.online = OnlineNetwork(backbone, proj, pred, dhead)
        self.use_momentum = bool(m["momentum_base"] or m["momentum_sub"])
        self.momentum_backbone = self.momentum_projector = None
        if self.use_momentum:
            self.momentum_backbone = copy.deepcopy(backbone).requires_grad_(False)
            self.momentum_projector = copy.deepcopy(proj).requires_grad_(False)
        self.gather = bool(m.get("gather_negatives"))  # cross-GPU negatives (losses.py)
        # InfoNCE against a detached target: Eq. 2's 2B form (official nt_xentv2) or MoCo's B form
        self.form = m.get("infonce_form") or ("moco" if m.get("queue_size") else "simclr2b")
        self.queue_size = int(m.get("queue_size") or 0)
        if self.queue_size:
            if not m["momentum_base"] or self.base != "infonce":
                raise ValueError("method.queue_size needs base_loss infonce with a momentum target")
            self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, out_dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        else:
            self.queue = None

    # --- targets ------------------------------------------------------------------------------
    @torch.no_grad()
    def momentum_targets(self, x1: torch.Tensor, x2: torch.Tensor):
        if not self.use_momentum:
            return None, None
        slim.set_width(self.momentum_backbone, self.max_width)
        self.momentum_backbone.train()
        self.momentum_projector.train()
        k = [self.momentum_projector(self.momentum_backbone(x)) for x in (x1, x2)]
        return k[0], k[1]

    def sub_targets(self, o1: dict, o2: dict, k1, k2):
        """The teacher outputs for the sub-networks (view 1, view 2), detached."""
        if self.cfg["momentum_sub"]:
            return k1, k2
        return o1["z"].detach(), o2["z"].detach()

    # --- losses -------------------------------------------------------------------------------
    def base_loss(self, o1: dict, o2: dict, k1=None, k2=None) -> torch.Tensor:
        """L_Base of the base network (also a sub-network's loss when distill_loss is none)."""
        use_k = self.cfg["momentum_base"]
        t1, t2 = (k1, k2) if use_k else (o1["z"].detach(), o2["z"].detach())
        if self.base == "mse":
            return 0.5 * (losses.negative_cosine(o1["q"], t2) + losses.negative_cosine(o2["q"], t1))
        if not use_k:
            return losses.info_nce(o1["q"], o2["q"], self.tau, gather=self.gather)
        if self.form == "simclr2b":  # Eq. 2 over [q; sg(k)] (InfoNCEv2_distill.py), both views
            return 0.5 * (losses.info_nce_2b(o1["q"], k2, self.tau, gather=self.gather)
                          + losses.info_nce_2b(o2["q"], k1, self.tau, gather=self.gather))
        queue = self.queue.clone() if self.queue is not None else None
        return 0.5 * (losses.info_nce_target(o1["q"], k2, self.tau, queue, gather=self.gather)
                      + losses.info_nce_target(o2["q"], k1, self.tau, queue, gather=self.gather))

    def sub_loss(self, s1: dict, s2: dict, t1, t2, k1=None, k2=None) -> torch.Tensor:
        """L_Distill of one sub-network (Algorithm 1 line 15), or its own base loss."""
        if self.distill == "none":
            return self.base_loss(s1, s2, k1, k2)
        if self.distill == "mse":
            return 0.5 * (losses.mse_distill(s1["s"], t2) + losses.mse_distill(s2["s"], t1))
        if self.form == "simclr2b":  # official InfoNCEv2_distill: 2B form over [s; sg(t)]
            return 0.5 * (losses.info_nce_2b(s1["s"], t2, self.distill_tau, gather=self.gather)
                          + losses.info_nce_2b(s2["s"], t1, self.distill_tau, gather=self.gather))
        return 0.5 * (losses.nce_distill(s1["s"], t2, self.distill_tau, gather=self.gather)
                      + losses.nce_distill(s2["s"], t1, self.distill_tau, gather=self.gather))

    # --- after the optimizer step -------------------------------------------------------------
    def momentum_at(self, iteration: int, total: int) -> float:
        m0 = float(self.cfg["momentum"])
        if self.cfg["momentum_schedule"] == "cosine":
            return 1.0 - (1.0 - m0) * (math.cos(math.pi * iteration / max(1, total)) + 1.0) / 2.0
        return m0

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        if not self.use_momentum:
            return
        pairs = ((self.online.backbone, self.momentum_backbone),
                 (self.online.projector, self.momentum_projector))
        for online, target in pairs:
            for p, q in zip(online.parameters(), target.parameters()):
                q.mul_(momentum).add_(p.detach(), alpha=1.0 - momentum)
            for b, c in zip(online.buffers(), target.buffers()):
                c.copy_(b)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        if self.queue is None:
            return
        keys = F.normalize(distributed.concat_all_gather(keys.detach().float()), dim=1)
        n, ptr = len(keys), int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % self.queue_size
        self.queue[idx] = keys[: self.queue_size]
        self.queue_ptr.fill_((ptr + n) % self.queue_size)

    def state_parts(self) -> dict[str, dict | None]:
        """The checkpoint's ``state`` entries (pretrain/checkpoint.py)."""
        o = self.online
        sd = lambda m: None if m is None else m.state_dict()  # noqa: E731
        return {"backbone": sd(o.backbone), "projector": sd(o.projector),
                "predictor": sd(o.predictor), "distill_head": sd(o.distill_head),
                "momentum_backbone": sd(self.momentum_backbone),
                "momentum_projector": sd(self.momentum_projector)}

    def load_parts(self, state: dict) -> None:
        """Strict inverse of ``state_parts``: every present part must be in ``state``."""
        o = self.online
        modules = {"backbone": o.backbone, "projector": o.projector, "predictor": o.predictor,
                   "distill_head": o.distill_head, "momentum_backbone": self.momentum_backbone,
                   "momentum_projector": self.momentum_projector}
        for name, module in modules.items():
            if module is None:
                continue
            if name not in state:
                raise KeyError(f"checkpoint lacks '{name}' which this method configuration uses")
            module.load_state_dict(state[name], strict=True)

