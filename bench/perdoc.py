"""The best time per text of a parser over many texts: the one timing loop of `bench/yamlalt.py`, which runs it
in gitopsd's interpreter and in the YAML libraries' own virtualenv alike (so it imports the standard library
only)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any


def best_us_per_text(parse: Callable[[str], Any], texts: Sequence[str], rounds: int) -> float:
    """Microseconds per text of the fastest of `rounds` passes of `parse` over `texts`, the collector off (what a
    load of ten thousand specs does too)."""
    best = float("inf")
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            for text in texts:
                parse(text)
            best = min(best, (time.perf_counter() - started) / len(texts) * 1e6)
    finally:
        if was_enabled:
            gc.enable()
    return best
