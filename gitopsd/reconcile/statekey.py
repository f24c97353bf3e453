"""A state directory's MAC key (`speccache.key`, mode 0600): what signs the parse cache's entries and the
settled-pass record, so that only the directory's owner can make either.

It lives apart from `speccache` (which imports pydantic and PyYAML) because `quickpass` reads it before any
heavy import.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["KEY_FILE", "key", "state_key"]

log = logging.getLogger("gitopsd")

KEY_FILE = "speccache.key"


def state_key(state_dir: Path, *, create: bool) -> bytes | None:
    """The state directory's MAC key (`speccache.key`), made when `create`; None when there is none or it cannot
    be read. The settled-pass record (`reconcile/settled.py`) is signed with it too."""
    try:
        return key(state_dir / KEY_FILE, create=create)
    except OSError as exc:
        log.warning("key %s not usable: %s", state_dir / KEY_FILE, exc)
        return None


def key(path: Path, *, create: bool) -> bytes | None:
    """The MAC key of a state directory's cache; made (0600, atomically) when `create` and there is none, or
    when the one there was cut short by a crash (the entries it signed are then misses)."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    if len(key) == 32 or not create:
        return key if len(key) == 32 else None
    path.unlink(missing_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))  # what secrets.token_bytes reads; secrets costs an import
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)  # never replaces a key another process made meanwhile: both then use that one
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)
    key = path.read_bytes()
    return key if len(key) == 32 else None
