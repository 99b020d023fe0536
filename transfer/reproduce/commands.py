"""Each covered row of ``transfer.reproduce.paper`` -> the exact commands that reproduce it, and an
estimate of its GPU-hours.

Layout under OUT (one pretraining run is shared by every row and table that needs it: Tables 5,
6 and Fig. 3 use the same two ImageNet R-50 runs, Table 2's "Ours" is Table 8's last R-18 row)::

    OUT/pretrain/<config>[+<sha8 of the overrides>][-fw<width>]/checkpoint.pth   tools/pretrain.py
    OUT/table<T>/<row>/export[_w<width>]/w<width>/...       tools/convert_width.py
    OUT/table<T>/<row>/probe[_w<width>]/results.json        tools/linear_probe.py
    OUT/table<T>/<row>/det/<engine>_<task>_w<width>/metrics.json   tools/train_det.sh
    OUT/logs/<step>.log, OUT/.steps/<step>.json             transfer.pipeline (re-runs skip)

An "individually trained" row has one pretraining run per width (``sampling.fixed_width=W``), one
export and one probe per width (``_w<width>`` suffixes).

GPU-hours are an ESTIMATE, never a measurement: no GPU run of these configs has been timed here.
Basis, per row: pretraining = epochs x training images x 2 views x (mean over the run's sampling
schedule of the sum of width^2 of the widths trained per iteration: FLOPs scale with width^2;
computed with ``pretrain.sampling.widths_for_iteration`` on the resolved config) x (1 + 1/3 when a
momentum encoder adds a forward pass) / THROUGHPUT[arch, image size]; probes = images forwarded /
(3 x throughput) (a forward is ~1/3 of a training step); detection = the detectron2 model zoo's
training speed on 8 V100s (DET_SECONDS_PER_ITER) x the protocol's iterations. THROUGHPUT is an
ASSUMED figure for one A100 with mixed precision (ResNet-50 at 224 px ~1200 training images/s,
the order of public benchmarks; the others scaled by their FLOPs), not measured on this machine.
"""
from __future__ import annotations

import hashlib
import math
import random
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from transfer.reproduce.paper import Row

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs" / "pretrain"

# Training images/s (forward + backward, one view, full width) on one A100 with AMP: ASSUMED.
THROUGHPUT = {("resnet18", 32): 8000.0, ("resnet50", 32): 3000.0, ("mobilenetv2", 32): 6000.0,
              ("resnet18", 224): 2600.0, ("resnet50", 224): 1200.0,
              ("vit_tiny", 224): 3000.0, ("vit_small", 224): 1100.0}
THROUGHPUT_SOURCE = ("assumed A100 + AMP training throughput (ResNet-50 224 px ~1200 img/s, others "
                     "scaled by FLOPs); not measured here")
# detectron2 MODEL_ZOO.md "train time (s/im)" x 16 images ... given there per iteration on 8 V100:
# faster_rcnn_R_50_FPN_1x 0.210 s/iter, mask_rcnn_R_50_FPN_1x 0.261 s/iter.
DET_SECONDS_PER_ITER = {"voc": 0.210, "coco": 0.261}
DET_GPUS_OF_THAT_SPEED = 8
DET_ITERS = {"voc": 24000, "coco": 90000}  # transfer/detection/protocol.py
TRAIN_IMAGES = {"cifar100": 50000, "cifar10": 50000, "folder": 1281167, "synthetic": 2048}
PROBE_IMAGES = {"cifar10": 60000, "cifar100": 60000, "flowers102": 8189, "pets": 7349,
                "dtd": 5640, "imagenet": 1331167, "digits": 1797}
SGD_PROBE_EPOCHS = 101  # 1 epoch of BN recalibration + 100 epochs (transfer/linear/sgd.py)


