"""Load every export back through its engine's own loader and compare with the slimmable network.

"It loaded" proves nothing: detectron2 matches names by suffix and only *warns* (then skips) on a
shape mismatch; mmengine loads with strict=False and only warns. So each check
  1. fills the engine model's backbone tensors with NaN before loading (anything the loader
     skips stays NaN),
  2. loads the file with the engine's own loader (detectron2 ``DetectionCheckpointer``;
     mmengine ``PretrainedInit`` via ``init_weights``), capturing the engine's log records and
     incompatible-key results, and fails on any skipped, missing, unexpected or shape-mismatched
     backbone key,
  3. asserts the backbone's key set equals the file's and every tensor equals the file's,
  4. compares C2..C5 features in eval mode with the slimmable network at the same width
     (max |a - b| / max |b| per stage, must be <= ``TOLERANCE``).
Runs on CPU in float32 (no TF32, deterministic kernels). ONNX files (``verify_onnx``) have no
keys to compare: the ``onnx`` checker must pass and onnxruntime's C2..C5 must equal the slimmable
network's within ``ONNX_TOLERANCE`` at two batch sizes (the batch axis is really dynamic).
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from pretrain import safe_io, slim

TOLERANCE = 1e-5
# onnxruntime fuses conv+BN and reorders float32 sums: 1e-4 relative (issue #14's bound)
ONNX_TOLERANCE = 1e-4


class VerificationError(RuntimeError):
    """An export that does not load exactly or does not compute what the slimmable network does."""


@dataclass
class Result:
    engine: str
    max_rel_error: float
    keys: int
    notes: list[str] = field(default_factory=list)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (a stage-wise, scale-free relative error)."""
    if out.shape != ref.shape:
        return float("inf")
    scale = ref.abs().max().clamp_min(1e-12)
    err = (out.double() - ref.double()).abs().max() / scale
    return float("inf") if torch.isnan(err) else float(err)


def max_rel_error(outs, refs) -> float:
    outs, refs = list(outs), list(refs)
    if len(outs) != len(refs):
        return float("inf")
    return max(rel_error(o, r) for o, r in zip(outs, refs))


def stage_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """C2..C5 of a project backbone (or its single output where it has no stages)."""
    with torch.no_grad():
        if hasattr(model, "forward_stages"):
            return [t.detach() for t in model.forward_stages(x)]
        return [model(x).detach()]


def reference_features(slimmable: nn.Module, width: float, x: torch.Tensor) -> list[torch.Tensor]:
    """What the slimmable network computes at ``width`` in eval mode (the ground truth)."""
    with slim.at_width(slimmable, width):
        was = slimmable.training
        slimmable.eval()
        try:
            return stage_features(slimmable, x)
        finally:
            slimmable.train(was)


def _check(engine: str, err: float, keys: int, notes=()) -> Result:
    if not err <= TOLERANCE:
        raise VerificationError(f"{engine}: features differ from the slimmable network "
                                f"(max relative error {err:.2e} > {TOLERANCE:g})")
    return Result(engine, err, keys, list(notes))


