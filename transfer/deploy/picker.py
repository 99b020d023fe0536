"""Choosing the width: the most accurate candidate within a latency (and memory) budget.

Pure logic on measured figures, so it is tested on hand-made tables:
* a candidate fits when its median latency at the budget's batch is <= the latency budget and,
  when a memory budget is given, its peak memory is <= it;
* among the fitting candidates the most accurate wins. A candidate without accuracy (it lies
  outside the measured widths, so nothing is interpolated) ranks as at least as accurate as the
  widest measured width below it, and among equals the widest wins: accuracy grows with width in
  every table of the paper (Tables 1-6);
* ``search`` finds candidates in a trained width range by bisection on measured latency
  (latency grows with width): the narrowest and widest first, then halving the interval between
  the widest that fits and the narrowest that does not. Every measurement is kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Budget:
    latency_ms: float
    memory_mb: float | None = None
    batch: int = 1
    backend: str = "onnxruntime"


@dataclass
class Candidate:
    width: float
    latency_ms: float | None
    p90_ms: float | None = None
    memory_mb: float | None = None
    accuracy: float | None = None
    accuracy_note: str = "not measured"
    folder: str | None = None
    extra: dict = field(default_factory=dict)


class NothingFits(Exception):
    """No candidate is within the budget; the message gives the fastest one's figures."""

    def __init__(self, fastest: Candidate, budget: Budget):
        self.fastest = fastest
        mem = (f", peak memory {fastest.memory_mb:.0f} MiB" if fastest.memory_mb is not None
               else "")
        super().__init__(
            f"no width fits {describe(budget)}: the fastest, {fastest.width:g}x, takes "
            f"{fastest.latency_ms:.2f} ms (median; p90 {fastest.p90_ms or float('nan'):.2f} ms)"
            f"{mem} with {budget.backend} at batch {budget.batch}; raise the budget or use a "
            f"faster backend/machine")


def describe(budget: Budget) -> str:
    mem = f" and {budget.memory_mb:g} MiB" if budget.memory_mb is not None else ""
    return f"{budget.latency_ms:g} ms{mem}"


def misses(c: Candidate, budget: Budget) -> list[str]:
    """Why ``c`` is outside the budget (empty: it fits)."""
    out = []
    if c.latency_ms is None or c.latency_ms > budget.latency_ms:
        out.append(f"latency {c.latency_ms:.2f} > {budget.latency_ms:g} ms"
                   if c.latency_ms is not None else "latency not measured")
    if budget.memory_mb is not None and (c.memory_mb is None or c.memory_mb > budget.memory_mb):
        out.append(f"memory {c.memory_mb:.0f} > {budget.memory_mb:g} MiB"
                   if c.memory_mb is not None else "memory not measured")
    return out


def attach_accuracy(cands: list[Candidate], known: dict[float, float], source: str,
                    interpolate: Callable[[dict, float], float | None]) -> None:
    """Measured accuracy where the width was evaluated, interpolated between measured widths
    otherwise (and said so), none outside them."""
    for c in cands:
        if c.width in known:
            c.accuracy, c.accuracy_note = known[c.width], f"measured, {source}"
        else:
            c.accuracy = interpolate(known, c.width) if known else None
            c.accuracy_note = ("interpolated between measured widths" if c.accuracy is not None
                               else "not measured")
            below = [w for w in known if w < c.width]
            if c.accuracy is None and below:
                c.extra["floor"] = known[max(below)]  # wider: assumed at least as accurate


def rank_key(c: Candidate):
    acc = c.accuracy if c.accuracy is not None else c.extra.get("floor")
    return (acc is not None, acc if acc is not None else 0.0, c.width)


def choose(cands: list[Candidate], budget: Budget) -> tuple[Candidate, str]:
    """The winner and one sentence saying why; ``NothingFits`` when none fits."""
    fitting = [c for c in cands if not misses(c, budget)]
    if not fitting:
        timed = [c for c in cands if c.latency_ms is not None]
        raise NothingFits(min(timed, key=lambda c: c.latency_ms), budget)
    best = max(fitting, key=rank_key)
    wider = [c for c in cands if c.width > best.width and misses(c, budget)]
    if best.accuracy is not None:
        why = (f"{best.width:g}x is the most accurate width within {describe(budget)} "
               f"({best.accuracy:.2f}, {best.accuracy_note})")
    else:
        why = (f"{best.width:g}x is the widest width within {describe(budget)} (no accuracy "
               f"measured at it: a wider width is assumed at least as accurate, as in the "
               f"paper's Tables 1-6)")
    if wider:
        nxt = min(wider, key=lambda c: c.width)
        why += (f"; the next wider measured, {nxt.width:g}x, misses: "
                f"{', '.join(misses(nxt, budget))}")
    return best, why


def search(widths: list[float], measure: Callable[[float], Candidate], budget: Budget
           ) -> list[Candidate]:
    """Bisection on measured latency over sorted ``widths`` (distinct channel plans); returns
    every candidate measured, in measurement order."""
    measured: list[Candidate] = []

    def fits(i: int) -> bool:
        c = measure(widths[i])
        measured.append(c)
        return not misses(c, budget)

    lo, hi = 0, len(widths) - 1
    if not fits(lo) or hi == lo or fits(hi):
        return measured
    while hi - lo > 1:  # widths[lo] fits, widths[hi] does not
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return measured


def table(cands: list[Candidate], budget: Budget, chosen: Candidate | None = None) -> str:
    """Markdown: every candidate measured, its figures and whether it fits."""
    head = ["width", f"median ms (b{budget.batch})", "p90 ms", "peak MiB", "accuracy", "fits"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in sorted(cands, key=lambda c: c.width):
        miss = misses(c, budget)
        mark = "**chosen**" if c is chosen else ("yes" if not miss else "no: " + ", ".join(miss))
        acc = "–" if c.accuracy is None else f"{c.accuracy:.2f} ({c.accuracy_note})"
        cells = [f"{c.width:g}", _num(c.latency_ms), _num(c.p90_ms), _num(c.memory_mb, 0), acc,
                 mark]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(v, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"
