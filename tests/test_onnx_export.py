"""ONNX as a converter format: model.onnx per width, dynamic batch axis, verified by onnxruntime.

A tiny CIFAR-stem ResNet-18 at 32 px (tests/export_helpers.py), widths 0.25, 0.3 (not a multiple
of 1/8) and 1.0.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export_helpers import make_checkpoint
from pretrain.models import build_backbone
from transfer.export import convert, onnx_export, verify

pytestmark = pytest.mark.usefixtures("one_thread")
WIDTHS = (0.25, 0.3, 1.0)
FAST = ["--calib-batches", "2", "--calib-batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    ckpt = make_checkpoint(d / "r18c.pth", "resnet18", stem="cifar",
                           data={"name": "synthetic", "image_size": 32})
    out = d / "export"
    rc = convert.main([str(ckpt), "--out", str(out), "--widths", *map(str, WIDTHS),
                       "--formats", "torchvision", "onnx", *FAST])
    assert rc == 0
    return ckpt, out


def test_onnx_is_opt_in():
    assert "onnx" in convert.FORMATS and "onnx" not in convert.DEFAULT_FORMATS


@pytest.mark.parametrize("width", WIDTHS)
def test_meta_records_opset_input_size_and_verification(exported, width):
    _, out = exported
    meta = json.loads((out / convert.folder_name(width) / "meta.json").read_text())
    assert meta["files"] == {"torchvision": "torchvision.pth", "onnx": "model.onnx"}
    assert meta["onnx"]["opset"] == onnx_export.OPSET
    assert meta["onnx"]["input_size"] == [3, 32, 32]
    assert meta["onnx"]["outputs"] == ["c2", "c3", "c4", "c5"]
    assert 0 <= meta["verification"]["max_rel_error"]["onnxruntime"] <= verify.ONNX_TOLERANCE
    model = onnx.load(out / convert.folder_name(width) / "model.onnx")
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == \
        onnx_export.OPSET
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == onnx_export.BATCH_DIM and not batch_dim.HasField("dim_value")


def _static(out, width):
    static = build_backbone({"arch": "resnet18", "stem": "cifar"}, width=width).eval()
    folder = out / convert.folder_name(width)
    static.load_state_dict(torch.load(folder / "torchvision.pth", weights_only=True))
    return static


@pytest.mark.parametrize("width", WIDTHS)
def test_onnxruntime_equals_the_static_model_at_any_batch(exported, width):
    """Independently of verify.py: the static twin loaded from torchvision.pth vs onnxruntime at
    batch 3 (the export traced batch 2)."""
    _, out = exported
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        refs = _static(out, width).forward_stages(x)
    path = out / convert.folder_name(width) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = session.run(None, {onnx_export.INPUT_NAME: x.numpy()})
    assert len(outs) == len(refs) == 4
    for o, r in zip(outs, refs):
        assert o.shape == tuple(r.shape)
        assert np.abs(o - r.numpy()).max() / np.abs(r.numpy()).max() <= 1e-4
    assert verify.verify_onnx(path, x, refs).max_rel_error <= verify.ONNX_TOLERANCE


def _refs(exported, width, x):
    with torch.no_grad():
        return _static(exported[1], width).forward_stages(x)


def test_truncated_onnx_fails_verification_in_one_line(exported, tmp_path):
    _, out = exported
    data = (out / "w0.30" / "model.onnx").read_bytes()
    bad = tmp_path / "model.onnx"
    bad.write_bytes(data[: len(data) // 2])
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(verify.VerificationError) as err:
        verify.verify_onnx(bad, x, _refs(exported, 0.3, x))
    assert "\n" not in str(err.value) and "not a valid ONNX model" in str(err.value)


def test_onnx_with_changed_weights_fails_verification(exported, tmp_path):
    """A well-formed file whose numbers are wrong: the checker passes, the comparison does not."""
    _, out = exported
    model = onnx.load(out / "w0.30" / "model.onnx")
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = onnx.numpy_helper.to_array(init).copy()
    init.CopyFrom(onnx.numpy_helper.from_array(arr * 1.5, init.name))
    bad = tmp_path / "model.onnx"
    onnx.save(model, bad)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(verify.VerificationError, match="differ"):
        verify.verify_onnx(bad, x, _refs(exported, 0.3, x))