# --smoke: every step of a row at toy scale, to check the plumbing end to end on a CPU in about a
# minute (the numbers mean nothing). Pretraining: 2 iterations on the built-in synthetic set with
# small heads (ViTs: one block of 32 px at patch 8; CNNs: 16 px); only the row's largest and
# smallest widths; export with one 16-image calibration batch; probe: L-BFGS on scikit-learn's
# digits (bundled, no download) over 3 weight decays, features cached under OUT/cache.
SMOKE_PRETRAIN = ("data.name=synthetic", "data.batch_size=8", "data.num_workers=0",
                  "data.synthetic.train_size=32", "data.synthetic.val_size=0",
                  "schedule.iters=2", "optim.warmup_epochs=0", "checkpoint.every_iters=2",
                  "heads.projector.hidden=32", "heads.projector.out=16",
                  "heads.predictor.hidden=32", "heads.distill_head.hidden=32",
                  "monitor.knn_every=0", "monitor.tensorboard=false", "amp=false")
SMOKE_MODEL = {"vit": ("model.image_size=32", "model.patch_size=8", "model.depth=1",
                       "data.image_size=32"),
               "cnn": ("data.image_size=16",)}
SMOKE_CONVERT = ("--calib-batches", "1", "--calib-batch-size", "16")
SMOKE_PROBE = ("--datasets", "digits", "--protocol", "lbfgs", "--wd-grid", "1e-4", "1e-2", "3")


def smoke_overrides(row: Row) -> list[str]:
    """The pretraining overrides of ``--smoke`` for ``row``'s architecture."""
    arch = str(resolved_config(row)["model"]["arch"])
    return list(SMOKE_PRETRAIN) + list(SMOKE_MODEL["vit" if arch.startswith("vit") else "cnn"])


def teacher_config(row: Row) -> str | None:
    """The config stem of a SEED row's teacher: ``teacher.checkpoint: runs/STEM/checkpoint.pth``
    names the default run of configs/pretrain/STEM.yaml (None: no teacher, or another file)."""
    path = (resolved_config(row).get("teacher") or {}).get("checkpoint")
    if not path or Path(path).name != "checkpoint.pth":
        return None
    stem = Path(path).parent.name
    return stem if (CONFIG_DIR / f"{stem}.yaml").is_file() else None


def width_dir(width: float) -> str:
    """The converter's folder for ``width`` (transfer/export/convert.py ``folder_name``)."""
    return f"w{width:.2f}" if round(width, 2) == width else f"w{width:g}"


@dataclass
class Command:
    name: str                 # step name (unique in OUT; shared runs share a name)
    argv: list[str]
    outputs: list[Path]
    inputs: list[Path]
    kind: str                 # pretrain | convert | probe | det
    env: dict | None = None

    def text(self) -> str:
        env = "".join(f"{k}={shlex.quote(v)} " for k, v in (self.env or {}).items())
        return env + shlex.join(_rel(a) for a in self.argv)


def _rel(arg: str) -> str:
    """Paths inside the checkout printed relative to it (commands run from the repository root)."""
    try:
        return str(Path(arg).relative_to(ROOT)) if arg.startswith(str(ROOT)) else arg
    except ValueError:
        return arg


def config_path(row: Row) -> Path:
    return CONFIG_DIR / f"{row.config}.yaml"


def resolved_config(row: Row, width: float | None = None) -> dict:
    """The config the row's pretraining runs (``pretrain.config.load_config``); ConfigError."""
    from pretrain.config import load_config
    over = list(row.overrides) + ([f"sampling.fixed_width={width}"] if width is not None else [])
    return load_config(config_path(row), over)


def pretrain_id(row: Row, width: float | None) -> str:
    name = row.config
    if row.overrides:
        name += "+" + hashlib.sha256("\n".join(sorted(row.overrides)).encode()).hexdigest()[:8]
    if width is not None:
        name += f"-f{width_dir(width)}"
    return name


@dataclass
class Settings:
    out: Path
    data_root: str = "data"              # CIFAR / probe datasets (torchvision layouts)
    imagenet_root: str = "data/imagenet"  # an ImageNet-style folder (ROOT/train/<class>/...)
    det_data: str = "datasets"           # $DETECTRON2_DATASETS
    gpus: int = 1
    python: str = sys.executable
    smoke: bool = False                  # toy scale (SMOKE_*), to check the plumbing


def row_dir(s: Settings, row: Row) -> Path:
    return Path(s.out) / f"table{row.table}" / row.key


