"""Pretraining data: the built-in synthetic set, CIFAR-10/100 (torchvision, python format), image
folders; two-view augmentations; a sampler that resumes mid-epoch.

Determinism (for exact resume): the order of an epoch is a permutation seeded by (seed, epoch) and
the augmentations of sample i in epoch e run under a torch RNG seeded by (seed, epoch, i), so a
batch is the same whether the run was interrupted or not and whatever the number of workers.
Real data is read through torchvision's own classes with ``download=False``; a missing or
corrupted dataset is one ``DataError`` line naming the layout expected under ROOT. An image
folder is checked before training (every file's header opened, up to ``PRECHECK_MAX`` images),
and an image that fails to decode later (a truncated file, a larger set) stops the run with one
``DataError`` line naming the file, also from inside a DataLoader worker (whose re-raised
exception would otherwise carry the worker's whole traceback).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from pretrain.device import uses_cuda

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUTS = {
    "cifar10": "ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "cifar100": "ROOT/cifar-100-python/{train,test,meta}",
    "folder": "ROOT/train/<class>/<image> (optionally ROOT/val/<class>/<image>), or ROOT/<class>/<image>",
}


PRECHECK_MAX = 200_000  # image folders up to this size have every file's header checked up front


def _from_worker(message: str) -> str:
    """A ``DataError`` raised in a DataLoader worker is re-created in the main process from
    "Caught DataError in DataLoader worker process N.\nOriginal Traceback ...\n
    pretrain.data.DataError: MESSAGE": keep MESSAGE, one line."""
    if "Original Traceback" in message:
        for line in reversed(message.strip().splitlines()):
            if "DataError: " in line:
                return line.split("DataError: ", 1)[1].strip()
    return message


class DataError(RuntimeError):
    """A dataset that cannot be read (the message is one line for the user)."""

    def __init__(self, message: object = ""):
        super().__init__(_from_worker(str(message)))


def _item_path(base: Dataset, i: int) -> str | None:
    samples = getattr(base, "samples", None)
    try:
        return str(samples[i][0]) if samples is not None else None
    except (IndexError, TypeError):
        return None


def read_item(base: Dataset, i: int):
    """``base[i]``; a file that cannot be read or decoded is one ``DataError`` naming it."""
    try:
        return base[i]
    except DataError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... on corrupt files
        path = _item_path(base, i)
        if path is None:
            raise
        reason = " ".join(str(err).split())[:100] or type(err).__name__
        raise DataError(f"image {path} cannot be read ({reason}); remove or replace the file") \
            from None


def check_images(dataset: Dataset, limit: int | None = None) -> None:
    """Open every image's header (``PIL.Image.verify``) of an image folder with at most ``limit``
    (default ``PRECHECK_MAX``) images: a file that is not an image is one ``DataError`` naming
    it, before any output."""
    samples = getattr(dataset, "samples", None)
    if not samples or len(samples) > (PRECHECK_MAX if limit is None else limit):
        return
    from PIL import Image
    for path, _ in samples:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # UnidentifiedImageError, OSError, SyntaxError ...
            reason = " ".join(str(err).split())[:100] or type(err).__name__
            raise DataError(f"image {path} cannot be read ({reason}); remove or replace the "
                            f"file") from None


