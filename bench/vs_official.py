#!/usr/bin/env python
"""Our US3L iteration against the official US3L code's own iteration, interleaved in one run.

Issue #17 ("Pretraining speed", item 3). The official side is megvii-research/US3L-CVPR2023 as
its CIFAR recipe runs it: scripts/cifar/run_simclr_featdistill.sh ->
configs/cifar/us_resnet18_simclr_featdistill_cifar.yaml (us_cifar_resnet18, SimCLR_Momentum with
the predictor as the auxiliary head, base criterion InfoNCEv2_distill, distillation criterion
CosineSimilarity, GroupReg, SAMPLE_SCHEDULER A = Algorithm 1), built the way workers/ssl.py
``ssl()`` builds it (their get_config, build_ssl_model, LOSS, SGD, GradScaler) and driven by their
own ``workers.ssl.train()``: one call per stage over a loader of --iters batches. The loader hands
their loop the batch and, between their iterations, times ours -- so every iteration runs
official, ours plain, ours fast, back to back. Ours is ``pretrain.engine.Trainer.step`` built as
bench/pretrain_cost.py ``trainer_for`` does (method.name=us3l = Table 7 case 13, projector without
a final BN like the official SimCLR_Momentum, as configs/pretrain/_us3l.yaml), plain and with the
--fast overrides. Same x1/x2 (synthetic, --batch per view), same device, same thread count.

Widths: the SAME width lists on both sides, drawn by bench/pretrain_cost.py ``schedule_samples``
(--iters iterations from each quarter of a 400-iteration Algorithm 1 schedule) and forced into
their loop by replacing ``workers.ssl.generate_widths_train`` for the run (their sampler draws the
same form -- stage 1 [1.0], stages 2-4 [1.0, R_min, one uniform width] with R_min 0.75/0.5/0.25,
checked and printed per stage against a draw of their own sampler; only the random width differs).

What differs between the two iterations (so what the ratio compares):
* optimizer: official zero_grad + backward + SGD step once PER WIDTH (their loop: "compute
  gradient and do SGD step" inside the width loop); ours accumulates the widths' gradients and
  steps once per iteration (Algorithm 1).
* group regularization: official GroupReg builds a lambda mask per parameter in a Python loop and
  adds sum(lambda * p^2) to EVERY width's loss (autograd through it); ours adds its closed-form
  gradient to .grad once per iteration (pretrain/regularizers.py).
* losses: the same forms -- base: InfoNCE 2B form (nt_xentv2) of the online output against the
  momentum target, both view pairs; sub-networks: negative cosine of g(z) against the momentum
  target (official CosineSimilarity; ours "mse" distillation, the same -cos). Official averages
  with /2 terms inside the criterion, ours 0.5 * sum: same cost.
* momentum encoder: official EMA-updates encoder_k (backbone + projector) BEFORE the base
  forward, once per iteration (MOMENTUM_UPDATE False); ours after the optimizer step. Both run the
  momentum network at full width on both views once per iteration.
* bookkeeping: official calls .item() 2-4 times per width (LOSS meter, criterion meter, reg meter)
  and prints a progress line every 10 iterations (at i=0 of each call here: one per stage);
  ours one .item() plus an embedding-std per width and the divergence check.
* precision: official TRAIN.USE_AMP is False (config default) everywhere; ours plain uses autocast
  fp16 on CUDA only (config amp=true), and the --fast keys whatever they turn on.
* no DDP on either side: one process; their DistributedDataParallel(model) is replaced by a plain
  holder exposing ``.module`` (their loop reaches the network through it), so no all-reduce.

Shims (nothing in their repository is edited): ``torch._six`` (gone from torch 2.x; only
utils/forward_hook.py imports ``string_classes`` from it, for feature distillation, off here) is a
stub module; their ``images[i].cuda()`` is answered by the tensor already on the run's device (a
Tensor subclass whose ``.cuda()`` returns the plain tensor), so the loop runs on CPU; their
progress print goes to a buffer and their logger has no handler.

    git clone -q https://github.com/megvii-research/US3L-CVPR2023 /tmp/us3l-official
    python bench/vs_official.py --repo /tmp/us3l-official --iters 2
    python bench/vs_official.py --repo /tmp/us3l-official --fast amp=false   # another fast set

Exit status: 0 done, 2 bad input (no/wrong --repo, a bad --fast key).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bench.pretrain_cost import _sync, schedule_samples, trainer_for  # noqa: E402
from pretrain import cli  # noqa: E402
from pretrain.config import ConfigError  # noqa: E402

FAST = ["speed.channels_last=true", "speed.bf16=true", "speed.cached_slices=true"]
GOAL = 2.0  # issue #17: ours fast at least twice as fast per iteration as the official code
# scripts/cifar/run_simclr_featdistill.sh: the official US3L recipe for ResNet-18 on CIFAR
OFFICIAL_CONFIG = "configs/cifar/us_resnet18_simclr_featdistill_cifar.yaml"
OFFICIAL_FILES = ("workers/ssl.py", "models/OFA/us_cifar_resnet.py", OFFICIAL_CONFIG)
# top-level names the official repository imports as packages/modules from its root
OFFICIAL_TOP = ("config", "datasets", "losses", "meters", "models", "utils", "workers")
# the project's US3L projector as configs/pretrain/_us3l.yaml (no BN after the last linear, as the
# official SimCLR_Momentum's encoder_q.fc)
OURS = ["method.name=us3l", "heads.projector.bn_last=false"]
SCHEDULE = 400  # iterations of the width schedule the samples come from (4 quarters of 100)
WARMUP = 2


class BadInput(ValueError):
    """One line for the user (exit 2)."""


class _AlreadyOnDevice(torch.Tensor):
    """A batch tensor whose ``.cuda()`` (the official loop moves each view with it) returns the
    plain tensor, already on the run's device: their loop runs unchanged on CPU too."""

    def cuda(self, *args, **kwargs):  # noqa: D102 - torch.Tensor's method
        return self.as_subclass(torch.Tensor)


