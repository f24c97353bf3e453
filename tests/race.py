"""Processes released at the same moment, for the tests of what several gitopsd processes do at once."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path


def race(
    target: Callable[..., None], path: Path, workers: int, *extra: object, spawn: bool = False, timeout: float = 60
) -> None:
    """Run `target(str(path), worker, *extra, start)` in `workers` processes (forked, or `spawn`ed afresh), each
    waiting on the event `start` until all are up, then released together; every one must exit 0."""
    ctx = multiprocessing.get_context("spawn") if spawn else multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=target, args=(str(path), w, *extra, start)) for w in range(workers)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=timeout)
    assert [p.exitcode for p in procs] == [0] * workers
