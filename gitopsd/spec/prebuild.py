"""A cold load of thousands of spec files uses a second core: a forked helper builds the plain values of a share of
them while this process loads the rest.

Reading a blob and building its plain document (`gitopsd.spec.yamlplain`) is about two thirds of loading a spec
file, and a fresh CI runner's `gitopsd plan` of 10,000 specs spends most of its time there, on one core of a
machine that has two or more. The helper is a `fork` of this process, so it starts in milliseconds with every
module imported and the repository open; it reads its share through the same `read` (the same blob ids, the
same size bounds already checked), runs the same `build_plain`, and hands back each document's values
(`marshal`: plain dicts, lists, strings, numbers, booleans and None, which is all a plain document holds) or None
for a file it leaves to this process. This process validates every model itself, so the helper can make a load
faster but never changes what a file means, which files are refused, or any error message: a document the
helper did not build (not plain, unreadable, or the helper failed, was killed or said something malformed) is
loaded here from its text exactly as without a helper.

It is used only where forking is safe and worth it: many files not yet parsed (`MIN_FILES`), at least two CPUs
this process may run on, and no other thread in it (the daemon has several, and a fork copies their locks
mid-use; the daemon loads a whole commit once, at its start). The helper writes nothing but its pipe, leaves
with `os._exit` (no buffered output of this process is flushed twice, no `atexit` runs), and is killed and
reaped if this process stops early.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

from gitopsd.spec.yamlplain import Plain, build_plain

__all__ = ["MIN_FILES", "Helper", "helper"]

log = logging.getLogger("gitopsd")

#: Fewer files not yet parsed than this are all loaded in this process: the fork, the hand-over and the second
#: validation pass would cost about what the helper saves.
MIN_FILES = 1000
#: The helper's share of the files (the last ones). This process also validates what the helper built, so a
#: larger share only left it waiting for the helper on the 2-core machine (0.6-0.75 were slower, 0.45-0.55 the
#: same within noise).
SHARE = 0.5


class Helper:
    """The files a forked helper builds (`paths`), and what it built (`results`, once this process has loaded its
    own share)."""

    def __init__(self, paths: Sequence[str], pid: int | None, pipe: int | None) -> None:
        self.paths = frozenset(paths)
        self.pid = pid  # kept after the helper is reaped
        self._order = tuple(paths)
        self._running = pid is not None
        self._pipe = pipe

    def results(self) -> Mapping[str, Plain | None]:
        """Each file's plain document as the helper built it (None: load it from its text); empty when the helper
        failed, which then leaves every one of its files to this process."""
        if not self._running or self._pipe is None:
            return {}
        chunks: list[bytes] = []
        try:
            while chunk := os.read(self._pipe, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(self._pipe)
            self._pipe = None
        assert self.pid is not None
        _, status = os.waitpid(self.pid, 0)
        self._running = False
        try:
            built = marshal.loads(b"".join(chunks)) if os.waitstatus_to_exitcode(status) == 0 else None
        except (EOFError, ValueError, TypeError):
            built = None
        if not isinstance(built, list) or len(built) != len(self._order):
            log.debug("spec prebuild helper failed (exit status %s): loading its files here", status)
            return {}
        out: dict[str, Plain | None] = {}
        for path, item in zip(self._order, built, strict=True):
            good = isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bool)
            out[path] = Plain(item[0], item[1]) if good else None
        return out

    def close(self) -> None:
        """Stop the helper if it is still running (this process stopped early), and reap it."""
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if self._running and self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self._running = False


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worth_it(count: int) -> bool:
    """Whether `count` files are loaded faster with a helper, and forking is safe here now."""
    return count >= MIN_FILES and hasattr(os, "fork") and threading.active_count() == 1 and _cpus() >= 2


@contextlib.contextmanager
def helper(paths: Sequence[str], read: Callable[[str], str]) -> Iterator[Helper]:
    """A helper building the plain documents of a share of `paths` (the last ones), each read with `read`; one
    that builds nothing where `worth_it` says no, or where the fork fails."""
    if not worth_it(len(paths)):
        yield Helper((), None, None)
        return
    share = list(paths[len(paths) - int(len(paths) * SHARE) :])
    into, out = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(into)
        os.close(out)
        log.debug("spec prebuild helper not started: %s", exc)
        yield Helper((), None, None)
        return
    if pid == 0:  # pragma: no cover - the helper: coverage does not follow a fork
        code = 1
        try:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a signal ends the helper, never runs
                signal.signal(signum, signal.SIG_DFL)  # a handler of this process in it
            os.close(into)
            _build(share, read, out)
            code = 0
        finally:
            os._exit(code)
    os.close(out)
    started = Helper(share, pid, into)
    try:
        yield started
    finally:
        started.close()


def _build(paths: Sequence[str], read: Callable[[str], str], out: int) -> None:  # pragma: no cover - the helper
    """The helper's work: each file's plain document as (value, suspect), or None, written to `out` at once."""
    built: list[tuple[object, bool] | None] = []
    for path in paths:
        try:
            plain = build_plain(read(path))
        except Exception:  # unreadable, not UTF-8: this process reads it again and says why
            plain = None
        built.append(None if plain is None else (plain.value, plain.suspect))
    data = memoryview(marshal.dumps(built))
    while data:
        data = data[os.write(out, data) :]
