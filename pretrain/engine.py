"""The pretraining loop (Algorithm 1): one optimizer step per iteration over the sampled widths.

Per iteration: zero_grad once; the base (largest) network on both views, base loss, backward;
then each sampled sub-network, its distillation loss, backward (gradients accumulate; targets are
detached so the graphs are independent); the group regularization's gradient added once to
``.grad`` (its closed form, not a second autograd path: see ``GroupRegularizer.add_grad_``); one
optimizer step, one scheduler step, the EMA update. The losses and spreads of every width are read
to the host once per iteration. fp16 mixed precision only on CUDA (``amp``); bf16 forwards and
channels_last on CPU or GPU when switched on (``speed``: pretrain/speed.py). DDP when started
by ``torchrun`` (on CUDA: SlimBatchNorm in sync mode, SyncBatchNorm in the heads and the momentum
projector; torch's SyncBatchNorm has no CPU kernels, so gloo-on-CPU runs keep per-process BN;
gradient all-reduce only on the last backward of an iteration). Checkpoints (pretrain/checkpoint.py
format) hold everything needed to continue the same run exactly: optimizer, scheduler, scaler,
EMA, queue, iteration and every RNG.

Resume on another number of processes (saved on N, resumed on M). The checkpoint holds each
rank's own generators (CPU torch, its own GPU's CUDA generator, numpy, python) in
``train_state["rng_per_rank"]``; on resume rank r < N takes rank r's, a rank r >= N takes rank
0's (as at the start of a run, where every rank is seeded alike). The data order does not depend
on M: global batch b of epoch e is the same ``data.batch_size`` images (a permutation seeded by
(seed, e)) with the same augmentations (seeded per image), split into M equal consecutive slices
instead of N (pretrain/data.py ``ResumableSampler``); the widths come from the one width RNG every
rank shares. So the run continues with the same global batches and widths it would have had; what
changes with M is only what depends on the split: per-process BatchNorm statistics when BN is not
synchronised (CPU), and the negatives of InfoNCE losses when ``method.gather_negatives`` is off.
``data.batch_size`` is the global batch and must be divisible by M.

Resume checks what it resumes: the checkpoint's config is compared key by key with the new one;
a change in a section that alters what the run means (``RESUME_SECTIONS``: seed, data except
``data.num_workers``, model, method, heads, sampling, regularization, optim, schedule) refuses
with one line listing the changes, unless ``resume_changed`` (``--resume-changed``) is given:
then the run continues and ``{iteration, changes}`` is appended to the checkpoint's ``history``.
A checkpoint without its training state or RNG state, or whose weights do not fit the model its
config names, is one ``CheckpointError`` line.

Divergence: every iteration checks its losses (each width's and the regularizer's) before the
optimizer step, and every save checks the weights; a NaN or Inf stops the run with
``DivergedError`` (one line naming the iteration and the width; tools/pretrain.py exits 3) before
anything is stepped or saved, so the last good checkpoint stays as it was. Under DDP the ranks
agree on the verdict (a max all-reduce of per-width flags), so every rank stops at the same point
and none waits in a collective the others left.

Nothing is written before every input has been checked: the output folder, ``config.yaml``, the
logs and ``tb/`` are created by ``train()``, after the config, the data and the resume checkpoint
passed (``Trainer.__init__`` only reads).
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.profiler import record_function as profiled  # a named scope in bench/pretrain_profile.py
from torch.utils.data import DataLoader

from pretrain import checkpoint as ckpt_io
from pretrain import data as data_mod
from pretrain import distributed, slim
from pretrain.cli import write_error
from pretrain.config import ConfigError, save_resolved
from pretrain.device import default_device
from pretrain.losses import embedding_spread
from pretrain.methods import US3L, build_method
from pretrain.models import build_backbone
from pretrain.monitor import Monitor, knn_accuracy
from pretrain.regularizers import build_regularizer, scheduled_alpha
from pretrain.sampling import widths_for_iteration
from pretrain.speed import SpeedSettings

# Sections whose change alters what a resumed run means (the rest -- output, monitor, checkpoint,
# amp, dist -- may change freely), and the keys inside them that do not.
RESUME_SECTIONS = ("seed", "data", "model", "method", "heads", "sampling", "regularization",
                   "optim", "schedule", "teacher")
# teacher.checkpoint: the file may move; its recorded sha256 (teacher section) is what must match
RESUME_FREE = ("data.num_workers", "teacher.checkpoint")


class DivergedError(RuntimeError):
    """A non-finite loss or weight: the run stops before stepping or saving (exit 3)."""


def check_output_dir(path: str | os.PathLike) -> None:
    """``output.dir`` can be created and written: a ``ConfigError`` line naming the path when a
    file stands where a folder must be, or the folder is not writable. Creates nothing."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == path else f"lies under {probe}, which is a file"
        raise ConfigError(f"output.dir {path} {where}, not a folder; pass another output.dir")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output.dir {path}: {probe} is not writable; pass an output.dir in a "
                          f"folder you can write")


