"""The paper's linear evaluation (Table 2): a linear layer trained by SGD on augmented images over
the frozen backbone, as in the US3L code for CIFAR (lr 30, momentum 0.9, no weight decay, batch 256,
100 epochs, lr x0.1 at epochs 60 and 80). Every number is a field of ``SGDConfig``.

It trains on the whole official training data (the probe's train+val) and scores the test split;
there is no sweep, so the reported "weight_decay" is the configured one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms as T
from torch.utils.data import ConcatDataset, DataLoader

from transfer import datasets as D
from transfer.linear import splits
from transfer.linear.features import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from transfer.linear.metrics import score


@dataclass
class SGDConfig:
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 100
    milestones: tuple[int, ...] = (60, 80)
    gamma: float = 0.1
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    workers: int = 0
    seed: int = 0


def train_transform(image_size: int, cfg: SGDConfig) -> T.Compose:
    """Random resized crop (bicubic) + horizontal flip + ImageNet normalisation."""
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=cfg.scale,
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


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


@torch.no_grad()
def _predict(backbone: nn.Module, head: nn.Module, loader, device) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    preds, targets = [], []
    for images, labels in loader:
        preds.append(head(backbone(images.to(device))).argmax(1).cpu())
        targets.append(torch.as_tensor(labels))
    return torch.cat(preds), torch.cat(targets)


def probe(backbone: nn.Module, feature_dim: int, name: str, root, metric: str, num_classes: int,
          device: torch.device, image_size: int = 224, cfg: SGDConfig | None = None,
          verify_md5: bool = True) -> dict:
    """Train a linear head on the frozen ``backbone`` (eval mode: BN statistics stay fixed)."""
    from tqdm.auto import tqdm
    cfg = cfg or SGDConfig()
    torch.manual_seed(cfg.seed)
    backbone = backbone.eval().to(device)
    for p in backbone.parameters():
        p.requires_grad_(False)
    train = _trainval(name, root, train_transform(image_size, cfg), verify_md5)
    test = D.load(name, root, splits.PLAN[name]["test"][0], eval_transform(image_size), verify_md5)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                              num_workers=cfg.workers, generator=generator)
    test_loader = DataLoader(test, batch_size=cfg.batch_size, num_workers=cfg.workers)
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
    return {"metric": metric, "value": score(metric, pred, target),
            "weight_decay": cfg.weight_decay, "config": {k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in asdict(cfg).items()},
            "final_train_loss": losses[-1], "n_train": len(train), "n_val": 0,
            "n_test": len(test), "feature_dim": feature_dim}

