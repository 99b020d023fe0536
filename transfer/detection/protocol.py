"""The detection transfer protocol: ONE table that both engines are configured from and checked
against, and the arithmetic that keeps a run on it whatever the number of processes.

Why here: detectron2's ``IMS_PER_BATCH`` is global while MMDetection's ``batch_size`` is per GPU,
so the same numbers in two config files meant different runs. Both engines now resolve the total
batch, the per-process batch, gradient accumulation and the lr here, and each run describes the
config it actually built (``transfer.detectron2.config.describe`` / ``transfer.mmdet.config.
describe``) into ``metrics.json``; tests compare those descriptions with this table.

Where each value comes from (the self-supervised transfer protocol of MoCo, He et al. CVPR 2020,
and mmselfsup 1.x ``configs/benchmarks/mmdetection``, which follows it):
- total batch 16, lr 0.02: MoCo's ``detection/configs/Base-RCNN-C4-BN.yaml`` (IMS_PER_BATCH 16,
  BASE_LR 0.02) and detectron2's Base-RCNN-FPN.yaml; mmselfsup uses 8 GPUs x 2 images.
- VOC07+12: 24k iterations, linear warm-up over 100 iterations (detectron2's default factor
  0.001), lr x0.1 at 18k and 22k, train short side 480..800 step 32 (long side <= 1333), test 800
  (<= 1333): MoCo's ``pascal_voc_R_50_C4_24k.yaml`` and mmselfsup's
  ``faster-rcnn_r50-c4_ms-24k_voc0712.py``. MoCo's detectron2 config filters no small boxes, so
  neither engine does (mmselfsup's ``min_size=32`` is MMDetection's VOC default, not MoCo's).
- COCO 1x: 90k iterations, steps 60k/80k, warm-up 1000 iterations from 0.001x: detectron2's
  ``mask_rcnn_R_50_FPN_1x.yaml`` schedule (and its default warm-up); train short side 640..800
  step 32, test 800: the same file's scales, and mmselfsup's ``mask-rcnn_r50_fpn_ms-1x_coco.py``.
  mmselfsup keeps MMDetection's 12 epochs (~88k iterations at batch 16); both engines here run
  90k iterations so that the two schedules are one.
- Norm: SyncBN in backbone, FPN, box head (4conv-1fc) and mask head (mmselfsup's R50-FPN
  benchmark configs; MoCo's R50-FPN results, Table 5 of the paper, use SyncBN the same way).
- A total batch other than 16 scales the lr linearly (Goyal et al. 2017, "Accurate, large
  minibatch SGD"), as detectron2's ``REFERENCE_WORLD_SIZE`` and MMDetection's ``auto_scale_lr``
  do; the iterations stay as configured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

REFERENCE_BATCH = 16
REFERENCE_LR = 0.02
MAX_SIZE = 1333

PROTOCOL = {
    "voc": {
        "total_batch": REFERENCE_BATCH, "lr": REFERENCE_LR, "iterations": 24000,
        "warmup_iters": 100, "warmup_factor": 0.001, "steps": [18000, 22000],
        "train_short_sides": list(range(480, 801, 32)), "train_max_size": MAX_SIZE,
        "test_short_side": 800, "test_max_size": MAX_SIZE, "min_box_size": 0,
        "norm": {"backbone": "SyncBN", "fpn": "SyncBN", "box_head": "SyncBN"},
        "evaluator": "VOC2007 test, 11-point AP at IoU .50:.05:.95, AP50, AP75",
    },
    "coco": {
        "total_batch": REFERENCE_BATCH, "lr": REFERENCE_LR, "iterations": 90000,
        "warmup_iters": 1000, "warmup_factor": 0.001, "steps": [60000, 80000],
        "train_short_sides": list(range(640, 801, 32)), "train_max_size": MAX_SIZE,
        "test_short_side": 800, "test_max_size": MAX_SIZE, "min_box_size": 0,
        "norm": {"backbone": "SyncBN", "fpn": "SyncBN", "box_head": "SyncBN",
                 "mask_head": "SyncBN"},
        "evaluator": "COCO val2017, pycocotools AP for bbox and segm",
    },
}

# What the norm layers become where SyncBN cannot run: one process has nothing to synchronise
# with (plain BN); several CPU processes (gloo) cannot run torch's SyncBatchNorm, which needs a
# GPU, so a naive all-reduce SyncBN stands in (tests and debugging only).
ONE_PROCESS_NORM = "BN"
CPU_MULTI_PROCESS_NORM = "NaiveSyncBN"


class ProtocolError(ValueError):
    """A run that cannot keep the protocol (one line for the user)."""


@dataclass(frozen=True)
class Batching:
    """How a total batch is spread: processes x per-process images x accumulation steps."""

    total: int
    processes: int
    per_process: int
    accumulation: int

    def as_dict(self) -> dict:
        return asdict(self)


def split_batch(total: int, processes: int, max_per_process: int | None = None) -> Batching:
    """The per-process batch and the accumulation steps that give exactly ``total`` images per
    optimizer step on ``processes`` processes, with at most ``max_per_process`` images in one
    forward (default: all ``total / processes``)."""
    if total < 1 or processes < 1:
        raise ProtocolError(f"total batch {total} on {processes} processes: both must be >= 1")
    if total % processes:
        divisors = [d for d in range(1, total + 1) if total % d == 0]
        raise ProtocolError(f"{processes} processes cannot share a total batch of {total} "
                            f"equally; run on {divisors} processes or pass a total batch "
                            f"divisible by {processes} (--total-batch; the lr scales linearly)")
    share = total // processes
    limit = share if max_per_process is None else max_per_process
    if limit < 1:
        raise ProtocolError(f"--ims-per-gpu {max_per_process}: pass at least 1")
    accumulation = next(k for k in range(1, share + 1) if share % k == 0 and share // k <= limit)
    return Batching(total, processes, share // accumulation, accumulation)


def scaled_lr(total: int, explicit_lr: float | None = None) -> tuple[float, str]:
    """(lr, how it was chosen): the reference lr scaled linearly with the total batch, unless the
    user set one."""
    if explicit_lr is not None:
        return float(explicit_lr), f"lr {explicit_lr:g} set explicitly (not scaled)"
    lr = REFERENCE_LR * total / REFERENCE_BATCH
    if total == REFERENCE_BATCH:
        return lr, f"lr {lr:g} at total batch {total} (the protocol)"
    return lr, (f"lr {lr:g} = {REFERENCE_LR:g} x {total}/{REFERENCE_BATCH}: total batch {total} "
                f"instead of the protocol's {REFERENCE_BATCH}, lr scaled linearly")


def norm_for(processes: int, device: str) -> str:
    """The norm layer type that stands for the protocol's SyncBN on this run."""
    if processes == 1:
        return ONE_PROCESS_NORM
    return "SyncBN" if device == "cuda" else CPU_MULTI_PROCESS_NORM