class _Holder(torch.nn.Module):
    """Stands in for their DistributedDataParallel(model): their loop reaches the network through
    ``model.module``; parameter names keep DDP's ``module.`` prefix (GroupReg matches on names)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def check_repo(repo: Path) -> None:
    missing = [f for f in OFFICIAL_FILES if not (repo / f).is_file()]
    if not repo.is_dir() or missing:
        what = "does not exist" if not repo.exists() else (
            "is not a folder" if not repo.is_dir() else f"has no {missing[0]}")
        raise BadInput(f"--repo {repo} {what}: pass a checkout of the official US3L code "
                       f"(git clone https://github.com/megvii-research/US3L-CVPR2023 PATH)")


def import_official(repo: Path) -> SimpleNamespace:
    """Their modules, imported from ``repo`` (with the ``torch._six`` stub)."""
    for name in OFFICIAL_TOP:
        mod = sys.modules.get(name)
        if mod is not None and not str(getattr(mod, "__file__", "") or "").startswith(str(repo)):
            raise BadInput(f"a module named {name!r} is already imported from "
                           f"{getattr(mod, '__file__', '?')}; run vs_official.py in its own "
                           f"interpreter")
    if "torch._six" not in sys.modules:  # removed in torch 2.0; only forward_hook.py needs it
        six = types.ModuleType("torch._six")
        six.string_classes = (str, bytes)
        sys.modules["torch._six"] = six
    sys.path.insert(0, str(repo))
    try:
        return SimpleNamespace(
            ssl=importlib.import_module("workers.ssl"), config=importlib.import_module("config"),
            models=importlib.import_module("models"), losses=importlib.import_module("losses"),
            builder=importlib.import_module("utils.builder"))
    except ImportError as err:
        raise BadInput(f"cannot import the official code from {repo}: {cli.one_line(err)}; "
                       f"install what it names into this environment") from None


def official_side(off: SimpleNamespace, repo: Path, batch: int, device: torch.device):
    """Config, model, criterion, optimizer and scaler as their workers/ssl.py ``ssl()`` builds
    them (single process: no DDP init, no dataset)."""
    config = off.config.get_config(SimpleNamespace(config=str(repo / OFFICIAL_CONFIG)))
    config = off.config.update_config(config, "TRAIN.BATCH_SIZE", batch)
    config = off.config.update_config(config, "TRAIN.USE_DDP", False)
    config = off.config.update_config(config, "DEVICE", str(device))
    with contextlib.redirect_stdout(io.StringIO()):  # their builder prints its name
        model = _Holder(off.builder.build_ssl_model(off.models.__dict__[config.MODEL.ARCH], config))
    model = model.to(device)
    if config.MODEL.OFA.REGULARIZER:  # ssl(): "hack: set weight decay to zero ..."
        config = off.config.update_config(config, "TRAIN.OPTIMIZER.WEIGHT_DECAY", 0.0)
    criterion = off.losses.LOSS(config)
    optimizer = torch.optim.SGD(model.parameters(), config.TRAIN.LR_SCHEDULER.BASE_LR,
                                momentum=config.TRAIN.OPTIMIZER.MOMENTUM,
                                weight_decay=config.TRAIN.OPTIMIZER.WEIGHT_DECAY)
    scaler = off.ssl.GradScaler(enabled=config.TRAIN.USE_AMP)
    logger = logging.getLogger("us3l-official-bench")
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return SimpleNamespace(config=config, model=model, criterion=criterion, optimizer=optimizer,
                           scaler=scaler, logger=logger)


class _InterleavedLoader:
    """The official loop's data loader: yields the batch, times their iteration (from the yield
    to their request for the next batch) and runs ``after(k)`` (ours) before the next one."""

    def __init__(self, x1, x2, n: int, device: torch.device, after):
        self.views, self.n, self.device, self.after = (x1, x2), n, device, after
        self.times: list[float] = []

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for k in range(self.n):
            images = [x.as_subclass(_AlreadyOnDevice) for x in self.views]
            _sync(self.device)
            t0 = time.perf_counter()
            yield images, None
            _sync(self.device)
            self.times.append(time.perf_counter() - t0)
            self.after(k)


def run_official(off, side, loader, epoch: int, widths: list[list[float]]) -> None:
    """Their ``train()`` for one epoch of ``loader`` with the width lists forced, in order."""
    queue = [sorted(w, reverse=True) for w in widths]  # their sampler sorts from max to min
    original = off.ssl.generate_widths_train
    off.ssl.generate_widths_train = lambda config, epoch=-1: list(queue.pop(0))
    try:
        off.ssl.adjust_learning_rate(side.optimizer, side.config.TRAIN.LR_SCHEDULER.BASE_LR,
                                     epoch, side.config)
        with contextlib.redirect_stdout(io.StringIO()):
            off.ssl.train(loader, side.model, side.criterion, side.optimizer, side.scaler, epoch,
                          side.config, side.logger)
    finally:
        off.ssl.generate_widths_train = original


def same_form(ours: list[float], theirs: list[float]) -> bool:
    return (len(ours) == len(theirs) and math.isclose(max(ours), max(theirs))
            and math.isclose(min(ours), min(theirs)))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def repo_commit(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown commit"
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="vs_official.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, required=True,
                   help="a checkout of megvii-research/US3L-CVPR2023 (read, never edited)")
    p.add_argument("--batch", type=cli.int_at_least(2), default=64, help="images per view")
    p.add_argument("--threads", type=cli.int_at_least(1), default=2)
    p.add_argument("--iters", type=cli.int_at_least(1), default=3,
                   help="timed iterations per schedule quarter (per side)")
    p.add_argument("--fast", action="append", metavar="KEY=VALUE", default=None,
                   help=f"config override of the 'ours fast' row (repeat); default {FAST}")
    args = p.parse_args(argv)
    fast = args.fast if args.fast is not None else FAST
    try:
        check_repo(args.repo.resolve())
        return compare(args, args.repo.resolve(), fast)
    except (BadInput, ConfigError) as err:
        print(f"vs_official.py: error: {cli.one_line(err)}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT


def compare(args, repo: Path, fast: list[str]) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = SimpleNamespace(arch="resnet18", stem="cifar", image_size=32, batch=args.batch)
    with tempfile.TemporaryDirectory(prefix="us3l-vs-official-") as tmp:
        plain = trainer_for(spec, Path(tmp) / "plain", *OURS)
        quick = trainer_for(spec, Path(tmp) / "fast", *OURS, *fast)
        off = import_official(repo)
        device = plain.device
        side = official_side(off, repo, args.batch, device)
        x1, x2, _ = next(iter(DataLoader(plain.train_set, batch_size=args.batch)))
        x1, x2 = x1.to(device), x2.to(device)
        widths = schedule_samples(plain.cfg["sampling"], SCHEDULE, args.iters, 1)
        quarter = side.config.TRAIN.EPOCHS // 4
        print(f"official US3L ({repo_commit(repo)}, {OFFICIAL_CONFIG}) vs ours, resnet18/cifar "
              f"32px, batch {args.batch} per view, {args.iters} iterations per stage, device "
              f"{device}", flush=True)
        print(f"ours fast: {' '.join(fast)}", flush=True)

        t_ours = {"plain": [], "fast": []}

        def ours(trainer, name, w, record=True):
            _sync(device)
            t0 = time.perf_counter()
            trainer.step(x1, x2, widths=w)
            _sync(device)
            if record:
                t_ours[name].append(time.perf_counter() - t0)

        warm_w = widths[args.iters:args.iters + 1] * WARMUP  # a stage-2 list: every code path
        warm = _InterleavedLoader(x1, x2, WARMUP, device, lambda k: (
            ours(plain, "plain", warm_w[k], False), ours(quick, "fast", warm_w[k], False)))
        run_official(off, side, warm, quarter + quarter // 2, warm_w)

        t_off, stage_rows = [], []
        for q in range(4):
            stage_w = widths[q * args.iters:(q + 1) * args.iters]
            loader = _InterleavedLoader(x1, x2, args.iters, device, lambda k, sw=stage_w: (
                ours(plain, "plain", sw[k]), ours(quick, "fast", sw[k])))
            epoch = q * quarter + quarter // 2
            theirs = off.ssl.generate_widths_train(side.config, epoch)  # their own draw
            run_official(off, side, loader, epoch, stage_w)
            t_off += loader.times
            means = [statistics.fmean(t[-args.iters:]) for t in
                     (loader.times, t_ours["plain"], t_ours["fast"])]
            form = "same form" if all(same_form(w, theirs) for w in stage_w) else "NOT same form"
            stage_rows.append((stage_w, theirs, form))
            print(f"stage {q + 1}/4 (epoch {epoch}): official {means[0]:.2f} s/iter, ours plain "
                  f"{means[1]:.2f}, ours fast {means[2]:.2f}", flush=True)
    report(args, device, t_off, t_ours, stage_rows)
    return cli.EXIT_OK


def report(args, device, t_off, t_ours, stage_rows) -> None:
    n = args.iters
    rows = {"official": t_off, "ours plain": t_ours["plain"], "ours fast": t_ours["fast"]}
    means = {}
    print(f"\nseconds per iteration (mean of {n} per stage; mean = schedule average of the 4 "
          f"equal stages)")
    print(f"{'':12}" + "".join(f"{f'stage {q + 1}':>10}" for q in range(4)) + f"{'mean':>10}")
    for name, times in rows.items():
        stage = [statistics.fmean(times[q * n:(q + 1) * n]) for q in range(4)]
        means[name] = statistics.fmean(stage)
        print(f"{name:12}" + "".join(f"{v:10.3f}" for v in stage) + f"{means[name]:10.3f}")
    plain = means["official"] / means["ours plain"]
    fast = means["official"] / means["ours fast"]
    print(f"official / ours plain: {plain:.3f}x")
    print(f"official / ours fast:  {fast:.3f}x")
    where = "CPU" if device.type == "cpu" else "GPU"
    print(f"{where} goal: ours fast >= {GOAL:.2f}x the official code per iteration: "
          f"{'met' if fast >= GOAL else 'NOT met'}")
    print("widths per stage (both sides ran these lists, in this order; official loop sorts "
          "max->min; 'theirs' = one draw of their own sampler for the stage):")
    for q, (lists, theirs, form) in enumerate(stage_rows):
        shown = "; ".join(str(w) for w in lists)
        print(f"  stage {q + 1}: {shown}   theirs e.g. {[round(w, 4) for w in theirs]} ({form})")
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, {device}: {hw}")


if __name__ == "__main__":
    sys.exit(cli.run(main, "vs_official.py"))
