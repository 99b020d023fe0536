"""The VOC07+12 and COCO 2017 splits in detectron2's catalogs, read from one data root.

detectron2's builtin registration reads ``$DETECTRON2_DATASETS`` once, when detectron2.data is
first imported; ``register_datasets(root)`` (re)registers the five splits the project uses with
detectron2's own ``register_pascal_voc`` / ``register_coco_instances`` and builtin COCO metadata,
so the root is explicit and checked (``transfer.detection.datasets.check_layout``) first.
"""
from __future__ import annotations

import os
from pathlib import Path

import transfer.detectron2.compat  # noqa: F401  (before detectron2)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.data.datasets.pascal_voc import CLASS_NAMES

from transfer.detection.datasets import (COCO_SPLITS, TEST_SPLITS, TRAIN_SPLITS, VOC_CLASSES,
                                         VOC_SPLITS, check_layout, data_root)

assert tuple(CLASS_NAMES) == VOC_CLASSES, "detectron2's VOC class list changed"


def _unregister(name: str) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def register_datasets(task: str, root: str | os.PathLike | None = None, check: bool = True
                      ) -> dict[str, list[str]]:
    """Register ``task``'s train and test splits under their standard names from ``root``
    (default ``$DETECTRON2_DATASETS``); returns {"train": [...], "test": [...]}."""
    root = data_root(root)
    if check:
        check_layout(task, root)
    names = list(TRAIN_SPLITS[task]) + list(TEST_SPLITS[task])
    for name in names:
        _unregister(name)
        if task == "voc":
            folder, split, year = VOC_SPLITS[name]
            register_pascal_voc(name, str(Path(root) / folder), split, year, CLASS_NAMES)
            MetadataCatalog.get(name).evaluator_type = "pascal_voc"
        else:
            image_dir, json_file = COCO_SPLITS[name]
            register_coco_instances(name, _get_builtin_metadata("coco"),
                                    str(Path(root) / json_file), str(Path(root) / image_dir))
    return {"train": list(TRAIN_SPLITS[task]), "test": list(TEST_SPLITS[task])}
