"""SEED and SEED-MSE (paper Table 2): a student distilled from a frozen, separately pretrained
teacher (Fang et al., ICLR 2021), over the same engine as US3L.

SEED (``method.name=seed``): student and teacher embeddings are L2-normalised; with a queue Q of
earlier teacher embeddings, student logits = s . [t; Q] / T_s and teacher logits = t . [t; Q] / T_t
(the positive is the teacher's embedding of the same image); the loss is the soft cross-entropy
of the student's log-softmax against softmax(teacher logits) (official US3L
``losses/criterions/soft_distill.py`` ``soft_cross_entropy``: KL up to the teacher's entropy, a
constant, so the same gradient). The teacher's embeddings of the batch are enqueued after the
step (``utils/ssl_algorithms/seed.py`` ``_dequeue_and_enqueue``; gathered across processes).

SEED-MSE (``method.name=seed_mse``): the student's predictor output regresses the teacher's
embedding of the OTHER view by negative cosine, symmetrised (official ``SEED_MSE`` with
``losses/criterions/CosineSimilarity.py``; a 2-layer predictor, ``method.predictor`` auto = on).

Views: the official SEED forward uses view 1 only; the engine computes both views, so the loss is
the mean of the two views' SEED losses (each the official form) and both views' teacher
embeddings are enqueued. The teacher is pretrain/teacher.py's ``FrozenTeacher``.

Widths. Table 2's SEED rows are individually trained ("Once Training x", cost nT: one run per
width), and the official code fixes the student at ``MODEL.OFA.WIDTH_MULT`` (``encoder_q.apply(
setattr width_mult)``; workers/distill.py samples no widths), so the configs train one width
(``sampling.fixed_width``). Slimmable training over the range also works (``sampling.fixed_width
=null`` with the US sampling keys): every sampled width takes the same loss against the teacher.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain import heads, losses, teacher
from pretrain.methods.us3l import US3L, OnlineNetwork, table7_case

# resolve_method's switches: only base_loss (infonce = SEED's soft-label loss, mse = SEED-MSE)
# and predictor (auto: on for mse, as official SEED_MSE; off for SEED) matter to this class.
PRESET_SEED = table7_case(14)       # infonce / infonce, no head, no momentum
PRESET_SEED_MSE = table7_case(2)    # mse / mse, no head, no momentum


def seed_loss(student: torch.Tensor, target: torch.Tensor, queue: torch.Tensor,
              student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """SEED's soft cross-entropy of one view, batch mean (``queue``: K x D, rows normalised)."""
    with torch.autocast(student.device.type, enabled=False):
        s = F.normalize(student.float(), dim=1)
        t = F.normalize(target.float(), dim=1)
        q = queue.float()
        logits_s = torch.cat([(s * t).sum(1, keepdim=True), s @ q.t()], 1) / student_temperature
        logits_t = torch.cat([(t * t).sum(1, keepdim=True), t @ q.t()], 1) / teacher_temperature
        soft = F.softmax(logits_t, dim=1)
        return -(soft * F.log_softmax(logits_s, dim=1)).sum(1).mean()


class SEED(US3L):
    """The student (US3L's ``OnlineNetwork``) + a frozen teacher + SEED's queue."""

    def __init__(self, backbone: nn.Module, cfg: dict):
        nn.Module.__init__(self)
        from pretrain.config import ConfigError
        m, h, t = cfg["method"], cfg["heads"], cfg["teacher"]
        self.cfg, self.teacher_cfg = m, t
        self.mse = m["name"] == "seed_mse"
        self.data_cfg, self.seed = cfg["data"], int(cfg["seed"])
        self.max_width = float(cfg["sampling"]["max_width"])
        self.teacher = teacher.load_teacher(t["checkpoint"], t["width"],
                                            expect={"sha256": t["sha256"], "arch": t["arch"]})
        identity = self.teacher.identity()
        out_dim = int(h["projector"]["out"])
        if identity["out"] != out_dim:
            raise ConfigError(f"teacher {t['checkpoint']} embeds in {identity['out']} dimensions "
                              f"but the student's heads.projector.out is {out_dim}; set "
                              f"heads.projector.out={identity['out']}")
        t.update({k: identity[k] for k in ("sha256", "arch", "width")})  # stored in the checkpoint
        proj = heads.projector(backbone.feature_dim, **h["projector"])
        pred = heads.predictor(out_dim, h["predictor"]["hidden"]) if m["predictor"] else None
        self.online = OnlineNetwork(backbone, proj, pred, None)
        self.use_momentum = False
        self.momentum_backbone = self.momentum_projector = None
        self.gather = False
        self.queue_size = 0 if self.mse else int(t["queue_size"])
        if self.queue_size:
            self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, out_dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        else:
            self.queue = None
        self.t_student = float(t["student_temperature"])
        self.t_teacher = float(t["teacher_temperature"])

    # --- targets: the teacher's embeddings of both views ---------------------------------------
    @torch.no_grad()
    def momentum_targets(self, x1: torch.Tensor, x2: torch.Tensor):
        if not self.teacher.calibrated:
            limit = self.teacher_cfg["calibration_batches"]
            self.teacher.calibrate(teacher.calibration_loader(self.data_cfg, self.seed),
                                   x1.device, None if limit is None else int(limit))
        return self.teacher(x1), self.teacher(x2)

    def sub_targets(self, o1: dict, o2: dict, k1, k2):
        return k1, k2  # every width distils from the teacher

    # --- losses --------------------------------------------------------------------------------
    def _distill(self, y1: torch.Tensor, y2: torch.Tensor, k1, k2) -> torch.Tensor:
        if self.mse:  # the other view's teacher embedding (CosineSimilarity.py skips v == iq)
            return 0.5 * (losses.negative_cosine(y1, k2) + losses.negative_cosine(y2, k1))
        queue = self.queue.clone()
        return 0.5 * (seed_loss(y1, k1, queue, self.t_student, self.t_teacher)
                      + seed_loss(y2, k2, queue, self.t_student, self.t_teacher))

    def base_loss(self, o1: dict, o2: dict, k1=None, k2=None) -> torch.Tensor:
        return self._distill(o1["q"], o2["q"], k1, k2)

    def sub_loss(self, s1: dict, s2: dict, t1, t2, k1=None, k2=None) -> torch.Tensor:
        return self._distill(s1["s"], s2["s"], t1, t2)
