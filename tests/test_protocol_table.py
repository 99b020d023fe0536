"""docs/protocol.md cannot drift: every value it states for this project is what the code runs.

The table's "this project" column holds spans `` `SOURCE: key = value` ``. SOURCE is a pretraining
config (``configs/pretrain/SOURCE.yaml``, resolved by ``pretrain.config.load_config``: defaults,
``_base_`` files and method presets applied), ``augment`` (the two-view transform of
``pretrain.data``), ``detection`` (``transfer/detection/protocol.py`` PROTOCOL), ``probe`` or
``convert`` (the option defaults of tools/linear_probe.py / tools/convert_width.py and the probe's
protocol constants, ``lbfgs.X``, ``splits.X``, ``sgd.X``). Each span is
resolved and compared; a row without spans must start with ``code:`` or ``not implemented``.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"
CONFIGS = ROOT / "configs" / "pretrain"
SPAN = re.compile(r"`([A-Za-z0-9_]+):\s*([A-Za-z0-9_.]+)\s*=\s*([^`]+?)\s*`")
# Knobs the issue asks the table to cover (a row whose first cell starts with each).
REQUIRED = ["base loss", "InfoNCE form against a momentum target", "distillation loss",
            "NCE distillation", "temperature", "momentum encoder", "width range", "sampling",
            "group regularization G", "group regularization schedule", "decay of g",
            "optimizer", "learning rate", "lr warm-up", "epochs", "batch", "augmentations, CIFAR",
            "augmentations, ImageNet", "BN calibration", "linear probe", "SGD linear evaluation",
            "detection: VOC", "detection: COCO", "resolution", "method \"Ours\""]


def rows() -> list[list[str]]:
    """The body rows of every table in the document, as lists of stripped cells."""
    out = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("|") or set(line.replace("|", "").strip()) <= set("-: "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "knob":
            continue
        out.append(cells)
    return out


def spans() -> list[tuple[str, str, str]]:
    return [m.groups() for cells in rows() for m in SPAN.finditer(cells[3])]


@lru_cache(maxsize=None)
def config(stem: str) -> dict:
    from pretrain.config import load_config
    return load_config(CONFIGS / f"{stem}.yaml")


@lru_cache(maxsize=None)
def augment(kind: str, view: int = 0) -> dict:
    """What ``two_view_transform(kind, view=view)`` does, in the table's terms."""
    from torchvision.transforms import v2

    from pretrain.data import two_view_transform
    out = {"blur_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "flip_p": 0.0, "solarize_p": 0.0}
    for op in two_view_transform(kind, 224 if kind == "imagenet" else 32, view).transforms:
        inner = op.transforms[0] if isinstance(op, v2.RandomApply) else op
        if isinstance(op, v2.RandomResizedCrop):
            out["crop_scale"] = list(op.scale)
        elif isinstance(inner, v2.ColorJitter):
            out["jitter"] = [inner.brightness[1] - 1, inner.contrast[1] - 1,
                             inner.saturation[1] - 1, inner.hue[1]]
            out["jitter_p"] = op.p
        elif isinstance(inner, v2.GaussianBlur):
            out["blur_p"] = op.p
        elif isinstance(op, v2.RandomSolarize):
            out["solarize_p"] = op.p
        elif isinstance(op, v2.RandomGrayscale):
            out["grayscale_p"] = op.p
        elif isinstance(op, v2.RandomHorizontalFlip):
            out["flip_p"] = op.p
        elif isinstance(op, v2.Normalize):
            out["mean"] = list(op.mean)
    return out


@lru_cache(maxsize=None)
def cli_defaults(tool: str) -> dict:
    """The option defaults of tools/linear_probe.py (``probe``) or tools/convert_width.py
    (``convert``), plus the probe's module-level protocol constants (``probe: lbfgs.X``,
    ``probe: sgd.X``, ``probe: splits.X``)."""
    import importlib.util
    import dataclasses

    if tool == "convert":
        from transfer.export.convert import parser
        return {a.dest: a.default for a in parser()._actions}
    spec = importlib.util.spec_from_file_location("linear_probe_cli", ROOT / "tools" / "linear_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from transfer.linear import lbfgs, sgd, splits
    out = {a.dest: a.default for a in module.parser()._actions}
    out.update({f"lbfgs.{k}": v for k, v in vars(lbfgs).items() if k.isupper()})
    out.update({f"splits.{k}": v for k, v in vars(splits).items() if k.isupper()})
    out.update({f"sgd.{f.name}": f.default for f in dataclasses.fields(sgd.SGDConfig)})
    out.update({f"sgd.{k}": v for k, v in vars(sgd).items() if k.isupper()})
    return out


def actual(source: str, key: str):
    if source in ("probe", "convert"):
        return cli_defaults(source)[key]
    if source == "augment":  # KIND.X (view 1) or KIND.view1.X / KIND.view2.X
        kind, *rest = key.split(".")
        view = int(rest.pop(0)[4:]) - 1 if rest[0] in ("view1", "view2") else 0
        return augment(kind, view)[".".join(rest)]
    if source == "detection":
        from transfer.detection.protocol import PROTOCOL
        task, name = key.split(".", 1)
        return PROTOCOL[task][name]
    node = config(source)
    for part in key.split("."):
        node = node[part]
    return node


def same(stated, value) -> bool:
    if isinstance(stated, str) and not isinstance(value, str):
        try:
            stated = float(stated)
        except ValueError:
            return False
    if isinstance(value, bool) or value is None or isinstance(stated, bool) or stated is None:
        return stated is value
    if isinstance(value, (int, float)):
        return isinstance(stated, (int, float)) and math.isclose(stated, value, rel_tol=1e-9,
                                                                 abs_tol=1e-12)
    if isinstance(value, (list, tuple)):
        return (isinstance(stated, list) and len(stated) == len(value)
                and all(same(a, b) for a, b in zip(stated, value)))
    return stated == value


def test_every_stated_value_is_what_the_code_runs():
    found = spans()
    assert len(found) >= 100, f"only {len(found)} checked values: the table lost its spans"
    wrong = []
    for source, key, text in found:
        if source not in ("augment", "detection", "probe", "convert"):
            assert (CONFIGS / f"{source}.yaml").is_file(), f"the table names {source}.yaml"
        try:
            value = actual(source, key)
        except (KeyError, IndexError) as err:
            wrong.append(f"{source}: {key} does not exist ({err})")
            continue
        if not same(yaml.safe_load(text), value):
            wrong.append(f"{source}: {key} = {text} in docs/protocol.md, the code runs {value!r}")
    assert not wrong, "docs/protocol.md disagrees with the code:\n" + "\n".join(wrong)


def test_every_row_is_checked_or_marked():
    for cells in rows():
        assert len(cells) == 5, f"row with {len(cells)} cells: {cells[0]}"
        project = cells[3]
        assert (SPAN.search(project) or project.startswith("code:") or project.startswith("not implemented")), \
            f"row '{cells[0]}' states no checkable value and is not marked"


def test_the_table_covers_every_knob_of_the_issue():
    knobs = [cells[0] for cells in rows()]
    missing = [k for k in REQUIRED if not any(n.startswith(k) for n in knobs)]
    assert not missing, f"docs/protocol.md has no row for {missing}"
    assert len(knobs) == len(set(knobs)), "a knob has two rows"


def test_the_checker_catches_a_disagreement():
    """The comparison is not vacuous: a wrong value, a wrong type and a missing key are caught."""
    assert same(0.5, actual("us3l_r18_cifar100", "method.temperature"))
    assert not same(0.2, actual("us3l_r18_cifar100", "method.temperature"))
    assert not same("moco", actual("us3l_r18_cifar100", "method.infonce_form"))
    assert not same(True, actual("us3l_r18_cifar100", "heads.projector.bn_last"))
    assert not same([0.08, 1.0], actual("augment", "imagenet.crop_scale"))
    assert not same(actual("augment", "byol.view1.blur_p"), actual("augment", "byol.view2.blur_p"))
    assert same([1e-6, 1e5, 45], actual("probe", "lbfgs.WD_GRID"))
    assert not same(1000, actual("probe", "lbfgs.SKLEARN_MAX_ITER"))
    assert not same(16, actual("convert", "calib_batches"))
    with pytest.raises(KeyError):
        actual("us3l_r18_cifar100", "method.no_such_key")
    with pytest.raises(KeyError):
        actual("probe", "no_such_option")
