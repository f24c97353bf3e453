"""A cold load of thousands of spec files uses a second core: a forked helper builds the plain values of the files
from the last one backwards while this process loads them from the first one on, until the two meet.

Reading a blob and building its plain document (`gitopsd.spec.yamlplain`) is about two thirds of loading a spec
file, and a fresh CI runner's `gitopsd plan` of 10,000 specs spends most of its time there, on one core of a
machine that has two or more. The helper is a `fork` of this process, so it starts in milliseconds with every
module imported and the repository open; it reads its files through the same `read` (the same blob ids, the
same size bounds), runs the same `build_plain`, and hands back each document's values (`marshal`: plain dicts,
lists, strings, numbers, booleans and None, which is all a plain document holds) or None for a file it leaves
to this process. This process validates every model itself, so the helper can make a load faster but never
changes what a file means, which files are refused, or any error message: a document the helper did not build
(not plain, unreadable, or the helper failed, was killed or said something malformed) is loaded here from its
text exactly as without a helper.

Neither side is given a fixed share. Each says in a page of memory they share how far it has got (this process
the files it has taken from the front, the helper the first one it has taken from the back), and each stops at
the other: whichever core is faster, busier or started first, the two finish together. A command can even start
the helper before it imports its own heavy modules (`offer`, from `gitopsd plan`), so that the helper has built
a good part of the files by the time this process is ready to load any. Both may take the one file where they
meet; this process then keeps its own. Nothing depends on either reading the other's count whole: a torn or
stale count only makes one of them stop early or build a file twice, and every file not built by the helper is
loaded here.

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
import mmap
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gitopsd.spec.yamlplain import Plain

__all__ = ["MAX_NODES", "MIN_FILES", "Helper", "helper", "offer", "start", "worth_it"]

log = logging.getLogger("gitopsd")

#: Fewer files not yet parsed than this are all loaded in this process: the fork, the hand-over and the second
#: validation pass would cost about what the helper saves.
MIN_FILES = 1000

#: The most nodes the helper holds in the documents it has built before it stops taking files. Every one of them
#: waits in its memory until the two meet, while this process builds, validates and drops one document at a
#: time; so a hostile commit of files within every bound but of 85,000 nodes each (a list of short strings)
#: made the helper's memory grow with each file: 60 of them, 401 MiB at its peak, against 178 MiB with this
#: budget (it took 24 of them). A real spec file has 30 to 100 nodes, so a real commit never comes near it.
MAX_NODES = 2_000_000

#: The two counts in the shared page: files this process has taken from the front, and the index of the first
#: file the helper has taken from the back (the number of files while it has taken none).
_TAKEN, _HELPER_FROM = 0, 1


class Helper:
    """A forked helper building the plain documents of `order` from the last one backwards (`pid` None: no helper,
    this process loads every file).

    `mine` yields the files this process is to load itself, from the first on, until it reaches those the
    helper has taken; `results` then gives the helper's documents for the rest."""

    def __init__(
        self, order: Sequence[str], pid: int | None, pipe: int | None, counts: memoryview | None = None
    ) -> None:
        self.order = tuple(order)
        self.pid = pid  # kept after the helper is reaped
        self._running = pid is not None
        self._pipe = pipe
        self._counts = counts
        self.taken = 0  # files this process took (the first ones)

    def mine(self) -> Iterator[str]:
        """The files this process loads itself, in order: all of them without a helper, else those before the
        first one the helper has taken (should the helper then fail, `results` is empty and the caller loads the
        rest from their text). Each is claimed before it is yielded."""
        counts = self._counts
        for index, path in enumerate(self.order):
            if counts is not None:
                if index >= counts[_HELPER_FROM]:
                    return
                counts[_TAKEN] = index + 1
            self.taken = index + 1
            yield path

    def results(self) -> Mapping[str, Plain | None]:
        """The helper's document of each file after those this process took (None: load it from its text); empty
        without a helper, or when it failed, which then leaves every one of those files to this process."""
        if not self._running or self._pipe is None:
            return {}
        from gitopsd.spec.yamlplain import Plain  # imported by the time a load asks (`offer` forks before it)

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
        count = len(self.order)
        said = _said(b"".join(chunks), count) if os.waitstatus_to_exitcode(status) == 0 else None
        if said is None:
            log.debug("spec prebuild helper failed (exit status %s): loading its files here", status)
            return {}
        first, built = said
        log.debug("spec prebuild helper built %d of %d files; this process loaded %d", count - first, count, self.taken)
        out: dict[str, Plain | None] = dict.fromkeys(self.order[self.taken : first])  # none reached (if any)
        for index, item in enumerate(built, start=first):
            if index >= self.taken:  # where the two met, this process loaded the file itself
                good = isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bool)
                out[self.order[index]] = Plain(item[0], item[1]) if good else None
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


