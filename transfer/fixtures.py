"""Tiny copies of the five recognition datasets, written in each dataset's REAL on-disk format.

No machine here can download CIFAR, Flowers, Pets or DTD, so tests and the built-in demo write small
fixtures in exactly the layouts torchvision reads (CIFAR pickles, Flowers ``.mat`` files, Pets
annotation lists, DTD label files) and run the real loaders on them. Images are scikit-learn's digit
scans, upscaled and tinted so that a class (digit x colour) is learnable; the label ranges are the
real ones (10/100/102/37/47 classes). The files are not the official archives, so CIFAR and Flowers
load only with ``verify_md5=False``.

    python -m transfer.fixtures ROOT [--datasets cifar10 ...] [--per-class N] [--size 32]
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]
PET_BREEDS = [  # class id 1..37 in order; capitalised names are cats (species 1), others dogs (2)
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle",
    "Bengal", "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau",
    "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees", "havanese",
    "japanese_chin", "keeshond", "leonberger", "Maine_Coon", "miniature_pinscher", "newfoundland",
    "Persian", "pomeranian", "pug", "Ragdoll", "Russian_Blue", "saint_bernard", "samoyed",
    "scottish_terrier", "shiba_inu", "Siamese", "Sphynx", "staffordshire_bull_terrier",
    "wheaten_terrier", "yorkshire_terrier"]
DTD_CLASSES = [
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked",
    "crosshatched", "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy",
    "grid", "grooved", "honeycombed", "interlaced", "knitted", "lacelike", "lined", "marbled",
    "matted", "meshed", "paisley", "perforated", "pitted", "pleated", "polka-dotted", "porous",
    "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained", "stratified", "striped",
    "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged"]
PALETTE = np.array([[255, 255, 255], [255, 64, 64], [64, 255, 64], [64, 128, 255],
                    [255, 255, 64], [255, 64, 255], [64, 255, 255], [255, 160, 32],
                    [160, 96, 255], [128, 255, 160], [255, 160, 200]], dtype=np.float32)


class ImageSource:
    """Images for class k: a scan of digit k % 10 (from the digits *train* split) tinted with
    colour k // 10, jittered in place."""

    def __init__(self, size: int = 32, seed: int = 0):
        from transfer.datasets import Digits
        digits = Digits("train")  # never the digits test split: fixtures may pretrain encoders
        images, targets = digits.images / 255.0, np.asarray(digits.targets)
        self.by_digit = [images[targets == d] for d in range(10)]
        self.size = size
        self.rng = np.random.default_rng(seed)

    def __call__(self, label: int) -> np.ndarray:
        """One HxWx3 uint8 image of class ``label``."""
        scans = self.by_digit[label % 10]
        scan = scans[self.rng.integers(len(scans))]
        inner = max(8, int(self.size * 0.75))
        glyph = np.asarray(Image.fromarray((scan * 255).astype(np.uint8)).resize(
            (inner, inner), Image.BILINEAR), dtype=np.float32) / 255.0
        canvas = np.zeros((self.size, self.size), np.float32)
        dy, dx = self.rng.integers(0, self.size - inner + 1, size=2)
        canvas[dy:dy + inner, dx:dx + inner] = glyph
        colour = PALETTE[(label // 10) % len(PALETTE)]
        background = self.rng.uniform(0, 40, size=3).astype(np.float32)
        image = background + canvas[..., None] * (colour - background)
        image += self.rng.normal(0, 6, size=image.shape)
        return np.clip(image, 0, 255).astype(np.uint8)


def _labels(n_classes: int, per_class: int) -> list[int]:
    return [k for k in range(n_classes) for _ in range(per_class)]


def _jpg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar(root: str | os.PathLike, num_classes: int = 10, train_per_class: int = 5,
                test_per_class: int = 2, seed: int = 0) -> Path:
    """``cifar-10-batches-py`` (5 data batches + test_batch + batches.meta) or ``cifar-100-python``
    (train, test, meta): dict pickles with uint8 ``data`` of shape (N, 3072), channel planes R,G,B."""
    if num_classes not in (10, 100):
        raise ValueError("CIFAR has 10 or 100 classes")
    source = ImageSource(32, seed)
    base = Path(root) / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    base.mkdir(parents=True, exist_ok=True)

    def batch(labels: list[int], name: str) -> dict:
        data = np.stack([source(k).transpose(2, 0, 1).reshape(-1) for k in labels])
        out = {"batch_label": name, "data": data,
               "filenames": [f"fixture_{name}_{i}.png" for i in range(len(labels))]}
        if num_classes == 10:
            out["labels"] = labels
        else:
            out["fine_labels"], out["coarse_labels"] = labels, [k // 5 for k in labels]
        return out

    rng = np.random.default_rng(seed)
    train = [int(v) for v in rng.permutation(_labels(num_classes, train_per_class))]
    test = _labels(num_classes, test_per_class)
    if num_classes == 10:
        for i, part in enumerate(np.array_split(np.array(train), 5), 1):
            _pickle(base / f"data_batch_{i}", batch([int(v) for v in part],
                                                    f"training batch {i} of 5"))
        _pickle(base / "test_batch", batch(test, "testing batch 1 of 1"))
        _pickle(base / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_vis": 3072,
                                        "num_cases_per_batch": len(train) // 5})
    else:
        _pickle(base / "train", batch(train, "training batch 1 of 1"))
        _pickle(base / "test", batch(test, "testing batch 1 of 1"))
        _pickle(base / "meta", {"fine_label_names": [f"class_{k:03d}" for k in range(100)],
                                "coarse_label_names": [f"super_{k:02d}" for k in range(20)]})
    return base


def write_flowers102(root: str | os.PathLike, per_split: tuple[int, int, int] = (2, 2, 2),
                     size: int = 32, seed: int = 0) -> Path:
    """``flowers-102/jpg/image_%05d.jpg``, ``imagelabels.mat`` (labels 1..102) and ``setid.mat``
    (trnid/valid/tstid image ids), per_split images per class for train/val/test."""
    from scipy.io import savemat
    source = ImageSource(size, seed)
    base = Path(root) / "flowers-102"
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    image_id = 0
    for key, count in zip(ids, per_split):
        for k in _labels(102, count):
            image_id += 1
            labels.append(k + 1)
            ids[key].append(image_id)
            _jpg(base / "jpg" / f"image_{image_id:05d}.jpg", source(k))
    savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})
    return base


def write_pets(root: str | os.PathLike, trainval_per_class: int = 5, test_per_class: int = 2,
               size: int = 32, seed: int = 0) -> Path:
    """``oxford-iiit-pet/images/<Breed>_<n>.jpg`` and ``annotations/{list,trainval,test}.txt``
    (lines "<image> <class 1..37> <species 1 cat|2 dog> <breed id>") plus ``annotations/trimaps``."""
    source = ImageSource(size, seed)
    base = Path(root) / "oxford-iiit-pet"
    (base / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    breed_ids, counters = {}, {1: 0, 2: 0}
    for name in PET_BREEDS:
        species = 1 if name[0].isupper() else 2
        counters[species] += 1
        breed_ids[name] = (species, counters[species])
    lists = {"trainval": [], "test": []}
    numbers = {name: 0 for name in PET_BREEDS}
    for split, count in (("trainval", trainval_per_class), ("test", test_per_class)):
        for k in _labels(37, count):
            name = PET_BREEDS[k]
            species, breed = breed_ids[name]
            numbers[name] += 1
            image = f"{name}_{numbers[name]}"
            lists[split].append(f"{image} {k + 1} {species} {breed}")
            _jpg(base / "images" / f"{image}.jpg", source(k))
            trimap = np.full((size, size), 2, np.uint8)
            trimap[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
            Image.fromarray(trimap).save(base / "annotations" / "trimaps" / f"{image}.png")
    header = ["#Image CLASS-ID SPECIES BREED ID", "#ID: 1:37 Class ids", "#SPECIES: 1:Cat 2:Dog",
              "#BREED ID: 1-25:Cat 1:12:Dog", "#All images with 1st letter as captial are cat images",
              "#images with small first letter are dog images"]
    for split, lines in lists.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (base / "annotations" / "list.txt").write_text(
        "\n".join(header + lists["trainval"] + lists["test"]) + "\n")
    return base


def write_dtd(root: str | os.PathLike, per_split: tuple[int, int, int] = (2, 2, 2), size: int = 32,
              seed: int = 0) -> Path:
    """``dtd/dtd/images/<class>/<class>_%04d.jpg`` and ``labels/{train,val,test}1.txt`` (partition 1,
    lines "<class>/<file>"), plus ``labels/labels_joint_anno.txt``."""
    source = ImageSource(size, seed)
    base = Path(root) / "dtd" / "dtd"
    (base / "labels").mkdir(parents=True, exist_ok=True)
    lines = {"train": [], "val": [], "test": []}
    counter = [0] * len(DTD_CLASSES)
    for split, count in zip(lines, per_split):
        for k in _labels(len(DTD_CLASSES), count):
            counter[k] += 1
            rel = f"{DTD_CLASSES[k]}/{DTD_CLASSES[k]}_{counter[k]:04d}.jpg"
            lines[split].append(rel)
            _jpg(base / "images" / rel, source(k))
    for split, entries in lines.items():
        (base / "labels" / f"{split}1.txt").write_text("\n".join(entries) + "\n")
    joint = [f"{rel} {rel.split('/')[0]} " for split in lines for rel in lines[split]]
    (base / "labels" / "labels_joint_anno.txt").write_text("\n".join(joint) + "\n")
    return base


def write_all(root: str | os.PathLike, datasets=("cifar10", "cifar100", "flowers102", "pets", "dtd"),
              per_class: int = 4, size: int = 32, seed: int = 0) -> Path:
    """Every requested fixture under ``root``; ``per_class`` images per class per training split
    (validation/test splits get half of that, at least 2)."""
    small = max(2, per_class // 2)
    writers = {
        "cifar10": lambda: write_cifar(root, 10, per_class, small, seed),
        "cifar100": lambda: write_cifar(root, 100, per_class, small, seed),
        "flowers102": lambda: write_flowers102(root, (per_class, small, small), size, seed),
        "pets": lambda: write_pets(root, per_class, small, size, seed),
        "dtd": lambda: write_dtd(root, (per_class, small, small), size, seed),
    }
    for name in datasets:
        if name not in writers:
            raise ValueError(f"no fixture writer for {name!r}; expected one of {sorted(writers)}")
        writers[name]()
    return Path(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder to write the fixtures into (torchvision layouts)")
    parser.add_argument("--datasets", nargs="+",
                        default=["cifar10", "cifar100", "flowers102", "pets", "dtd"])
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="side of the JPEG images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        write_all(args.root, args.datasets, args.per_class, args.size, args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote fixtures for {', '.join(args.datasets)} under {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
