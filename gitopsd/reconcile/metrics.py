"""Reading the metrics a training appends to its metrics file, one JSON object per line.

The reader is incremental (it remembers how far it got) and forgiving: a half-written last line is left for the
next read, non-numeric fields are ignored, and NaN/Infinity (which Python's json writes) count as numbers so that
divergence rules can see them.

The file is the training's, so it is also read as hostile input. It is opened with `reconcile.outputs` (no
symbolic link followed, a FIFO or device refused instead of blocking or never ending) and refused whole when it
is over `OutputLimits.metrics_bytes`. It is read in chunks and handed on one point at a time, so memory does
not grow with the file: a line over `metrics_line_bytes` is dropped as it streams past (it is never held
whole), a line nested deeper than `MAX_DEPTH` is skipped before `json.loads` could recurse on it, and only the
last value of at most `MAX_NAMES` metrics is kept (`merge_latest`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gitopsd.reconcile.outputs import SETTING, SHOWN, OutputLimits, open_output, over_limit, sized
from gitopsd.registry.beneath import OutputRefused
from gitopsd.spec.text import forbidden_char

log = logging.getLogger("gitopsd")

CHUNK = 1 << 20
"""Bytes read at a time."""

MAX_DEPTH = 64
"""Deepest bracket nesting of a line that is parsed at all; a metrics line is flat, so this is generous."""

MAX_NAMES = 1024
"""Most distinct metrics kept per run; later new names are ignored."""

MAX_NAME_LENGTH = 256
"""Longest metric name kept; a longer one, or one with a control character (an escape sequence would reach an
operator's terminal through `registry list`), is ignored like a non-numeric field."""
"""Longest metric name kept; longer keys are ignored."""

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def too_deep(line: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON in `line` nests brackets deeper than `limit` (brackets inside strings do not count).

    Cheap for ordinary lines (two counts); only a line with many brackets is scanned.
    """
    if line.count(b"[") + line.count(b"{") <= limit:
        return False
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub(b"", line)):
        depth += 1 if match.group() in {b"[", b"{"} else -1
        if depth > limit:
            return True
    return False


def parse_line(line: bytes) -> dict[str, float]:
    """The numeric fields of one metrics line; {} for anything that is not a JSON object (or is too deep)."""
    return {} if too_deep(line) else _numbers(line)


def _numbers(line: bytes) -> dict[str, float]:
    """`parse_line` for a line already known not to be too deep."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    point: dict[str, float] = {}
    for key, value in data.items():
        if (isinstance(value, int | float) and not isinstance(value, bool) and len(key) <= MAX_NAME_LENGTH
                and ((key.isascii() and key.isprintable()) or forbidden_char(key) is None)):  # fmt: skip
            try:
                point[str(key)] = float(value)
            except OverflowError:
                continue
    return point


def merge_latest(latest: dict[str, float], point: Mapping[str, float]) -> None:
    """Fold `point` into the last value of each metric, keeping at most `MAX_NAMES` names."""
    for key, value in point.items():
        if key in latest or len(latest) < MAX_NAMES:
            latest[key] = value


@dataclass(kw_only=True)
class MetricsReader:
    """Follows one run's metrics file, `RUN_DIR/out/NAME`, across passes."""

    run_dir: Path
    name: str
    limits: OutputLimits = field(default_factory=OutputLimits)
    offset: int = 0
    """Where the first line not yet handed on starts."""
    lines: int = 0
    """Complete lines seen so far, handed on or skipped."""
    skipped: int = 0
    """Lines skipped for being longer than `limits.metrics_line_bytes` or nested deeper than `MAX_DEPTH`."""
    _dropping: bool = field(default=False, repr=False)

    @property
    def shown(self) -> str:
        return f"{SHOWN}/{self.name}"

    def read(self, *, final: bool = False) -> Iterator[dict[str, float]]:
        """The points in lines appended since the last call, one at a time; a missing file has none.

        With `final` (the job has ended), a last line without a newline counts too. Raises `OutputRefused`
        when the file is a link, not a regular file, or over `limits.metrics_bytes`.
        """
        try:
            fd, st = open_output(self.run_dir, self.name)
        except FileNotFoundError:
            return
        try:
            if not stat.S_ISREG(st.st_mode):
                raise OutputRefused(f"{self.shown} is a directory, not a metrics file")
            if st.st_size > self.limits.metrics_bytes:
                raise over_limit(self.shown, sized(st.st_size), sized(self.limits.metrics_bytes), "metrics_bytes")
            yield from self._lines(fd, st.st_size, final=final)
        finally:
            os.close(fd)

    def _lines(self, fd: int, size: int, *, final: bool) -> Iterator[dict[str, float]]:
        """Points from the bytes between `offset` and `size`, at most one chunk and one line held at a time."""
        pos = self.offset
        pending = b""  # the start of a line whose newline has not been read yet (never over the line limit)
        while pos < size:
            chunk = os.pread(fd, min(CHUNK, size - pos), pos)
            if not chunk:
                break
            base, pos = pos, pos + len(chunk)
            start = 0
            while (newline := chunk.find(b"\n", start)) >= 0:
                line, pending = pending + chunk[start:newline], b""
                start = newline + 1
                self.lines += 1
                point = self._point(line)
                self.offset = base + start
                if point:
                    yield point
            pending += chunk[start:]
            if self._dropping or len(pending) > self.limits.metrics_line_bytes:
                self._drop()
                pending = b""
                self.offset = pos
        if final and pending:
            self.lines += 1
            point = self._point(pending)
            self.offset = pos
            if point:
                yield point

    def _point(self, line: bytes) -> dict[str, float]:
        if self._dropping:  # the end of a line already dropped for its length
            self._dropping = False
            return {}
        if len(line) > self.limits.metrics_line_bytes:
            self._skip(self.lines, self._too_long)
            return {}
        if too_deep(line):
            self._skip(self.lines, f"it is nested more than {MAX_DEPTH} brackets deep")
            return {}
        return _numbers(line)

    @property
    def _too_long(self) -> str:
        limit = self.limits.metrics_line_bytes
        return f"it is longer than the limit of {sized(limit)} ({SETTING}.metrics_line_bytes)"

    def _drop(self) -> None:
        """Start (or go on) dropping a line over the length limit whose end has not been read yet."""
        if not self._dropping:
            self._dropping = True
            self._skip(self.lines + 1, self._too_long)

    def _skip(self, number: int, why: str) -> None:
        self.skipped += 1
        if self.skipped == 1:  # once per run: a training that writes such lines would flood the log
            log.warning("%s: metrics line %d skipped: %s; further skipped lines are counted, not logged",
                        self.shown, number, why)  # fmt: skip


def latest_metrics(reader: MetricsReader, *, final: bool = False) -> dict[str, float]:
    """The last value of every metric in what `reader` has not read yet (for a fresh reader: the whole file)."""
    merged: dict[str, float] = {}
    for point in reader.read(final=final):
        merge_latest(merged, point)
    return merged
