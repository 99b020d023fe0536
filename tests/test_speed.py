"""The speed switches keep the math (issue 17): the fast path against the plain path, same batch,
same weights, several widths; the dense slice cache; the switches' checks.

Tolerances, stated. The gradient of a freshly initialised BN network is a small difference of
large terms: rounding only the INPUT to bf16 moves the float32 gradient of the step tested here
by 22% (a float64 backbone alone: by 16%), while the loss moves by 2e-5 (measured on this CPU).
Losses are compared on the scale max(1, |loss|): a distillation loss is a negative cosine near 0.
- channels_last (only the memory layout) and cached_slices (the same values, sliced once per
  width) change only float32 summation order -- losses within 1e-5, and the whole gradient
  within 2% (measured: 0.6%, and cached_slices bit-identical here);
- bf16 -- losses within 2%, and the whole gradient no further from float32's than 4 times what
  bf16 rounding of the input alone does to it (measured: 2 times; 44% against 22%).
The loss curve over 200 iterations, plain against fast, is bench/fast_curve.py's job.
"""
import pytest
import torch

from pretrain import slim, speed
from pretrain.config import ConfigError, load_config
from pretrain.engine import Trainer
from pretrain.models import build_backbone

WIDTHS = [1.0, 0.25, 0.6]  # the base network, R_min of stage 4 and a random width
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path, *extra):
    return load_config(None, [
        "model.arch=resnet18", "model.stem=cifar", "method.name=us3l",
        "data.image_size=16", "data.batch_size=16", "data.num_workers=0",
        "data.synthetic.train_size=32", "data.synthetic.val_size=0",
        "heads.projector.hidden=64", "heads.projector.out=32", "heads.predictor.hidden=32",
        "heads.distill_head.hidden=64", "schedule.iters=4", "optim.warmup_epochs=0",
        "checkpoint.every_iters=2", f"output.dir={tmp_path}", "monitor.tensorboard=false",
        *extra])


def one_step(tmp_path, *extra, round_input=False):
    trainer = Trainer(tiny(tmp_path, *extra), progress=False, device="cpu")
    torch.manual_seed(1)
    x1, x2 = torch.randn(2, 16, 3, 16, 16).unbind(0)
    if round_input:
        x1, x2 = x1.bfloat16().float(), x2.bfloat16().float()
    out = trainer.step(x1, x2, widths=WIDTHS)
    grads = {n: p.grad.detach().clone() for n, p in trainer.method.online.named_parameters()
             if p.grad is not None}
    return trainer, out, grads


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The plain path's step: (records, gradients), shared by the comparisons."""
    _, out, grads = one_step(tmp_path_factory.mktemp("plain"))
    return out, grads


def close(value: float, reference: float, tolerance: float) -> bool:
    return abs(value - reference) <= tolerance * max(1.0, abs(reference))


def flat(grads: dict) -> torch.Tensor:
    return torch.cat([grads[n].flatten().float() for n in sorted(grads)])


def relative(a: dict, b: dict) -> float:
    """|a - b| / |b| over every parameter at once."""
    return float((flat(a) - flat(b)).norm() / flat(b).norm())


@pytest.mark.parametrize("switch", ["channels_last", "cached_slices"])
def test_float32_switches_give_the_same_losses_and_gradients(tmp_path, plain, switch):
    plain, g_plain = plain
    trainer, fast, g_fast = one_step(tmp_path / "b", f"speed.{switch}=true")
    conv = trainer.method.online.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == (switch == "channels_last")
    layers = [m for m in trainer.method.modules() if isinstance(m, slim.SLIM_TYPES)]
    assert all(m.slice_cache is None for m in layers)   # a step's slices do not outlive it
    assert [r["width"] for r in fast["records"]] == WIDTHS
    for a, b in zip(plain["records"], fast["records"]):
        assert close(b["loss"], a["loss"], 1e-5), (a, b)
        assert close(b["std"], a["std"], 1e-5), (a, b)
    assert set(g_fast) == set(g_plain)
    assert relative(g_fast, g_plain) <= 0.02


@pytest.mark.skipif(not speed.bf16_available(torch.device("cpu")),
                    reason="this CPU has neither AVX512-BF16 nor AMX")
def test_bf16_losses_and_gradients_stay_close_to_float32(tmp_path, plain):
    plain, g_plain = plain
    _, _, g_rounded = one_step(tmp_path / "r", round_input=True)
    _, fast, g_fast = one_step(tmp_path / "b", "speed.bf16=true", "speed.channels_last=true",
                               "speed.cached_slices=true")
    for a, b in zip(plain["records"], fast["records"]):
        assert close(b["loss"], a["loss"], 0.02), (a, b)
    assert set(g_fast) == set(g_plain)
    sensitivity = relative(g_rounded, g_plain)   # what bf16 rounding of the input alone does
    assert 0 < sensitivity and relative(g_fast, g_plain) <= 4 * sensitivity
    # and the update stays float32: weights and gradients are never bf16
    assert all(g.dtype == torch.float32 for g in g_fast.values())


def test_bf16_on_a_cpu_without_it_is_one_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match=r"speed\.bf16=true but this CPU .*set speed\.bf16=false"):
        Trainer(tiny(tmp_path / "run", "speed.bf16=true"), progress=False, device="cpu")
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_channels_last_checkpoint_resumes_without_the_switch(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny(run, "speed.channels_last=true", "schedule.iters=2"), progress=False,
            device="cpu").train(stop_after=1)
    ckpt = torch.load(run / "checkpoint.pth", weights_only=True)
    assert all(v.is_contiguous() for part in ckpt["state"].values() if part
               for v in part.values())
    resumed = Trainer(tiny(run, "schedule.iters=2"), resume=run / "checkpoint.pth",
                      progress=False, device="cpu")
    resumed.train()
    assert resumed.iteration == 2


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_cached_slices_give_the_same_outputs_and_follow_weight_updates(layout):
    torch.manual_seed(0)
    model = build_backbone({"arch": "resnet18", "stem": "cifar"}).to(memory_format=layout).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        for width in (0.25, 0.6, 1.0):
            slim.set_width(model, width)
            reference = model(x)
            with slim.cached_slices(model):
                assert torch.equal(model(x), reference)      # builds the slices
                assert torch.equal(model(x), reference)      # uses them
                conv = model.layer1[0].conv1
                assert (len(conv.slice_cache) == 1) == (width < 1.0)
                conv.weight.mul_(2.0)                        # an in-place update: rebuilt
                assert torch.equal(model(x), _fresh(model, x))
                conv.weight.div_(2.0)
        assert all(m.slice_cache is None for m in model.modules()
                   if isinstance(m, slim.SLIM_TYPES))
    # a forward that trains never uses (or fills) the cache: gradients reach the shared weights
    model.train()
    slim.set_width(model, 0.5)
    with slim.cached_slices(model):
        model(x).sum().backward()
        assert model.conv1.weight.grad is not None and model.conv1.slice_cache == {}


def _fresh(model, x):
    """The output without any cache."""
    layers = [m for m in model.modules() if isinstance(m, slim.SLIM_TYPES)]
    saved = [m.slice_cache for m in layers]
    for m in layers:
        m.slice_cache = None
    try:
        return model(x)
    finally:
        for m, cache in zip(layers, saved):
            m.slice_cache = cache
