"""A run's outputs as hostile input: the limits an operator sets on them, and opening them safely.

Everything under `RUN_DIR/out` was written by the training, which may have tried to make gitopsd copy a file of
its host into the store (a symbolic link), hang a pass (a FIFO), or exhaust the daemon's memory or disk (a huge
file, a link to `/dev/zero`). The output directory and every path below it are opened with
`registry.beneath` (no link followed, only regular files and directories, no blocking open), and sizes are
checked against `OutputLimits` before anything is copied. What the run's outputs are called comes from
gitopsd's own records (`reconcile.snapshot`), never from a file the training could rewrite.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from gitopsd.registry.beneath import OutputRefused, open_beneath, open_child, refusal, walk_tree
from gitopsd.units import format_size

OUTPUT_DIR = "out"
SHOWN = "$GITOPSD_OUTPUT_DIR"
"""How messages name a run's output directory: as the training knows it."""

SETTING = "output_limits"
"""The operator setting that holds `OutputLimits`, as messages name it (`output_limits.metrics_bytes`)."""

KIB, MIB, GIB = 1024, 1024**2, 1024**3


@dataclass(frozen=True, kw_only=True)
class OutputLimits:
    """How much of a run's outputs gitopsd accepts; over a limit the run fails with a message naming it.

    The defaults are meant to be safe on a shared login node and generous for real trainings.
    """

    artifact_bytes: int = 100 * GIB
    """Largest artifact: a file's size, or the sum of the file sizes in a directory artifact."""
    artifact_files: int = 100_000
    """Most entries (files, directories, links) in a directory artifact."""
    metrics_bytes: int = 64 * MIB
    """Largest metrics file; a larger one fails the run, read or not."""
    metrics_line_bytes: int = 64 * KIB
    """Longest metrics line; a longer one is skipped (and logged), and never held in memory whole."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{SETTING}.{item.name} must be a whole number >= 1, got {value!r}")


def sized(size: int) -> str:
    """A byte count for messages: `3 MiB (3145728 bytes)`."""
    return f"{format_size(size)} ({size} bytes)"


def over_limit(shown: str, amount: str, limit: str, setting: str) -> OutputRefused:
    """The error for an output over a limit: the file, how big it is, the limit, and the setting to raise."""
    return OutputRefused(f"{shown} is {amount}, over the limit of {limit}; an operator can raise {SETTING}.{setting}")


def open_output_dir(run_dir: Path) -> int:
    """A descriptor of `run_dir/out`; the output directory itself must be a real directory, not a link.

    `run_dir` comes from the state database and is trusted; raises `FileNotFoundError` when there is no `out`.
    """
    root = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd, _ = open_child(root, OUTPUT_DIR, SHOWN, directory=True)
    finally:
        os.close(root)
    return fd


def open_output(run_dir: Path, rel: str) -> tuple[int, os.stat_result]:
    """Open `out/rel` of a run with no link followed; see `beneath.open_beneath`. The caller closes it."""
    out = open_output_dir(run_dir)
    try:
        return open_beneath(out, rel, SHOWN)
    finally:
        os.close(out)


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """A run's artifact, opened and checked: store it through `path`, which names the opened file itself."""

    fd: int
    shown: str
    is_dir: bool
    size: int
    """A file's size, or the sum of the file sizes in a directory."""

    @property
    def path(self) -> Path:
        """The open descriptor as a path (`/proc/self/fd/N`): whoever opens it gets exactly the checked inode,
        whatever happens to the name in the output directory meanwhile."""
        return Path(f"/proc/self/fd/{self.fd}")


def _directory_size(fd: int, shown: str, limits: OutputLimits) -> int:
    """The file bytes in a directory artifact, refusing what cannot be stored or is over a limit."""
    size = 0
    for entries, entry in enumerate(walk_tree(fd, shown), start=1):
        if entries > limits.artifact_files:
            amount = f"a directory of more than {limits.artifact_files} entries"
            raise over_limit(shown, amount, f"{limits.artifact_files} entries", "artifact_files")
        mode = entry.st.st_mode
        if stat.S_ISREG(mode):
            size += entry.st.st_size
            if size > limits.artifact_bytes:
                amount = f"a directory of at least {sized(size)} of files"
                raise over_limit(shown, amount, sized(limits.artifact_bytes), "artifact_bytes")
        elif not (stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            raise refusal(f"{shown}/{entry.rel}", entry.st)
    return size


@contextlib.contextmanager
def opened_artifact(run_dir: Path, rel: str, limits: OutputLimits) -> Iterator[Artifact | None]:
    """The run's artifact at `out/rel`, opened without following links and checked against `limits`.

    Yields None when there is none. Raises `OutputRefused` for a link anywhere on the way, a FIFO, socket or
    device (also inside a directory artifact), or an artifact over `artifact_bytes` / `artifact_files`.
    """
    shown = f"{SHOWN}/{rel}"
    try:
        fd, st = open_output(run_dir, rel)
    except FileNotFoundError:
        yield None
        return
    try:
        is_dir = stat.S_ISDIR(st.st_mode)
        size = _directory_size(fd, shown, limits) if is_dir else st.st_size
        if size > limits.artifact_bytes:
            raise over_limit(shown, sized(size), sized(limits.artifact_bytes), "artifact_bytes")
        yield Artifact(fd=fd, shown=shown, is_dir=is_dir, size=size)
    finally:
        os.close(fd)
