"""Thinning curves for the dashboard: bounded, order kept, extremes and ends kept, identity when it fits."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from gitopsd.ui.downsample import MIN_POINTS, downsample

ys = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


def series(values: list[float]) -> list[tuple[float, float]]:
    return [(float(i), y) for i, y in enumerate(values)]


def is_subsequence(small: list[tuple[float, float]], big: list[tuple[float, float]]) -> bool:
    it = iter(big)
    return all(any(p == q for q in it) for p in small)


@given(values=st.lists(ys, max_size=400), limit=st.integers(min_value=-3, max_value=500))
def test_thinned_series_is_a_bounded_ordered_subsequence_with_its_ends_and_extremes(
    values: list[float], limit: int
) -> None:
    points = series(values)
    out = downsample(points, limit)
    bound = max(limit, MIN_POINTS)
    if len(points) <= bound:
        assert out == points, "a series that fits is returned as it is"
        return
    assert len(out) <= bound
    assert is_subsequence(out, points)
    assert [x for x, _ in out] == sorted(x for x, _ in out), "x stays monotone"
    assert out[0] == points[0] and out[-1] == points[-1]
    assert min(y for _, y in out) == min(values)
    assert max(y for _, y in out) == max(values)


@given(values=st.lists(ys, min_size=MIN_POINTS + 1, max_size=300, unique=True))
def test_distinct_values_fill_the_budget_nearly(values: list[float]) -> None:
    points = series(values)
    for limit in range(MIN_POINTS, len(points)):
        out = downsample(points, limit)
        assert limit - 1 <= len(out) <= limit, "each bucket of distinct values gives its min and max"


def test_a_single_spike_in_ten_thousand_points_survives_thinning_to_one_hundred() -> None:
    values = [math.sin(i / 50) for i in range(10_000)]
    values[6_543] = 42.0
    values[1_234] = -42.0
    out = downsample(series(values), 100)
    assert len(out) == 100
    assert (6_543.0, 42.0) in out and (1_234.0, -42.0) in out
    assert out[0] == (0.0, values[0]) and out[-1] == (9_999.0, values[-1])


def test_small_inputs() -> None:
    assert downsample([], 10) == []
    assert downsample([(1.0, 2.0)], 0) == [(1.0, 2.0)]
    five = [(1.0, 2.0), (2.0, 3.0), (3.0, 9.0), (4.0, -1.0), (5.0, 1.0)]
    assert downsample(five, 2) == [(1.0, 2.0), (3.0, 9.0), (4.0, -1.0), (5.0, 1.0)], "a tiny limit counts as 4"
    flat = series([5.0] * 50)
    out = downsample(flat, 10)
    assert len(out) <= 10 and out[0] == flat[0] and out[-1] == flat[-1]
