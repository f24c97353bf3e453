"""The table every benchmark prints: name, measured, target, verdict; first column left, the rest right."""

from __future__ import annotations

import argparse
from pathlib import Path


def render(rows: list[tuple[str, str, str, str]]) -> str:
    rows = [("benchmark", "measured", "target", "result"), *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def command_options(parser: argparse.ArgumentParser, out: str) -> None:
    """The options of a benchmark that times the `gitopsd` command: which one, and where its JSON goes."""
    parser.add_argument("--gitopsd", help="the gitopsd command to time (default: the one beside this Python)")
    default = Path(__file__).resolve().parent / "out" / out
    parser.add_argument("--out", type=Path, default=default, help=f"where the JSON goes (default bench/out/{out})")
