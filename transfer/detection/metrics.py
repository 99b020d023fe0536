"""The ONE ``metrics.json`` schema of a detection run, filled from either engine's evaluators.

Both engines' numbers come straight from their own evaluators (detectron2's
PascalVOCDetectionEvaluator / COCOEvaluator, MMDetection's VOCMetric / CocoMetric, both on
pycocotools for COCO); this module only renames them and scales them to percent::

    {"schema": "us3l-detection-metrics/1", "engine": "detectron2"|"mmdet", "task": "voc"|"coco",
     "arch": "resnet50", "width": 0.5, "source_sha256": "...",  # of the pretrained checkpoint
     "params": int, "macs": int,                # the backbone's, at 224 px (from meta.json)
     "AP": float, "AP50": float, "AP75": float,               # box AP in percent
     "APm": float, "APm50": float, "APm75": float,            # COCO only: mask AP
     "run": {...where the run's config, export and engine logs are...}}

Both engines run a detection counter beside their evaluator (``detections/count``). A run that
predicted nothing on the test set scores 0 for every AP (recall is 0: that is what the evaluators
would compute if they did not stop early), with a note in ``run["notes"]``. Any other value the
evaluator could not compute (NaN) is ``null`` with a note; it is never replaced by a number.
``run["protocol"]`` holds the resolved protocol (``transfer.detection.protocol``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from pretrain.safe_io import atomic_write

SCHEMA = "us3l-detection-metrics/1"
ENGINES = ("detectron2", "mmdet")
BOX_KEYS = ("AP", "AP50", "AP75")
MASK_KEYS = ("APm", "APm50", "APm75")
IDENTITY_KEYS = ("schema", "engine", "task", "arch", "width", "source_sha256", "params", "macs")
FILENAME = "metrics.json"


class MetricsError(ValueError):
    """Evaluator output or a metrics file that does not fit the schema (one line)."""


def metric_keys(task: str) -> tuple[str, ...]:
    if task not in ("voc", "coco"):
        raise MetricsError(f"unknown task {task!r}; expected 'voc' or 'coco'")
    return BOX_KEYS + (MASK_KEYS if task == "coco" else ())


def _value(raw: Any, scale: float, notes: list[str], name: str) -> float | None:
    if raw is None:
        notes.append(f"{name}: the evaluator returned no value")
        return None
    value = float(raw) * scale
    if math.isnan(value):
        notes.append(f"{name}: the evaluator returned NaN (no detections to score?)")
        return None
    return round(value, 4)


def _no_detections(count, task: str) -> tuple[dict, list[str]] | None:
    """Every metric 0 with a note when the detection counter saw no detection at all."""
    if count is None or int(count) > 0:
        return None
    note = ("no detections on the test set (none above the score threshold): every AP is 0")
    return {key: 0.0 for key in metric_keys(task)}, [note]


def from_detectron2(results: Mapping, task: str) -> tuple[dict, list[str]]:
    """Values from ``DefaultTrainer.test``/``train`` results: {"bbox": {"AP", "AP50", "AP75", ...},
    "segm": {...}, "detections": {"count": n}} (percent already), possibly nested under the test
    set's name."""
    if not isinstance(results, Mapping):
        raise MetricsError(f"detectron2 returned {type(results).__name__}, not a results dict")
    if "bbox" not in results and len(results) == 1:
        (results,) = results.values()
        if not isinstance(results, Mapping):
            raise MetricsError("detectron2 returned no results dict for the test set")
    empty = _no_detections((results.get("detections") or {}).get("count"), task)
    if empty is not None:
        return empty
    sections = {"bbox": BOX_KEYS} | ({"segm": MASK_KEYS} if task == "coco" else {})
    notes: list[str] = []
    out = {}
    for section, keys in sections.items():
        block = results.get(section)
        if not isinstance(block, Mapping):
            raise MetricsError(f"detectron2 results have no '{section}' block "
                               f"(got {sorted(results)}); was the right evaluator used for {task}?")
        for key, src in zip(keys, ("AP", "AP50", "AP75")):
            out[key] = _value(block.get(src), 1.0, notes, key)
    return out, notes


_MMDET_SOURCES = {
    "voc": {"AP": "pascal_voc/mAP", "AP50": "pascal_voc/AP50", "AP75": "pascal_voc/AP75"},
    "coco": {"AP": "coco/bbox_mAP", "AP50": "coco/bbox_mAP_50", "AP75": "coco/bbox_mAP_75",
             "APm": "coco/segm_mAP", "APm50": "coco/segm_mAP_50", "APm75": "coco/segm_mAP_75"},
}