# --- the built-in synthetic set -------------------------------------------------------------------
def _shape_masks(u: np.ndarray, v: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Ten shape families on rotated/scaled coordinates (u, v); ``shape`` is per image."""
    r = np.sqrt(u * u + v * v)
    box = np.maximum(np.abs(u), np.abs(v))
    masks = [
        r < 1.0,                                                     # disk
        box < 0.8,                                                   # square
        np.abs(u) + np.abs(v) < 1.0,                                 # diamond
        (r > 0.55) & (r < 1.0),                                      # ring
        ((np.abs(u) < 0.3) & (np.abs(v) < 1)) | ((np.abs(v) < 0.3) & (np.abs(u) < 1)),  # cross
        (v > -0.5) & (v < 1.0 - 1.73 * np.abs(u)),                   # triangle
        (r < 1.0) & (np.sin(7.0 * u) > 0),                           # striped disk
        (box < 0.85) & (np.sin(5.0 * u) * np.sin(5.0 * v) > 0),      # checkered square
        u * u + (v / 0.4) ** 2 < 1.0,                                # bar
        (r < 1.0) & ((u - 0.45) ** 2 + v * v > 0.49),                # crescent
    ]
    stacked = np.stack(masks)  # (10, N, H, W)
    return np.take_along_axis(stacked, shape[None, :, None, None] % len(masks), 0)[0]


def make_synthetic(n: int, image_size: int = 32, num_classes: int = 10, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` coloured-shape images (uint8 N x H x W x 3) and labels, a pure function of the seed.

    Class c is shape ``c % 10`` in hue ``c / num_classes``; position, size, rotation, saturation,
    background and noise vary per image, so the classes are learnable but not trivial.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    axis = (np.arange(image_size) + 0.5) / image_size * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    for start in range(0, n, 256):
        lab = labels[start:start + 256]
        m = len(lab)
        cx, cy = rng.uniform(-0.35, 0.35, (2, m, 1, 1))
        scale = rng.uniform(0.35, 0.6, (m, 1, 1))
        theta = rng.uniform(0, 2 * math.pi, (m, 1, 1))
        dx, dy = x - cx, y - cy
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / scale
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / scale
        mask = _shape_masks(u, v, lab)[..., None].astype(np.float32)
        hue = (lab / num_classes + rng.uniform(-0.02, 0.02, m)) % 1.0
        sat, val = rng.uniform(0.6, 1.0, m), rng.uniform(0.7, 1.0, m)
        k = (hue[:, None] * 6 + np.array([5.0, 3.0, 1.0])) % 6
        rgb = val[:, None] * (1 - sat[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1))
        bg = rng.uniform(0.0, 0.45, (m, 1, 1, 3)) + 0.15 * (y[None, ..., None] * rng.uniform(-1, 1, (m, 1, 1, 1)))
        img = bg * (1 - mask) + rgb[:, None, None, :] * mask
        img += rng.normal(0, 0.04, img.shape)
        images[start:start + m] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


class ArrayDataset(Dataset):
    """(image HxWx3 uint8, label) pairs held in memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


# --- real data through torchvision ----------------------------------------------------------------
def cifar(name: str, root: str, train: bool, verify_md5: bool = True) -> Dataset:
    from pretrain.tvdatasets import CIFAR10, CIFAR100
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        return cls(root, train=train, download=False, verify_md5=verify_md5)
    except RuntimeError as err:
        hint = "" if not verify_md5 else "; for a re-packed copy set data.verify_md5=false"
        raise DataError(f"{name} not found or corrupted under {root} ({str(err).strip()[:60]}): "
                        f"expected {LAYOUTS[name]}{hint}") from None
    except Exception as err:  # a file that exists but is not a CIFAR pickle
        raise DataError(f"{name} under {root} is unreadable ({type(err).__name__}): expected "
                        f"{LAYOUTS[name]} in torchvision's python format") from None


def image_folder(root: str, split: str) -> Dataset | None:
    base = Path(root)
    folder = base / split if (base / split).is_dir() else (base if split == "train" else None)
    if folder is None:
        return None
    try:
        dataset = tvd.ImageFolder(str(folder))
    except (OSError, RuntimeError) as err:
        raise DataError(f"image folder {folder} is unusable ({str(err).splitlines()[0][:80]}): "
                        f"expected {LAYOUTS['folder']}") from None
    check_images(dataset)
    return dataset


def build_datasets(data: dict) -> tuple[Dataset, Dataset | None]:
    """(train, labelled val or None) without transforms, from the ``data`` config section."""
    name = data["name"]
    if name == "synthetic":
        s = data["synthetic"]
        train = ArrayDataset(*make_synthetic(s["train_size"], data["image_size"], s["num_classes"],
                                             s["seed"]))
        val = ArrayDataset(*make_synthetic(s["val_size"], data["image_size"], s["num_classes"],
                                           s["seed"] + 1)) if s["val_size"] else None
        return train, val
    if name in ("cifar10", "cifar100"):
        return (cifar(name, data["root"], True, data["verify_md5"]),
                cifar(name, data["root"], False, data["verify_md5"]))
    if name == "folder":
        if not Path(data["root"]).is_dir():
            raise DataError(f"image folder {data['root']} does not exist: expected "
                            f"{LAYOUTS['folder']}")
        return image_folder(data["root"], "train"), image_folder(data["root"], "val")
    raise DataError(f"unknown dataset {name!r}; expected synthetic, cifar10, cifar100 or folder")


# --- augmentations --------------------------------------------------------------------------------
# data.augment presets: name -> the eval-time kind (resize + center crop) its images take.
AUGMENTS = {"cifar": "cifar", "imagenet": "imagenet", "byol": "cifar"}


def eval_kind(augment: str) -> str:
    """'cifar' or 'imagenet': the eval transform of data.augment (kNN bank, BN calibration).
    'byol' is the official ViT runs' recipe on CIFAR images upsampled by the crop: cifar-style."""
    return AUGMENTS.get(augment, "imagenet")


def two_view_transform(kind: str, size: int, view: int = 0) -> v2.Compose:
    """One random view (``view`` 0 or 1 of the pair); ``kind`` 'cifar' (small images),
    'imagenet' or 'byol'. 'cifar' and 'imagenet' follow the official US3L ``datasets/__init__.py``
    ``build_ssl_transform`` (every method of Tables 1-6), the same for both views: crop scale
    (0.2, 1) and ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2; ImageNet adds blur p 0.5.
    'byol' is BYOL's asymmetric pair as the official ViT runs use it (Table 3; US3L
    ViT_experiments/main_moco_ofa_ddp.py augmentation1/2, MoCo v3's main_moco.py): crop scale
    (0.08, 1), ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, blur p 1.0 / 0.1, solarize
    p 0 / 0.2 (docs/protocol.md, "augmentations")."""
    if kind not in AUGMENTS:
        raise ValueError(f"unknown data.augment {kind!r}; expected one of {sorted(AUGMENTS)}")
    byol = kind == "byol"
    ops = [v2.ToImage(),
           v2.RandomResizedCrop(size, scale=(0.08 if byol else 0.2, 1.0), antialias=True),
           v2.RandomHorizontalFlip(),
           v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2 if byol else 0.4, 0.1)], p=0.8),
           v2.RandomGrayscale(p=0.2)]
    blur_p = {"imagenet": 0.5, "byol": (1.0, 0.1)[view]}.get(kind, 0.0)
    if blur_p:
        # SimCLR/MoCo v3: PIL blur radius sigma in (0.1, 2); the kernel spans ~10% of the image
        k = max(3, int(0.1 * size) // 2 * 2 + 1)
        ops.append(v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=blur_p))
    if byol and view == 1:
        ops.append(v2.RandomSolarize(threshold=128, p=0.2))  # PIL ImageOps.solarize: >= 128
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(ops)


