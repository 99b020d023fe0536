"""The recognition datasets of the transfer suite, read through torchvision's own classes.

torchvision's ``CIFAR10``/``CIFAR100``/``Flowers102``/``OxfordIIITPet``/``DTD`` stay the one loader
for real data (always ``download=False``; these machines have no internet). The only addition is
an explicit ``verify_md5`` switch: CIFAR and Flowers check the MD5 of every file, so a re-packed copy
or a test fixture in the exact format fails as "corrupted"; ``verify_md5=False`` keeps every other
check (files and folders must exist) and skips only the checksums. ``digits`` is scikit-learn's
``load_digits`` (a small real labelled image set shipped with the package) for demos and tests.

``fingerprint(name, root, split)`` identifies the data a split is read from (the resolved root, and
every file torchvision opens for it: names, sizes, mtimes): the feature cache keys on it.

A dataset that is absent raises ``DatasetError`` with one line naming the layout expected under ROOT;
an image file that cannot be decoded (corrupt, truncated) raises ``DatasetError`` naming the file
when it is read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torchvision.datasets as tvd
from PIL import Image
from torch.utils.data import Dataset

from pretrain.tvdatasets import CIFAR10, CIFAR100, Flowers102  # noqa: F401  (the MD5 switch)

NAMES = ("cifar10", "cifar100", "flowers102", "pets", "dtd", "digits")

# What must exist under ROOT (torchvision's layouts); quoted verbatim in the missing-dataset error.
LAYOUTS = {
    "cifar10": "ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "cifar100": "ROOT/cifar-100-python/{train,test,meta}",
    "flowers102": "ROOT/flowers-102/{jpg/image_00001.jpg..,imagelabels.mat,setid.mat}",
    "pets": "ROOT/oxford-iiit-pet/{images/*.jpg,annotations/{trainval,test}.txt}",
    "dtd": "ROOT/dtd/dtd/{images/<class>/*.jpg,labels/{train,val,test}1.txt}",
    "digits": "(built in: scikit-learn's load_digits, no files)",
}

# The splits each torchvision class offers (the probe's own train/val/test live in linear/splits.py).
SOURCE_SPLITS = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "flowers102": ("train", "val", "test"),
    "pets": ("trainval", "test"),
    "dtd": ("train", "val", "test"),
    "digits": ("train", "test"),
}

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "flowers102": 102, "pets": 37, "dtd": 47,
               "digits": 10}


class DatasetError(RuntimeError):
    """A dataset that cannot be read (the message is one line for the user)."""


class Digits(Dataset):
    """scikit-learn's 8x8 digits as RGB PIL images, with a fixed stratified split (30% test, seed 0)."""

    def __init__(self, split: str = "train", transform: Callable | None = None):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        if split not in SOURCE_SPLITS["digits"]:
            raise DatasetError(f"digits has splits {SOURCE_SPLITS['digits']}, not {split!r}")
        digits = load_digits()
        idx = np.arange(len(digits.target))
        train, test = train_test_split(idx, test_size=0.3, random_state=0, stratify=digits.target)
        keep = np.sort(train if split == "train" else test)
        self.images = (digits.images[keep] * (255.0 / 16.0)).round().astype(np.uint8)
        self.targets = digits.target[keep].tolist()
        self.classes = [str(i) for i in range(10)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index]).convert("RGB")  # uint8 HxW: mode L
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def _required_files(name: str, root: Path, split: str) -> list[Path]:
    """The files torchvision will open for ``split`` (checked first, for a precise message)."""
    if name == "cifar10":
        base = root / "cifar-10-batches-py"
        return [base / f for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch",
                                                                                 "batches.meta"]]
    if name == "cifar100":
        base = root / "cifar-100-python"
        return [base / "train", base / "test", base / "meta"]
    if name == "flowers102":
        base = root / "flowers-102"
        return [base / "jpg", base / "imagelabels.mat", base / "setid.mat"]
    if name == "pets":
        base = root / "oxford-iiit-pet"
        return [base / "images", base / "annotations" / f"{split}.txt"]
    if name == "dtd":
        base = root / "dtd" / "dtd"
        return [base / "images", base / "labels" / f"{split}1.txt"]
    return []


def _files_under(path: Path):
    """``path`` itself if it is a file, else every file below it (sorted, hidden names too)."""
    if path.is_file():
        yield path
    elif path.is_dir():
        for base, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                yield Path(base) / name


