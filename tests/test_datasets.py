"""The dataset layer reads fixtures in each dataset's real on-disk format through torchvision."""
from __future__ import annotations

import numpy as np
import pytest
import torchvision.datasets as tvd
from PIL import Image

from transfer import datasets as D
from transfer import fixtures
from transfer.linear import splits

PER_CLASS = 4  # training split; val/test get 2 per class


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    fixtures.write_all(path, per_class=PER_CLASS, size=24)
    return path


# dataset -> {torchvision split: (torchvision class, images per class, number of classes)}
EXPECTED = {
    "cifar10": {"train": (tvd.CIFAR10, 4, 10), "test": (tvd.CIFAR10, 2, 10)},
    "cifar100": {"train": (tvd.CIFAR100, 4, 100), "test": (tvd.CIFAR100, 2, 100)},
    "flowers102": {"train": (tvd.Flowers102, 4, 102), "val": (tvd.Flowers102, 2, 102),
                   "test": (tvd.Flowers102, 2, 102)},
    "pets": {"trainval": (tvd.OxfordIIITPet, 4, 37), "test": (tvd.OxfordIIITPet, 2, 37)},
    "dtd": {"train": (tvd.DTD, 4, 47), "val": (tvd.DTD, 2, 47), "test": (tvd.DTD, 2, 47)},
}


@pytest.mark.parametrize("name,split", [(n, s) for n in EXPECTED for s in EXPECTED[n]])
def test_fixture_loads_through_torchvision(root, name, split):
    cls, per_class, num_classes = EXPECTED[name][split]
    data = D.load(name, root, split, verify_md5=False)
    assert isinstance(data, cls)
    labels = D.labels_of(data)
    assert len(data) == per_class * num_classes
    assert sorted(set(labels)) == list(range(num_classes)) == list(range(D.NUM_CLASSES[name]))
    assert np.bincount(labels).tolist() == [per_class] * num_classes
    image, label = data[len(data) - 1]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert label == labels[-1]


def test_pets_classes_follow_the_breed_names(root):
    data = D.load("pets", root, "trainval")
    assert data.classes[0] == "Abyssinian" and data.classes[1] == "American Bulldog"
    assert len(data.classes) == 37 and len(data._bin_labels) == len(data)
    assert set(data._bin_labels) == {0, 1}  # cats and dogs from the species column


def test_splits_are_disjoint_and_seeded(root):
    n = len(D.load("cifar10", root, "train", verify_md5=False))
    fit = splits.indices("cifar10", "train", n)
    val = splits.indices("cifar10", "val", n)
    assert len(val) == int(0.2 * n) and len(fit) + len(val) == n
    assert not set(fit) & set(val)
    assert (splits.indices("cifar10", "val", n) == val).all()  # same seed, same split
    assert len(splits.indices("flowers102", "val", 7)) == 7  # official split: all of it
    assert splits.source_splits("pets") == ["test", "trainval"]


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "flowers102"])
def test_md5_switch(root, name):
    with pytest.raises(D.DatasetError) as err:
        D.load(name, root, "test")
    message = str(err.value)
    assert "\n" not in message and "MD5" in message and "--no-verify-md5" in message
    assert len(D.load(name, root, "test", verify_md5=False)) > 0


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "flowers102", "pets", "dtd"])
def test_missing_dataset_names_the_layout(tmp_path, name):
    split = D.SOURCE_SPLITS[name][0]
    with pytest.raises(D.DatasetError) as err:
        D.load(name, tmp_path, split, verify_md5=False)
    message = str(err.value)
    assert "\n" not in message
    assert D.LAYOUTS[name].replace("ROOT", str(tmp_path)) in message


def test_half_present_pets_names_the_missing_file(root, tmp_path):
    (tmp_path / "oxford-iiit-pet" / "images").mkdir(parents=True)
    (tmp_path / "oxford-iiit-pet" / "annotations").mkdir()
    with pytest.raises(D.DatasetError, match=r"annotations/trainval\.txt"):
        D.load("pets", tmp_path, "trainval")


def test_digits_fixed_split():
    train, test = D.load("digits", None, "train"), D.load("digits", None, "test")
    assert len(train) + len(test) == 1797 and len(test) == 540
    assert sorted(set(D.labels_of(test))) == list(range(10))
    image, _ = train[0]
    assert image.size == (8, 8) and image.mode == "RGB"


def test_unknown_dataset_and_split():
    with pytest.raises(D.DatasetError, match="expected one of"):
        D.load("imagenet", ".", "train")
    with pytest.raises(D.DatasetError, match="has splits"):
        D.load("pets", ".", "val")


def test_fixture_cli(tmp_path):
    assert fixtures.main([str(tmp_path), "--datasets", "cifar10", "--per-class", "2"]) == 0
    assert len(D.load("cifar10", tmp_path, "train", verify_md5=False)) == 20
    assert fixtures.main([str(tmp_path), "--datasets", "imagenet"]) == 2