def from_mmdet(results: Mapping, task: str) -> tuple[dict, list[str]]:
    """Values from ``Runner.test()``: VOCMetric's 'pascal_voc/*' or CocoMetric's 'coco/*'
    (fractions in [0, 1], scaled here to percent)."""
    metric_keys(task)
    if not isinstance(results, Mapping):
        raise MetricsError(f"mmdet returned {type(results).__name__}, not a results dict")
    empty = _no_detections(results.get("detections/count"), task)
    if empty is not None:
        return empty
    sources = _MMDET_SOURCES[task]
    prefix = next(iter(sources.values())).split("/")[0]
    if not any(k.startswith(prefix + "/") for k in results):
        raise MetricsError(f"mmdet results {sorted(results)[:4]} hold nothing from the {task} "
                           f"metric ({prefix}/...)")
    notes: list[str] = []
    return {key: _value(results.get(src), 100.0, notes, key) for key, src in sources.items()}, notes


def export_identity(meta: Mapping) -> dict:
    """arch, width, source sha256, backbone params and MACs (224 px) from an export's meta.json."""
    model = meta.get("model") or {}
    source = meta.get("source") or {}
    try:
        return {"arch": model.get("arch") or meta["arch"], "width": float(meta["width"]),
                "source_sha256": meta.get("source_sha256") or source["sha256"],
                "params": int(meta["params"]), "macs": int(meta.get("macs") or meta["macs_224"])}
    except (KeyError, TypeError, ValueError) as err:
        raise MetricsError(f"the export's meta.json lacks {err}; re-run tools/convert_width.py") \
            from None


def make_record(engine: str, task: str, meta: Mapping, values: Mapping, notes: list[str],
                run: Mapping | None = None) -> dict:
    """The metrics.json content: the export's identity (from its meta.json) plus the values."""
    if engine not in ENGINES:
        raise MetricsError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    record = {"schema": SCHEMA, "engine": engine, "task": task, **export_identity(meta)}
    record.update({key: values[key] for key in metric_keys(task)})
    record["run"] = dict(run or {}) | {"notes": list(notes)}
    validate(record)
    return record


def validate(record: Mapping) -> dict:
    """Check a record against the schema: exact keys, numbers finite and within [0, 100]."""
    task = record.get("task")
    expected = set(IDENTITY_KEYS) | set(metric_keys(task)) | {"run"}
    if set(record) != expected:
        raise MetricsError(f"metrics keys differ from the schema: missing "
                           f"{sorted(expected - set(record))}, extra {sorted(set(record) - expected)}")
    if record["schema"] != SCHEMA or record["engine"] not in ENGINES:
        raise MetricsError(f"not a {SCHEMA} record (schema {record['schema']!r}, "
                           f"engine {record['engine']!r})")
    for key in metric_keys(task):
        value = record[key]
        if value is not None and not (_number(value) and math.isfinite(value)
                                      and 0.0 <= value <= 100.0):
            raise MetricsError(f"{key}={value!r} is not a percentage in [0, 100]")
    width = record["width"]
    if not (_number(width) and math.isfinite(width) and 0.0 < width <= 1.0):
        raise MetricsError(f"width={width!r} is not a width in (0, 1]")
    for key in ("params", "macs"):
        if not (isinstance(record[key], int) and not isinstance(record[key], bool)
                and record[key] >= 0):
            raise MetricsError(f"{key}={record[key]!r} is not a count")
    for key in ("arch", "source_sha256"):
        if not isinstance(record[key], str) or not record[key]:
            raise MetricsError(f"{key}={record[key]!r} is not a name")
    if not isinstance(record["run"], dict):
        raise MetricsError(f"run={record['run']!r} is not a dict")
    return dict(record)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write(directory: str | os.PathLike, record: Mapping) -> Path:
    """Write ``directory/metrics.json`` atomically (readers never see half a file)."""
    validate(record)
    text = json.dumps(record, indent=2, sort_keys=False) + "\n"
    return atomic_write(Path(directory) / FILENAME, lambda tmp: Path(tmp).write_text(text))


def read(path: str | os.PathLike) -> dict:
    """A metrics file, checked against the schema; every way it can be wrong is one
    ``MetricsError`` line naming the file (NaN and Infinity, which Python's json accepts, fail
    the range check)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise MetricsError(f"{path} is not a readable metrics file "
                           f"({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(record, dict):
        raise MetricsError(f"{path} does not hold a metrics record")
    try:
        return validate(record)
    except MetricsError as err:
        raise MetricsError(f"{path}: {err}; re-run the detection run that wrote it") from None
