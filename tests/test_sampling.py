"""Which widths come at which iteration: Algorithm 1, the sandwich rule, both off, fixed width."""
import random

import pytest

from pretrain.sampling import dynamic_min_width, schedule_summary, widths_for_iteration

US3L = {"sandwich": True, "dynamic": True, "num_random": 1, "min_width": 0.25, "max_width": 1.0}
USNET = {"sandwich": True, "dynamic": False, "num_random": 2, "min_width": 0.25, "max_width": 1.0}


def test_algorithm1_schedule_100_iterations():
    rng = random.Random(0)
    total = 100  # T_p = 25
    for t in range(1, total + 1):
        widths = widths_for_iteration(t, total, US3L, rng)
        if t <= 25:
            assert widths == [1.0], t                      # first quarter: base network only
            continue
        expected_min = {1: 0.75, 2: 0.5, 3: 0.25, 4: 0.25}[t // 25]  # 1 - 0.25*floor(t/T_p), clipped
        assert len(widths) == 3 and widths[0] == 1.0 and widths[1] == expected_min, t
        assert expected_min <= widths[2] <= 1.0
    assert [dynamic_min_width(t, 100, 0.25) for t in (25, 26, 49, 50, 74, 75, 100)] == \
        [None, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]


def test_algorithm1_respects_a_larger_minimum_and_short_runs():
    cfg = {**US3L, "min_width": 0.5}
    assert widths_for_iteration(80, 100, cfg, random.Random(0))[1] == 0.5  # 0.25 clipped to 0.5
    assert widths_for_iteration(2, 10, US3L, random.Random(0)) == [1.0]   # T_p = 2
    assert widths_for_iteration(3, 10, US3L, random.Random(0))[1] == 0.75
    assert widths_for_iteration(4, 10, US3L, random.Random(0))[1] == 0.5
    assert widths_for_iteration(6, 10, US3L, random.Random(0))[1] == 0.25


def test_sandwich_rule_four_widths_every_iteration():
    rng = random.Random(1)
    for t in (1, 50, 100):
        widths = widths_for_iteration(t, 100, USNET, rng)
        assert len(widths) == 4 and widths[:2] == [1.0, 0.25]
        assert all(0.25 <= w <= 1.0 for w in widths[2:])


def test_without_sandwich_the_min_is_a_random_width():
    cfg = {**US3L, "sandwich": False}
    widths = widths_for_iteration(60, 100, cfg, random.Random(2))   # R_min = 0.5
    assert len(widths) == 3 and widths[0] == 1.0 and all(0.5 <= w <= 1.0 for w in widths[1:])
    plain = {**USNET, "sandwich": False}
    assert len(widths_for_iteration(1, 100, plain, random.Random(2))) == 4


def test_fixed_width_and_seeded_repeatability():
    fixed = {**USNET, "min_width": 0.5, "max_width": 0.5}
    assert widths_for_iteration(7, 10, fixed, random.Random(0)) == [0.5]
    a = [widths_for_iteration(t, 40, USNET, random.Random(3)) for t in range(1, 41)]
    b = [widths_for_iteration(t, 40, USNET, random.Random(3)) for t in range(1, 41)]
    assert a == b
    with pytest.raises(ValueError, match="outside"):
        widths_for_iteration(0, 10, USNET, random.Random(0))


def test_expected_number_of_widths():
    assert schedule_summary(100, US3L)["mean_widths"] == 2.5   # 1/4 * 1 + 3/4 * 3 (paper: 2.5)
    assert schedule_summary(100, USNET)["mean_widths"] == 4.0