def commands(row: Row, s: Settings) -> list[Command]:
    """Every command of a covered row, in order (pretrain, convert, evaluate per run)."""
    if not row.covered:
        raise ValueError(f"row {row.table}/{row.key} is {row.unavailable}")
    out, py = Path(s.out), s.python
    folder_data = _data_name(row) == "folder"
    root = s.imagenet_root if folder_data else s.data_root
    ev = row.evaluation
    widths = sorted({max(row.widths), min(row.widths)}, reverse=True) if s.smoke else row.widths
    runs = [(w, [w]) for w in widths] if row.individual else [(None, list(widths))]
    smoke = smoke_overrides(row) if s.smoke else []
    cmds: list[Command] = []
    launcher = [py] if s.gpus <= 1 else [py, "-m", "torch.distributed.run",
                                         f"--nproc_per_node={s.gpus}"]
    teacher, teacher_over, teacher_in = teacher_config(row), [], []
    if teacher:  # SEED: the teacher is pretrained first, once, and every student names its file
        tdir = out / "pretrain" / (teacher + ("+smoke" if s.smoke else ""))
        tcfg = CONFIG_DIR / f"{teacher}.yaml"
        cmds.append(Command(f"pretrain-{tdir.name}", launcher + [
            str(ROOT / "tools" / "pretrain.py"), "--config", str(tcfg), "--no-progress", *smoke,
            f"data.root={root}", f"output.dir={tdir}"], [tdir / "checkpoint.pth"], [tcfg],
            "pretrain"))
        teacher_over, teacher_in = [f"teacher.checkpoint={tdir / 'checkpoint.pth'}"], \
            [tdir / "checkpoint.pth"]
    for fixed, widths in runs:
        pid = pretrain_id(row, fixed) + ("+smoke" if s.smoke else "")
        pdir = out / "pretrain" / pid
        ckpt = pdir / "checkpoint.pth"
        over = list(row.overrides) + ([f"sampling.fixed_width={fixed}"] if fixed is not None else [])
        if teacher_over:  # the row's teacher run replaces the config's default path
            over = [o for o in over if not o.startswith("teacher.checkpoint=")]
        over += smoke + teacher_over
        cmds.append(Command(f"pretrain-{pid}", launcher + [
            str(ROOT / "tools" / "pretrain.py"), "--config", str(config_path(row)), "--no-progress",
            *over, f"data.root={root}", f"output.dir={pdir}"], [ckpt],
            [config_path(row), *teacher_in], "pretrain"))
        suffix = "" if fixed is None else f"_{width_dir(fixed)}"
        rdir = row_dir(s, row)
        export = rdir / f"export{suffix}"
        ws = [f"{w:g}" for w in widths]
        formats = ["torchvision"] + (["detectron2"] if ev.kind == "det" and ev.engine == "detectron2"
                                     else ["mmdet"] if ev.kind == "det" else [])
        tag = f"t{row.table}-{row.key}{suffix}"
        cmds.append(Command(f"convert-{tag}", [
            py, str(ROOT / "tools" / "convert_width.py"), str(ckpt), "--widths", *ws,
            "--formats", *formats, "--out", str(export), "--quiet",
            *(SMOKE_CONVERT if s.smoke else ())],
            [export / width_dir(w) / "meta.json" for w in widths], [ckpt], "convert"))
        if ev.kind == "probe":
            probe = rdir / f"probe{suffix}"
            size = next((o.split("=")[1] for o in smoke if o.startswith("data.image_size=")), "")
            evaluation = (list(SMOKE_PROBE) + ["--image-size", size, "--cache-dir",
                                               str(out / "cache")] if s.smoke else
                          ["--datasets", *ev.datasets, "--data-root", s.data_root,
                           "--protocol", ev.protocol, "--image-size", str(ev.image_size)])
            cmds.append(Command(f"probe-{tag}", [
                py, str(ROOT / "tools" / "linear_probe.py"), "--export", str(export),
                "--widths", *ws, *evaluation, "--out", str(probe)],
                [probe / "results.json"], [export / width_dir(w) / "torchvision.pth"
                                           for w in widths], "probe"))
        else:
            for w in widths:
                ddir = rdir / "det" / f"{ev.engine}_{ev.task}_{width_dir(w)}"
                cmds.append(Command(f"det-{tag}-{ev.engine}-{ev.task}-{width_dir(w)}", [
                    "bash", str(ROOT / "tools" / "train_det.sh"), ev.engine, ev.task,
                    str(export / width_dir(w)), "--gpus", str(s.gpus), "--out", str(ddir)],
                    [ddir / "metrics.json"], [export / width_dir(w) / "meta.json"], "det",
                    env={"DETECTRON2_DATASETS": s.det_data}))
    return cmds


