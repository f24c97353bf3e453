"""A run's metric curves for the dashboard: its metrics file parsed once, followed as it grows, read bounded.

A model page polls the curves of up to 20 runs every 2 s, and a finished run's file never changes, so each file
is parsed once and kept in a small in-process cache keyed by where it is (run directory, name) and checked
against (inode, size, mtime_ns) on every read: unchanged, nothing is read; grown, only the new bytes are;
replaced or shrunk, it is parsed again. The cache holds at most `CACHE_VALUES` values over all files (least
recently used files go first), and one file at most `FILE_VALUES` values and `MAX_SERIES` metrics.

The file is the training's, so it is hostile input: opened with no link followed below the run directory
(`ui.runfiles`), read at most `READ_BYTES` per call (a larger file is read on over several calls; the caller
says how far it got, `offset`), a line over `LINE_BYTES` is dropped as it streams past, never held whole, and
lines are parsed by `reconcile.metrics.parse_line` (numbers only, nesting depth capped). A point is a line
with at least one number, counted as the reconciler counts them, so "diverged at metrics line N" names point N.

The x axis is `step` when any line carries it, else `epoch`, else the point's index; a line without the axis
key (a GPU sample the nvidia backend appended) is drawn at the last value seen. Values that are not finite
(NaN, infinities: a diverged loss) are not drawn; the convergence verdict marks where that happened.
"""

from __future__ import annotations

import math
import os
import threading
from array import array
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from gitopsd.reconcile.metrics import parse_line
from gitopsd.ui import runfiles

READ_BYTES = 8 * 1024 * 1024
"""Most bytes of a metrics file parsed by one call."""
LINE_BYTES = 64 * 1024
"""Longest line parsed (the reconciler's default `output_limits.metrics_line_bytes`)."""
MAX_SERIES = 64
"""Most metrics kept per run (the first seen); a chart per metric beyond that would help nobody."""
FILE_VALUES = 2_000_000
"""Most values kept for one file; beyond that, later lines are not parsed."""
CACHE_VALUES = 8_000_000
"""Most values kept by the cache over all files (about 16 bytes each)."""
AXES = ("step", "epoch")
CHUNK = 1024 * 1024


@dataclass(kw_only=True)
class Series:
    """One metric: the index of each point that carries it, and its value there."""

    points: array[int] = field(default_factory=lambda: array("q"))
    values: array[float] = field(default_factory=lambda: array("d"))


@dataclass(kw_only=True)
class Curves:
    """What is known of one metrics file so far."""

    ino: int = -1
    size: int = -1
    mtime_ns: int = -1
    offset: int = 0
    """Where the first line not parsed yet starts."""
    ends: array[int] = field(default_factory=lambda: array("q"))
    """For each point, the byte offset just past its line."""
    steps: array[float] = field(default_factory=lambda: array("d"))
    """For each point, the last `step` seen up to it (NaN before any)."""
    epochs: array[float] = field(default_factory=lambda: array("d"))
    series: dict[str, Series] = field(default_factory=dict)
    values: int = 0
    skipped: int = 0
    full: bool = False
    """`FILE_VALUES` reached: nothing more of this file is parsed."""
    read_at: int = 0
    """Where reading goes on: past `offset` by the bytes of a line whose newline has not come yet."""
    dropping: bool = False
    pending: bytes = b""

    @property
    def points(self) -> int:
        return len(self.ends)

    @property
    def axis(self) -> str:
        """`step` once any point carried it (the last point then carries it forward), else `epoch`, else `index`."""
        if self.steps and not math.isnan(self.steps[-1]):
            return "step"
        if self.epochs and not math.isnan(self.epochs[-1]):
            return "epoch"
        return "index"

    def x_of(self, index: int, axis: str) -> float:
        if axis == "step":
            return self.steps[index]
        if axis == "epoch":
            return self.epochs[index]
        return float(index)

    def first_after(self, offset: int) -> int:
        """The index of the first point whose line starts at or after byte `offset`."""
        return bisect_right(self.ends, offset)

    def add(self, line: bytes, end: int) -> None:
        """Parse one complete line that ends just before byte `end`."""
        if len(line) > LINE_BYTES:
            self.skipped += 1
            return
        point = parse_line(line)
        if not point:
            return
        index = len(self.ends)
        self.ends.append(end)
        step, epoch = point.get("step"), point.get("epoch")
        self.steps.append(step if step is not None and math.isfinite(step) else self._carry(self.steps))
        self.epochs.append(epoch if epoch is not None and math.isfinite(epoch) else self._carry(self.epochs))
        for name, value in point.items():
            if name in AXES or not math.isfinite(value):
                continue
            series = self.series.get(name)
            if series is None:
                if len(self.series) >= MAX_SERIES:
                    continue
                series = self.series[name] = Series()
            series.points.append(index)
            series.values.append(value)
            self.values += 1
        if self.values >= FILE_VALUES:
            self.full = True

    @staticmethod
    def _carry(values: array[float]) -> float:
        return values[-1] if values else math.nan

    def feed(self, fd: int, size: int, *, final: bool, budget: int) -> None:
        """Parse what was appended, from where reading stopped up to `size`, at most `budget` bytes of it.

        With `final` (the run has ended), a last line without a newline counts too."""
        pos = self.read_at
        stop = min(size, pos + budget)
        while pos < stop and not self.full:
            chunk = os.pread(fd, min(CHUNK, stop - pos), pos)
            if not chunk:
                break
            base, pos = pos, pos + len(chunk)
            start = 0
            while not self.full and (newline := chunk.find(b"\n", start)) >= 0:
                line, self.pending = self.pending + chunk[start:newline], b""
                start = newline + 1
                if self.dropping:  # the end of a line already dropped for its length
                    self.dropping = False
                else:
                    self.add(line, base + start)
                self.offset = base + start
            if self.full:
                pos, self.pending = self.offset, b""
                break
            self.pending += chunk[start:]
            if self.dropping or len(self.pending) > LINE_BYTES:
                if not self.dropping:
                    self.skipped += 1
                self.dropping, self.pending = True, b""
        self.read_at = pos
        if final and pos >= size and self.pending and not self.dropping and not self.full:
            self.add(self.pending, pos)
            self.pending = b""
            self.offset = pos