def _said(data: bytes, count: int) -> tuple[int, list[Any]] | None:
    """What a helper of `count` files said (the first file it built, and its documents from there on), or None
    when that is not what it wrote."""
    try:
        said = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        return None
    if not (isinstance(said, tuple) and len(said) == 2 and isinstance(said[0], int) and isinstance(said[1], list)):
        return None
    first, built = said
    return (first, built) if 0 <= first <= count and len(built) == count - first else None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worth_it(count: int) -> bool:
    """Whether `count` files are loaded faster with a helper, and forking is safe here now."""
    return count >= MIN_FILES and hasattr(os, "fork") and threading.active_count() == 1 and _cpus() >= 2


def start(paths: Sequence[str], read: Callable[[str], str]) -> Helper:
    """A helper building the plain documents of `paths`, each read with `read`, from the last one backwards; one
    that builds nothing where `worth_it` says no, or where the fork fails."""
    if not worth_it(len(paths)):
        return Helper(paths, None, None)
    page = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous and shared: the helper sees this process's count, and back
    counts = memoryview(page).cast("q")
    counts[_TAKEN], counts[_HELPER_FROM] = 0, len(paths)
    into, out = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(into)
        os.close(out)
        log.debug("spec prebuild helper not started: %s", exc)
        return Helper(paths, None, None)
    if pid == 0:  # pragma: no cover - the helper: coverage does not follow a fork
        code = 1
        try:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a signal ends the helper, never runs
                signal.signal(signum, signal.SIG_DFL)  # a handler of this process in it
            os.close(into)
            _build(paths, read, out, counts)
            code = 0
        finally:
            os._exit(code)
    os.close(out)
    return Helper(paths, pid, into, counts)


#: The helper a command started before it knew it would load anything, and the blob of each of its files (one at
#: most, taken by the first load that asks for a helper).
_offered: list[tuple[Helper, Mapping[str, str]]] = []


@contextlib.contextmanager
def offer(started: Helper, blobs: Mapping[str, str]) -> Iterator[None]:
    """Offer `started`, at work on the files of `blobs` (path -> blob id), to the next load of exactly those
    blobs (`helper`) within this block; stop and reap it at its end, taken or not."""
    _offered[:] = [(started, blobs)]
    try:
        yield
    finally:
        _offered.clear()
        started.close()


@contextlib.contextmanager
def helper(
    paths: Sequence[str], read: Callable[[str], str], blobs: Mapping[str, str] | None = None
) -> Iterator[Helper]:
    """A helper for loading `paths`: the one offered, when it works on exactly these files and `blobs`, else a
    new one (`start`); stopped and reaped at the end of the block."""
    if _offered:
        offered, ready_for = _offered.pop()
        if offered.order == tuple(paths) and blobs is not None and ready_for.items() <= blobs.items():
            log.debug("spec prebuild: the load takes over the helper started before it (pid %s)", offered.pid)
            yield offered  # `offer` reaps it
            return
        offered.close()
    started = start(paths, read)
    try:
        yield started
    finally:
        started.close()


def _build(paths: Sequence[str], read: Callable[[str], str], out: int, counts: memoryview) -> None:  # pragma: no cover
    """The helper's work: the plain document of each file, as (value, suspect) or None, from the last file
    backwards until it reaches those this process took (or holds `MAX_NODES`: this process loads the rest); then
    (first file built, documents in order) to `out`."""
    from gitopsd.spec.yamlplain import build_plain  # here: a helper offered early need not wait for PyYAML

    built: list[tuple[object, bool] | None] = []
    first, nodes = len(paths), 0
    while first > 0 and first - 1 >= counts[_TAKEN] and nodes <= MAX_NODES:
        first -= 1
        counts[_HELPER_FROM] = first
        try:
            plain = build_plain(read(paths[first]))
        except Exception:  # unreadable, not UTF-8: this process reads it again and says why
            plain = None
        built.append(None if plain is None else (plain.value, plain.suspect))
        nodes += plain.nodes if plain is not None else 0
    built.reverse()
    data = memoryview(marshal.dumps((first, built)))
    while data:
        data = data[os.write(out, data) :]
