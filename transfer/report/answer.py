"""What the report says first, and what it refuses to present as a result (issue #16).

* ``dataset_label``: every dataset column names what the data really is; the built-in presets'
  ``cifar10`` is transfer/fixtures.py's fixture in CIFAR-10's format (scikit-learn digit scans
  from the digits *train* split, upscaled, tinted and jittered), not CIFAR-10.
* ``is_smoke_check``: a detection run too short to measure anything. The rule: fewer than
  ``MIN_DET_IMAGES_SEEN`` training images seen (iterations x total batch). An earlier 100-
  iteration, batch-4 fine-tune on the synthetic VOC/COCO sets (400 images seen) was the shortest
  that learned (VOC AP50 25-43; bench/det_synthetic.md); below it, AP is noise. Such a figure is
  marked "smoke check" in the table and left out of every plot.
* ``opening``: the answer to the reader's question, from the headline dataset's probe: how much
  of its 1.0x accuracy the checkpoint keeps at the narrowest width, and how many points
  pretraining adds over a random-init encoder of the same width.
"""
from __future__ import annotations

MIN_DET_IMAGES_SEEN = 400  # 100 iterations x batch 4: the shortest run known to learn (above)
SMOKE = "smoke check"

# The built-in presets' data (tools/run_all.py; transfer/fixtures.py, transfer/datasets.py)
BUILTIN_LABELS = {"cifar10": "tinted digit scans (CIFAR-10 format, synthetic)",
                  "digits": "digits (real, scikit-learn)"}
REAL_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "flowers102": "Flowers-102",
               "pets": "Oxford-IIIT Pets", "dtd": "DTD", "digits": "digits (real, scikit-learn)"}


def dataset_label(name: str, builtin: bool) -> str:
    """What the dataset called ``name`` really is in this run."""
    return (BUILTIN_LABELS if builtin else REAL_LABELS).get(name, REAL_LABELS.get(name, name))


def images_seen(metrics: dict) -> int | None:
    """Training images a detection run saw (iterations x total batch), from its metrics.json."""
    run = metrics.get("run") if isinstance(metrics.get("run"), dict) else {}
    protocol = run.get("protocol") if isinstance(run.get("protocol"), dict) else {}
    iters = protocol.get("iterations", run.get("iterations"))
    batch = protocol.get("total_batch", run.get("ims_per_batch"))
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (iters, batch))
    return iters * batch if ok else None


def is_smoke_check(metrics: dict) -> bool:
    """Too short to measure anything (unknown length counts as too short)."""
    seen = images_seen(metrics)
    return seen is None or seen < MIN_DET_IMAGES_SEEN


def _pct(value: float) -> str:
    return f"{value:.1f}%"


def opening(rows: dict, dataset: str, label: str, baseline: str | None) -> str:
    """The report's first sentence(s). ``rows``: width -> {column: value}; the pretrained
    checkpoint's accuracy is ``probe:DATASET``, the baseline's ``base:BASELINE:probe:DATASET``."""
    key = f"probe:{dataset}"
    measured = sorted(w for w, row in rows.items() if row.get(key) is not None)
    if not measured:
        return f"No linear-probe accuracy on {label} was measured, so there is no answer yet."
    low, high = measured[0], measured[-1]
    acc_low, acc_high = rows[low][key], rows[high][key]
    kept = 100.0 * acc_low / acc_high if acc_high else float("nan")
    text = (f"On {label} (linear probe), at {low:g}x the checkpoint keeps {kept:.0f}% of its "
            f"{high:g}x accuracy ({_pct(acc_low)} vs {_pct(acc_high)})")
    base_key = f"base:{baseline}:probe:{dataset}" if baseline else None
    gains = [(w, rows[w][key] - rows[w][base_key]) for w in (low, high)
             if base_key and rows[w].get(base_key) is not None]
    if not gains:
        return text + "; no baseline was trained, so the value of pretraining is not measured."
    parts = [f"{'adds' if gain >= 0 else 'loses'} {abs(gain):.1f} points at {w:g}x "
             f"({_pct(rows[w][key])} vs {_pct(rows[w][base_key])})" for w, gain in gains]
    return (text + f"; pretraining {' and '.join(parts)} over a {baseline} encoder of the same "
            f"width.")