def expected(task: str, processes: int, device: str = "cuda") -> dict:
    """The protocol as a run with ``processes`` processes on ``device`` must resolve it: the
    fields of an engine's ``describe()``."""
    if task not in PROTOCOL:
        raise ProtocolError(f"unknown task {task!r}; expected one of {sorted(PROTOCOL)}")
    ref = PROTOCOL[task]
    batching = split_batch(ref["total_batch"], processes)
    norm = norm_for(processes, device)
    return {
        "total_batch": ref["total_batch"], "processes": processes,
        "per_process_batch": batching.per_process, "accumulation": batching.accumulation,
        "lr": ref["lr"], "iterations": ref["iterations"], "warmup_iters": ref["warmup_iters"],
        "warmup_factor": ref["warmup_factor"], "steps": list(ref["steps"]),
        "train_short_sides": list(ref["train_short_sides"]),
        "train_max_size": ref["train_max_size"], "test_short_side": ref["test_short_side"],
        "test_max_size": ref["test_max_size"], "min_box_size": ref["min_box_size"],
        "norm": {part: norm for part in ref["norm"]},
    }


def summary(described: dict) -> str:
    """One console line for a resolved protocol."""
    d = described
    return (f"protocol: total batch {d['total_batch']} = {d['processes']} process(es) x "
            f"{d['per_process_batch']} image(s) x {d['accumulation']} accumulation step(s), "
            f"lr {d['lr']:g}, {d['iterations']} iterations (warm-up {d['warmup_iters']}, steps "
            f"{d['steps']}), train short side {d['train_short_sides'][0]}.."
            f"{d['train_short_sides'][-1]} (<= {d['train_max_size']}), test "
            f"{d['test_short_side']} (<= {d['test_max_size']}), norm "
            + ", ".join(f"{k}={v}" for k, v in d["norm"].items()))