def _data_name(row: Row) -> str:
    return resolved_config(row)["data"]["name"]


# ------------------------------------------------------------------------------ estimate
def width_cost(cfg: dict, samples: int = 400, seed: int = 0) -> float:
    """Mean over a ``samples``-iteration schedule of sum(width^2) trained per iteration."""
    from pretrain.sampling import widths_for_iteration
    rng = random.Random(seed)
    total = sum(sum(w * w for w in widths_for_iteration(t, samples, cfg["sampling"], rng))
                for t in range(1, samples + 1))
    return total / samples


def _throughput(arch: str, size: int) -> float:
    if (arch, size) in THROUGHPUT:
        return THROUGHPUT[(arch, size)]
    base = THROUGHPUT.get((arch, 224)) or THROUGHPUT.get((arch, 32)) or 1200.0
    ref = 224 if (arch, 224) in THROUGHPUT else 32
    return base * (ref / size) ** 2


@dataclass
class Estimate:
    pretrain: float
    evaluate: float
    basis: str

    @property
    def total(self) -> float:
        return self.pretrain + self.evaluate


def estimate(row: Row) -> Estimate:
    """GPU-hours of a covered row (module docstring: the basis; an estimate, not a measurement)."""
    runs = list(row.widths) if row.individual else [None]
    pre, parts, costs = 0.0, [], []
    for fixed in runs:
        cfg = resolved_config(row, fixed)
        arch, size = cfg["model"]["arch"], int(cfg["data"]["image_size"])
        images = TRAIN_IMAGES.get(cfg["data"]["name"], 50000)
        epochs = cfg["schedule"]["epochs"]
        m = cfg["method"]
        momentum = 4 / 3 if (m.get("momentum_base") or m.get("momentum_sub")) else 1.0
        cost = width_cost(cfg)
        tput = _throughput(arch, size)
        pre += epochs * images * 2 * cost * momentum / tput / 3600
        costs.append(cost)
    parts.append(f"pretrain: {epochs} ep x {images} img x 2 views x {sum(costs):.2f} width-cost "
                 f"(sum of width^2 per iteration" + (f", summed over {len(runs)} runs, one per "
                                                     f"width" if row.individual else "") +
                 f"){' x 4/3 momentum' if momentum > 1 else ''} / {tput:g} img/s ({arch} {size}px)")
    ev = row.evaluation
    if ev.kind == "probe":
        cfg = resolved_config(row)
        tput = _throughput(cfg["model"]["arch"], ev.image_size)
        per = SGD_PROBE_EPOCHS * 50000 / (3 * tput) if ev.protocol == "sgd" else 0.0
        imgs = sum(PROBE_IMAGES.get(d, 50000) for d in ev.datasets)
        if ev.protocol == "sgd":
            evaluate = sum(per * w * w for w in row.widths) / 3600 * len(ev.datasets)
            parts.append(f"probe: {SGD_PROBE_EPOCHS} SGD epochs x 50000 img forward per width")
        else:
            evaluate = sum(imgs * w * w for w in row.widths) / (3 * tput) / 3600
            parts.append(f"probe: {imgs} img forwarded once per width (L-BFGS on cached features)")
    else:
        per = DET_ITERS[ev.task] * DET_SECONDS_PER_ITER[ev.task] * DET_GPUS_OF_THAT_SPEED / 3600
        evaluate = per * len(row.widths)
        parts.append(f"detection: {DET_ITERS[ev.task]} it x {DET_SECONDS_PER_ITER[ev.task]} s/it x "
                     f"{DET_GPUS_OF_THAT_SPEED} V100 (detectron2 model zoo R50-FPN) per width, "
                     f"not reduced for narrower widths")
    return Estimate(pre, evaluate, "; ".join(parts))


def fmt_hours(h: float) -> str:
    return f"{h:.1f}" if h >= 1 else f"{h:.2f}"


def is_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
