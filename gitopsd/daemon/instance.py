"""Which `gitopsd run` serves a state directory: one daemon per state directory, and a way to ask.

The daemon holds an exclusive flock on `STATE_DIR/daemon.lock` (which names its pid) for as long as it lives;
the kernel drops it when the process ends, however it ends, so a stale file never blocks a restart. A second
daemon on the same state directory is refused (two would reconcile the same repositories into the same
databases). `gitopsd status` probes the lock, never taking it, to say truthfully why a state directory has no
status yet: its daemon has not finished a pass, or nothing has reconciled it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "daemon.lock"


class InstanceLock:
    """The running daemon's hold on its state directory."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            from gitopsd.errors import PermanentError  # here: `gitopsd status` reads serving_daemon without it

            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise PermanentError(f"cannot lock {self.path}: {exc.strerror}") from None
            pid = _pid_in(self.path)
            raise PermanentError(
                f"state_dir {state_dir} is already served by gitopsd run{f' (pid {pid})' if pid else ''}: stop it "
                "first, or give this daemon another state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def serving_daemon(state_dir: Path) -> int | None:
    """The pid of the live daemon holding `state_dir`'s lock (0 when it cannot be read), None if none does."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return _pid_in(path) or 0
        return None
    finally:
        os.close(fd)
    return None


def _pid_in(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
