"""ViT-Tiny/Small whose embedding, per-head dimension, MLP and LayerNorms are all sliced.

At width r every head keeps the same size, ``channels_at(head_dim, r)`` (``out_groups=num_heads``
/ ``grouped_channels_at``), and the embedding is ``num_heads`` times that. The query/key/value
projections are separate linears whose outputs are stored head-dim-major (feature index
``d * num_heads + h``), so a prefix slice keeps the first d dimensions of EVERY head; the
attention output is flattened back in the same layout before ``proj``. Hence
``slim.slice_state_dict`` cuts a static twin out of the full weights unchanged. Parameter names
follow timm (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.i.{norm1,attn,norm2,mlp}``,
``norm``) except ``attn.qkv`` is split into ``attn.{q,k,v}``.

MoCo v3's options the official US3L ViT runs use (ViT_experiments/models/us_vits.py,
ViT_experiments/run.sh): ``heads`` (the official us_vit_tiny has 6 heads and us_vit_small 12, head
dim 32; ``ARCHS`` keeps timm/DeiT's 3 and 6 when it is null; either way the number of heads is fixed
and every head narrows with the width, as in us_vits.py's ``Attention``, which splits the current
width C into ``num_heads`` heads of C // num_heads) and ``stop_grad_conv1`` (the patch projection
stays at its random xavier init: MoCo v3's ``--stop-grad-conv1``). The patch projection is
initialised as MoCo v3's ``VisionTransformerMoCo`` does (xavier-uniform over 3*p*p inputs, zero
bias), and q/k/v as its "treat Q, K, V separately" init, which separate linears give by default.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain.models import register
from pretrain.models.common import Layers

ARCHS = {  # embed dim, depth, heads (timm/DeiT; the official US3L ViT: 6 and 12), MLP ratio
    "vit_tiny": (192, 12, 3, 4),
    "vit_small": (384, 12, 6, 4),
}


class Attention(nn.Module):
    def __init__(self, L: Layers, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        for name in ("q", "k", "v"):
            setattr(self, name, L.linear(dim, dim, in_groups=heads, out_groups=heads))
        self.proj = L.linear(dim, dim, in_groups=heads, out_groups=heads)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, d*H) head-dim-major -> (B, H, N, d)
        b, n, c = x.shape
        return x.view(b, n, c // self.heads, self.heads).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        out = F.scaled_dot_product_attention(self._split(self.q(x)), self._split(self.k(x)),
                                             self._split(self.v(x)))
        return self.proj(out.permute(0, 2, 3, 1).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, L: Layers, dim: int, hidden: int, heads: int):
        super().__init__()
        self.fc1 = L.linear(dim, hidden, in_groups=heads)
        self.act = nn.GELU()
        self.fc2 = L.linear(hidden, dim, out_groups=heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, L: Layers, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = L.layernorm(dim, groups=heads)
        self.attn = Attention(L, dim, heads)
        self.norm2 = L.layernorm(dim, groups=heads)
        self.mlp = Mlp(L, dim, dim * mlp_ratio, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Backbone only: ``forward`` returns the normalised class token."""

    channel_last_params = ("cls_token", "pos_embed")  # channels on the last dim (group reg)

    def __init__(self, arch: str = "vit_tiny", layers: Layers | None = None, image_size: int = 32,
                 patch_size: int = 4, depth: int | None = None, heads: int | None = None,
                 stop_grad_conv1: bool = False):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown ViT '{arch}'; expected one of {sorted(ARCHS)}")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        L = layers or Layers.slim()
        dim, full_depth, default_heads, mlp_ratio = ARCHS[arch]
        heads = heads or default_heads
        if dim % heads:
            raise ValueError(f"model.heads {heads} does not divide {arch}'s embedding dim {dim}; "
                             f"use a divisor such as {default_heads}")
        self.arch, self.layers_kind, self.heads = arch, L, heads
        self.image_size, self.patch_size = image_size, patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = L.conv(3, dim, patch_size, patch_size, bias=True, slim_in=False,
                                       out_groups=heads)
        num_patches = (image_size // patch_size) ** 2
        width_dim = L.ch(dim, heads)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, width_dim))
        self.blocks = nn.Sequential(*[Block(L, dim, heads, mlp_ratio)
                                      for _ in range(depth or full_depth)])
        self.norm = L.layernorm(dim, groups=heads)
        self.feature_dim = dim
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        proj = self.patch_embed.proj  # MoCo v3 vits.py: xavier-uniform on (3*p*p, dim)
        bound = (6.0 / (3 * patch_size * patch_size + dim)) ** 0.5
        nn.init.uniform_(proj.weight, -bound, bound)
        nn.init.zeros_(proj.bias)
        self.stop_grad_conv1 = bool(stop_grad_conv1)
        proj.requires_grad_(not self.stop_grad_conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"this ViT takes {self.image_size}x{self.image_size} images, got "
                             f"{tuple(x.shape[-2:])}; set model.image_size")
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, N, D_r)
        d = x.shape[-1]
        cls = self.cls_token[..., :d].expand(len(x), -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed[..., :d]
        return self.norm(self.blocks(x))[:, 0]


@register("vit_tiny", "vit_small")
def _build(arch: str, layers: Layers, image_size: int = 32, patch_size: int = 4,
           depth: int | None = None, heads: int | None = None,
           stop_grad_conv1: bool = False) -> VisionTransformer:
    return VisionTransformer(arch, layers, image_size, patch_size, depth, heads, stop_grad_conv1)