@dataclass(frozen=True, kw_only=True)
class Window:
    """The points of one run after a byte offset, ready for the JSON document."""

    axis: str
    series: dict[str, list[tuple[float, float]]]
    offset: int
    points: int
    """Points in the window (lines with at least one number after the offset)."""


class CurveCache:
    """The parsed metrics files, shared by every request of one process."""

    def __init__(self, max_values: int = CACHE_VALUES) -> None:
        self.max_values = max_values
        self._files: OrderedDict[tuple[str, str], Curves] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._files.clear()

    def curves(self, run_dir: Path, name: str, *, final: bool) -> Curves | None:
        """The file's curves, brought up to date (within `READ_BYTES`); None when there is no such file."""
        opened = runfiles.open_file(run_dir, name)
        key = (str(run_dir), name)
        if opened is None:
            with self._lock:
                self._files.pop(key, None)
            return None
        fd, st = opened
        try:
            with self._lock:
                curves = self._files.get(key)
                stale = curves is None or curves.ino != st.st_ino or st.st_size < curves.size
                if curves is None or stale:
                    curves = Curves()
                changed = (curves.size, curves.mtime_ns) != (st.st_size, st.st_mtime_ns)
                more = curves.read_at < st.st_size or (final and bool(curves.pending))
                if changed or more:
                    curves.feed(fd, st.st_size, final=final, budget=READ_BYTES)
                    curves.ino, curves.size, curves.mtime_ns = st.st_ino, st.st_size, st.st_mtime_ns
                self._files[key] = curves
                self._files.move_to_end(key)
                self._evict()
                return curves
        except OSError:
            return None
        finally:
            os.close(fd)

    def _evict(self) -> None:
        total = sum(c.values for c in self._files.values())
        while total > self.max_values and len(self._files) > 1:
            _, dropped = self._files.popitem(last=False)
            total -= dropped.values


CACHE = CurveCache()


def window(curves: Curves, since: int) -> Window:
    """The points of `curves` whose lines start at or after byte `since`, as (x, y) per metric."""
    axis = curves.axis
    first = curves.first_after(since)
    series: dict[str, list[tuple[float, float]]] = {}
    for name, values in curves.series.items():
        begin = bisect_right(values.points, first - 1)
        out = []
        for i in range(begin, len(values.points)):
            x = curves.x_of(values.points[i], axis)
            if not math.isnan(x):
                out.append((x, values.values[i]))
        series[name] = out
    return Window(axis=axis, series=series, offset=curves.offset, points=curves.points - first)
