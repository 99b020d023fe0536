"""The images BN statistics are recalibrated on: eval-time transforms of a named dataset.

By default the checkpoint's own pretraining data (its config's ``data`` section, read through
``pretrain.data``: the built-in synthetic set with the same generator settings, CIFAR, an image
folder), so the statistics describe the pretraining distribution. ``--calib-data`` overrides it
with ``synthetic`` (the built-in set), ``digits`` (scikit-learn's real 8x8 digits),
``cifar10:ROOT``, ``cifar100:ROOT`` or ``folder:DIR`` (an ImageFolder tree or a flat folder).
Transforms (``--calib-transform``): ``train`` (the default, the official protocol) = one view of the
pretraining augmentation preset the checkpoint's ``data.augment`` names (``pretrain.data.
two_view_transform``: random resized crop, flip, colour jitter p 0.8, grayscale p 0.2, blur p 0.5
for ImageNet), as US3L-CVPR2023 ``workers/calibrate.py`` calibrates on its ``train_preprocess``
(the training augmentations, not eval transforms). Each image's augmentation runs under a torch
RNG seeded by (seed, image index), so every width sees the same augmented images and two runs are
bit-identical. ``eval`` (the earlier behaviour) = ``pretrain.data.eval_transform`` (resize + center
crop + ImageNet normalisation). Real data is read by torchvision's classes (``download=False``; the
MD5 check stays on unless ``verify_md5=False``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

KINDS = ("synthetic", "digits", "cifar10", "cifar100", "folder")
SPEC_HELP = "synthetic | digits | cifar10:ROOT | cifar100:ROOT | folder:DIR"
# --calib-transform: "train" is the official one (US3L-CVPR2023 workers/calibrate.py forwards its
# train_preprocess: RandomResizedCrop 224, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2,
# blur p 0.5, flip); "eval" is the resize + center-crop transform this converter used before.
TRANSFORMS = ("train", "eval")
DEFAULT_TRANSFORM = "train"


class CalibDataError(ValueError):
    """The calibration data cannot be used (one line for the user)."""


@dataclass(frozen=True)
class CalibSpec:
    """``kind``/``root`` as named on the command line; ``data`` is set when the spec is the
    checkpoint's own pretraining data section (then read exactly as the pretrainer reads it)."""
    kind: str
    root: str | None = None
    data: dict | None = field(default=None, compare=False, hash=False)

    def __str__(self) -> str:
        name = self.kind if self.root is None else f"{self.kind}:{self.root}"
        if self.data is None:
            return name
        if self.kind == "synthetic":
            s = self.data.get("synthetic", {})
            name += (f" (seed {s.get('seed', 0)}, {s.get('num_classes', 10)} classes, "
                     f"{self.data.get('image_size', 32)} px)")
        return f"checkpoint data: {name}"


def parse_spec(text: str) -> CalibSpec:
    kind, _, root = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise CalibDataError(f"unknown calibration data {text!r}; pass {SPEC_HELP}")
    if kind in ("synthetic", "digits"):
        return CalibSpec(kind)
    if not root:
        raise CalibDataError(f"calibration data {text!r} needs a path: {kind}:ROOT")
    return CalibSpec(kind, root)


def spec_from_config(config: dict) -> CalibSpec:
    """The pretraining data of a checkpoint config (``config["data"]``) as a calibration spec."""
    from pretrain.config import DEFAULTS
    data = config.get("data")
    if not isinstance(data, dict) or not data.get("name"):
        raise CalibDataError(f"the checkpoint's config names no dataset; pass --calib-data "
                             f"{SPEC_HELP}")
    merged = copy.deepcopy(DEFAULTS["data"])  # older/partial configs: the pretrainer's defaults
    merged.update({k: v for k, v in data.items() if k != "synthetic"})
    merged["synthetic"].update(data.get("synthetic") or {})
    name = str(merged["name"]).lower()
    if name == "synthetic":
        return CalibSpec("synthetic", data=merged)
    if name not in KINDS:
        raise CalibDataError(f"the checkpoint was pretrained on {name!r}, which the converter "
                             f"cannot read; pass --calib-data {SPEC_HELP}")
    if not merged.get("root"):
        raise CalibDataError(f"the checkpoint's data section names {name} without a root; pass "
                             f"--calib-data {name}:ROOT")
    return CalibSpec(name, str(merged["root"]), data=merged)


def image_size_and_kind(model_cfg: dict, config: dict, model=None, calib_size: int | None = None
                        ) -> tuple[int, str]:
    """Calibration image side and transform kind ('imagenet'/'cifar') for a checkpoint: the
    network's own input size where it has one (ViT), 224 for the ImageNet stem, the pretraining
    data's size for the CIFAR stem; ``calib_size`` overrides the size."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    stem = model_cfg.get("stem")
    from pretrain.data import eval_kind
    augment = str(data.get("augment", "imagenet"))
    kind = stem if stem in ("imagenet", "cifar") else eval_kind(augment)
    fixed = model_cfg.get("image_size") or getattr(model, "image_size", None)
    size = calib_size or fixed or (int(data.get("image_size", 32)) if kind == "cifar" else 224)
    return int(size), kind


def eval_transform(image_size: int, stem: str = "imagenet"):
    """The pretrainer's eval transform: resize + center crop, then ImageNet normalisation."""
    from pretrain.data import eval_transform as pretrain_eval
    return pretrain_eval("cifar" if stem == "cifar" else "imagenet", image_size)


