"""The reported numbers of US3L (CVPR 2023), Tables 1-9 and Fig. 3, as data, row by row.

Source: the paper's text (``../shared/paper/us3l-cvpr2023.txt``). Each ``Row`` names its table, the
row as printed, how this suite trains it (a config under ``configs/pretrain/`` plus overrides, or
``None`` with the reason it is not available), how it is evaluated (a linear probe or a detection
fine-tune), the widths, and the paper's numbers per metric and width (``None`` = the paper prints
'-': the model collapsed; a metric/width absent from ``paper`` = the paper gives no number).

Conventions the data follows (each is a choice, said here once):

* Table 7 cases run on ``us3l_r18_cifar100`` with ``method.table7_case=N`` and neither dynamic
  sampling nor group regularization: Table 8's first row (neither) is case 13's 67.7, so Table 7 is
  the sandwich baseline of Tables 8-9. Table 9 likewise has no group regularization (its
  sandwich + no-dynamic row is case 13, its last row Table 8's "dynamic only").
* "Individually trained" rows (SimCLR, SimSiam, BYOL, MoCo v3) are one pretraining run per width
  (``sampling.fixed_width=W``), as the paper trains n models.
* Table 1 "Ours" is listed under S-Net (4 switches) in the paper; the row runs US3L (universally
  slimmable, a superset of the 4 switches) and says so in its note. The S-Net baselines run
  ``snet_r18_cifar100`` / ``snet_distill_r18_cifar100`` (switchable BN, pretrain/methods/snet.py).
* Fig. 3's values are only drawn in the figure; the text gives Ours - BYOL AP50 of +2.6 (0.5x)
  and +18.5 (0.25x), kept in ``note``; ``paper`` is empty, so --collect shows '–' for the paper.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ISSUE_13 = "not available: issue #13"
W9 = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25)
W4 = (1.0, 0.75, 0.5, 0.25)
W6 = (1.0, 0.8, 0.6, 0.5, 0.3, 0.25)
PROBE_5 = ("cifar10", "cifar100", "flowers102", "pets", "dtd")
COCO_KEYS = ("AP", "AP50", "AP75", "APm", "APm50", "APm75")


@dataclass(frozen=True)
class Eval:
    """How a row is evaluated. kind ``probe``: tools/linear_probe.py on ``datasets`` with
    ``protocol``/``image_size``; kind ``det``: tools/train_det.sh ``engine`` ``task``."""
    kind: str
    datasets: tuple[str, ...] = ()
    protocol: str = "lbfgs"
    image_size: int = 224
    task: str = ""
    engine: str = "detectron2"


@dataclass(frozen=True)
class Row:
    table: str
    key: str                 # short id used by --rows (unique within the table)
    name: str                # the row as the paper prints it
    method: str
    widths: tuple[float, ...]
    paper: dict              # metric -> {width: value or None (collapsed)}
    config: str | None = None            # configs/pretrain/<config>.yaml; None = not available
    overrides: tuple[str, ...] = ()
    individual: bool = False             # one pretraining run per width (sampling.fixed_width)
    evaluation: Eval | None = None
    unavailable: str | None = None       # why the row cannot be run (None: covered)
    note: str = ""

    @property
    def covered(self) -> bool:
        return self.unavailable is None

    @property
    def metrics(self) -> tuple[str, ...]:
        if self.evaluation is None:
            return tuple(self.paper)
        if self.evaluation.kind == "probe":
            return self.evaluation.datasets
        return ("AP", "AP50", "AP75") if self.evaluation.task == "voc" else COCO_KEYS


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    metric_label: str
    rows: tuple[Row, ...] = field(default_factory=tuple)


def _by_width(widths, values) -> dict:
    assert len(widths) == len(values), (widths, values)
    return dict(zip(widths, values))


def _acc(widths, values, dataset="cifar100") -> dict:
    return {dataset: _by_width(widths, values)}


C100_SGD = Eval("probe", ("cifar100",), "sgd", 32)
C10_VIT = Eval("probe", ("cifar10",), "sgd", 224)
IN_PROBE = Eval("probe", ("imagenet",), "sgd", 224)
T6_PROBE = Eval("probe", PROBE_5, "lbfgs", 224)
COCO = Eval("det", task="coco")
VOC = Eval("det", task="voc")
NO_SUPERVISED = "not available: the suite has no supervised (labelled) training"
NO_IMAGENET_PROBE = ("not available: tools/linear_probe.py has no ImageNet dataset "
                     "(pretraining configs exist: {config})")
_ = None  # the paper's '-' (collapsed)

# ------------------------------------------------------------------------------ Table 1
T1 = Table("1", "Table 1. Supervised vs SimSiam under S-Net on CIFAR-100 (ResNet-18, linear eval)",
           "top-1 (%)", (
    Row("1", "sup-individual", "Supervised / Individual", "supervised", W4,
        _acc(W4, (73.8, 72.8, 71.4, 67.3)), unavailable=NO_SUPERVISED),
    Row("1", "sup-snet", "Supervised / S-Net [32]", "supervised S-Net", W4,
        _acc(W4, (71.9, 71.7, 70.8, 66.2)), unavailable=NO_SUPERVISED),
    Row("1", "sup-snet-distill", "Supervised / S-Net+Distill [31]", "supervised S-Net+distill", W4,
        _acc(W4, (73.1, 71.9, 70.5, 67.2)), unavailable=NO_SUPERVISED),
    Row("1", "simsiam-individual", "SimSiam / Individual", "SimSiam", W4,
        _acc(W4, (65.2, 64.0, 60.6, 51.2)), "simsiam_r18_cifar100", individual=True,
        evaluation=C100_SGD),
    Row("1", "simsiam-snet", "SimSiam / S-Net [32]", "SimSiam S-Net", W4,
        _acc(W4, (_, _, _, _)), "snet_r18_cifar100", evaluation=C100_SGD,
        note="switchable BN over 1.0/0.75/0.5/0.25, no distillation (pretrain/methods/snet.py)"),
    Row("1", "simsiam-snet-distill", "SimSiam / S-Net+Distill [31]", "SimSiam S-Net+distill", W4,
        _acc(W4, (46.9, 46.9, 46.7, 45.3)), "snet_distill_r18_cifar100", evaluation=C100_SGD,
        note="switchable BN, in-place distillation from the largest width (Table 7 case 2)"),
    Row("1", "ours", "SimSiam / Ours", "US3L", W4, _acc(W4, (65.5, 65.3, 63.2, 59.7)),
        "us3l_r18_cifar100", evaluation=C100_SGD,
        note="paper: S-Net with 4 switches; here US3L (US-Net) probed at the 4 widths"),
))

# ------------------------------------------------------------------------------ Table 2
# SEED rows: one run per width (the paper's "Once Training x", cost nT), each distilled from a
# BYOL teacher at 1.0x trained first (configs/pretrain/byol_*_cifar100.yaml at its default
# output.dir, the path the seed configs name; teacher.checkpoint=PATH names another).
_TEACHER = ("teacher: {} at 1.0x, pretrained by the row's first command (configs/pretrain/{}.yaml; "
            "shared by the rows that name it)")
_R18_TEACHER = ("teacher.checkpoint=runs/byol_r18_cifar100/checkpoint.pth",)
_MBV2_TEACHER = ("teacher.checkpoint=runs/byol_mbv2_cifar100/checkpoint.pth",)


def _t2(key, name, method, values, config=None, overrides=(), individual=False, unavailable=None,
        note=""):
    return Row("2", key, name, method, W9, _acc(W9, values), config, tuple(overrides), individual,
               None if unavailable else C100_SGD, unavailable, note)


T2 = Table("2", "Table 2. Main results on CIFAR-100 (linear eval, SGD protocol)", "top-1 (%)", (
    _t2("r18-simclr", "ResNet-18 SimCLR", "SimCLR",
        (66.5, 65.4, 64.7, 63.7, 62.6, 61.0, 59.0, 56.1, 53.6), "simclr_r18_cifar100", individual=True),
    _t2("r18-simsiam", "ResNet-18 SimSiam", "SimSiam",
        (66.5, 65.4, 64.6, 63.5, 62.6, 60.0, 58.3, 54.9, 52.4), "simsiam_r18_cifar100", individual=True),
    _t2("r18-byol", "ResNet-18 BYOL", "BYOL",
        (66.8, 66.0, 65.6, 65.3, 63.0, 62.1, 59.5, 56.0, 54.3), "byol_r18_cifar100", individual=True),
    _t2("r18-seed-r50", "ResNet-18 SEED (BYOL R-50)", "SEED",
        (67.3, 66.6, 65.8, 65.2, 64.8, 63.5, 62.2, 60.1, 58.5), "seed_r18_cifar100", individual=True,
        note=_TEACHER.format("BYOL R-50", "byol_r50_cifar100")),
    _t2("r18-seedmse-r18", "ResNet-18 SEED-MSE (BYOL R-18)", "SEED-MSE",
        (67.5, 67.2, 66.5, 66.0, 65.9, 64.8, 64.0, 62.4, 60.1), "seed_mse_r18_cifar100", _R18_TEACHER,
        individual=True, note=_TEACHER.format("BYOL R-18", "byol_r18_cifar100")),
    _t2("r18-seedmse-r50", "ResNet-18 SEED-MSE (BYOL R-50)", "SEED-MSE",
        (67.5, 66.8, 66.7, 66.0, 65.4, 64.9, 63.6, 61.3, 60.1), "seed_mse_r18_cifar100", individual=True,
        note=_TEACHER.format("BYOL R-50", "byol_r50_cifar100")),
    _t2("r18-us-simclr", "ResNet-18 US+SimCLR", "US+SimCLR",
        (65.5, 64.9, 63.8, 63.6, 62.7, 61.8, 60.2, 58.2, 57.4), "us_simclr_r18_cifar100"),
    _t2("r18-us-simsiam", "ResNet-18 US+SimSiam", "US+SimSiam",
        (57.5, 57.4, 57.3, 57.0, 56.3, 55.4, 54.5, 53.1, 52.4), "us_simsiam_r18_cifar100"),
    _t2("r18-ours", "ResNet-18 Ours", "US3L",
        (69.0, 68.2, 68.0, 66.9, 66.1, 64.7, 62.6, 60.9, 60.4), "us3l_r18_cifar100"),
    _t2("r18-ours-800", "ResNet-18 Ours (800ep)", "US3L",
        (70.1, 69.3, 69.0, 68.7, 67.3, 66.4, 64.2, 63.1, 62.3), "us3l_r18_cifar100",
        ["schedule.epochs=800"]),
    _t2("r50-byol", "ResNet-50 BYOL", "BYOL",
        (67.0, 66.7, 66.5, 66.3, 66.0, 64.9, 63.8, 62.1, 61.2), "byol_r50_cifar100", individual=True),
    _t2("r50-seed-r50", "ResNet-50 SEED (BYOL R-50)", "SEED",
        (70.3, 69.8, 69.6, 69.4, 69.0, 68.2, 67.2, 65.6, 65.1), "seed_r50_cifar100", individual=True,
        note=_TEACHER.format("BYOL R-50", "byol_r50_cifar100")),
    _t2("r50-seedmse-r50", "ResNet-50 SEED-MSE (BYOL R-50)", "SEED-MSE",
        (69.4, 69.0, 68.5, 69.1, 68.4, 68.1, 67.3, 66.9, 66.4), "seed_mse_r50_cifar100", individual=True,
        note=_TEACHER.format("BYOL R-50", "byol_r50_cifar100")),
    _t2("r50-us-simclr", "ResNet-50 US+SimCLR", "US+SimCLR",
        (70.1, 69.9, 69.7, 69.3, 68.7, 68.2, 67.3, 66.0, 65.5), "us_simclr_r50_cifar100"),
    _t2("r50-us-simsiam", "ResNet-50 US+SimSiam", "US+SimSiam",
        (54.7, 54.6, 54.7, 54.7, 54.7, 54.8, 54.6, 54.3, 54.0), "us_simsiam_r50_cifar100"),
    _t2("r50-ours", "ResNet-50 Ours", "US3L",
        (72.6, 72.0, 71.5, 71.2, 70.6, 70.2, 68.6, 67.7, 67.4), "us3l_r50_cifar100"),
    _t2("r50-ours-800", "ResNet-50 Ours (800ep)", "US3L",
        (73.0, 72.5, 71.9, 71.6, 71.1, 70.8, 69.1, 68.0, 67.6), "us3l_r50_cifar100",
        ["schedule.epochs=800"]),
    _t2("mbv2-byol", "MobileNetv2 BYOL", "BYOL",
        (61.2, 60.7, 60.5, 60.2, 59.9, 58.7, 57.3, 54.6, 51.9), "byol_mbv2_cifar100", individual=True),
    _t2("mbv2-seedmse-r50", "MobileNetv2 SEED-MSE (BYOL R-50)", "SEED-MSE",
        (68.6, 68.9, 67.6, 67.3, 67.4, 66.3, 65.5, 64.0, 62.6), "seed_mse_mbv2_cifar100", individual=True,
        note=_TEACHER.format("BYOL R-50", "byol_r50_cifar100")),
    _t2("mbv2-seedmse-mbv2", "MobileNetv2 SEED-MSE (BYOL MBv2)", "SEED-MSE",
        (63.8, 63.5, 63.8, 63.6, 63.6, 63.3, 62.7, 62.1, 59.8), "seed_mse_mbv2_cifar100", _MBV2_TEACHER,
        individual=True, note=_TEACHER.format("BYOL MBv2", "byol_mbv2_cifar100")),
    _t2("mbv2-us-simclr", "MobileNetv2 US+SimCLR", "US+SimCLR",
        (56.2, 56.0, 55.3, 55.0, 54.8, 54.3, 54.0, 53.2, 52.2), "us_simclr_mbv2_cifar100"),
    _t2("mbv2-us-simsiam", "MobileNetv2 US+SimSiam", "US+SimSiam", (_,) * 9,
        "us_simsiam_mbv2_cifar100"),
    _t2("mbv2-ours", "MobileNetv2 Ours", "US3L",
        (65.7, 65.1, 64.2, 63.6, 63.4, 62.2, 61.5, 60.7, 59.3), "us3l_mbv2_cifar100"),
))

# ------------------------------------------------------------------------------ Table 3
_VIT_NOTE = ("probe: the suite's SGD protocol at 224 px (the paper used MoCo v3's main_lincls; "
             "tools/linear_probe.py has no such recipe)")


def _t3(key, name, method, values, config, individual=False):
    return Row("3", key, name, method, W4, _acc(W4, values, "cifar10"), config, (), individual,
               C10_VIT, note=_VIT_NOTE)


T3 = Table("3", "Table 3. ViT on CIFAR-10 (linear eval)", "top-1 (%)", (
    _t3("tiny-mocov3", "ViT-Tiny MoCov3", "MoCo v3", (82.6, 79.5, 75.8, 68.0),
        "mocov3_vit_tiny_cifar10", individual=True),
    _t3("tiny-us-mocov3", "ViT-Tiny US+MoCov3", "US+MoCo v3", (79.8, 79.4, 77.6, 76.4),
        "us_mocov3_vit_tiny_cifar10"),
    _t3("tiny-ours", "ViT-Tiny Ours", "US3L (ViT)", (86.0, 84.7, 83.3, 80.2), "us3l_vit_tiny_cifar10"),
    _t3("small-mocov3", "ViT-Small MoCov3", "MoCo v3", (88.0, 86.8, 83.0, 75.5),
        "mocov3_vit_small_cifar10", individual=True),
    _t3("small-us-mocov3", "ViT-Small US+MoCov3", "US+MoCo v3", (88.2, 87.5, 86.3, 84.9),
        "us_mocov3_vit_small_cifar10"),
    _t3("small-ours", "ViT-Small Ours", "US3L (ViT)", (90.3, 89.7, 88.7, 85.5),
        "us3l_vit_small_cifar10"),
))

# ------------------------------------------------------------------------------ Table 4


def _t4(key, name, method, values, config):
    return Row("4", key, name, method, W4, _acc(W4, values, "imagenet"), None,
               individual=method == "BYOL", evaluation=IN_PROBE,
               unavailable=NO_IMAGENET_PROBE.format(config=f"configs/pretrain/{config}.yaml"))


T4 = Table("4", "Table 4. Linear evaluation on ImageNet", "top-1 (%)", (
    _t4("r18-byol", "ResNet-18 BYOL", "BYOL", (54.0, 53.7, 47.4, 34.9), "byol_r18_folder"),
    _t4("r18-us-byol", "ResNet-18 US+BYOL", "US+BYOL", (55.9, 53.1, 48.0, 40.6), "us_byol_r18_folder"),
    _t4("r18-ours", "ResNet-18 Ours", "US3L", (56.9, 54.5, 48.7, 40.7), "us3l_r18_folder"),
    _t4("r50-byol", "ResNet-50 BYOL", "BYOL", (68.1, 66.3, 61.2, 50.9), "byol_r50_folder"),
    _t4("r50-us-byol", "ResNet-50 US+BYOL", "US+BYOL", (64.7, 64.3, 62.6, 57.1), "us_byol_r50_folder"),
    _t4("r50-ours", "ResNet-50 Ours", "US3L", (68.4, 66.7, 63.4, 57.7), "us3l_r50_folder"),
))

# ------------------------------------------------------------------------------ Table 5


def _coco(rows_by_width: dict) -> dict:
    """{width: (AP, AP50, AP75, APm, APm50, APm75)} -> {metric: {width: value}}."""
    return {k: {w: v[i] for w, v in rows_by_width.items()} for i, k in enumerate(COCO_KEYS)}


_T5_NOTE = ("the extracted header prints AP^bb, AP^bb50, AP^bb75, AP^m50, AP^m75, AP^m75; read as "
            "box AP/AP50/AP75 then mask AP/AP50/AP75")
T5 = Table("5", "Table 5. COCO 2017 detection + instance segmentation, Mask R-CNN R50-FPN 1x",
           "AP (%)", (
    Row("5", "byol", "BYOL", "BYOL", W4, _coco({
        1.0: (37.9, 57.8, 40.9, 33.2, 54.3, 35.0), 0.75: (35.7, 55.3, 38.6, 32.4, 52.4, 34.5),
        0.5: (32.6, 51.5, 35.2, 29.9, 48.7, 31.7), 0.25: (26.0, 43.5, 27.0, 24.2, 40.8, 25.3)}),
        "byol_r50_folder", individual=True, evaluation=COCO, note=_T5_NOTE),
    Row("5", "ours", "Ours", "US3L", W4, _coco({
        1.0: (38.3, 58.0, 41.2, 33.6, 54.6, 35.3), 0.75: (36.2, 55.8, 39.0, 32.8, 52.9, 35.0),
        0.5: (33.5, 52.7, 35.8, 30.6, 49.8, 32.3), 0.25: (27.5, 45.0, 29.3, 25.5, 42.4, 26.9)}),
        "us3l_r50_folder", evaluation=COCO, note=_T5_NOTE),
))

# ------------------------------------------------------------------------------ Table 6


def _t6(values_by_width: dict) -> dict:
    return {d: {w: v[i] for w, v in values_by_width.items()} for i, d in enumerate(PROBE_5)}


T6 = Table("6", "Table 6. Transfer to recognition benchmarks, linear eval (ImageNet R-50)",
           "top-1 / mean per-class (%)", (
    Row("6", "byol", "BYOL", "BYOL", W4, _t6({
        1.0: (87.1, 60.6, 81.0, 80.9, 70.7), 0.75: (83.6, 52.8, 82.9, 74.2, 66.3),
        0.5: (80.6, 52.0, 74.8, 75.0, 65.9), 0.25: (75.9, 46.2, 75.4, 64.7, 61.4)}),
        "byol_r50_folder", individual=True, evaluation=T6_PROBE),
    Row("6", "ours", "Ours", "US3L", W4, _t6({
        1.0: (87.1, 61.5, 90.6, 80.9, 72.6), 0.75: (84.4, 56.9, 89.7, 78.0, 71.1),
        0.5: (81.6, 52.8, 88.1, 76.8, 68.8), 0.25: (78.9, 49.9, 84.4, 74.0, 64.9)}),
        "us3l_r50_folder", evaluation=T6_PROBE),
))

# ------------------------------------------------------------------------------ Table 7
_T7 = {
    1: (_,) * 9,
    2: (57.5, 57.4, 57.3, 57.0, 56.3, 55.4, 54.5, 53.1, 52.4),
    3: (64.7, 64.7, 64.5, 64.3, 63.9, 62.6, 61.3, 59.7, 59.3),
    4: (65.4, 65.0, 64.8, 64.5, 63.8, 62.7, 61.1, 59.8, 58.9),
    5: (62.3, 62.3, 62.3, 62.2, 61.8, 60.6, 58.9, 57.6, 57.2),
    6: (63.7, 63.8, 63.7, 63.6, 63.1, 62.0, 60.6, 59.3, 58.2),
    7: (65.0, 65.0, 65.1, 65.0, 64.5, 62.7, 61.3, 59.8, 59.2),
    8: (65.5, 65.5, 65.6, 65.0, 64.6, 63.2, 61.6, 60.2, 59.7),
    9: (64.8, 64.0, 63.2, 62.0, 60.8, 59.8, 57.4, 55.1, 54.2),
    10: (65.0, 64.4, 63.1, 62.3, 61.9, 60.3, 58.3, 57.1, 56.6),
    11: (65.8, 65.0, 64.4, 63.4, 62.7, 61.8, 59.8, 58.5, 57.6),
    12: (66.9, 66.3, 65.7, 64.9, 63.8, 62.9, 61.6, 59.5, 59.1),
    13: (67.7, 67.2, 66.5, 66.0, 65.1, 64.3, 62.5, 60.5, 59.6),
    14: (65.5, 64.9, 63.8, 63.6, 62.7, 61.8, 60.2, 58.2, 57.4),
    15: (64.7, 64.5, 64.0, 63.6, 62.3, 61.4, 59.8, 58.4, 57.9),
    16: (66.0, 65.4, 64.8, 64.3, 63.8, 62.4, 61.1, 59.8, 58.7),
    17: (67.4, 66.0, 66.1, 65.6, 64.7, 64.0, 62.2, 60.2, 59.5),
}
BASELINE = ("sampling.dynamic=false", "regularization.alpha=0.0")  # Table 8's "neither" row
T7 = Table("7", "Table 7. Loss design ablation, ResNet-18 on CIFAR-100", "top-1 (%)", tuple(
    Row("7", f"case{n}", f"case {n}", f"Table 7 case {n}", W9, _acc(W9, v), "us3l_r18_cifar100",
        (f"method.table7_case={n}",) + BASELINE, evaluation=C100_SGD)
    for n, v in _T7.items()))

# ------------------------------------------------------------------------------ Table 8
_T8 = {
    "r18": ("us3l_r18_cifar100", "R-18", ((67.7, 66.5, 65.1, 64.3, 60.5, 59.6),
                                          (68.6, 67.2, 65.5, 64.6, 60.7, 59.9),
                                          (68.6, 67.3, 65.5, 64.4, 60.9, 60.1),
                                          (69.0, 68.0, 66.1, 64.7, 60.9, 60.4))),
    "r50": ("us3l_r50_cifar100", "R-50", ((71.0, 70.6, 70.0, 69.1, 67.2, 66.8),
                                          (71.8, 71.1, 70.2, 69.3, 67.3, 67.2),
                                          (71.9, 71.1, 70.0, 69.6, 67.7, 67.5),
                                          (72.6, 71.5, 70.6, 70.2, 67.7, 67.4))),
    "mbv2": ("us3l_mbv2_cifar100", "MBv2", ((62.9, 62.0, 61.5, 60.4, 59.6, 58.7),
                                            (64.7, 63.3, 62.3, 61.7, 60.7, 59.2),
                                            (64.0, 63.2, 62.1, 61.4, 60.2, 59.0),
                                            (65.7, 64.2, 63.4, 62.2, 60.7, 59.3))),
}
_SWITCHES = ((False, False), (True, False), (False, True), (True, True))  # (dynamic, group reg)


def _t8_rows():
    for net, (config, label, values) in _T8.items():
        for (dyn, reg), v in zip(_SWITCHES, values):
            over = (f"sampling.dynamic={str(dyn).lower()}",) + (() if reg else
                                                                ("regularization.alpha=0.0",))
            yield Row("8", f"{net}-dyn{int(dyn)}-reg{int(reg)}",
                      f"{label} dynamic {'✓' if dyn else '×'} group reg {'✓' if reg else '×'}",
                      "US3L", W6, _acc(W6, v), config, over, evaluation=C100_SGD)


T8 = Table("8", "Table 8. Dynamic sampling and group regularization on CIFAR-100", "top-1 (%)",
           tuple(_t8_rows()))

# ------------------------------------------------------------------------------ Table 9
_T9 = (((False, False), (65.1, 65.0, 64.7, 63.2, 59.4, 56.4)),
       ((False, True), (67.4, 67.3, 65.9, 64.7, 59.9, 58.7)),
       ((True, False), (67.7, 66.5, 65.1, 64.3, 60.5, 59.6)),
       ((True, True), (68.6, 67.3, 65.5, 64.4, 60.9, 60.1)))
T9 = Table("9", "Table 9. Sandwich rule x dynamic sampling, ResNet-18 on CIFAR-100", "top-1 (%)",
           tuple(Row("9", f"sandwich{int(s)}-dyn{int(d)}",
                     f"sandwich {'✓' if s else '×'} dynamic {'✓' if d else '×'}", "US3L", W6,
                     _acc(W6, v), "us3l_r18_cifar100",
                     (f"sampling.sandwich={str(s).lower()}", f"sampling.dynamic={str(d).lower()}",
                      "regularization.alpha=0.0"), evaluation=C100_SGD)
                 for (s, d), v in _T9))

# ------------------------------------------------------------------------------ Fig. 3
_F3_NOTE = ("the paper's values are only drawn in Fig. 3; its text: Ours - BYOL AP50 = +2.6 at 0.5x, "
            "+18.5 at 0.25x")
FIG3 = Table("fig3", "Fig. 3. Pascal VOC 07+12 detection, Faster R-CNN R50-FPN", "AP (%)", (
    Row("fig3", "byol", "BYOL", "BYOL", W4, {}, "byol_r50_folder", individual=True,
        evaluation=VOC, note=_F3_NOTE),
    Row("fig3", "ours", "Ours", "US3L", W4, {}, "us3l_r50_folder", evaluation=VOC, note=_F3_NOTE),
))

TABLES: dict[str, Table] = {t.key: t for t in (T1, T2, T3, T4, T5, T6, T7, T8, T9, FIG3)}
ALIASES = {"fig3": "fig3", "fig.3": "fig3", "f3": "fig3", "figure3": "fig3"}


def table(name: str) -> Table:
    """The table called ``name`` ('1'..'9', 'fig3'; 'table2' and 'Fig. 3' accepted); KeyError."""
    key = "".join(str(name).lower().split())
    key = key.removeprefix("table").removeprefix("tab.")
    key = ALIASES.get(key, key)
    if key not in TABLES:
        raise KeyError(name)
    return TABLES[key]
