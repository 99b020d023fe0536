"""The one door to detectron2: import this module before anything from detectron2.

Why: the detectron2 that installs offline (the pb1-detectron2 0.6 sdist) has no C++ ops
(``detectron2._C``), and detectron2 0.6 predates Pillow 10 and numpy 1.24. This module

* leaves an official detectron2 build (one with ``_C``) untouched: ``HAS_COMPILED_OPS`` is True;
* otherwise registers a stand-in ``detectron2._C`` whose every op raises a clear
  ``NotImplementedError`` when called (rotated boxes, deformable conv, the fast COCO evaluator)
  -- never a wrong result. Everything the project uses (nms, ROIAlign, FPN, R-CNN heads) runs on
  torchvision's ops and is unaffected;
* restores the names detectron2 0.6 still uses: ``PIL.Image.LINEAR`` and ``np.int/float/object/bool/str``;
* silences torch's deprecation warning for the ``torch.jit.script`` decorators detectron2 0.6
  applies at import (printed on every run and before every one-line error, it says nothing a
  user can act on).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings

import numpy as np
from PIL import Image

_INSTALL_HINT = ("detectron2 was installed without its compiled ops (detectron2._C); "
                 "'{name}' needs them. Build the official detectron2 with "
                 "DETECTRON2_SRC=/path/to/detectron2 bash tools/setup_env.sh")


warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning)


def _restore_removed_names() -> None:
    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR  # removed in Pillow 10; detectron2 uses it as a default arg
    for name, value in (("int", int), ("float", float), ("object", object), ("bool", bool),
                        ("str", str)):  # np.str: detectron2 pascal_voc.load_voc_instances
        if name not in np.__dict__:
            setattr(np, name, value)


class _MissingOps(types.ModuleType):
    """Stand-in for ``detectron2._C``: attribute access works (imports succeed), calls fail."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(_INSTALL_HINT.format(name=name))

        missing.__name__ = name
        return missing


def _has_real_ops() -> bool:
    existing = sys.modules.get("detectron2._C")
    if existing is not None:
        return not isinstance(existing, _MissingOps)
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except (ImportError, ValueError):
        return False


_restore_removed_names()
HAS_COMPILED_OPS = _has_real_ops()
if HAS_COMPILED_OPS:
    importlib.import_module("detectron2._C")
else:
    import detectron2  # noqa: E402  (the package itself imports nothing compiled)

    stand_in = _MissingOps("detectron2._C", "stand-in: detectron2 built without compiled ops")
    sys.modules["detectron2._C"] = stand_in
    detectron2._C = stand_in


def coco_fast_eval_available() -> bool:
    """detectron2's COCOEvaluator fast path is ``_C.COCOeval_opt``; pass this as use_fast_impl."""
    return HAS_COMPILED_OPS
