"""Reading a run directory for the dashboard: only inside the state directory's `runs/`, bounded, no link followed.

A run directory is the training's to write, and a run id reaches the dashboard in a URL. So a run is found by
its row in `state.db` first (an unknown id is simply absent); its directory is the one `state.db` records (the
daemon wrote it: `<state_dir>/runs/<run_id>`, or `<runs_dir>/<run_id>` on a Slurm backend's shared run root)
and must be a real directory named after the run, no link, where it is said to be once every symbolic link
above it is resolved; every file below it is opened one component at a time with no link followed and nothing
that blocks (`registry.beneath`), read up to a cap, and decoded with replacement.
Whatever is refused reads as absent: the dashboard shows nothing rather than something it should not.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitopsd.registry.beneath import OutputRefused, open_beneath

RUNS = "runs"
RECORD_LIMIT = 64 * 1024
"""Largest backend record (`slurm/segments.json`, `local/state.json`) read."""
MAX_LOG_FILES = 256
"""Most entries of a run's `logs/` looked at to find its newest log."""


def run_dir_of(state_dir: Path, run_id: str, recorded: str | None = None) -> Path | None:
    """The run's directory: the one `state.db` records (`recorded`) when given, else `<state_dir>/runs/<run_id>`;
    None unless it is a real directory (not a link) named `run_id` in the directory its path names."""
    if not run_id or run_id in {".", ".."} or "/" in run_id or "\0" in run_id or len(run_id) > 255:
        return None
    candidate = Path(recorded) if recorded else state_dir / RUNS / run_id
    if not candidate.is_absolute() or candidate.name != run_id:
        return None
    try:
        where = Path(os.path.realpath(candidate.parent))
        if Path(os.path.realpath(candidate)) != where / run_id or candidate.is_symlink() or not candidate.is_dir():
            return None
    except (OSError, ValueError):
        return None
    return candidate


def _open(run_dir: Path, rel: str) -> tuple[int, os.stat_result] | None:
    """A regular file below `run_dir`, opened with no link followed; None when absent or refused."""
    try:
        root = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd, st = open_beneath(root, rel, "run", directory=False)
    except (OSError, OutputRefused):
        return None
    finally:
        os.close(root)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def read_record(run_dir: Path, rel: str, limit: int = RECORD_LIMIT) -> dict[str, Any] | None:
    """The JSON object in `run_dir/rel`, or None when it is absent, refused, too large or not an object."""
    opened = _open(run_dir, rel)
    if opened is None:
        return None
    fd, st = opened
    try:
        if st.st_size > limit:
            return None
        raw = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def open_file(run_dir: Path, rel: str) -> tuple[int, os.stat_result] | None:
    """`_open` for callers that read the file themselves (the metrics file); they close the descriptor."""
    return _open(run_dir, rel)


@dataclass(frozen=True, kw_only=True)
class Tail:
    data: bytes
    truncated: bool
    name: str


def _log_files(run_dir: Path) -> list[tuple[str, int]]:
    """The regular files in `run_dir/logs` (no link followed, at most `MAX_LOG_FILES` looked at) and the time
    each was last written (ns); [] when there is no such directory or it is refused."""
    try:
        root = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        logs, _ = open_beneath(root, "logs", "run", directory=True)
    except (OSError, OutputRefused):
        return []
    finally:
        os.close(root)
    found: list[tuple[str, int]] = []
    try:
        with os.scandir(logs) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_LOG_FILES:
                    break
                if entry.is_file(follow_symlinks=False):
                    found.append((entry.name, entry.stat(follow_symlinks=False).st_mtime_ns))
    except OSError:
        return []
    finally:
        os.close(logs)
    return found


def newest_log(run_dir: Path) -> str | None:
    """The name of the most recently written regular file in `run_dir/logs` (the current segment's log)."""
    found = _log_files(run_dir)
    return max(found, key=lambda f: (f[1], f[0]))[0] if found else None


def log_names(run_dir: Path) -> list[str]:
    """The regular files in `run_dir/logs` (no link, at most `MAX_LOG_FILES` looked at), by name."""
    return sorted(name for name, _ in _log_files(run_dir))


def log_lines(fd: int, *, longest: int = 1 << 20) -> Iterator[str]:
    """The lines of the open log `fd`, decoded with replacement and read a chunk at a time: a training's log may
    be any size, so memory does not grow with it. A line longer than `longest` characters comes in pieces."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while chunk := os.read(fd, 1 << 20):
        pending += decoder.decode(chunk)
        *lines, pending = pending.split("\n")
        yield from lines
        while len(pending) > longest:
            yield pending[:longest]
            pending = pending[longest:]
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def tail(run_dir: Path, nbytes: int) -> Tail | None:
    """The last `nbytes` of the run's newest log; None when it has none. A cut first line is dropped, so a
    partial URL (whose credentials `redact` could no longer recognise) never starts the text."""
    name = newest_log(run_dir)
    if name is None:
        return None
    opened = _open(run_dir, f"logs/{name}")
    if opened is None:
        return None
    fd, st = opened
    try:
        start = max(0, st.st_size - nbytes)
        data = os.pread(fd, nbytes, start)
    except OSError:
        return None
    finally:
        os.close(fd)
    truncated = start > 0
    if truncated:
        newline = data.find(b"\n")
        data = data[newline + 1 :] if newline >= 0 else b""
    return Tail(data=data, truncated=truncated, name=name)
