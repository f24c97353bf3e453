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

    def read(self) -> list[dict[str, float]]:
        """Parse lines appended since the last call and return the whole history."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return self.history
        end = chunk.rfind(b"\n") + 1
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
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def read_all(path: Path) -> list[dict[str, float]]:
    return MetricsReader(path=path).read()
