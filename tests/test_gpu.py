"""The CUDA paths, against the CPU: marked ``gpu``, skipped (and reported) where CUDA is absent.

The only tests that run the project on a GPU; everything else is pinned to the CPU by conftest.
"""
from __future__ import annotations

import math

import pytest
import torch

from pretrain import slim
from pretrain.models import build_backbone

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def full_float32():
    """Ampere+ GPUs run float32 convolutions in TF32 by default (about 1e-3 relative error):
    compare float32 with float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("cfg", [{"arch": "resnet18", "stem": "cifar"},
                                 {"arch": "mobilenetv2", "stem": "cifar"}],
                         ids=["resnet18", "mobilenetv2"])
def test_slimmable_forward_on_cuda_equals_cpu(cfg):
    torch.manual_seed(0)
    model = build_backbone(cfg)
    x = torch.randn(8, 3, 32, 32)
    for width in (0.25, 0.5, 1.0):
        slim.set_width(model, width)
        model.train()                                    # batch statistics, as in pretraining
        with torch.no_grad():
            cpu = model(x)
            gpu = model.cuda()(x.cuda()).cpu()
        model.cpu()
        torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4, msg=f"width {width}")


def test_pretraining_step_on_cuda_equals_cpu_and_amp_is_finite(tmp_path):
    """One Algorithm 1 step (three widths) on CUDA in float32 gives the CPU's losses; with AMP
    the losses are finite and the scaler is in use."""
    from pretrain.config import load_config
    from pretrain.data import train_loader
    from pretrain.engine import Trainer

    def trainer(device, amp):
        cfg = load_config(None, [
            "model.arch=resnet18", "model.stem=cifar", "data.image_size=16", "data.batch_size=16",
            "data.num_workers=0", "data.synthetic.train_size=32", "data.synthetic.val_size=0",
            "heads.projector.hidden=64", "heads.projector.out=32", "heads.distill_head.hidden=64",
            "schedule.iters=4", f"amp={str(amp).lower()}", f"output.dir={tmp_path / device}",
            "monitor.tensorboard=false"])
        return Trainer(cfg, progress=False, device=device), cfg

    cpu, cfg = trainer("cpu", False)
    x1, x2, _ = next(iter(train_loader(cpu.train_set, cfg["data"], 0, 0, 0)))
    widths = [1.0, 0.25, 0.6]
    ref = cpu.step(x1, x2, widths=widths)
    torch.backends.cudnn.deterministic = True
    gpu, _ = trainer("cuda", False)
    out = gpu.step(x1, x2, widths=widths)
    for a, b in zip(out["records"], ref["records"]):
        assert a["width"] == b["width"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-4), (a, b)
    assert out["reg"] == pytest.approx(ref["reg"], rel=1e-5)
    amp, _ = trainer("cuda", True)
    assert amp.amp and amp.scaler.is_enabled()
    out = amp.step(x1, x2, widths=widths)
    assert all(math.isfinite(r["loss"]) for r in out["records"])
