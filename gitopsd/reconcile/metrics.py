"""Reading the metrics a training appends to its metrics file, one JSON object per line.

The reader is incremental (it remembers how far it got) and forgiving: a half-written last line is left for the
next read, non-numeric fields are ignored, and NaN/Infinity (which Python's json writes) count as numbers so that
divergence rules can see them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(kw_only=True)
class MetricsReader:
    path: Path
    offset: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def read(self, *, final: bool = False) -> list[dict[str, float]]:
        """Parse lines appended since the last call and return the whole history.

        With `final` (the job has ended), a last line without a newline counts too.
        """
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return self.history
        end = len(chunk) if final else chunk.rfind(b"\n") + 1
        for line in chunk[:end].splitlines():
            point = parse_line(line)
            if point:
                self.history.append(point)
        self.offset += end
        return self.history


def parse_line(line: bytes) -> dict[str, float]:
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    point: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                point[str(key)] = float(value)
            except OverflowError:
                continue
    return point


def read_all(path: Path) -> list[dict[str, float]]:
    """The whole history of a finished job's metrics file."""
    return MetricsReader(path=path).read(final=True)
