"""Thinning a metric curve to what a chart can draw, without losing its spikes. Pure.

A training may report 10,000 points or more per metric, and a model page overlays 20 runs: sending and drawing
them all would make the page crawl on a laptop. The server sends at most N points per series instead. Plain
striding would drop the one step where the loss spiked, which is what a person is looking for, so the series
is cut into buckets of consecutive points and each bucket keeps its lowest and its highest point (in their
order), and the first and last point of the whole series are always kept. The result is a subsequence of the
input: x stays in the order it came, every point is a real one, and the global minimum and maximum survive.
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]

MIN_POINTS = 4
"""The fewest points a series is thinned to: its first, its last, its lowest and its highest."""


def downsample(points: Sequence[Point], limit: int) -> list[Point]:
    """At most `limit` points of `points` (x, y), keeping the first, the last, and each bucket's min and max.

    `points` come in drawing order; with `limit` at or above their number they are returned as they are.
    `limit` below `MIN_POINTS` counts as `MIN_POINTS`.
    """
    limit = max(limit, MIN_POINTS)
    count = len(points)
    if count <= limit:
        return list(points)
    inner = count - 2  # the points between the first and the last
    buckets = (limit - 2) // 2
    kept: list[Point] = [points[0]]
    for bucket in range(buckets):
        start = 1 + bucket * inner // buckets
        end = 1 + (bucket + 1) * inner // buckets
        if start >= end:
            continue
        low = high = start
        for index in range(start + 1, end):
            y = points[index][1]
            if y < points[low][1]:
                low = index
            if y > points[high][1]:
                high = index
        for index in sorted({low, high}):
            kept.append(points[index])
    kept.append(points[-1])
    return kept
