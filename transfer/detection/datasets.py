"""The on-disk layouts both detection engines read, the class lists, and one check of a data root.

Both detectron2 and MMDetection read the same root (``$DETECTRON2_DATASETS``)::

    VOC2007/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/{trainval,test}.txt}
    VOC2012/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/trainval.txt}
    coco/annotations/instances_{train,val}2017.json, coco/{train2017,val2017}/*.jpg

``check_layout`` turns every way a root can be wrong into one ``DatasetLayoutError`` line that
names the expected layout, before an engine starts (and fails deep inside a worker).
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

TASKS = ("voc", "coco")

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# (id, name, supercategory) of the 80 COCO 2017 categories, as in instances_*2017.json.
COCO_CATEGORIES = tuple(
    (int(i), n.replace("_", " "), s) for s, group in (
        ("person", "1:person"),
        ("vehicle", "2:bicycle 3:car 4:motorcycle 5:airplane 6:bus 7:train 8:truck 9:boat"),
        ("outdoor", "10:traffic_light 11:fire_hydrant 13:stop_sign 14:parking_meter 15:bench"),
        ("animal", "16:bird 17:cat 18:dog 19:horse 20:sheep 21:cow 22:elephant 23:bear 24:zebra "
                   "25:giraffe"),
        ("accessory", "27:backpack 28:umbrella 31:handbag 32:tie 33:suitcase"),
        ("sports", "34:frisbee 35:skis 36:snowboard 37:sports_ball 38:kite 39:baseball_bat "
                   "40:baseball_glove 41:skateboard 42:surfboard 43:tennis_racket"),
        ("kitchen", "44:bottle 46:wine_glass 47:cup 48:fork 49:knife 50:spoon 51:bowl"),
        ("food", "52:banana 53:apple 54:sandwich 55:orange 56:broccoli 57:carrot 58:hot_dog "
                 "59:pizza 60:donut 61:cake"),
        ("furniture", "62:chair 63:couch 64:potted_plant 65:bed 67:dining_table 70:toilet"),
        ("electronic", "72:tv 73:laptop 74:mouse 75:remote 76:keyboard 77:cell_phone"),
        ("appliance", "78:microwave 79:oven 80:toaster 81:sink 82:refrigerator"),
        ("indoor", "84:book 85:clock 86:vase 87:scissors 88:teddy_bear 89:hair_drier "
                   "90:toothbrush"),
    ) for i, n in (item.split(":") for item in group.split())
)

# Split name -> (folder under the root, image set or json, year); the engines' standard names.
VOC_SPLITS = {
    "voc_2007_trainval": ("VOC2007", "trainval", 2007),
    "voc_2012_trainval": ("VOC2012", "trainval", 2012),
    "voc_2007_test": ("VOC2007", "test", 2007),
}
COCO_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}
TRAIN_SPLITS = {"voc": ("voc_2007_trainval", "voc_2012_trainval"), "coco": ("coco_2017_train",)}
TEST_SPLITS = {"voc": ("voc_2007_test",), "coco": ("coco_2017_val",)}

LAYOUT = {
    "voc": "VOC2007/{Annotations/*.xml,JPEGImages/*.jpg,ImageSets/Main/{trainval,test}.txt} and "
           "VOC2012/{Annotations,JPEGImages,ImageSets/Main/trainval.txt}",
    "coco": "coco/annotations/instances_{train,val}2017.json and coco/{train2017,val2017}/*.jpg",
}
_FULL_PARSE_LIMIT = 64 << 20  # parse COCO json files up to this size; bigger: cheap checks only


class DatasetLayoutError(ValueError):
    """A data root that does not hold the standard layout (the message is one line)."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The root both engines read: ``root``, else ``$DETECTRON2_DATASETS``, else ``./datasets``
    (detectron2's own default)."""
    return Path(os.path.expanduser(str(root or os.environ.get("DETECTRON2_DATASETS", "datasets"))))


def _fail(task: str, root: Path, problem: str) -> None:
    raise DatasetLayoutError(f"{problem}; expected under {root} (set $DETECTRON2_DATASETS): "
                             f"{LAYOUT[task]}")


def _check_voc_split(root: Path, folder: str, image_set: str) -> int:
    base = root / folder
    split_file = base / "ImageSets" / "Main" / f"{image_set}.txt"
    if not split_file.is_file():
        _fail("voc", root, f"missing {split_file}")
    try:
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        _fail("voc", root, f"{split_file} is not a readable list of image ids "
                           f"({type(err).__name__})")
    if not ids:
        _fail("voc", root, f"{split_file} lists no images")
    for sub in ("Annotations", "JPEGImages"):
        if not (base / sub).is_dir():
            _fail("voc", root, f"missing folder {base / sub}")
    missing = [i for i in ids if not (base / "Annotations" / f"{i}.xml").is_file()]
    if missing:
        _fail("voc", root, f"{len(missing)} ids of {split_file.name} have no Annotations/<id>.xml "
                           f"(e.g. {missing[0]})")
    missing = [i for i in ids if not (base / "JPEGImages" / f"{i}.jpg").is_file()]
    if missing:
        _fail("voc", root, f"{len(missing)} ids of {split_file.name} have no JPEGImages/<id>.jpg "
                           f"(e.g. {missing[0]})")
    first = base / "Annotations" / f"{ids[0]}.xml"
    try:
        tree = ET.parse(first)
    except ET.ParseError as err:
        _fail("voc", root, f"{first} is not valid XML ({err})")
    for obj in tree.findall("object"):
        name, box = obj.findtext("name"), obj.find("bndbox")
        if name not in VOC_CLASSES or box is None:
            _fail("voc", root, f"{first} has an object that is not a VOC class with a <bndbox> "
                               f"(name {name!r})")
    return len(ids)


def _check_coco_split(root: Path, image_dir: str, json_file: str) -> int:
    ann, images = root / json_file, root / image_dir
    if not ann.is_file():
        _fail("coco", root, f"missing {ann}")
    if not images.is_dir():
        _fail("coco", root, f"missing folder {images}")
    if ann.stat().st_size > _FULL_PARSE_LIMIT:  # the engine parses it anyway; keep this cheap
        with open(ann, "rb") as fh:
            head = fh.read(64).lstrip()
        if not head.startswith(b"{"):
            _fail("coco", root, f"{ann} is not a COCO json file")
        return -1
    try:
        data = json.loads(ann.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        _fail("coco", root, f"{ann} is not valid JSON ({str(err)[:80]})")
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        _fail("coco", root, f"{ann} lacks the COCO keys images/annotations/categories")
    if not isinstance(data["images"], list) or not data["images"]:
        _fail("coco", root, f"{ann} lists no images")
    entry = data["images"][0]
    if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
        _fail("coco", root, f"{ann}: its first image has no file_name")
    first = images / entry["file_name"]
    if not first.is_file():
        _fail("coco", root, f"{ann} names {first.name} but {first} does not exist")
    return len(data["images"])


def check_layout(task: str, root: str | os.PathLike | None = None) -> dict[str, int]:
    """Check ``root`` for ``task`` ('voc' or 'coco'); return the number of images per split
    (-1 where a json file was too big to count cheaply). Raises ``DatasetLayoutError``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    root = data_root(root)
    if root.exists() and not root.is_dir():
        _fail(task, root, f"data root {root} is a file, not a folder")
    if not root.is_dir():
        _fail(task, root, f"data root {root} does not exist")
    if task == "voc":
        return {name: _check_voc_split(root, folder, image_set)
                for name, (folder, image_set, _) in VOC_SPLITS.items()}
    return {name: _check_coco_split(root, image_dir, json_file)
            for name, (image_dir, json_file) in COCO_SPLITS.items()}
