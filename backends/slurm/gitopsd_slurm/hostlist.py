"""Slurm's compressed host lists (`node[1-3,07],gpu-a`) expanded into node names, for lineage.

A job's `SLURM_JOB_NODELIST` (recorded by its wrapper) and the controller's `nodes` field are compressed; an
auditor wants the names. Pure and bounded: a list that would name more than MAX_HOSTS nodes, or is not a host
list at all, is returned as it was written (one entry), never expanded without limit.
"""

from __future__ import annotations

import re

MAX_HOSTS = 100_000
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _expand_one(host: str, budget: int) -> list[str]:
    match = re.fullmatch(r"([^\[\]]*)\[([^\[\]]+)\](.*)", host)
    if match is None:
        if "[" in host or "]" in host:
            raise ValueError(host)
        return [host]
    prefix, ranges, rest = match.groups()
    numbers: list[str] = []
    for item in ranges.split(","):
        found = _RANGE.fullmatch(item)
        if found is None:
            raise ValueError(host)
        low, high = found[1], found[2] or found[1]
        if int(high) < int(low) or int(high) - int(low) + len(numbers) >= budget:
            raise ValueError(host)
        width = len(low) if low.startswith("0") else 0
        numbers += [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    out: list[str] = []
    tails = _expand_one(rest, budget) if rest else [""]
    for number in numbers:
        for tail in tails:
            out.append(prefix + number + tail)
            if len(out) > budget:
                raise ValueError(host)
    return out


def expand(nodelist: str) -> list[str]:
    """The node names of a Slurm host list, in order; `[nodelist]` when it cannot be expanded safely."""
    text = nodelist.strip()
    if not text:
        return []
    try:
        names: list[str] = []
        for part in _split_top(text):
            if part:
                names += _expand_one(part, MAX_HOSTS - len(names))
        return names
    except ValueError:
        return [text]
