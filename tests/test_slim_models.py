"""Every slimmable backbone at width r computes what the plain network of that width computes."""
import pytest
import torch
import torchvision

from pretrain import slim
from pretrain.models import backbone_twin, build_backbone
from pretrain.models.vit import ARCHS as VIT_ARCHS

WIDTHS = (0.25, 0.3, 0.5, 0.9, 1.0)
BACKBONES = [
    {"arch": "resnet18", "stem": "cifar"},
    {"arch": "resnet18", "stem": "imagenet"},
    {"arch": "resnet50", "stem": "cifar"},
    {"arch": "resnet50", "stem": "imagenet"},
    {"arch": "mobilenetv2", "stem": "cifar"},
    {"arch": "mobilenetv2", "stem": "imagenet"},
    {"arch": "vit_tiny", "image_size": 32, "patch_size": 8},
    {"arch": "vit_small", "image_size": 32, "patch_size": 8},
]


@pytest.mark.parametrize("cfg", BACKBONES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_slimmable_equals_static_twin(cfg):
    torch.manual_seed(0)
    model = build_backbone(cfg)
    size = cfg.get("image_size", 16)  # small images keep the test fast; slicing is size-blind
    x = torch.randn(4, 3, size, size)
    calib = torch.randn(4, 3, size, size)
    for width in WIDTHS:
        slim.set_width(model, width)
        with torch.no_grad():
            with slim.calibrating(model):  # BN statistics of this width
                model(calib)
            model.eval()
            twin = backbone_twin(model, cfg, width).eval()
            out, ref = model(x), twin(x)
        model.train()
        assert out.shape == ref.shape and out.shape[0] == 4
        rel = ((out - ref).abs().max() / ref.abs().max()).item()
        assert rel <= 1e-5, f"{cfg} at width {width}: relative difference {rel}"
        assert sum(p.numel() for p in twin.parameters()) <= sum(p.numel() for p in model.parameters())


def test_vit_heads_keep_equal_size():
    dim, _, heads, _ = VIT_ARCHS["vit_tiny"]
    twin = build_backbone({"arch": "vit_tiny", "depth": 1}, width=0.3)
    head_dim = slim.channels_at(dim // heads, 0.3)            # 64 -> 24 per head
    assert twin.blocks[0].attn.q.weight.shape == (heads * head_dim, heads * head_dim)
    assert twin.cls_token.shape[-1] == heads * head_dim
    assert twin.blocks[0].mlp.fc1.weight.shape[0] == slim.channels_at(dim * 4, 0.3)


def _reference_attention(attn, x: torch.Tensor, heads: int, d: int):
    """Attention at d dims per head computed from the FULL weights by explicit index lists: head
    h's query/key/value are rows ``k * heads + h`` (k < d) of the full projections (head-dim-major
    storage), the block's input and output are the first ``heads * d`` features."""
    width = heads * d
    q, k, v, per_head = [], [], [], []
    for h in range(heads):
        rows = torch.tensor([j * heads + h for j in range(d)])
        lin = lambda m: x @ m.weight[rows][:, :width].T + m.bias[rows]  # noqa: E731
        q.append(lin(attn.q))
        k.append(lin(attn.k))
        v.append(lin(attn.v))
        weights = torch.softmax(q[-1] @ k[-1].transpose(-1, -2) / d ** 0.5, dim=-1)
        per_head.append(weights @ v[-1])                              # (B, N, d)
    merged = torch.stack(per_head, dim=-1).flatten(2)                 # feature j * heads + h
    out = merged @ attn.proj.weight[:width, :width].T + attn.proj.bias[:width]
    return torch.stack(q, 1), out


@pytest.mark.parametrize("width", [0.3, 0.5])
def test_vit_attention_at_width_uses_first_dims_of_every_head(width):
    """The model's own slicing (SlimLinear with out_groups, the head split, the merge before
    proj) against a reference built from the full weights by index lists. The only check of the
    head-dim-major layout: the static twin shares the layout code, so test_slimmable_equals_
    static_twin cannot see a wrong layout (e.g. head-major storage, whose prefix slice would drop
    whole heads)."""
    torch.manual_seed(0)
    model = build_backbone({"arch": "vit_tiny", "depth": 1})
    heads, full_hd = 3, 64
    d = slim.channels_at(full_hd, width)
    attn = model.blocks[0].attn
    with torch.no_grad():
        for m in (attn.q, attn.k, attn.v, attn.proj):
            m.bias.uniform_(-0.5, 0.5)                   # zero-initialised: make them count
    slim.set_width(model, width)
    x = torch.randn(2, 5, heads * d)
    with torch.no_grad():
        q = attn._split(attn.q(x))                       # (B, H, N, d): the model's slicing
        out = attn(x)
        ref_q, ref_out = _reference_attention(attn, x, heads, d)
    assert q.shape == ref_q.shape == (2, heads, 5, d)
    torch.testing.assert_close(q, ref_q, rtol=1e-5, atol=1e-6)
    assert out.shape == (2, 5, heads * d)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)


def test_mobilenetv2_matches_torchvision_names_and_outputs():
    model = build_backbone({"arch": "mobilenetv2", "stem": "imagenet"}).eval()
    tv = torchvision.models.mobilenet_v2().eval()
    ref = {k: v.shape for k, v in tv.features.state_dict().items()}
    mine = {k[len("features."):]: v.shape for k, v in model.state_dict().items()}
    assert mine == ref
    tv.features.load_state_dict({k[len("features."):]: v for k, v in model.state_dict().items()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = torch.nn.functional.adaptive_avg_pool2d(tv.features(x), 1).flatten(1)
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_mobilenetv2_last_conv_keeps_1280_features_at_every_width():
    twin = build_backbone({"arch": "mobilenetv2", "stem": "cifar"}, width=0.25)
    assert twin(torch.randn(2, 3, 32, 32)).shape == (2, 1280)
    assert twin.features[0][0].out_channels == slim.channels_at(32, 0.25)
