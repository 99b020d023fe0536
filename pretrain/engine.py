"""The pretraining loop (Algorithm 1): one optimizer step per iteration over the sampled widths.

Per iteration: zero_grad once; the base (largest) network on both views, base loss, backward;
then each sampled sub-network, its distillation loss, backward (gradients accumulate; targets are
detached so the graphs are independent); the group regularization's gradient added once to
``.grad`` (its closed form, not a second autograd path: see ``GroupRegularizer.add_grad_``); one
optimizer step, one scheduler step, the EMA update. Mixed precision only on CUDA; DDP when started
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
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from pretrain import checkpoint as ckpt_io
from pretrain import data as data_mod
from pretrain import distributed, slim
from pretrain.config import ConfigError, save_resolved
from pretrain.device import default_device
from pretrain.losses import embedding_std
from pretrain.methods import US3L
from pretrain.models import build_backbone
from pretrain.monitor import Monitor, knn_accuracy
from pretrain.regularizers import build_regularizer
from pretrain.sampling import widths_for_iteration

# Sections that must match to resume a run (the rest -- output, monitor, checkpoint -- may change).
RESUME_KEYS = ("seed", "model", "method", "heads", "sampling", "regularization", "optim",
               "schedule")


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


def _first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(key), b.get(key), f"{path}{key}.")
            if diff:
                return diff
        return None
    return None if a == b else path.rstrip(".")


class Trainer:
    """Builds everything from a resolved config; ``train()`` runs (or continues) the schedule."""

    def __init__(self, cfg: dict, resume: str | os.PathLike | None = None, progress: bool = True,
                 device: str | torch.device | None = None):
        self.cfg, self.progress = cfg, progress
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        check_batch_split(int(cfg["data"]["batch_size"]), self.world)  # before any collective
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = default_device(local_rank)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # set_device needs an index
            self.device = torch.device("cuda", local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            backend = cfg["dist"]["backend"] or ("nccl" if self.device.type == "cuda" else "gloo")
            dist.init_process_group(backend)
        seed = int(cfg["seed"])  # the same on every rank: identical initial weights and EMA copies
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        self.out_dir = Path(cfg["output"]["dir"])
        self.ckpt_path = self.out_dir / "checkpoint.pth"

        # data
        d = cfg["data"]
        train_set, self.val_set = data_mod.build_datasets(d)
        self.train_set = data_mod.TwoViews(train_set, data_mod.two_view_transform(
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
        self.method = US3L(backbone, cfg).to(self.device)
        self.max_width = float(cfg["sampling"]["max_width"])
        o = self.method.online
        self.regularizer = build_regularizer(cfg["regularization"], o.backbone,
                                             [o.projector, o.predictor, o.distill_head])
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
        self.amp = bool(cfg["amp"]) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.width_rng = random.Random(seed)
        self.iteration = 0
        self.history: list[dict] = []
        if resume is not None:
            self._resume(resume)
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

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Every rank calls it (the RNG states are gathered); rank 0 writes the file."""
        train_state = self.train_state()
        if self.rank != 0:
            return None
        cpu = lambda sd: None if sd is None else {k: v.detach().cpu() for k, v in sd.items()}  # noqa
        state = {k: cpu(v) for k, v in self.method.state_parts().items()}
        s = self.cfg["sampling"]
        return ckpt_io.save_checkpoint(path or self.ckpt_path, config=self.cfg, state=state,
                                       train_state=train_state,
                                       width_range=(s["min_width"], s["max_width"]))

    def _resume(self, path) -> None:
        ckpt = ckpt_io.load_checkpoint(path, map_location="cpu")
        stored = ckpt["config"]
        if "gather_negatives" not in stored.get("method", {}):  # saved before the switch existed:
            stored = {**stored, "method": {**stored["method"], "gather_negatives": False}}  # local
        for key in RESUME_KEYS:
            diff = _first_difference(stored.get(key), self.cfg.get(key), key + ".")
            if diff:
                raise ConfigError(f"cannot resume {path}: config differs at '{diff}' "
                                  f"({_get(stored, diff)!r} in the checkpoint, {_get(self.cfg, diff)!r}"
                                  f" now); resume with the run's own config")
        ts = ckpt.get("train_state") or {}
        if "optimizer" not in ts:
            raise ckpt_io.CheckpointError(f"{path} holds no training state to resume from")
        self.method.load_parts(ckpt["state"])
        self.method.to(self.device)
        self.optimizer.load_state_dict(ts["optimizer"])
        self.scheduler.load_state_dict(ts["scheduler"])
        if ts.get("scaler"):
            self.scaler.load_state_dict(ts["scaler"])
        if self.method.queue is not None:
            self.method.queue.copy_(ts["moco_queue"])
            self.method.queue_ptr.fill_(int(ts["moco_queue_ptr"]))
        _set_pyrandom_state(self.width_rng, ts["width_rng"])
        per_rank = ts.get("rng_per_rank") or [ts["rng"]]
        # This rank's own generators; a rank the saving run did not have takes rank 0's.
        set_rng_state(per_rank[self.rank] if self.rank < len(per_rank) else per_rank[0],
                      self.device)
        self.iteration = int(ts["iteration"])

    # --- one iteration ---------------------------------------------------------------------------
    def _sync_context(self, last: bool):
        return self.ddp.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.amp)

    def step(self, x1: torch.Tensor, x2: torch.Tensor, widths: list[float] | None = None) -> dict:
        """Algorithm 1 for one batch of two views; returns the per-width records.

        ``widths`` (base network first) replaces the sampler's choice (benchmarks)."""
        t = self.iteration + 1
        if widths is None:
            widths = widths_for_iteration(t, self.total, self.cfg["sampling"], self.width_rng)
        method, inner = self.method, self.method.online
        net = self.ddp if self.ddp is not None else inner
        x1, x2 = x1.to(self.device, non_blocking=True), x2.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        records = []
        with self._sync_context(last=len(widths) == 1):
            slim.set_width(inner, widths[0])
            with self._autocast():
                o1, o2 = net(x1, x2)
                k1, k2 = method.momentum_targets(x1, x2)
                base = method.base_loss(o1, o2, k1, k2)
            self.scaler.scale(base).backward()
        records.append({"width": widths[0], "role": "base", "loss": base.item(),
                        "std": embedding_std(o1["z"])})
        t1, t2 = method.sub_targets(o1, o2, k1, k2)
        sandwich = bool(self.cfg["sampling"]["sandwich"])
        for j, width in enumerate(widths[1:]):
            with self._sync_context(last=j == len(widths) - 2):
                slim.set_width(inner, width)
                with self._autocast():
                    s1, s2 = net(x1, x2, student=True)
                    loss = method.sub_loss(s1, s2, t1, t2, k1, k2)
                self.scaler.scale(loss).backward()
            records.append({"width": width, "role": "min" if (j == 0 and sandwich) else "random",
                            "loss": loss.item(), "std": embedding_std(s1["z"])})
        slim.set_width(inner, self.max_width)
        # Group regularization once per iteration (line 5), added to .grad after the (DDP-reduced)
        # backward passes: a second autograd path would mark g ready twice under DDP (issue 19).
        reg = torch.zeros((), device=self.device)
        if self.regularizer is not None:
            with torch.no_grad():
                reg = self.regularizer()
            self.regularizer.add_grad_(self.scaler.get_scale() if self.amp else 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        momentum = method.momentum_at(t, self.total)
        method.momentum_update(momentum)
        if k1 is not None and method.queue is not None:
            method.enqueue(torch.cat([k1, k2]))
        self.iteration = t
        reg_value = float(reg.detach())
        return {"records": records, "lr": lr, "momentum": momentum, "reg": reg_value,
                "loss": sum(r["loss"] for r in records) + reg_value}

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
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_resolved(cfg, self.out_dir)
        every = int(cfg["checkpoint"]["every_iters"])
        log_every = max(1, int(m["log_every"]))
        bar = tqdm(total=self.total, initial=self.iteration, desc="pretrain", dynamic_ncols=True,
                   disable=not self.progress or self.rank != 0)
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


def _get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