class LARS(torch.optim.Optimizer):
    """SGD with layer-wise trust ratio (You et al.); 1-D parameters (BN, biases) are not adapted."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    pn, dn = torch.norm(p), torch.norm(d)
                    trust = torch.where((pn > 0) & (dn > 0), group["eta"] * pn / dn,
                                        torch.ones_like(pn))
                    d = d.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])


def build_optimizer(params, o: dict, batch_size: int) -> torch.optim.Optimizer:
    lr = float(o["lr"]) * (batch_size / 256 if o["scale_lr"] else 1.0)
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o["momentum"], weight_decay=o["weight_decay"])
    if o["name"] == "lars":
        return LARS(params, lr=lr, momentum=o["momentum"], weight_decay=o["weight_decay"],
                    eta=o["lars_eta"])
    return torch.optim.AdamW(params, lr=lr, betas=tuple(o["betas"]), weight_decay=o["weight_decay"])


def convert_sync_batchnorm(method: US3L) -> int:
    """Cross-process BN statistics everywhere: SlimBatchNorm in sync mode, SyncBatchNorm in the
    heads and the momentum projector. Returns how many BN layers now synchronise."""
    count = 0
    for m in method.modules():
        if isinstance(m, slim.SlimBatchNorm):
            m.sync = True
            count += 1
    o = method.online
    owners = [(o, n) for n in ("projector", "predictor", "distill_head")]
    owners.append((method, "momentum_projector"))
    for owner, name in owners:
        module = getattr(owner, name)
        if module is not None:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            setattr(owner, name, module)
            count += sum(isinstance(m, nn.SyncBatchNorm) for m in module.modules())
    return count


def check_batch_split(batch_size: int, world: int) -> None:
    """``data.batch_size`` is the global batch: each of the ``world`` processes takes an equal
    slice (pretrain/data.py ``ResumableSampler``), so it must divide evenly."""
    if world > 1 and batch_size % world:
        lower, upper = (batch_size // world) * world, (batch_size // world + 1) * world
        hint = f"{lower} or {upper}" if lower else f"{upper}"
        raise ConfigError(f"data.batch_size={batch_size} (the global batch) is not divisible by "
                          f"the {world} processes; set data.batch_size to a multiple of {world} "
                          f"(e.g. {hint}) or start a number of processes that divides it")


def warmup_cosine(total: int, warmup: int, min_ratio: float):
    """Multiplier of the base lr at step i: linear warm-up, then cosine down to ``min_ratio``."""
    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        progress = (i - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


# --- RNG state as weights_only-loadable values ------------------------------------------------------
def rng_state(device: torch.device | None = None) -> dict:
    """This process's generators; on CUDA only the generator of ``device`` (its own GPU), so a
    state saved with 8 visible GPUs restores with 1 (issue 19: ``get_rng_state_all`` did not)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    cuda = []
    if device is not None and device.type == "cuda":
        cuda = [torch.cuda.get_rng_state(device)]
    return {"torch": torch.get_rng_state(), "cuda": cuda,
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore ``rng_state``'s output; its CUDA generator goes to ``device`` only. (A checkpoint
    from before per-rank states holds one state per GPU of the saving machine: entry
    ``device.index`` is used when present.)"""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if device is not None and device.type == "cuda" and cuda:
        index = 0 if len(cuda) == 1 else (device.index or 0)
        if index < len(cuda):
            torch.cuda.set_rng_state(cuda[index], device)
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _pyrandom_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_pyrandom_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def _flatten(node, prefix: str, out: dict) -> dict:
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(value, f"{prefix}{key}.", out)
    else:
        out[prefix.rstrip(".")] = node
    return out


def config_changes(old: dict, new: dict) -> list[dict]:
    """``[{"key", "old", "new"}, ...]``: the keys of ``RESUME_SECTIONS`` (less ``RESUME_FREE``)
    whose value differs between two resolved configs (a key only one has counts, as None)."""
    changes = []
    for section in RESUME_SECTIONS:
        a = _flatten(old.get(section), section + ".", {})
        b = _flatten(new.get(section), section + ".", {})
        for key in sorted(set(a) | set(b)):
            if key in RESUME_FREE or a.get(key) == b.get(key):
                continue
            changes.append({"key": key, "old": a.get(key), "new": b.get(key)})
    return changes


def _comparable(stored: dict) -> dict:
    """A checkpoint's config as this version resolves it (keys added since take their defaults,
    numbers written as strings become numbers), or as stored when it no longer resolves."""
    import copy

    from pretrain.config import DEFAULTS, deep_merge, resolve
    stored = copy.deepcopy(stored)
    method = stored.get("method")
    if isinstance(method, dict) and "gather_negatives" not in method:
        method["gather_negatives"] = False  # saved before the switch existed: local negatives
    # Saved before the loss form and the alpha schedule existed (issue 12): InfoNCE against a
    # detached target was the B form, alpha was constant. Where that mattered, say so, so that a
    # resume with today's defaults is a listed change, not a silent one.
    if isinstance(method, dict) and "infonce_form" not in method and (
            (method.get("base_loss") == "infonce" and method.get("momentum_base"))
            or method.get("distill_loss") == "infonce"):
        method["infonce_form"] = "moco"
    reg = stored.get("regularization")
    if (isinstance(reg, dict) and "ramp_until" not in reg and reg.get("type") == "group"
            and reg.get("alpha")):
        reg.setdefault("warmup_epochs", 0.0)
        reg["ramp_until"] = 0.0
    try:
        return resolve(deep_merge(DEFAULTS, stored))
    except (ConfigError, TypeError, ValueError, KeyError, AttributeError):
        return stored


class Trainer:
    """Builds everything from a resolved config; ``train()`` runs (or continues) the schedule."""

    def __init__(self, cfg: dict, resume: str | os.PathLike | None = None, progress: bool = True,
                 device: str | torch.device | None = None, resume_changed: bool = False):
        """Builds and checks everything (config, data, resume checkpoint); writes nothing."""
        self.cfg, self.progress = cfg, progress
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        check_batch_split(int(cfg["data"]["batch_size"]), self.world)  # before any collective
        self.out_dir = Path(cfg["output"]["dir"])
        self.ckpt_path = self.out_dir / "checkpoint.pth"
        check_output_dir(self.out_dir)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        try:
            if device is None:
                device = default_device(local_rank)
            self.device = torch.device(device)
        except (RuntimeError, ValueError) as err:
            raise ConfigError(str(err)) from None
        if self.device.type == "cuda" and self.device.index is None:  # set_device needs an index
            self.device = torch.device("cuda", local_rank)
        if self.device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if self.device.index >= count:
                raise ConfigError(f"device {self.device} asked for (US3L_DEVICE or LOCAL_RANK) but "
                                  f"this machine has {count} usable GPU(s); set US3L_DEVICE=cpu "
                                  f"or start fewer processes")
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            backend = cfg["dist"]["backend"] or ("nccl" if self.device.type == "cuda" else "gloo")
            dist.init_process_group(backend)
        seed = int(cfg["seed"])  # the same on every rank: identical initial weights and EMA copies
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

        # data
        d = cfg["data"]
        train_set, self.val_set = data_mod.build_datasets(d)
        self.train_set = data_mod.TwoViews(train_set, data_mod.view_pair(
            d["augment"], d["image_size"]), seed)
        self.raw_train = train_set
        self.iters_per_epoch = len(train_set) // int(d["batch_size"])
        if self.iters_per_epoch < 1:
            raise ConfigError(f"the training set has {len(train_set)} images, fewer than one batch "
                              f"(data.batch_size={d['batch_size']}); lower data.batch_size")
        s = cfg["schedule"]
        self.total = int(s["iters"]) if s["iters"] else int(s["epochs"]) * self.iters_per_epoch
        if self.total < 1:
            raise ConfigError("schedule.iters/epochs give no iteration to train")

        # model, method, regularizer
        try:
            backbone = build_backbone(cfg["model"])
        except TypeError as err:
            raise ConfigError(f"model section {cfg['model']} has an option this architecture "
                              f"does not take ({err})") from None
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None
        self.speed = SpeedSettings(cfg.get("speed"), self.device)
        self.method = self.speed.prepare_model(build_method(backbone, cfg).to(self.device))
        self.max_width = float(cfg["sampling"]["max_width"])
        o = self.method.online
        # g (o.distill_head) serves the sub-networks only: no decay in iterations without them
        self.regularizer = build_regularizer(cfg["regularization"], o.backbone,
                                             [o.projector, o.predictor, o.distill_head],
                                             student_heads=[o.distill_head])
        if self.regularizer is not None:
            self.regularizer.to(self.device)
        self.sync_bn = self.world > 1 and self.device.type == "cuda" and cfg["dist"]["sync_bn"]
        if self.sync_bn:
            convert_sync_batchnorm(self.method)
        elif self.world > 1 and cfg["dist"]["sync_bn"] and self.rank == 0:
            print(f"note: {self.world} processes on {self.device.type}: BatchNorm statistics stay "
                  f"per process (torch's SyncBatchNorm runs on CUDA only)", flush=True)

        # optimisation
        self.optimizer = build_optimizer([p for p in o.parameters() if p.requires_grad],
                                         cfg["optim"], int(d["batch_size"]))
        warmup = min(int(round(float(cfg["optim"]["warmup_epochs"]) * self.iters_per_epoch)),
                     self.total // 2)
        base_lr = self.optimizer.param_groups[0]["lr"]
        min_ratio = float(cfg["optim"]["min_lr"]) / base_lr if base_lr else 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(self.total, warmup, min_ratio))
        # fp16 autocast + loss scaling on CUDA; speed.bf16 replaces it (no scaling needed)
        self.amp = bool(cfg["amp"]) and self.device.type == "cuda" and not self.speed.bf16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.width_rng = random.Random(seed)
        self.iteration = 0
        self.history: list[dict] = []
        self.config_history: list[dict] = []   # the checkpoint's ``history`` (--resume-changed)
        self.last_good: tuple[Path, int] | None = None  # (checkpoint, iteration) safe to go back to
        if resume is not None:
            self._resume(resume, resume_changed)
        self.ddp = None
        if self.world > 1:
            ddp = nn.parallel.DistributedDataParallel
            # BN buffers are not used in training (batch statistics): no per-forward sync.
            sync_kw = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                       else {"broadcast_buffers": False})
            # find_unused_parameters: the base forward leaves g unused, a student forward the predictor.
            self.ddp = ddp(o, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           find_unused_parameters=True, **sync_kw)
        # writes nothing until train() opens it
        self.monitor = Monitor(self.out_dir, cfg["monitor"], enabled=self.rank == 0)

    # --- checkpoints ----------------------------------------------------------------------------
    def train_state(self) -> dict:
        """Collective under DDP (every rank's RNG state is gathered): call it on every rank."""
        per_rank = distributed.all_gather_objects(rng_state(self.device))
        state = {"iteration": self.iteration, "epoch": self.iteration // self.iters_per_epoch,
                 "total_iters": self.total, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "width_rng": _pyrandom_state(self.width_rng), "rng": per_rank[0],
                 "rng_per_rank": per_rank, "world_size": self.world,
                 "momentum": self.method.momentum_at(self.iteration, self.total)}
        if self.method.queue is not None:
            state["moco_queue"] = self.method.queue.detach().cpu().clone()
            state["moco_queue_ptr"] = int(self.method.queue_ptr)
        return state

    def _any_rank(self, flags: list[float]) -> list[float]:
        """Element-wise max of ``flags`` over the ranks (``flags`` itself in one process): every
        rank reaches the same verdict, so none is left waiting in a collective."""
        if not distributed.is_distributed():
            return flags
        t = torch.tensor(flags, dtype=torch.float32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def check_weights(self) -> None:
        """``DivergedError`` when any weight or buffer holds NaN/Inf (all ranks agree)."""
        from pretrain.safe_io import non_finite
        parts = {k: v for k, v in self.method.state_parts().items() if v is not None}
        bad = non_finite(parts)
        if self._any_rank([1.0 if bad else 0.0])[0]:
            first = f" (first: {bad[0]})" if bad else " (on another rank)"
            raise DivergedError(f"weights became NaN or Inf at iteration {self.iteration}"
                                f"{first}")

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Every rank calls it (the RNG states are gathered); rank 0 writes the file. Weights
        holding NaN/Inf are never saved (``DivergedError``; the previous file stays)."""
        self.check_weights()
        train_state = self.train_state()
        if self.rank != 0:
            self.last_good = (Path(path or self.ckpt_path), self.iteration)
            return None
        # contiguous: a checkpoint reads the same whatever memory format trained it (speed.py)
        cpu = lambda sd: None if sd is None else {  # noqa: E731
            k: v.detach().cpu().contiguous() for k, v in sd.items()}
        state = {k: cpu(v) for k, v in self.method.state_parts().items()}
        s = self.cfg["sampling"]
        written = ckpt_io.save_checkpoint(path or self.ckpt_path, config=self.cfg, state=state,
                                          train_state=train_state,
                                          width_range=(s["min_width"], s["max_width"]),
                                          history=self.config_history)
        self.last_good = (written, self.iteration)
        return written

    def _apply_hyperparameters(self, groups: list[dict], base_lrs: list[float]) -> None:
        """After loading an old run's optimizer/scheduler state: this config's hyperparameters
        (lr, momentum, decay, betas ...) and schedule, at the resumed step of the new schedule."""
        if len(groups) != len(self.optimizer.param_groups):
            raise ValueError("the optimizer's parameter groups differ")
        self.scheduler.base_lrs = list(base_lrs)
        step = self.scheduler.last_epoch
        for group, fresh, base, factor in zip(self.optimizer.param_groups, groups, base_lrs,
                                              self.scheduler.lr_lambdas):
            group.update({k: v for k, v in fresh.items() if k != "lr"})
            group["lr"] = base * factor(step)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _resume(self, path, resume_changed: bool = False) -> None:
        path = Path(path)
        ckpt = ckpt_io.load_checkpoint(path, map_location="cpu")
        changes = config_changes(_comparable(ckpt["config"]), self.cfg)
        ts = ckpt.get("train_state") or {}
        iteration = ts.get("iteration")
        if changes and not resume_changed:
            listed = ", ".join(f"{c['key']} {c['old']!r} -> {c['new']!r}" for c in changes[:6])
            more = f" and {len(changes) - 6} more" if len(changes) > 6 else ""
            raise ConfigError(f"cannot resume {path}: the config changes what the run means "
                              f"({listed}{more}); resume with the run's own config, or pass "
                              f"--resume-changed to continue anyway (the change is recorded in "
                              f"the checkpoint)")
        missing = [k for k in ("iteration", "optimizer", "scheduler", "width_rng") if k not in ts]
        if missing:
            raise ckpt_io.CheckpointError(f"{path} holds no training state to resume from "
                                          f"(no {', '.join(missing)}); start a new run, or pass "
                                          f"a checkpoint written by tools/pretrain.py")
        per_rank = ts.get("rng_per_rank") or ([ts["rng"]] if ts.get("rng") else None)
        if not per_rank:
            raise ckpt_io.CheckpointError(f"{path} holds no RNG state (train_state.rng), so the "
                                          f"run cannot continue exactly; start a new run, or "
                                          f"pass a checkpoint written by tools/pretrain.py")
        for name, expected in self.method.state_parts().items():
            if expected is None:
                continue
            if name not in ckpt["state"]:
                raise ckpt_io.CheckpointError(f"{path} lacks the '{name}' weights this method "
                                              f"configuration uses")
            mismatch = ckpt_io.state_mismatch(expected, ckpt["state"][name])
            if mismatch:
                raise ckpt_io.CheckpointError(
                    f"{path}: the '{name}' weights do not match the configured model "
                    f"{self.cfg['model'].get('arch')!r} ({mismatch}); the file was altered or "
                    f"the model config differs from its weights")
        # the hyperparameters this config asks for (the loaded states carry the old run's)
        fresh_groups = [{k: v for k, v in g.items() if k != "params"}
                        for g in self.optimizer.param_groups]
        fresh_base_lrs = list(self.scheduler.base_lrs)
        try:
            self.method.load_parts(ckpt["state"])
            self.method.to(self.device)
            self.optimizer.load_state_dict(ts["optimizer"])
            self.scheduler.load_state_dict(ts["scheduler"])
            if changes:  # --resume-changed: the new optimizer and schedule settings take effect
                self._apply_hyperparameters(fresh_groups, fresh_base_lrs)
            if ts.get("scaler"):
                self.scaler.load_state_dict(ts["scaler"])
            if self.method.queue is not None:
                self.method.queue.copy_(ts["moco_queue"])
                self.method.queue_ptr.fill_(int(ts["moco_queue_ptr"]))
            _set_pyrandom_state(self.width_rng, ts["width_rng"])
            # This rank's own generators; a rank the saving run did not have takes rank 0's.
            set_rng_state(per_rank[self.rank] if self.rank < len(per_rank) else per_rank[0],
                          self.device)
            self.iteration = int(iteration)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            reason = " ".join(str(err).split())[:120] or type(err).__name__
            raise ckpt_io.CheckpointError(f"{path}: its training state does not fit this run "
                                          f"({type(err).__name__}: {reason}); start a new run, "
                                          f"or pass a checkpoint written by tools/pretrain.py "
                                          f"for this config") from None
        self.config_history = [dict(h) for h in ckpt.get("history") or []
                               if isinstance(h, dict)]
        if changes:
            self.config_history.append({"iteration": self.iteration, "changes": changes})
            if self.rank == 0:
                print(f"note: resuming {path} at iteration {self.iteration} with a changed config "
                      f"(recorded in the checkpoint's history): "
                      + ", ".join(f"{c['key']} {c['old']!r} -> {c['new']!r}" for c in changes),
                      flush=True)
        self.last_good = (path, self.iteration)

    # --- one iteration ---------------------------------------------------------------------------
    def _sync_context(self, last: bool):
        return self.ddp.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()

    def _autocast(self):
        """The forward passes' precision (speed.bf16, or CUDA fp16 ``amp``); losses run outside
        it, in float32."""
        return self.speed.forward_context(self.amp)

    def step(self, x1: torch.Tensor, x2: torch.Tensor, widths: list[float] | None = None) -> dict:
        """Algorithm 1 for one batch of two views; returns the per-width records.

        ``widths`` (base network first) replaces the sampler's choice (benchmarks)."""
        t = self.iteration + 1
        if widths is None:
            widths = widths_for_iteration(t, self.total, self.cfg["sampling"], self.width_rng)
        method, inner = self.method, self.method.online
        net = self.ddp if self.ddp is not None else inner
        prepare = self.speed.prepare_input
        x1 = prepare(x1.to(self.device, non_blocking=True))
        x2 = prepare(x2.to(self.device, non_blocking=True))
        self.optimizer.zero_grad(set_to_none=True)
        # Losses and embedding spreads stay on the device until one read per iteration (no host
        # sync per width: the GPU runs ahead through every width's backward).
        records, values = [], []
        with self._sync_context(last=len(widths) == 1):
            slim.set_width(inner, widths[0])
            with profiled("forward"), self._autocast(), self.speed.slices(inner):
                o1, o2 = net(x1, x2)
            with profiled("momentum encoder"), self._autocast():
                k1, k2 = method.momentum_targets(x1, x2)
            with profiled("losses"):
                base = method.base_loss(o1, o2, k1, k2)
            with profiled("backward"):
                self.scaler.scale(base).backward()
        records.append({"width": widths[0], "role": "base"})
        values.append(torch.stack([base.detach().float(), embedding_spread(o1["z"])]))
        t1, t2 = method.sub_targets(o1, o2, k1, k2)
        sandwich = bool(self.cfg["sampling"]["sandwich"])
        for j, width in enumerate(widths[1:]):
            with self._sync_context(last=j == len(widths) - 2):
                slim.set_width(inner, width)
                with profiled("forward"), self._autocast(), self.speed.slices(inner):
                    s1, s2 = net(x1, x2, student=True)
                with profiled("losses"):
                    loss = method.sub_loss(s1, s2, t1, t2, k1, k2)
                with profiled("backward"):
                    self.scaler.scale(loss).backward()
            records.append({"width": width, "role": "min" if (j == 0 and sandwich) else "random"})
            values.append(torch.stack([loss.detach().float(), embedding_spread(s1["z"])]))
        slim.set_width(inner, self.max_width)
        # Group regularization once per iteration (line 5), added to .grad after the (DDP-reduced)
        # backward passes: a second autograd path would mark g ready twice under DDP (issue 19).
        # Its alpha follows the schedule (regularizers.group_alpha), and g, which only the
        # sub-networks use, is decayed only in iterations that run one.
        reg = torch.zeros((), device=self.device)
        reg_alpha = 0.0
        if self.regularizer is not None:
            reg_alpha = self.reg_alpha(t)
            self.regularizer.set_alpha(reg_alpha)
            students = len(widths) > 1
            with torch.no_grad(), profiled("regularizer"):
                reg = self.regularizer(students=students)
            with profiled("regularizer"):
                self.regularizer.add_grad_(self.scaler.get_scale() if self.amp else 1.0,
                                           students=students)
        with profiled("host sync"):  # the iteration's one read of device values
            read = torch.cat([torch.stack(values).flatten(), reg.detach().float().reshape(1)])
            *pairs, reg_value = read.tolist()
        for i, record in enumerate(records):
            record.update(loss=pairs[2 * i], std=pairs[2 * i + 1])
        self._check_losses(t, records, reg_value)
        with profiled("optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        momentum = method.momentum_at(t, self.total)
        with profiled("momentum update"):
            method.momentum_update(momentum)
        if k1 is not None and method.queue is not None:
            method.enqueue(torch.cat([k1, k2]))
        self.iteration = t
        return {"records": records, "lr": lr, "momentum": momentum, "reg": reg_value,
                "reg_alpha": reg_alpha, "loss": sum(r["loss"] for r in records) + reg_value}

    def reg_alpha(self, t: int) -> float:
        """Group regularization's alpha in iteration ``t`` (1-based): the official schedule at
        epoch (t - 1) / iterations-per-epoch of total / iterations-per-epoch."""
        return scheduled_alpha(self.cfg["regularization"], (t - 1) / self.iters_per_epoch,
                               self.total / self.iters_per_epoch)

    def _check_losses(self, t: int, records: list[dict], reg: float) -> None:
        """``DivergedError`` naming the iteration and the width when a loss is NaN/Inf, before
        the optimizer steps (the ranks agree on the verdict: 2 = NaN, 1 = Inf, 0 = finite)."""
        def code(v: float) -> float:
            return 2.0 if math.isnan(v) else (0.0 if math.isfinite(v) else 1.0)
        flags = self._any_rank([code(r["loss"]) for r in records] + [code(reg)])
        if not any(flags):
            return
        i = next(i for i, f in enumerate(flags) if f)
        kind = "NaN" if flags[i] == 2.0 else "Inf"
        where = (f"width {records[i]['width']:g}" if i < len(records)
                 else "group regularization")
        raise DivergedError(f"loss became {kind} at iteration {t} ({where})")

    def _last_good_text(self) -> str:
        if self.last_good is None:
            return "no checkpoint was saved before it"
        path, iteration = self.last_good
        return f"the last good checkpoint is kept at {path} (iteration {iteration})"

    # --- the run ---------------------------------------------------------------------------------
    def _knn(self) -> dict[float, float]:
        if self.val_set is None:
            return {}
        d = self.cfg["data"]
        tf = data_mod.eval_transform(d["augment"], d["image_size"])
        kw = dict(batch_size=min(256, int(d["batch_size"])), shuffle=False, num_workers=0,
                  generator=torch.Generator())
        bank = DataLoader(data_mod.Transformed(self.raw_train, tf), **kw)
        val = DataLoader(data_mod.Transformed(self.val_set, tf), **kw)
        m = self.cfg["monitor"]
        low, high = self.cfg["sampling"]["min_width"], self.cfg["sampling"]["max_width"]
        widths = sorted({min(high, max(low, float(w))) for w in m["knn_widths"]}, reverse=True)
        return {w: knn_accuracy(self.method.online.backbone, bank, val, w, self.device,
                                int(m["knn_k"]), int(m["knn_batches"])) for w in widths}

    def train(self, stop_after: int | None = None) -> dict:
        """Run to the end of the schedule (or until iteration ``stop_after``, with a checkpoint
        there to ``--resume`` from); returns a summary."""
        from tqdm import tqdm
        cfg, m = self.cfg, self.cfg["monitor"]
        if self.rank == 0:  # every input has been checked (__init__): now the outputs
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise write_error(self.out_dir, err) from None
            save_resolved(cfg, self.out_dir)
            self.monitor.open(self.iteration)
        every = int(cfg["checkpoint"]["every_iters"])
        log_every = max(1, int(m["log_every"]))
        bar = tqdm(total=self.total, initial=self.iteration, desc="pretrain", dynamic_ncols=True,
                   disable=not self.progress or self.rank != 0 or not _is_terminal(sys.stderr))
        if bar.disable and self.rank == 0:  # no bar (a log, a pipe): compact progress lines
            self.monitor.console(self.total, self.iteration)
        self.method.train()
        z_dim = int(cfg["heads"]["projector"]["out"])
        tick = time.perf_counter()
        try:
            while self.iteration < self.total:
                epoch, start = divmod(self.iteration, self.iters_per_epoch)
                loader = data_mod.train_loader(self.train_set, cfg["data"], int(cfg["seed"]), epoch,
                                               start, self.rank, self.world)
                for x1, x2, _ in loader:
                    out = self.step(x1, x2)
                    it = self.iteration
                    now = time.perf_counter()
                    out["sec_per_iter"], tick = now - tick, now
                    self.history.append({"iteration": it, "loss": out["loss"],
                                         "records": out["records"]})
                    base = out["records"][0]
                    for r in out["records"]:  # every sampled width, the base network first
                        self.monitor.check_collapse(it, r["std"], z_dim, r["width"])
                    if it % log_every == 0 or it == self.total or it == 1:
                        self.monitor.log_iteration(it, epoch, out, out["records"])
                    if int(m["knn_every"]) and (it % int(m["knn_every"]) == 0 or it == self.total):
                        self.monitor.log_knn(it, self._knn())
                    stopping = stop_after is not None and it >= stop_after
                    if (every and it % every == 0) or it == self.total or stopping:
                        self.save()
                    bar.update(1)
                    bar.set_postfix(loss=f"{out['loss']:.3f}",  # std*sqrt(d): ~1 healthy, 0 collapsed
                                    std=f"{base['std'] * z_dim ** 0.5:.2f}", w=len(out["records"]))
                    if it >= self.total or (stop_after is not None and it >= stop_after):
                        break
                if stop_after is not None and self.iteration >= stop_after:
                    break
        except DivergedError as err:
            lr = self.cfg["optim"]["lr"]
            raise DivergedError(f"{err}; {self._last_good_text()}; lower optim.lr (now {lr:g}) "
                                f"or check the data") from None
        finally:
            bar.close()
            self.monitor.close()
        if self.world > 1:
            dist.barrier()
        return self.summary()

    def summary(self) -> dict:
        last = self.history[-1] if self.history else None
        return {"iteration": self.iteration, "total": self.total,
                "checkpoint": str(self.ckpt_path) if self.rank == 0 else None,
                "last_loss": last["loss"] if last else None,
                "collapsed_at": self.monitor.collapsed_at}


def _is_terminal(stream) -> bool:
    """The progress bar is for a person at a terminal: in a log file or a pipe its redraws
    would be noise, and stderr must stay one line per error there."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
