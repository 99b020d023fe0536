"""Which widths an iteration trains: the sandwich rule and the dynamic sampling of Algorithm 1.

``widths_for_iteration`` is a pure function of the iteration, the schedule length, the sampling
config and a ``random.Random`` (whose state the checkpoint keeps). The first width returned is
always the base (largest) network, which Algorithm 1 runs first and which is the teacher.

* sandwich on, dynamic off (US-Net): [max, min, ``num_random`` random widths in [min, max]].
* dynamic on (Algorithm 1, ``t`` counted from 1 like its loop): T_p = T_iters // 4; for t <= T_p
  only [max]; then R_min = 1 - 0.25 * floor(t / T_p), never below ``min_width``, and the widths are
  [max, R_min, ``num_random`` (= 1 in the paper) random widths in [R_min, max]].
* sandwich off (Table 9): the min width is replaced by one more random width in [R_min, max];
  the base network stays (it is the distillation teacher).
* ``min_width == max_width`` (an individually trained baseline): [max] always.
* ``width_list`` set (S-Net, fixed-list mode): every listed width every iteration, largest first
  (official US3L ``workers/ssl.py`` ``generate_widths_train``: ``USE_SLIMMABLE`` takes
  ``WIDTH_MULT_LIST`` and sorts it from max to min); the other keys are ignored.
"""
from __future__ import annotations

import math
import random


def dynamic_min_width(t: int, total: int, min_width: float) -> float | None:
    """Algorithm 1 lines 2, 7-10: None while only the base network trains, else R_min."""
    period = total // 4
    if period < 1:  # too short a run to stage: every iteration samples the full range
        return min_width
    if t <= period:
        return None
    return max(min_width, 1.0 - 0.25 * math.floor(t / period))


def widths_for_iteration(t: int, total: int, cfg: dict, rng: random.Random) -> list[float]:
    """Widths for iteration ``t`` (1-based) of ``total``; ``cfg`` is the ``sampling`` section."""
    if not 1 <= t <= total:
        raise ValueError(f"iteration {t} is outside 1..{total}")
    if cfg.get("width_list"):
        return sorted({float(w) for w in cfg["width_list"]}, reverse=True)
    high, low = float(cfg["max_width"]), float(cfg["min_width"])
    if low >= high:
        return [high]
    if cfg.get("dynamic", False):
        r_min = dynamic_min_width(t, total, low)
        if r_min is None:
            return [high]
        low = min(r_min, high)
    widths = [high]
    n_random = int(cfg.get("num_random", 1))
    if cfg.get("sandwich", True):
        widths.append(low)
    else:
        n_random += 1
    widths += [round(rng.uniform(low, high), 4) for _ in range(n_random)]
    return widths


def schedule_summary(total: int, cfg: dict, seed: int = 0) -> dict:
    """Iterations per number of sampled widths, and the mean (for logs and the bench)."""
    rng = random.Random(seed)
    counts: dict[int, int] = {}
    for t in range(1, total + 1):
        n = len(widths_for_iteration(t, total, cfg, rng))
        counts[n] = counts.get(n, 0) + 1
    return {"num_widths": counts, "mean_widths": sum(k * v for k, v in counts.items()) / total}