def _poison(module: nn.Module) -> None:
    """NaN in every floating tensor: whatever a loader leaves untouched is visible afterwards."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.fill_(float("nan"))


def _compare_loaded(engine: str, loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
                    ) -> None:
    """The model's tensors after loading are exactly the file's, and the key sets are equal."""
    missing = sorted(set(loaded) - set(expected))
    unexpected = sorted(set(expected) - set(loaded))
    if missing or unexpected:
        raise VerificationError(f"{engine}: key sets differ: {len(missing)} backbone keys absent "
                                f"from the file (e.g. {missing[:3]}), {len(unexpected)} file keys "
                                f"not in the backbone (e.g. {unexpected[:3]})")
    wrong = [k for k in expected if tuple(loaded[k].shape) != tuple(expected[k].shape)
             or not torch.equal(loaded[k].detach().cpu(), torch.as_tensor(expected[k]).cpu())]
    if wrong:
        raise VerificationError(f"{engine}: {len(wrong)} backbone tensors were not loaded from the "
                                f"file (shape-skipped or unmatched), e.g. {wrong[:3]}")


@contextlib.contextmanager
def capture_logs(*loggers: logging.Logger):
    """Collect every record the given loggers emit (INFO and up), without printing them."""
    records: list[logging.LogRecord] = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Grab(logging.DEBUG)
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    for lg in loggers:
        lg.handlers = [handler]
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        yield records
    finally:
        for lg, level, propagate, handlers in saved:
            lg.handlers = handlers
            lg.setLevel(level)
            lg.propagate = propagate


# --------------------------------------------------------------------------------------- torchvision
def verify_torchvision(path: Path, model_cfg: dict, width: float, x: torch.Tensor,
                       refs: list[torch.Tensor]) -> list[Result]:
    """Strict load into the static twin; at width 1.0 also into torchvision.models.resnet18/50."""
    from pretrain.models import build_backbone
    from transfer.export import torchvision_export
    state = torchvision_export.load(path)
    twin = build_backbone(model_cfg, width=width)
    try:
        twin.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise VerificationError(f"torchvision: {path.name} does not load strictly into the "
                                f"static {model_cfg['arch']} at {width:g}: "
                                f"{' '.join(str(err).split())[:300]}") from None
    twin.eval()
    results = [_check("torchvision", max_rel_error(stage_features(twin, x), refs), len(state))]
    if width == 1.0 and model_cfg.get("arch") in ("resnet18", "resnet50") \
            and model_cfg.get("stem", "imagenet") == "imagenet":
        results.append(_verify_torchvision_models(state, model_cfg["arch"], x, refs))
    return results


def _verify_torchvision_models(state: dict, arch: str, x: torch.Tensor, refs) -> Result:
    import torchvision
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = torch.nn.Identity()  # the export is a backbone: no classifier, so load strictly
    _poison(model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise VerificationError(f"torchvision.models.{arch}: the export does not load strictly "
                                f"({str(err).splitlines()[0][:160]})") from None
    model.eval()
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        outs = []
        for i in range(1, 5):
            h = getattr(model, f"layer{i}")(h)
            outs.append(h)
    return _check(f"torchvision.models.{arch}", max_rel_error(outs, refs), len(state),
                  ["strict load, fc replaced by Identity"])


# --------------------------------------------------------------------------------------- detectron2
def verify_detectron2(path: Path, meta_path: Path, x: torch.Tensor, refs) -> Result:
    """Load with detectron2's DetectionCheckpointer (matching heuristics, as training does) into
    the us3l FPN backbone built from meta.json; the bottom-up ResNet must take every key."""
    
    import transfer.detectron2.compat  # noqa: F401
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_backbone

    from transfer.detectron2.backbone import us3l_cfg

    cfg = us3l_cfg(meta_path, norm="BN", fpn=True)
    backbone = build_backbone(cfg)
    _poison(backbone.bottom_up)
    captured = {}

    class Checkpointer(DetectionCheckpointer):
        def _log_incompatible_keys(self, incompatible):  # keep detectron2's own result
            captured["incompatible"] = incompatible
            super()._log_incompatible_keys(incompatible)

    loggers = [logging.getLogger("detectron2"), logging.getLogger("fvcore")]
    with capture_logs(*loggers) as records:
        Checkpointer(backbone, save_to_disk=False).load(str(path))
    expected = safe_io.load_pickle(path, "detectron2 export")["model"]
    prefix = "bottom_up."
    problems = []
    inc = captured.get("incompatible")
    if inc is not None:
        problems += [f"missing {k}" for k in inc.missing_keys if k.startswith(prefix)]
        problems += [f"unexpected {k}" for k in inc.unexpected_keys]
        problems += [f"shape-skipped {k[0] if isinstance(k, tuple) else k}"
                     for k in getattr(inc, "incorrect_shapes", [])]
    for rec in records:
        msg = rec.getMessage()
        if rec.levelno >= logging.WARNING and (prefix in msg or "shape" in msg.lower()
                                               or any(k in msg for k in expected)):
            problems.append(msg.splitlines()[0][:200])
        if "not used in the model" in msg or "unexpected" in msg.lower():
            problems.append(msg.splitlines()[0][:200])
    if problems:
        raise VerificationError(f"detectron2: {len(problems)} backbone keys not loaded cleanly: "
                                f"{problems[:3]}")
    loaded = {k[len(prefix):]: v for k, v in backbone.state_dict().items()
              if k.startswith(prefix) and not k.endswith("num_batches_tracked")}
    _compare_loaded("detectron2", loaded, expected)
    backbone.eval()
    with torch.no_grad():
        feats = backbone.bottom_up(x)
    outs = [feats[f"res{i}"] for i in range(2, 6)]
    return _check("detectron2", max_rel_error(outs, refs), len(expected),
                  ["DetectionCheckpointer + matching heuristics into bottom_up of the FPN backbone"])


# ------------------------------------------------------------------------------------------ mmdet
def verify_mmdet(path: Path, meta_path: Path, x: torch.Tensor, refs) -> Result:
    """Build the registered US3LResNet with init_cfg=Pretrained(prefix='backbone.') and run
    mmengine's own init_weights (its strict=False loader), capturing its warnings."""
    from mmengine.logging import MMLogger
    from mmengine.runner.checkpoint import _load_checkpoint_with_prefix

    from transfer.mmdet.backbone import build_us3l_resnet

    backbone = build_us3l_resnet(meta_path, norm_cfg=dict(type="BN", requires_grad=True),
                                 init_cfg=dict(type="Pretrained", checkpoint=str(path),
                                               prefix="backbone."))
    _poison(backbone)
    # mmengine also print()s "Loads checkpoint by local backend..." (not a logger): keep it quiet
    with capture_logs(MMLogger.get_current_instance()) as records, \
            contextlib.redirect_stdout(io.StringIO()):
        backbone.init_weights()
    problems = [" ".join(r.getMessage().split())[:300] for r in records
                if r.levelno >= logging.WARNING or any(
                    s in r.getMessage() for s in ("missing keys", "unexpected key", "size mismatch"))]
    if problems:
        raise VerificationError(f"mmdet: mmengine reported problems loading {path.name}: "
                                f"{problems[:3]}")
    with contextlib.redirect_stdout(io.StringIO()):
        expected = _load_checkpoint_with_prefix("backbone.", str(path), map_location="cpu")
    _compare_loaded("mmdet", backbone.state_dict(), expected)
    backbone.eval()
    with torch.no_grad():
        outs = list(backbone(x))
    return _check("mmdet", max_rel_error(outs, refs), len(expected),
                  ["mmengine PretrainedInit(prefix='backbone.') into US3LResNet"])