def view_pair(kind: str, size: int) -> tuple[v2.Compose, v2.Compose]:
    """The transforms of view 1 and view 2 (equal for the symmetric presets)."""
    return two_view_transform(kind, size, 0), two_view_transform(kind, size, 1)


def eval_transform(kind: str, size: int) -> v2.Compose:
    ops = [v2.ToImage()]
    if eval_kind(kind) == "imagenet":
        ops += [v2.Resize(int(round(size * 256 / 224)), antialias=True), v2.CenterCrop(size)]
    else:
        ops += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    return v2.Compose(ops + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63)


class TwoViews(Dataset):
    """(view1, view2, label); sample i of epoch e is augmented under seed (seed, e, i).
    ``transform`` is one transform for both views or a (view 1, view 2) pair (``view_pair``)."""

    def __init__(self, base: Dataset, transform, seed: int = 0):
        self.base, self.seed, self.epoch = base, seed, 0
        self.transforms = tuple(transform) if isinstance(transform, (tuple, list)) \
            else (transform, transform)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = read_item(self.base, i)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, self.epoch, i))
            return self.transforms[0](image), self.transforms[1](image), label


class Transformed(Dataset):
    """(image, label) with a deterministic transform (kNN bank, BN calibration)."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = read_item(self.base, i)
        return self.transform(image), label


class ResumableSampler(Sampler[int]):
    """This rank's indices of epoch ``epoch`` from global batch ``start_batch`` on.

    Global batch b of an epoch is ``perm[b*B:(b+1)*B]`` of a permutation seeded by (seed, epoch);
    rank r takes its r-th equal slice. Only whole batches are yielded (drop_last). Neither the
    permutation nor the batches depend on the number of processes, so a run resumed on M
    processes after being saved on N continues with the same global batches, each now split M
    ways (with M = 1: rank 0's slice, then rank 1's, ... of the N-process run, in one batch).
    """

    def __init__(self, n: int, global_batch: int, seed: int, epoch: int = 0, start_batch: int = 0,
                 rank: int = 0, world: int = 1):
        if global_batch % world:
            raise ValueError(f"data.batch_size {global_batch} is not divisible by {world} processes")
        self.n, self.batch, self.seed, self.epoch = n, global_batch, seed, epoch
        self.start, self.rank, self.world = start_batch, rank, world
        self.local = global_batch // world

    def batches_per_epoch(self) -> int:
        return self.n // self.batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        for b in range(self.start, self.batches_per_epoch()):
            lo = b * self.batch + self.rank * self.local
            yield from perm[lo:lo + self.local]

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.start) * self.local


def train_loader(dataset: TwoViews, data: dict, seed: int, epoch: int, start_batch: int,
                 rank: int = 0, world: int = 1) -> DataLoader:
    dataset.set_epoch(epoch)
    sampler = ResumableSampler(len(dataset), data["batch_size"], seed, epoch, start_batch, rank,
                               world)
    workers = int(data["num_workers"])
    return DataLoader(dataset, batch_size=sampler.local, sampler=sampler, drop_last=True,
                      num_workers=workers, pin_memory=uses_cuda(),
                      persistent_workers=False,  # own generator: the global RNG is left alone
                      generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