def augment_preset(spec: CalibSpec, stem: str = "imagenet", augment: str | None = None) -> str:
    """The pretraining augmentation preset (``data.augment``) the ``train`` transform uses: the
    one named (the checkpoint's), else the spec's own data section's, else the stem's kind."""
    from pretrain.data import AUGMENTS
    for name in (augment, (spec.data or {}).get("augment")):
        if name in AUGMENTS:
            return str(name)
    return "cifar" if stem == "cifar" else "imagenet"


def check_transform(transform: str) -> str:
    if transform not in TRANSFORMS:
        raise CalibDataError(f"unknown calibration transform {transform!r}; pass --calib-transform "
                             f"{' or '.join(TRANSFORMS)}")
    return transform


def describe(transform: str, preset: str) -> str:
    """How the calibration images were transformed, for meta.json and the report."""
    if transform == "train":
        return (f"training augmentations (data.augment {preset!r}, view 1; seeded per image, as "
                f"US3L workers/calibrate.py)")
    return "eval transforms (resize + center crop)"


class _Transformed(Dataset):
    """``base`` with a transform; with ``seed`` set, image i is transformed under a torch RNG
    seeded by (seed, i) (random augmentations, reproducible, the global RNG left alone). An image
    that cannot be decoded (corrupt or truncated file) is one ``CalibDataError`` line naming it."""

    def __init__(self, base: Dataset, transform, seed: int | None = None):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def _name(self, i: int) -> str:
        samples = getattr(self.base, "samples", None)
        if samples is not None:
            return str(samples[i][0])
        files = getattr(self.base, "files", None)
        return str(files[i]) if files is not None else f"#{i}"

    def __getitem__(self, i):
        try:
            image, label = self.base[i]
            if self.seed is None:
                return self.transform(image), label
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + i)
                return self.transform(image), label
        except (OSError, SyntaxError, ValueError) as err:  # PIL: UnidentifiedImageError, truncated
            first = " ".join(str(err).split())[:120] or type(err).__name__
            raise CalibDataError(f"calibration image {self._name(i)} cannot be read ({first}); "
                                 f"remove or replace it, or pass other --calib-data") from None


class _FlatFolder(Dataset):
    """Every image file directly inside a folder (no class sub-folders)."""

    def __init__(self, root: Path):
        from torchvision.datasets.folder import IMG_EXTENSIONS
        self.files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from torchvision.datasets.folder import default_loader
        return default_loader(str(self.files[i])), 0


def _raw_dataset(spec: CalibSpec, count: int, verify_md5: bool) -> Dataset:
    """Untransformed (image, label) pairs; ``count`` = how many synthetic images to generate."""
    from pretrain import data as pdata

    from transfer import datasets as tds
    if spec.kind == "synthetic":
        s = (spec.data or {}).get("synthetic", {})
        size = int((spec.data or {}).get("image_size", 32))
        return pdata.ArrayDataset(*pdata.make_synthetic(count, size, int(s.get("num_classes", 10)),
                                                        int(s.get("seed", 0))))
    if spec.data is not None and spec.kind in ("cifar10", "cifar100"):
        return pdata.cifar(spec.kind, spec.root, True, verify_md5 and spec.data.get("verify_md5", True))
    if spec.kind in ("digits", "cifar10", "cifar100"):
        try:
            return tds.load(spec.kind, spec.root or ".", "train", verify_md5=verify_md5)
        except tds.DatasetError as err:
            raise CalibDataError(f"calibration data {spec}: {err}") from None
    root = Path(spec.root)
    if not root.is_dir():
        raise CalibDataError(f"calibration data {spec}: folder {root} does not exist; pass "
                             f"--calib-data {SPEC_HELP}")
    if any(p.is_dir() for p in root.iterdir()):
        return pdata.image_folder(str(root), "train")
    flat = _FlatFolder(root)
    if len(flat) == 0:
        raise CalibDataError(f"calibration data {spec}: no images in {root}")
    return flat


def build_dataset(spec: CalibSpec, image_size: int, stem: str = "imagenet",
                  synthetic_size: int = 1024, verify_md5: bool = True,
                  transform: str = DEFAULT_TRANSFORM, augment: str | None = None,
                  seed: int = 0) -> Dataset:
    """The calibration images under ``transform`` ('train': the ``augment_preset`` seeded by
    ``seed``; 'eval': resize + center crop)."""
    from pretrain.data import DataError, two_view_transform
    check_transform(transform)
    try:
        raw = _raw_dataset(spec, synthetic_size, verify_md5)
    except DataError as err:
        raise CalibDataError(f"calibration data {spec}: {err}") from None
    if transform == "eval":
        return _Transformed(raw, eval_transform(image_size, stem))
    preset = augment_preset(spec, stem, augment)
    return _Transformed(raw, two_view_transform(preset, image_size, 0), seed=seed)


def calibration_loader(spec: CalibSpec, image_size: int, batch_size: int, num_batches: int,
                       stem: str = "imagenet", seed: int = 0, workers: int = 0,
                       verify_md5: bool = True, transform: str = DEFAULT_TRANSFORM,
                       augment: str | None = None) -> DataLoader:
    """``num_batches`` equal-size batches drawn without replacement by a seeded permutation
    (the same images, and the same augmentations, for every width). Errors if the dataset is
    too small."""
    need = batch_size * num_batches
    dataset = build_dataset(spec, image_size, stem, synthetic_size=need, verify_md5=verify_md5,
                            transform=transform, augment=augment, seed=seed)
    if len(dataset) < need:
        raise CalibDataError(f"calibration data {spec} has {len(dataset)} images, "
                             f"{num_batches} batches of {batch_size} need {need}; lower "
                             f"--calib-batches or --calib-batch-size")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:need]
    return DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False,
                      drop_last=True, num_workers=workers)