def fingerprint(name: str, root: str | os.PathLike | None, split: str) -> dict:
    """What the data of ``name``/``split`` is: the resolved root and a sha256 over the relative
    name, size and mtime (ns) of every file torchvision reads for it. Another copy, an edited or
    re-extracted file, or another folder gives another fingerprint; nothing is decoded. digits
    (built in) is named by scikit-learn's version and its data file."""
    import hashlib
    digest = hashlib.sha256()
    if name == "digits":
        import sklearn
        import sklearn.datasets
        files = [Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"]
        base, where = files[0].parent, f"scikit-learn {sklearn.__version__}"
    else:
        base = Path(root).resolve()
        files = [f for p in _required_files(name, base, split) for f in _files_under(p)]
        where = str(base)
    count = 0
    for path in files:
        try:
            st = path.stat()
        except OSError:
            continue
        rel = os.path.relpath(path, base)
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        count += 1
    return {"root": where, "files": count, "sha256": digest.hexdigest()}


def load(name: str, root: str | os.PathLike, split: str, transform: Callable | None = None,
         verify_md5: bool = True) -> Dataset:
    """The torchvision dataset ``name`` at one of its own splits (``SOURCE_SPLITS[name]``).

    Every returned dataset exposes its labels as a list in ``labels_of(dataset)``.
    """
    if name not in NAMES:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(NAMES)}")
    if split not in SOURCE_SPLITS[name]:
        raise DatasetError(f"{name} has splits {SOURCE_SPLITS[name]}, not {split!r}")
    if name == "digits":
        return Digits(split, transform)
    root = Path(root)
    missing = [p for p in _required_files(name, root, split) if not p.exists()]
    if missing:
        raise DatasetError(f"{name} not found under {root} (missing {missing[0]}); expected layout "
                           f"{LAYOUTS[name].replace('ROOT', str(root))}")
    try:
        if name in ("cifar10", "cifar100"):
            cls = CIFAR10 if name == "cifar10" else CIFAR100
            return cls(root, train=split == "train", transform=transform, download=False,
                       verify_md5=verify_md5)
        if name == "flowers102":
            return CheckedFlowers102(root, split=split, transform=transform, download=False,
                                     verify_md5=verify_md5)
        if name == "pets":
            return CheckedPets(root, split=split, target_types="category", transform=transform,
                               download=False)
        return DTD(root, split=split, partition=1, transform=transform, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted..."
        if verify_md5 and "corrupted" in str(err):
            raise DatasetError(f"{name} under {root} fails torchvision's MD5 check (files present "
                               f"but not the official archive's); for a re-packed copy pass "
                               f"--no-verify-md5 (verify_md5=False)") from None
        raise DatasetError(f"{name} under {root} is unreadable ({str(err).splitlines()[0]}); "
                           f"expected layout {LAYOUTS[name].replace('ROOT', str(root))}") from None
    except (ValueError, KeyError, OSError) as err:  # malformed annotation/label files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DatasetError(f"{name} under {root} has malformed files ({first[:160]}); expected "
                           f"layout {LAYOUTS[name].replace('ROOT', str(root))}") from None


class _CheckedImages:
    """Mixin for torchvision's image-file datasets: an image that cannot be decoded (corrupt,
    truncated) is one ``DatasetError`` line naming the file instead of PIL's traceback."""

    dataset_name = "dataset"

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except (OSError, SyntaxError, ValueError) as err:  # PIL: unidentified or truncated image
            files = getattr(self, "_image_files", None) or getattr(self, "_images", None)
            what = str(files[index]) if files is not None else f"#{index}"
            first = " ".join(str(err).split())[:120] or type(err).__name__
            raise DatasetError(f"{self.dataset_name} image {what} cannot be read ({first}); "
                               f"replace the file (the dataset copy is damaged)") from None


class CheckedFlowers102(_CheckedImages, Flowers102):
    dataset_name = "flowers102"


class CheckedPets(_CheckedImages, tvd.OxfordIIITPet):
    dataset_name = "pets"


class DTD(_CheckedImages, tvd.DTD):  # the name matters: torchvision's folder is its lower case
    dataset_name = "dtd"


def labels_of(dataset: Dataset) -> list[int]:
    """The integer labels of a dataset from ``load`` (without decoding any image)."""
    for attr in ("targets", "_labels"):
        if hasattr(dataset, attr):
            return [int(v) for v in getattr(dataset, attr)]
    raise TypeError(f"{type(dataset).__name__} exposes no labels")
