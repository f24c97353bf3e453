"""A test-suite diagnostic: who closed a file descriptor that another part of the process still owned.

A descriptor closed twice, the second time after another thread has opened something under the same number,
closes that thing: its owner fails later with EBADF (or writes into a stranger's file), far from the cause. Such a
failure is rare and cannot be reproduced at will, so it has to explain itself the first time it shows up. The
first one it explained: waitress's wake-up pipe, written to by `HttpServer.stop` after the loop thread had
already run stop's own closing task (fixed in `gitopsd/daemon/httpapi.py`).

`install` wraps the two Python-level ways of closing a descriptor, `os.close` and a socket's close, and notes for
each number the last close that succeeded: where (the innermost frames outside this module) and in which
thread. When a close, `os.read` or `os.write` then fails with EBADF, the note of the last close is attached to
the error (`add_note`, shown in its traceback) and issued as a `StaleCloseWarning`, which pytest lists in its
summary even where the failing code suppresses the error. Closes made in C are not seen, but a file object made
of a bare descriptor (`open(fd)`, `os.fdopen`), which closes it in C when it is closed or collected, is noted
where it was made (an audit hook on "open"), and named too. The cost is a dictionary store per close.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import sys
import threading
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["StaleCloseWarning", "install"]

#: The last successful close of each descriptor number: where and in which thread.
_closed: dict[int, str] = {}
#: The last file object made of each descriptor number (`open(fd)`, `os.fdopen`): where and in which thread.
_wrapped: dict[int, str] = {}


class StaleCloseWarning(UserWarning):
    """A close, read or write failed with EBADF: the descriptor had been closed, perhaps by code that did not
    own it."""


#: How many frames of a close are noted.
FRAMES = 4
#: Frames of these files are skipped: this module's own and the socket module's `close` around `_real_close`.
_SKIPPED = {__file__, socket.__file__}


def _caller() -> str:
    frame: FrameType | None = sys._getframe(2)
    places: list[str] = []
    while frame is not None and len(places) < FRAMES:
        if frame.f_code.co_filename not in _SKIPPED:
            places.append(f"{frame.f_code.co_filename}:{frame.f_lineno} ({frame.f_code.co_name})")
        frame = frame.f_back
    return " <- ".join(places) + f" in thread {threading.current_thread().name!r}"


def _explain(fd: int, exc: OSError, what: str) -> None:
    before = _closed.get(fd, "no close through os.close or a socket (a file object or C code closed it)")
    note = f"fd {fd} {what} by {_caller()}; it was last closed by {before}"
    alive = ", ".join(sorted(t.name for t in threading.enumerate()))
    note += f"; threads alive now: {alive}"
    if fd in _wrapped:
        note += f"; the last file object made of it (which closes it when closed or collected) came from {_wrapped[fd]}"
    exc.add_note(note)
    warnings.warn(note, StaleCloseWarning, stacklevel=3)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """A file object made of a bare descriptor closes it in C, where no wrapper sees it: note where it was made."""
    if event == "open" and isinstance(args[0], int):
        _wrapped[args[0]] = _caller()


def _watch_os_close(real: Callable[[int], None]) -> Callable[[int], None]:
    @functools.wraps(real)
    def close(fd: int) -> None:
        try:
            real(fd)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                _explain(fd, exc, "closed again")
            raise
        _closed[fd] = _caller()

    return close


def _watch_io(real: Callable[..., Any], what: str) -> Callable[..., Any]:
    @functools.wraps(real)
    def io(fd: int, *args: Any) -> Any:
        try:
            return real(fd, *args)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                _explain(fd, exc, what)
            raise

    return io


def _watch_socket_close(real: Callable[[socket.socket, Any], None]) -> Callable[..., None]:
    def _real_close(self: socket.socket, *args: Any) -> None:
        fd = self.fileno()
        try:
            real(self, *args)
        except OSError as exc:
            if exc.errno == errno.EBADF and fd >= 0:
                _explain(fd, exc, "closed again")
            raise
        if fd >= 0:
            _closed[fd] = _caller()

    return _real_close


def install() -> None:
    """Watch every Python-level close, read and write from now on (once per process)."""
    if hasattr(os.close, "__wrapped__"):
        return
    os.close = _watch_os_close(os.close)  # type: ignore[assignment]
    os.read = _watch_io(os.read, "read after it was closed")
    os.write = _watch_io(os.write, "written to after it was closed")
    sys.addaudithook(_audit)
    socket.socket._real_close = _watch_socket_close(socket.socket._real_close)  # type: ignore[attr-defined]
