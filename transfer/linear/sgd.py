"""The paper's linear evaluation (Table 2): a linear layer trained by SGD on augmented images over
the frozen backbone, as the official US3L ``workers/linear.py`` with
``configs/cifar/resnet18_linear_eval_cifar.yaml`` (run by ``scripts/cifar/run_linear_eval.sh`` on 4
GPUs). Every number is a field of ``SGDConfig``:

- optimiser: SGD, lr 30, momentum 0.9, weight decay 0, 100 epochs, lr x0.1 at epochs 60 and 80
  (``BASE_LR``, ``MOMENTUM``, ``WEIGHT_DECAY``, ``EPOCHS``, ``DECAY_MILESTONES``);
- total batch 512 (``BATCH_SIZE: 128 # per-gpu`` x 4 processes);
- transforms, "cifar" recipe (the official code's CIFAR branch, hard-coded there whatever the
  config's AUG section says): RandomResizedCrop(size, scale 0.8-1, ratio 3/4-4/3, bicubic) +
  horizontal flip for training; Resize(int(size * 8 / 7), bicubic) + CenterCrop(size) for
  evaluation (36 + 32 at 32 px); CIFAR normalisation (0.4914, 0.4822, 0.4465) /
  (0.2023, 0.1994, 0.2010). The "imagenet" recipe is the official ImageNet branch:
  RandomResizedCrop(size) (scale 0.08-1, bilinear) + flip; Resize(size * 256 / 224) +
  CenterCrop(size); ImageNet normalisation. ``recipe="auto"`` picks "cifar" for CIFAR-10/100 (and
  the built-in digits), "imagenet" otherwise;
- BN recalibrated on the downstream training set before training (``CALIBRATE_BN: True`` ->
  ``bn_calibrate``): the backbone in train mode runs 3 epochs of the augmented training images
  through BN's running average (PyTorch's momentum 0.1, statistics not reset), in batches of 128
  (the official statistics are each process's own: 128 images per GPU), no gradient step; then
  eval mode for training and test (BN fixed, as ``LINEAR_EVAL``).

It trains on the whole official training data (the probe's train+val) and scores the test split
after the last epoch; there is no sweep, so the reported "weight_decay" is the configured one.
The recalibration works on a copy: the backbone passed in is left as it was.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms as T
from torch.utils.data import ConcatDataset, DataLoader

from transfer import datasets as D
from transfer.linear import splits
from transfer.linear.features import IMAGENET_MEAN, IMAGENET_STD
from transfer.linear.metrics import score

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the official workers/linear.py, CIFAR branch
CIFAR_STD = (0.2023, 0.1994, 0.2010)
RECIPES = ("auto", "cifar", "imagenet")
CIFAR_LIKE = ("cifar10", "cifar100", "digits")  # small-image sets: the CIFAR recipe and 32 px
SMALL_IMAGE_SIZE = 32


@dataclass
class SGDConfig:
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 512            # 128 per GPU x 4 GPUs
    epochs: int = 100
    milestones: tuple[int, ...] = (60, 80)
    gamma: float = 0.1
    recipe: str = "auto"             # auto | cifar | imagenet
    scale: tuple[float, float] | None = None  # RandomResizedCrop area; None: the recipe's
    bn_calib_epochs: int = 3         # 0: no downstream BN recalibration
    bn_calib_batch_size: int = 128
    bn_calib_momentum: float = 0.1
    workers: int = 0
    seed: int = 0


def recipe_for(name: str, cfg: SGDConfig) -> str:
    if cfg.recipe not in RECIPES:
        raise ValueError(f"unknown SGD recipe {cfg.recipe!r}; expected one of {', '.join(RECIPES)}")
    if cfg.recipe != "auto":
        return cfg.recipe
    return "cifar" if name in CIFAR_LIKE else "imagenet"


def default_image_size(names) -> int:
    """The SGD protocol's image side when --image-size is not given: 32 px when every dataset is
    a small-image one (the official CIFAR recipe), else 224."""
    return SMALL_IMAGE_SIZE if all(n in CIFAR_LIKE for n in names) else 224


def train_transform(image_size: int, cfg: SGDConfig, recipe: str = "cifar") -> T.Compose:
    """The official training transform of ``recipe`` (see the module docstring)."""
    if recipe == "cifar":
        crop = T.RandomResizedCrop(image_size, scale=cfg.scale or (0.8, 1.0),
                                   ratio=(3.0 / 4.0, 4.0 / 3.0),
                                   interpolation=T.InterpolationMode.BICUBIC)
        mean, std = CIFAR_MEAN, CIFAR_STD
    else:
        crop = T.RandomResizedCrop(image_size, scale=cfg.scale or (0.08, 1.0))
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return T.Compose([crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(image_size: int, recipe: str = "cifar") -> T.Compose:
    """cifar: Resize(int(size * 8 / 7), bicubic) + CenterCrop(size) (36 + 32 at 32 px), CIFAR
    normalisation; imagenet: Resize(int(size * 256 / 224)) + CenterCrop(size), ImageNet's."""
    if recipe == "cifar":
        return T.Compose([T.Resize(int(image_size * (8 / 7)),
                                   interpolation=T.InterpolationMode.BICUBIC),
                          T.CenterCrop(image_size), T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    return T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _trainval(name: str, root, transform, verify_md5: bool):
    """The probe's train+val as one dataset (every index of each training source split)."""
    parts, seen = [], set()
    for split in ("train", "val"):
        source, _ = splits.PLAN[name][split]
        if source in seen:
            continue
        seen.add(source)
        parts.append(D.load(name, root, source, transform, verify_md5))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(backbone: nn.Module, dataset, cfg: SGDConfig, device) -> tuple[nn.Module, dict]:
    """The official ``bn_calibrate``: a copy of ``backbone`` in train mode runs
    ``cfg.bn_calib_epochs`` shuffled epochs of ``dataset`` (training transforms) through BN's
    running average (momentum ``cfg.bn_calib_momentum``, statistics not reset), then eval mode.
    Returns (the copy, what was done). A batch of one image is skipped (no batch variance)."""
    bns = _batchnorms(backbone)
    if cfg.bn_calib_epochs <= 0 or not bns:
        return backbone, {"epochs": 0, "batches": 0,
                          "note": "off" if bns else "no BatchNorm layers"}
    model = copy.deepcopy(backbone).to(device)
    for bn in _batchnorms(model):
        bn.momentum = cfg.bn_calib_momentum
    model.train()
    loader = DataLoader(dataset, batch_size=cfg.bn_calib_batch_size, shuffle=True,
                        num_workers=cfg.workers,
                        generator=torch.Generator().manual_seed(cfg.seed + 1))
    batches = 0
    for _ in range(cfg.bn_calib_epochs):
        for images, _labels in loader:
            if len(images) < 2:
                continue
            model(images.to(device))
            batches += 1
    model.eval()
    return model, {"epochs": cfg.bn_calib_epochs, "batches": batches,
                   "batch_size": cfg.bn_calib_batch_size, "momentum": cfg.bn_calib_momentum,
                   "images": "downstream train+val, training transforms"}


@torch.no_grad()
def _predict(backbone: nn.Module, head: nn.Module, loader, device) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    preds, targets = [], []
    for images, labels in loader:
        preds.append(head(backbone(images.to(device))).argmax(1).cpu())
        targets.append(torch.as_tensor(labels))
    return torch.cat(preds), torch.cat(targets)


def probe(backbone: nn.Module, feature_dim: int, name: str, root, metric: str, num_classes: int,
          device: torch.device, image_size: int = SMALL_IMAGE_SIZE, cfg: SGDConfig | None = None,
          verify_md5: bool = True) -> dict:
    """Recalibrate BN on the downstream training set (a copy), then train a linear head on the
    frozen backbone (eval mode: BN statistics stay fixed while the head trains)."""
    from tqdm.auto import tqdm
    cfg = cfg or SGDConfig()
    recipe = recipe_for(name, cfg)
    torch.manual_seed(cfg.seed)
    train = _trainval(name, root, train_transform(image_size, cfg, recipe), verify_md5)
    test = D.load(name, root, splits.PLAN[name]["test"][0], eval_transform(image_size, recipe),
                  verify_md5)
    backbone, bn_info = recalibrate_bn(backbone.eval().to(device), train, cfg, device)
    backbone = backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                              num_workers=cfg.workers, generator=generator)
    test_loader = DataLoader(test, batch_size=min(256, cfg.batch_size), num_workers=cfg.workers)
    head = nn.Linear(feature_dim, num_classes).to(device)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.gamma)
    losses = []
    for epoch in tqdm(range(cfg.epochs), desc=f"SGD linear {name}", unit="epoch", leave=False,
                      disable=None):
        total, count = 0.0, 0
        for images, labels in train_loader:
            with torch.no_grad():
                feats = backbone(images.to(device))
            loss = nn.functional.cross_entropy(head(feats), torch.as_tensor(labels).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(labels), count + len(labels)
        sched.step()
        losses.append(total / max(count, 1))
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(f"SGD linear probe diverged on {name} at epoch {epoch + 1} "
                                     f"(loss {losses[-1]}); lower --sgd-lr")
    pred, target = _predict(backbone, head, test_loader, device)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    config["recipe"] = recipe
    return {"metric": metric, "value": score(metric, pred, target),
            "weight_decay": cfg.weight_decay, "config": config, "image_size": image_size,
            "bn_calibration": bn_info,
            "final_train_loss": losses[-1], "n_train": len(train), "n_val": 0,
            "n_test": len(test), "feature_dim": feature_dim}
