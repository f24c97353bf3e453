"""Python's cyclic garbage collector paused around work that makes many objects and no reference cycles.

A 10,000-spec load, a plan of ten thousand models: the collector would scan the growing young heap again and
again (a gen-1 collection of a settled plan's entries costs about a millisecond, and there are a dozen), while
reference counting frees their garbage as usual. Kept apart from `desired`, which imports pydantic and PyYAML,
so that a settled `gitopsd plan`, which loads no spec, pauses it too.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["collector_paused"]


@contextlib.contextmanager
def collector_paused(*, freeze: bool = False) -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (a commit's load, a plan). A load makes tens of
    thousands of objects that live on (the models) and no reference cycles; the collector would scan the growing
    heap again and again, about a third of a 10,000-spec load. Its garbage is freed by reference counting as
    usual meanwhile.

    Objects made while the collector is off are still its youngest, and the first collection after it resumes
    scans every one of them (about 90 ms after a 10,000-spec load). With `freeze`, what is alive when the work
    succeeds is moved to the collector's permanent generation first (`gc.freeze`): for state that lives as long
    as the process, which no collection then scans again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze:
            gc.freeze()
    finally:
        if enabled:
            gc.enable()
