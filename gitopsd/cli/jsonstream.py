"""Listings written as they are read: a JSON array element by element, and text line by line.

`--json` output follows one rule across the command line (`status`, `doctor`, `registry list`, `history`,
`usage`): indented for a person on a terminal, one line per element when piped (what `gh` does; `jq .` indents
it again). A listing's array is written as its elements come, so nothing holds the whole listing:

    [
    {"model": "iris", "version": 1, ...},
    {"model": "iris", "version": 2, ...}
    ]

and on a terminal, with `indent`, exactly the bytes `json.dumps(elements, indent=indent)` gives. A reader that
goes away early (`| head`) ends the command quietly: `gitopsd.cli.main` turns the broken pipe into exit status 1
without a message, as it did before listings streamed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from gitopsd.cli.console import plain


def indent_for(out: TextIO) -> int | None:
    """2 on a terminal, None (one line per element) otherwise."""
    return 2 if out.isatty() else None


def write_array(elements: Iterable[str], out: TextIO, *, indent: int | None = None) -> int:
    """Write the JSON array of `elements` (each one's JSON text, indented by `indent` if given) to `out` as they
    come, then a newline; return how many were written."""
    pad = " " * indent if indent else ""
    count = 0
    for text in elements:
        out.write(("[\n" if count == 0 else ",\n") + pad + (text.replace("\n", "\n" + pad) if pad else text))
        count += 1
    out.write("\n]\n" if count else "[]\n")
    return count


def write_lines(lines: Iterable[str], out: TextIO) -> None:
    """Write each line as `console.echo` would (escape sequences removed when `out` is not a terminal), without a
    flush per line."""
    strip = not out.isatty()
    for line in lines:
        out.write((plain(line) if strip else line) + "\n")


def stdout() -> TextIO:
    """Where `console.echo` writes."""
    return sys.stdout
