"""The official ViT recipe of Table 3 (US3L ViT_experiments/, MoCo v3) as this project builds it:
heads per block, the frozen patch projection (--stop-grad-conv1), MoCo v3's predictor output BN,
BYOL's asymmetric augmentation pair, and a short ViT run from the real config with all of them."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from pretrain import heads, slim
from pretrain.config import ConfigError, load_config
from pretrain.data import TwoViews, eval_kind, two_view_transform, view_pair
from pretrain.models import build_backbone
from pretrain.models.vit import ARCHS

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
SMALL = {"image_size": 32, "patch_size": 8, "depth": 1}


@pytest.mark.parametrize("stem,arch,heads_", [("us3l_vit_tiny_cifar10", "vit_tiny", 6),
                                              ("us_mocov3_vit_small_cifar10", "vit_small", 12)])
def test_vit_configs_build_the_official_heads_and_frozen_patch_projection(stem, arch, heads_):
    model_cfg = load_config(CONFIGS / f"{stem}.yaml")["model"]
    assert model_cfg == {"arch": arch, "image_size": 224, "patch_size": 16, "heads": heads_,
                         "stop_grad_conv1": True}
    net = build_backbone({**model_cfg, **SMALL})
    assert net.heads == heads_ and ARCHS[arch][0] // heads_ == 32       # head dim 32 (us_vits.py)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"patch_embed.proj.weight", "patch_embed.proj.bias"}


def test_heads_stay_fixed_and_narrow_with_the_width():
    """us_vits.py's Attention splits the current width into num_heads heads: at width r every one
    of the 6 heads keeps channels_at(32, r) dims, and the slimmable network equals its twin."""
    torch.manual_seed(0)
    cfg = {"arch": "vit_tiny", "heads": 6, **SMALL}
    net = build_backbone(cfg).eval()
    d = slim.channels_at(32, 0.5)
    twin = build_backbone(cfg, width=0.5).eval()
    assert twin.blocks[0].attn.q.weight.shape == (6 * d, 6 * d)
    twin.load_state_dict(slim.slice_state_dict(net.state_dict(), twin.state_dict()))
    x = torch.randn(2, 3, 32, 32)
    slim.set_width(net, 0.5)
    with torch.no_grad():
        torch.testing.assert_close(net(x), twin(x), rtol=1e-5, atol=1e-5)


def test_frozen_patch_projection_gets_no_gradient_and_has_moco_v3_init():
    torch.manual_seed(0)
    net = build_backbone({"arch": "vit_tiny", "stop_grad_conv1": True, **SMALL})
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    proj = net.patch_embed.proj
    assert proj.weight.grad is None and proj.bias.grad is None
    assert net.blocks[0].attn.q.weight.grad is not None
    bound = (6.0 / (3 * 8 * 8 + 192)) ** 0.5          # vits.py: xavier-uniform over (3*p*p, dim)
    assert proj.weight.abs().max() <= bound and proj.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(proj.bias) == 0
    trainable = build_backbone({"arch": "vit_tiny", **SMALL})
    assert all(p.requires_grad for p in trainable.parameters())  # off unless asked


def test_bad_vit_options_are_one_config_error():
    with pytest.raises(ConfigError, match="model.stop_grad_conv1"):
        load_config(CONFIGS / "us3l_vit_tiny_cifar10.yaml", ["model.stop_grad_conv1=maybe"])
    with pytest.raises(ConfigError, match="model.heads"):
        load_config(CONFIGS / "us3l_vit_tiny_cifar10.yaml", ["model.heads=0"])
    with pytest.raises(ValueError, match="model.heads 5"):
        build_backbone({"arch": "vit_tiny", "heads": 5, **SMALL})


def test_predictor_output_bn_is_moco_v3s_affine_free_bn():
    plain = heads.predictor(16, 32)
    assert not isinstance(plain[-1], nn.BatchNorm1d) and plain[-1].bias is not None
    for head in (heads.predictor(16, 32, bn_last=True), heads.distill_head(16, 32, bn_last=True)):
        assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear,
                                           nn.BatchNorm1d]
        assert head[-1].affine is False and head[-2].bias is None
        out = head(torch.randn(8, 16))
        torch.testing.assert_close(out.mean(0), torch.zeros(16), atol=1e-5, rtol=0)


def _ops(kind: str, view: int) -> dict:
    from torchvision.transforms import v2
    found = {}
    for op in two_view_transform(kind, 32, view).transforms:
        inner = op.transforms[0] if isinstance(op, v2.RandomApply) else op
        found[type(inner).__name__] = op.p if hasattr(op, "p") else None
    return found


def test_byol_preset_is_the_asymmetric_pair_and_the_vit_default():
    v1, v2_ = _ops("byol", 0), _ops("byol", 1)
    assert v1["GaussianBlur"] == 1.0 and "RandomSolarize" not in v1
    assert v2_["GaussianBlur"] == 0.1 and v2_["RandomSolarize"] == 0.2
    assert _ops("cifar", 0) == _ops("cifar", 1)                    # symmetric presets unchanged
    assert eval_kind("byol") == "cifar" and eval_kind("imagenet") == "imagenet"
    for stem in ("us3l_vit_tiny_cifar10", "mocov3_vit_small_cifar10", "byol_vit_tiny_cifar10"):
        assert load_config(CONFIGS / f"{stem}.yaml")["data"]["augment"] == "byol"
    with pytest.raises(ConfigError, match="data.augment"):
        load_config(None, ["data.augment=byol2"])


def test_two_views_apply_view1_and_view2_transforms_reproducibly():
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    base = list(zip(images, range(4)))
    first = TwoViews(base, view_pair("byol", 32), seed=3)
    again = TwoViews(base, view_pair("byol", 32), seed=3)
    a1, a2, _ = first[1]
    b1, b2, _ = again[1]
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    # a pair of identity-like transforms shows which transform each view went through
    marked = TwoViews(base, (lambda im: 1, lambda im: 2))
    assert marked[0][:2] == (1, 2)


def test_short_vit_run_from_the_real_config(tmp_path):
    """us3l_vit_tiny_cifar10 (heads 6, stop-grad, byol views) shrunk to 2 iterations on the
    synthetic set: the patch projection stays at its init, the rest trains, train.csv has α."""
    from pretrain.engine import Trainer
    cfg = load_config(CONFIGS / "us3l_vit_tiny_cifar10.yaml", [
        "model.image_size=32", "model.patch_size=8", "model.depth=1", "data.name=synthetic",
        "data.image_size=32", "data.batch_size=8", "data.num_workers=0",
        "data.synthetic.train_size=16", "data.synthetic.val_size=0",
        "heads.projector.hidden=32", "heads.projector.out=16", "heads.predictor.hidden=32",
        "heads.distill_head.hidden=32", "schedule.iters=2", "optim.warmup_epochs=0",
        "sampling.dynamic=false", "monitor.tensorboard=false", "monitor.log_every=1",
        "monitor.knn_every=0", "amp=false", f"output.dir={tmp_path}"])
    trainer = Trainer(cfg, progress=False)
    backbone = trainer.method.online.backbone
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    trainer.train()
    after = dict(backbone.named_parameters())
    assert torch.equal(after["patch_embed.proj.weight"], before["patch_embed.proj.weight"])
    assert not torch.equal(after["blocks.0.attn.q.weight"], before["blocks.0.attn.q.weight"])
    rows = list(csv.DictReader(open(tmp_path / "train.csv")))
    assert [float(r["reg_alpha"]) for r in rows] == [0.0, 0.0]    # no group reg for the ViT runs
