"""One linear-probe run: every width x every dataset, into results.json / results.md / plots.

tools/linear_probe.py parses the command line and calls ``run``; this module owns the order of work
(check every dataset first, then per width: costs, then per dataset: features + solver) and the
output files. Progress is kept in ``results.partial.json`` (replaced atomically after each probe);
the final files appear only when every probe is done.

Nothing is written before every input has been checked (each width's weights loaded safely,
every dataset opened), and config.json is written with the first finished probe. A bad input
found only later (a corrupt image, unreadable calibration data) removes what this run wrote, so
a fresh output folder is left absent; an interrupt keeps the finished probes. A SGD probe whose
loss goes non-finite stops the run with ``ProbeDiverged`` naming the width and dataset.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pretrain.safe_io import atomic_write
from transfer import datasets as D
from transfer.linear import lbfgs, sgd, splits
from transfer.linear.backbones import CheckpointSource, ExportSource
from transfer.linear.features import FeatureCache, probe_features
from transfer.linear.metrics import METRIC
from transfer.report.plots import accuracy_plots
from transfer.report.tables import markdown_table

RESULTS_FORMAT = "us3l-linear-probe-v1"


class ProbeDiverged(RuntimeError):
    """A probe's loss went non-finite (one line: width, dataset, what to change)."""


@dataclass
class ProbeSettings:
    root: str | None
    out: Path
    protocol: str = "lbfgs"
    image_size: int = 224
    verify_md5: bool = True
    cache_dir: Path | None = None
    batch_size: int = 256
    workers: int = 0
    grid: tuple[float, ...] = lbfgs.GRID  # C values, in sweep order for the sklearn solver
    max_iter: int | None = None           # None: the solver's own (100 sklearn, 1000 converged)
    solver: str = lbfgs.DEFAULT_SOLVER
    sgd: sgd.SGDConfig = field(default_factory=sgd.SGDConfig)


def preflight(names: list[str], settings: ProbeSettings) -> None:
    """Open every split of every dataset once (no images decoded): a missing or corrupt dataset
    fails here, before any extraction, with ``DatasetError``."""
    for name in names:
        for source in splits.source_splits(name):
            D.load(name, settings.root, source, None, settings.verify_md5)


def _one(src, width: float, name: str, settings: ProbeSettings, cache: FeatureCache,
         device: torch.device, get_model) -> dict:
    """One probe; ``get_model()`` gives the network at ``width`` (built on first use)."""
    metric = METRIC[name]
    if settings.protocol == "lbfgs":
        feats = probe_features(get_model, src.tag(width), name, settings.root,
                               settings.image_size, cache, device, settings.verify_md5,
                               settings.batch_size, settings.workers)
        seen = int(max(int(y.max()) for _, y in feats.values())) + 1
        return lbfgs.probe(feats, metric, max(seen, D.NUM_CLASSES[name]), settings.grid, device,
                           settings.max_iter, progress=True, solver=settings.solver)
    model = get_model()
    with torch.no_grad():
        dim = model.eval()(torch.zeros(1, 3, settings.image_size, settings.image_size,
                                       device=device)).shape[1]
    return sgd.probe(model, dim, name, settings.root, metric, D.NUM_CLASSES[name], device,
                     settings.image_size, settings.sgd, settings.verify_md5)


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def run(src: CheckpointSource | ExportSource, widths: list[float], names: list[str],
        settings: ProbeSettings, config: dict | None = None) -> dict:
    """Probe every width on every dataset; returns the content of results.json. ``config`` (the
    command and its arguments) is saved as config.json with the first finished probe."""
    from transfer.linear.features import default_cache_dir
    device = lbfgs.default_device()
    widths = [src.check_width(w) for w in widths]
    for width in widths:
        src.check(width)
    preflight(names, settings)
    cache = FeatureCache(settings.cache_dir or default_cache_dir())
    out = Path(settings.out)
    existed = out.exists()
    ours = [p for p in (out / "config.json", out / "results.partial.json") if not p.exists()]
    try:
        return _run(src, widths, names, settings, config, cache, device, out)
    except KeyboardInterrupt:
        raise  # finished probes stay in results.partial.json
    except BaseException:  # bad input found late, a divergence: leave no half-run behind
        for path in ours:
            path.unlink(missing_ok=True)
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _run(src, widths, names, settings, config, cache, device, out) -> dict:
    results = {"format": RESULTS_FORMAT, "protocol": settings.protocol, "source": src.describe(),
               "datasets": list(names), "metrics": {n: METRIC[n] for n in names},
               "image_size": settings.image_size,
               "device": device.type, "rows": []}
    if settings.protocol == "lbfgs":
        results["grid"] = [min(settings.grid), max(settings.grid), len(settings.grid)]
        results["solver"] = settings.solver
        results["max_iter"] = settings.max_iter if settings.max_iter is not None else (
            lbfgs.SKLEARN_MAX_ITER if settings.solver == "sklearn" else lbfgs.CONVERGED_MAX_ITER)
    partial = out / "results.partial.json"
    config_written = False
    for width in widths:
        row = {"width": width, **src.costs(width, settings.image_size), "datasets": {}}
        results["rows"].append(row)
        built: list = []

        def get_model(width=width, built=built):
            if not built:  # calibrated once per width, shared by every dataset
                built.append(src.model(width, device))
            return built[0]

        for name in names:
            try:
                row["datasets"][name] = _one(src, width, name, settings, cache, device, get_model)
            except FloatingPointError as err:
                raise ProbeDiverged(f"width {width:g}, {name}: {' '.join(str(err).split())}") \
                    from None
            print(f"progress: probe width {width:g}x, {name}: "  # tools/run_all.py shows it
                  f"{row['datasets'][name]['value']:.1f}", flush=True)
            if config is not None and not config_written:
                _write_json(out / "config.json", config)
                config_written = True
            _write_json(partial, results)
        built.clear()
    if config is not None and not config_written:
        _write_json(out / "config.json", config)
    _write_json(out / "results.json", results)
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(markdown_table(results)))
    accuracy_plots(results, out)
    partial.unlink(missing_ok=True)
    return results
