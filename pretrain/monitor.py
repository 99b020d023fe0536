"""Watching a pretraining run per width: loss, collapse metric, optional kNN accuracy.

Collapse (the failure of Table 7 case 1) shows as the std of L2-normalised embeddings falling to 0
(SimSiam's metric); healthy outputs sit near 1/sqrt(dim), so the warning compares
``std * sqrt(dim)`` with ``monitor.collapse_ratio``. Logs go to CSV files (always) and TensorBoard
(when installed): ``train.csv`` (one row per logged iteration), ``widths.csv`` (one row per
sampled width: iteration, width, role, loss, std) and ``knn.csv``.

Nothing is written until ``open(start_iteration)`` (the engine calls it once every input check
has passed). Logs stay consistent across resume: ``open`` keeps only the rows of iterations up to
``start_iteration`` (the rows a killed run logged after its last checkpoint are dropped and then
logged again by the resumed run, once), rewriting each CSV atomically, and TensorBoard purges its
events after that iteration. A collapse warning is one line on stdout (stderr is for errors).

Without a progress bar (a log file, a pipe: ``console(total)``), every logged iteration and every
kNN evaluation is also one compact ``progress: ...`` line on stdout (iteration/total, loss, the
sampled widths, ETA; kNN top-1 per width), which tools/run_all.py echoes to its console.
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pretrain import slim
from pretrain.cli import write_error
from pretrain.safe_io import atomic_write

LOGS = ("train.csv", "widths.csv", "knn.csv")


class CollapseError(RuntimeError):
    """Raised when ``monitor.stop_on_collapse`` is on and the embeddings collapsed."""


class Monitor:
    def __init__(self, out_dir: str | Path, cfg: dict, enabled: bool = True):
        self.cfg, self.enabled, self.out = cfg, enabled, Path(out_dir)
        self.writer = None
        self.collapsed_at: int | None = None
        self._files: dict[str, tuple] = {}
        self.total: int | None = None  # set by console(): print progress lines
        self._clock: tuple[int, float] | None = None

    def console(self, total: int, start_iteration: int = 0) -> None:
        """Print a ``progress:`` line per logged iteration and kNN evaluation (no bar is drawn)."""
        self.total = total
        self._clock = (start_iteration, time.perf_counter())

    def _eta(self, iteration: int) -> str:
        start, t0 = self._clock
        done = iteration - start
        if done <= 0:
            return "?"
        left = (time.perf_counter() - t0) / done * (self.total - iteration)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def open(self, start_iteration: int = 0) -> None:
        """Create the output folder and logs; keep only rows of iterations <= start_iteration."""
        if not self.enabled:
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(self.out, err) from None
        for name in LOGS:
            truncate_log(self.out / name, start_iteration)
        if self.cfg.get("tensorboard", True):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("note: tensorboard is not installed: logging to CSV only", flush=True)
            else:
                try:
                    self.writer = SummaryWriter(str(self.out / "tb"),
                                                purge_step=start_iteration + 1)
                except OSError as err:
                    raise write_error(self.out / "tb", err) from None

    def _csv(self, name: str, header: list[str], row: list) -> None:
        path = self.out / name
        try:
            if name not in self._files:
                new = not path.exists() or path.stat().st_size == 0
                fh = open(path, "a", newline="")
                writer = csv.writer(fh)
                if new:
                    writer.writerow(header)
                self._files[name] = (fh, writer)
            fh, writer = self._files[name]
            writer.writerow(row)
            fh.flush()
        except OSError as err:
            raise write_error(path, err) from None

    def collapse_score(self, std: float, dim: int) -> float:
        return std * math.sqrt(dim)

    def check_collapse(self, iteration: int, std: float, dim: int, width: float) -> bool:
        """Warn (or raise) when the normalised-embedding std at ``width`` is near 0."""
        score = self.collapse_score(std, dim)
        if score >= float(self.cfg["collapse_ratio"]):
            return False
        if self.collapsed_at is None:
            self.collapsed_at = iteration
            if self.enabled:
                print(f"warning: iteration {iteration}: embeddings at width {width:g} look "
                      f"collapsed (std*sqrt(dim) = {score:.3f} < {self.cfg['collapse_ratio']})",
                      flush=True)
        if self.cfg.get("stop_on_collapse"):
            raise CollapseError(f"embeddings collapsed at iteration {iteration} (width {width:g}, "
                                f"std*sqrt(dim) = {score:.3f}); stopping as monitor.stop_on_collapse "
                                f"asks")
        return True

    def log_iteration(self, iteration: int, epoch: int, scalars: dict, records: list[dict]) -> None:
        """``scalars``: lr, momentum, loss, reg, reg_alpha, sec; ``records``: per width (width, role,
        loss, std)."""
        if not self.enabled:
            return
        keys = ["lr", "momentum", "loss", "reg", "reg_alpha", "sec_per_iter"]  # α of Eq. 5
        self._csv("train.csv", ["iteration", "epoch"] + keys + ["widths"],
                  [iteration, epoch] + [f"{scalars.get(k, float('nan')):.6g}" for k in keys]
                  + [" ".join(f"{r['width']:g}" for r in records)])
        for r in records:
            self._csv("widths.csv", ["iteration", "width", "role", "loss", "std"],
                      [iteration, f"{r['width']:g}", r["role"], f"{r['loss']:.6g}",
                       f"{r['std']:.6g}"])
        if self.writer is not None:
            for k in keys:
                if k in scalars:
                    self.writer.add_scalar(f"train/{k}", scalars[k], iteration)
            for r in records:
                self.writer.add_scalar(f"loss/{r['role']}", r["loss"], iteration)
                self.writer.add_scalar(f"std/{r['role']}", r["std"], iteration)
        if self.total:
            widths = " ".join(f"{r['width']:g}x" for r in records)
            print(f"progress: iteration {iteration}/{self.total}, loss {scalars['loss']:.4f}, "
                  f"widths {widths}, ETA {self._eta(iteration)}", flush=True)

    def log_knn(self, iteration: int, accuracies: dict[float, float]) -> None:
        if not self.enabled:
            return
        for width, acc in accuracies.items():
            self._csv("knn.csv", ["iteration", "width", "top1"], [iteration, f"{width:g}",
                                                                 f"{acc:.4f}"])
            if self.writer is not None:
                self.writer.add_scalar(f"knn/w{width:g}", acc, iteration)
        if self.total and accuracies:
            shown = ", ".join(f"{w:g}x {100 * a:.1f}%" for w, a in accuracies.items())
            print(f"progress: kNN top-1 at iteration {iteration}: {shown}", flush=True)

    def close(self) -> None:
        for fh, _ in self._files.values():
            try:
                fh.close()
            except OSError:  # a full disk on the last flush: the rows already written stay
                pass
        self._files.clear()
        if self.writer is not None:
            self.writer.close()


def truncate_log(path: Path, start_iteration: int) -> None:
    """Keep the header and the well-formed rows of ``path`` whose iteration is at most
    ``start_iteration`` (a partial last row from a killed run goes too); atomic rewrite."""
    if not path.is_file():
        return
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        text = ""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return
    header, kept = rows[0], [rows[0]]
    for row in rows[1:]:
        try:
            keep = len(row) == len(header) and int(row[0]) <= start_iteration
        except ValueError:
            keep = False
        if keep:
            kept.append(row)
    if len(kept) == len(rows) and text.endswith("\n"):
        return
    out = io.StringIO()
    csv.writer(out).writerows(kept)
    atomic_write(path, lambda tmp: Path(tmp).write_text(out.getvalue()))


@torch.no_grad()
def features(backbone: torch.nn.Module, loader, device: torch.device, max_batches: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    for i, (x, y) in enumerate(loader):
        if i >= max_batches:
            break
        feats.append(F.normalize(backbone(x.to(device)).float(), dim=1))
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels).to(device)


@torch.no_grad()
def knn_accuracy(backbone: torch.nn.Module, bank_loader, val_loader, width: float,
                 device: torch.device, k: int = 20, max_batches: int = 8,
                 temperature: float = 0.07) -> float:
    """Weighted kNN top-1 (InstDisc) of the backbone at ``width``.

    BN statistics are first calibrated at ``width`` on the bank images (training never uses the
    running statistics, so this changes nothing in the run); the model's width and mode are restored.
    """
    was_training, previous = backbone.training, slim.get_width(backbone)
    try:
        slim.set_width(backbone, width)
        with slim.cached_slices(backbone):  # the weights stay fixed throughout
            with slim.calibrating(backbone):
                for i, (x, _) in enumerate(bank_loader):
                    if i >= max_batches:
                        break
                    backbone(x.to(device))
            backbone.eval()
            bank, bank_y = features(backbone, bank_loader, device, max_batches)
            val, val_y = features(backbone, val_loader, device, max_batches)
    finally:
        slim.set_width(backbone, previous)
        backbone.train(was_training)
    num_classes = int(max(bank_y.max(), val_y.max())) + 1
    sim, idx = (val @ bank.t()).topk(min(k, len(bank)), dim=1)
    weights = (sim / temperature).exp()
    votes = torch.zeros(len(val), num_classes, device=device)
    votes.scatter_add_(1, bank_y[idx], weights)
    return (votes.argmax(1) == val_y).float().mean().item()