# ------------------------------------------------------------------------------------------ onnx
def verify_onnx(path: Path, x: torch.Tensor, refs) -> Result:
    """``onnx.checker`` on the file, then onnxruntime (CPU) on ``x`` and on its first image
    alone, each compared with the slimmable network's features. Any failure (a corrupted or
    truncated file, a fixed batch axis, wrong numbers) is one ``VerificationError`` line."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnx/onnxruntime raise their own exception types
        raise VerificationError(f"onnx: {Path(path).name} is not a valid ONNX model "
                                f"({' '.join(str(err).split())[:200]})") from None
    name = session.get_inputs()[0].name
    worst = 0.0
    for batch in {x.shape[0], 1}:
        try:
            outs = session.run(None, {name: x[:batch].numpy()})
        except Exception as err:
            raise VerificationError(f"onnx: onnxruntime cannot run {Path(path).name} at batch "
                                    f"{batch} ({' '.join(str(err).split())[:200]})") from None
        worst = max(worst, max_rel_error([torch.from_numpy(o) for o in outs],
                                         [r[:batch] for r in refs]))
    if not worst <= ONNX_TOLERANCE:
        raise VerificationError(f"onnxruntime: features differ from the slimmable network "
                                f"(max relative error {worst:.2e} > {ONNX_TOLERANCE:g})")
    return Result("onnxruntime", worst, len(session.get_outputs()),
                  ["onnx.checker full_check; onnxruntime CPU at two batch sizes"])
