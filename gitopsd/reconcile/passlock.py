"""One applying pass at a time in a state directory, whichever process runs it.

A pass reads what is in flight and what is registered, plans, and then acts on what it read. Two passes at once
in one state directory (the daemon's, woken by a push, and a `gitopsd reconcile --once` typed right after that
push; or two cron jobs) would both find no run for a new run key and both submit one: the training ran twice
and registered two versions of one run key. So every applying pass holds an exclusive `flock` on
`STATE_DIR/pass.lock` from its fetch to its last write. The kernel drops the lock when its process ends,
however it ends, so a crash never leaves a stale one. A dry run (`gitopsd plan`) takes none: it works on a
scratch copy of the databases and writes nothing here.

The holder writes its pid and role into the file, only so that whoever waits can say for whom. What a waiter
does is its own choice: a command waits, says so once (`wait`) and gives up at its deadline (`until`); the
daemon's worker does not block its thread on another process's pass, it is told (`PassBusy`) and tries again
a moment later.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gitopsd.errors import PermanentError, TransientError

LOCK_NAME = "pass.lock"
ROLES = ("daemon", "reconcile")
_POLL_S = (0.02, 0.5)  # a waiter's first and longest pause between tries


class PassBusy(TransientError):
    """Another process is in the middle of a pass in this state directory."""

    def __init__(self, holder: str, *, waited_s: float | None = None) -> None:
        tail = f"; gave up waiting for it after {waited_s:.0f} s" if waited_s is not None else ""
        super().__init__(f"a pass of {holder} is in progress in this state directory{tail}")
        self.holder = holder


class PassLock:
    """The lock on one state directory's passes, for a process in `role` (one of `ROLES`)."""

    def __init__(self, state_dir: Path, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        self.path = state_dir / LOCK_NAME
        self.role = role

    @contextmanager
    def held(self, wait: Callable[[str], None] | None = None, until: float | None = None) -> Iterator[None]:
        """Hold the lock for the block. When another process holds it: without `wait`, raise PassBusy; with it,
        call `wait(holder)` once and block until the lock is free (polling, so a signal still interrupts), or
        until `time.monotonic()` reaches `until`, then raise PassBusy."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise PermanentError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            pause, told, since = _POLL_S[0], False, time.monotonic()
            while not _try_lock(fd, self.path):
                if wait is None or (until is not None and time.monotonic() >= until):
                    raise PassBusy(holder_of(self.path), waited_s=None if wait is None else time.monotonic() - since)
                if not told:
                    wait(holder_of(self.path))
                    told = True
                time.sleep(pause if until is None else max(0.0, min(pause, until - time.monotonic())))
                pause = min(pause * 2, _POLL_S[1])
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {self.role}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # and with it the lock


def _try_lock(fd: int, path: Path) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise PermanentError(
            f"cannot lock {path}: {exc.strerror}; the state directory must be on a filesystem that supports flock "
            "(a local disk, NFS, or Lustre mounted with -o flock or -o localflock)"
        ) from None
    return True


def holder_of(path: Path) -> str:
    """Who holds the lock at `path`, as its file says ("pid 123 (gitopsd run)"); "another process" when the
    file says nothing readable. Only digits and a known role are ever shown."""
    try:
        with open(path, "rb") as file:
            words = file.read(64).split()
    except OSError:
        words = []
    pid = words[0].decode() if words and words[0].isdigit() else ""
    role = words[1].decode() if len(words) > 1 and words[1].decode(errors="replace") in ROLES else ""
    if not pid:
        return "another process"
    command = {"daemon": "gitopsd run", "reconcile": "gitopsd reconcile"}.get(role, "gitopsd")
    return f"pid {pid} ({command})"
