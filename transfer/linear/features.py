"""Frozen-backbone features for the standard transfer protocol, with an on-disk cache.

Eval-mode backbone, global-average-pooled output; images go through bicubic resize + center crop
(224 by default; ``image_size`` smaller for CPU demos) and ImageNet normalisation. Features are
cached per (backbone sha, width, BN-calibration spec, dataset, torchvision split, the data's
identity, transform, code version), so a re-run with another regularisation grid or with more
widths extracts nothing it already has, while a re-run on other data at the same checkpoint
(another root, a re-extracted or edited file: ``datasets.fingerprint``) or with other extraction
code (``CODE_VERSION``, torch/torchvision versions) extracts again.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torchvision.transforms as T
from torch.utils.data import DataLoader, Dataset

from pretrain import safe_io
from pretrain.safe_io import atomic_write
from transfer import datasets as D

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_FORMAT = "us3l-features-v2"
CODE_VERSION = 2  # bump whenever extraction (transform, pooling, dtype) changes what is cached


def code_version() -> dict:
    """The extraction code's identity in the cache key: this module's version and the libraries
    whose resize/convolution numerics the features depend on."""
    import torchvision
    return {"features": CODE_VERSION, "torch": torch.__version__,
            "torchvision": torchvision.__version__}


def cache_key(tag: dict, name: str, root, split: str, image_size: int) -> dict:
    """The cache key of one torchvision split's features: the backbone ``tag`` (sha, width,
    calibration), the dataset and split, the data's fingerprint, the transform, the code."""
    return {**tag, "dataset": name, "split": split,
            "data": D.fingerprint(name, root, split),
            "transform": transform_key(image_size), "code": code_version()}


def eval_transform(image_size: int = 224) -> T.Compose:
    """Resize the short side to ``image_size`` (bicubic), center-crop it, ImageNet-normalise."""
    return T.Compose([T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def transform_key(image_size: int = 224) -> str:
    """A stable name for ``eval_transform(image_size)`` (part of the cache key)."""
    return f"resize{image_size}-bicubic-centercrop{image_size}-imagenetnorm"


def default_cache_dir() -> Path:
    return Path(os.environ.get("US3L_CACHE", Path.home() / ".cache" / "us3l")) / "features"


class FeatureCache:
    """Feature tensors on disk, one file per key; files carry their key and are written atomically.
    A file that is unreadable, holds code (refused by ``weights_only``), another key or
    non-finite features is a miss and gets rewritten; temp names are never read."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.root / str(key.get("dataset", "misc")) / f"{key.get('split', 'x')}-{digest}.pt"

    def get(self, key: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            blob = safe_io.load_torch(path, "feature cache")
        except safe_io.UnsafeFileError:  # unreadable or foreign: a miss, it gets rewritten
            return None
        if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT \
                or blob.get("key") != json.loads(json.dumps(key, sort_keys=True)):
            return None
        feats, labels = blob.get("features"), blob.get("labels")
        if not isinstance(feats, torch.Tensor) or not isinstance(labels, torch.Tensor) or \
                feats.dim() != 2 or labels.shape != feats.shape[:1] or \
                not bool(torch.isfinite(feats).all()):
            return None  # damaged or foreign: a miss, rewritten from the images
        return feats, labels

    def put(self, key: dict, features: torch.Tensor, labels: torch.Tensor) -> Path:
        blob = {"format": CACHE_FORMAT, "key": json.loads(json.dumps(key, sort_keys=True)),
                "features": features.contiguous(), "labels": labels.contiguous()}
        return atomic_write(self.path(key), lambda tmp: torch.save(blob, tmp))


@torch.no_grad()
def extract(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256,
            workers: int = 0, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (float32, CPU) and labels of every item of ``dataset``, in order."""
    from tqdm.auto import tqdm
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    feats, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
        out = model(images.to(device, non_blocking=True))
        if out.dim() > 2:  # a backbone returning maps: global-average-pool them
            out = out.flatten(2).mean(-1)
        feats.append(out.float().cpu())
        labels.append(torch.as_tensor(targets, dtype=torch.long))
    return torch.cat(feats), torch.cat(labels)


def probe_features(get_model: Callable[[], nn.Module], tag: dict, name: str, root, image_size: int,
                   cache: FeatureCache, device: torch.device, verify_md5: bool = True,
                   batch_size: int = 256, workers: int = 0) -> dict[str, tuple[torch.Tensor,
                                                                                torch.Tensor]]:
    """Features of the probe's train/val/test of dataset ``name`` (see ``splits.PLAN``).

    ``tag`` identifies the backbone (sha, width, calibration); ``get_model()`` is called only
    when some split is not cached yet.
    """
    from transfer.linear import splits
    by_source, model = {}, None
    for source in splits.source_splits(name):
        key = cache_key(tag, name, root, source, image_size)
        hit = cache.get(key)
        if hit is None:
            dataset = D.load(name, root, source, eval_transform(image_size), verify_md5)
            model = model if model is not None else get_model()
            hit = extract(model, dataset, device, batch_size, workers,
                          desc=f"{name}/{source} w{tag.get('width')}")
            cache.put(key, *hit)
        by_source[source] = hit
    out = {}
    for split, (source, _) in splits.PLAN[name].items():
        x, y = by_source[source]
        idx = torch.from_numpy(splits.indices(name, split, len(y)))
        out[split] = (x[idx], y[idx])
    return out
