"""The synthetic detection data are GENUINE VOC and COCO: the engines' own loaders and pycocotools
read them, and what they read matches the pixels; a broken data root fails in one line."""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

import transfer.detectron2.compat  # noqa: F401  (before detectron2)
from transfer.detection import synthetic
from transfer.detection.datasets import (COCO_CATEGORIES, VOC_CLASSES, DatasetLayoutError,
                                         check_layout)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("detdata")
    synthetic.make_voc(path, n_trainval07=4, n_test07=3, n_trainval12=3, size=96, seed=1)
    synthetic.make_coco(path, n_train=6, n_val=3, size=96, seed=1, crowd_prob=0.5)
    return path


def _colour_of(cls: str, classes) -> np.ndarray:
    return np.asarray(synthetic.appearance(list(classes).index(cls))[1], dtype=np.float32)


def test_voc_layout_and_detectron2_loader(root):
    from detectron2.data.datasets.pascal_voc import CLASS_NAMES, load_voc_instances

    assert check_layout("voc", root) == {"voc_2007_trainval": 4, "voc_2012_trainval": 3,
                                         "voc_2007_test": 3}
    main = root / "VOC2007" / "ImageSets" / "Main"
    assert {p.name for p in main.iterdir()} >= {"trainval.txt", "test.txt", "train.txt", "val.txt",
                                                "dog_trainval.txt", "dog_test.txt"}
    records = load_voc_instances(str(root / "VOC2007"), "trainval", CLASS_NAMES)
    assert len(records) == 4
    for rec in records:
        xml = ET.parse(root / "VOC2007" / "Annotations" / f"{rec['image_id']}.xml")
        assert len(rec["annotations"]) == len(xml.findall("object")) >= 1
        img = np.asarray(Image.open(rec["file_name"]), dtype=np.float32)
        assert img.shape[:2] == (rec["height"], rec["width"])
        for ann in rec["annotations"]:
            x0, y0, x1, y1 = ann["bbox"]  # detectron2: 0-based pixel edges
            assert 0 <= x0 < x1 <= rec["width"] and 0 <= y0 < y1 <= rec["height"]
            assert min(x1 - x0, y1 - y0) >= 33  # mmdet's VOC bbox_min_size=32 keeps every object
            # the box is tight around the object: its edge rows/columns hold the class colour
            cls = CLASS_NAMES[ann["category_id"]]
            patch = img[int(y0):int(y1), int(x0):int(x1)]
            near = np.linalg.norm(patch - _colour_of(cls, VOC_CLASSES), axis=-1) < 60
            assert near[:4].any() and near[-4:].any() and near[:, :4].any() and near[:, -4:].any()
            assert near.mean() > 0.35  # triangles fill half their box, ellipses and boxes more


def test_voc_readable_by_mmdet(root):
    from mmdet.datasets import VOCDataset

    ds = VOCDataset(data_root=str(root) + "/", ann_file="VOC2007/ImageSets/Main/test.txt",
                    data_prefix=dict(sub_data_root="VOC2007/"), test_mode=True, pipeline=[])
    assert len(ds) == 3 and ds.metainfo["dataset_type"] == "VOC2007"
    info = ds.get_data_info(0)
    assert info["instances"] and all(i["ignore_flag"] == 0 for i in info["instances"])


def test_coco_json_masks_decode_and_match_pixels(root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    assert check_layout("coco", root) == {"coco_2017_train": 6, "coco_2017_val": 3}
    coco = COCO(str(root / "coco" / "annotations" / "instances_train2017.json"))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == \
        [(i, n) for i, n, _ in COCO_CATEGORIES]
    kinds = set()
    for ann in coco.loadAnns(coco.getAnnIds()):
        info = coco.loadImgs(ann["image_id"])[0]
        mask = coco.annToMask(ann).astype(bool)
        assert mask.shape == (info["height"], info["width"])
        assert abs(mask.sum() - ann["area"]) <= 1
        rle = coco.annToRLE(ann)
        assert np.allclose(mask_utils.toBbox(rle), ann["bbox"], atol=0.01)
        kinds.add("rle" if isinstance(ann["segmentation"], dict) else "polygon")
        assert ann["iscrowd"] == isinstance(ann["segmentation"], dict)
        img = np.asarray(Image.open(root / "coco" / "train2017" / info["file_name"]),
                         dtype=np.float32)
        cls = coco.loadCats(ann["category_id"])[0]["name"]
        inside = np.linalg.norm(img[mask] - _colour_of(cls, synthetic.COCO_DEFAULT_CLASSES),
                                axis=-1)
        assert np.median(inside) < 60  # the mask covers the drawn object
    assert kinds == {"polygon", "rle"}


def test_coco_readable_by_detectron2_and_mmdet(root):
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES as D2_CATEGORIES
    from detectron2.data.datasets.coco import load_coco_json
    from mmdet.datasets import CocoDataset

    assert [(c["id"], c["name"]) for c in D2_CATEGORIES if c["isthing"]] == \
        [(i, n) for i, n, _ in COCO_CATEGORIES]
    name = "us3l_test_synthetic_coco"
    records = load_coco_json(str(root / "coco/annotations/instances_val2017.json"),
                             str(root / "coco/val2017"), name)
    assert len(records) == 3 and MetadataCatalog.get(name).thing_classes[0] == "person"
    ds = CocoDataset(data_root=str(root / "coco") + "/",
                     ann_file="annotations/instances_train2017.json",
                     data_prefix=dict(img="train2017/"), pipeline=[])
    assert len(ds) == 6 and len(ds.metainfo["classes"]) == 80


def test_uncompressed_rle_matches_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for first in (0, 1):
        m = rng.random((7, 5)) > 0.5
        m[0, 0] = bool(first)
        rle = synthetic.uncompressed_rle(m)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 7, 5)).astype(bool)
        assert np.array_equal(decoded, m)


def test_broken_layouts_fail_in_one_line(tmp_path, root):
    with pytest.raises(DatasetLayoutError, match=r"VOC2007/\{Annotations.*VOC2012") as err:
        check_layout("voc", tmp_path)
    assert "\n" not in str(err.value)
    bad = tmp_path / "bad"
    shutil.copytree(root / "VOC2007", bad / "VOC2007")
    shutil.copytree(root / "VOC2012", bad / "VOC2012")
    (bad / "VOC2012" / "ImageSets" / "Main" / "trainval.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="VOC2012/ImageSets/Main/trainval.txt"):
        check_layout("voc", bad)
    first = (bad / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    shutil.copy(root / "VOC2012" / "ImageSets" / "Main" / "trainval.txt",
                bad / "VOC2012" / "ImageSets" / "Main" / "trainval.txt")
    (bad / "VOC2007" / "Annotations" / f"{first}.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetLayoutError, match="not valid XML"):
        check_layout("voc", bad)
    shutil.copytree(root / "coco", bad / "coco")
    (bad / "coco" / "annotations" / "instances_val2017.json").write_text("{\"images\": [")
    with pytest.raises(DatasetLayoutError, match="instances_val2017.json is not valid JSON"):
        check_layout("coco", bad)


def test_generator_never_overwrites_foreign_folders(tmp_path):
    (tmp_path / "VOC2007").mkdir()
    (tmp_path / "VOC2007" / "real.txt").write_text("a real data set")
    with pytest.raises(FileExistsError, match="not written by this generator"):
        synthetic.make_voc(tmp_path, 2, 2, 2, size=64)
    assert (tmp_path / "VOC2007" / "real.txt").is_file()
    assert not (tmp_path / "VOC2012").exists()
