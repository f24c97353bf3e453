"""Opening what a training wrote: beneath one directory, with no symbolic link followed and nothing that blocks.

A training controls every name under its output directory. It may plant a symbolic link to a file of the
daemon's host (an operator's credentials, which the store would then copy and register), a FIFO that blocks
its reader forever, or a link to `/dev/zero`, which never ends. So every path under such a directory is opened
one component at a time relative to its parent's descriptor (`openat`), with `O_NOFOLLOW` and `O_NONBLOCK`,
and accepted only when `fstat` says it is a regular file or a directory and the same inode `lstat` saw a moment
before: a name swapped for a link between the two is refused as well. Trees are walked the same way, holding
one descriptor per level, in the sorted order the tar packer needs, so no name is ever resolved from the root
twice and nothing depends on the current directory. Linux and other POSIX systems with `openat`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from gitopsd.errors import PermanentError

MAX_TREE_DEPTH = 128
"""Deepest directory nesting walked (one open descriptor per level); deeper trees are refused."""

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = _FILE_FLAGS | os.O_DIRECTORY
_REFUSED_ON_OPEN = {errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EOPNOTSUPP, errno.ENODEV}


class OutputRefused(PermanentError):
    """A path under a training's directory that gitopsd will not read; the message names it and says why."""


def describe_mode(mode: int) -> str:
    """What kind of file `mode` (from lstat) is, as a person would say it."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    for test, name in kinds:
        if test(mode):
            return name
    return f"a file of mode {stat.filemode(mode)}"


def refusal(shown: str, st: os.stat_result, *, link: str | None = None) -> OutputRefused:
    """The error for `shown`, which is neither a regular file nor a directory."""
    if stat.S_ISLNK(st.st_mode):
        target = f" (to {link[:200]!r})" if link is not None else ""
        return OutputRefused(
            f"{shown} is a symbolic link{target}: gitopsd follows no symbolic link in a run's outputs; "
            "write the file itself there"
        )
    return OutputRefused(
        f"{shown} is {describe_mode(st.st_mode)}: only regular files and directories are read from a run's outputs"
    )


def _readlink(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None


def open_child(dir_fd: int, name: str, shown: str, *, directory: bool | None = None) -> tuple[int, os.stat_result]:
    """Open `name` in the directory `dir_fd` without following a link; return its descriptor and fstat.

    Only a regular file or a directory is opened (with `directory`, only that one kind); anything else, or an
    entry replaced between lstat and open, raises `OutputRefused` naming `shown`. A missing name raises
    `FileNotFoundError`. The caller closes the descriptor.
    """
    if not name or name in {".", ".."} or "/" in name:
        raise OutputRefused(f"{shown}: {name!r} is not a plain name inside its directory")
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    is_dir = stat.S_ISDIR(st.st_mode)
    if not (is_dir or stat.S_ISREG(st.st_mode)):
        raise refusal(shown, st, link=_readlink(name, dir_fd) if stat.S_ISLNK(st.st_mode) else None)
    if directory is not None and is_dir != directory:
        want = "a directory" if directory else "a regular file"
        raise OutputRefused(f"{shown} is {describe_mode(st.st_mode)}, not {want}")
    try:
        fd = os.open(name, _DIR_FLAGS if is_dir else _FILE_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        raise OutputRefused(f"{shown} cannot be read: permission denied") from None
    except OSError as exc:
        if exc.errno in _REFUSED_ON_OPEN:
            raise OutputRefused(f"{shown} was replaced while it was being opened; it is not read") from None
        raise
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino, stat.S_IFMT(opened.st_mode)) != (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)):
        os.close(fd)
        raise OutputRefused(f"{shown} was replaced while it was being opened; it is not read")
    return fd, opened


def split_relative(rel: str, shown: str) -> list[str]:
    """The components of a relative path below a directory; absolute paths, `.` and `..` are refused."""
    parts = rel.split("/")
    if rel.startswith("/") or any(part in {"", ".", ".."} for part in parts):
        raise OutputRefused(f"{shown}/{rel}: the path must be relative and inside the directory, without '.' or '..'")
    return parts


def open_beneath(root_fd: int, rel: str, shown: str, *, directory: bool | None = None) -> tuple[int, os.stat_result]:
    """Open `rel` below the directory `root_fd`, following no link on the way; see `open_child`.

    `shown` names the root in messages (e.g. `$GITOPSD_OUTPUT_DIR`); every component below it must be a real
    directory, the last one a regular file or a directory.
    """
    parts = split_relative(rel, shown)
    fd = os.dup(root_fd)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            where = "/".join([shown, *parts[: index + 1]])
            child, st = open_child(fd, part, where, directory=directory if last else True)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, st


@dataclass(frozen=True, kw_only=True)
class TreeEntry:
    """One name in a walked tree: its path relative to the root, lstat, and (for a link) its target.

    `dir_fd` is the open directory that holds it, valid only until the walk moves on.
    """

    rel: str
    name: str
    dir_fd: int
    st: os.stat_result
    link: str | None = None


@dataclass
class _Frame:
    fd: int
    rel: str
    items: list[tuple[str, str, bool]] = field(default_factory=list)  # (sort key, name, subtree), descending


def _listing(fd: int) -> list[tuple[str, str, bool]]:
    """A directory's names as sort keys: each entry by its name, a subdirectory's contents by `name/`.

    Sorting these keys at every level gives exactly the order of sorting the full relative paths, so the
    walk never has to hold more than one directory listing per level.
    """
    items: list[tuple[str, str, bool]] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            items.append((entry.name, entry.name, False))
            if entry.is_dir(follow_symlinks=False):
                items.append((entry.name + "/", entry.name, True))
    items.sort(reverse=True)
    return items


def walk_tree(root_fd: int, shown: str, *, max_depth: int = MAX_TREE_DEPTH) -> Iterator[TreeEntry]:
    """Every entry below the directory `root_fd` (not the root itself), sorted by relative POSIX path.

    No link is followed: a symbolic link is an entry with its target in `link`. Subdirectories are opened with
    `open_child`, so one swapped for a link while the walk runs is refused. Entries of other kinds (FIFOs,
    sockets, devices) are yielded too; the caller decides what to refuse.
    """
    frames = [_Frame(fd=os.dup(root_fd), rel="")]
    try:
        frames[0].items = _listing(frames[0].fd)
        while frames:
            frame = frames[-1]
            if not frame.items:
                os.close(frame.fd)
                frames.pop()
                continue
            _, name, subtree = frame.items.pop()
            rel = frame.rel + name
            if subtree:
                if len(frames) > max_depth:
                    raise OutputRefused(
                        f"{shown}/{rel} is nested more than {max_depth} directories deep; gitopsd walks no deeper"
                    )
                try:
                    fd, _ = open_child(frame.fd, name, f"{shown}/{rel}", directory=True)
                except FileNotFoundError:
                    continue  # removed since the listing
                frames.append(_Frame(fd=fd, rel=rel + "/"))
                frames[-1].items = _listing(fd)
                continue
            try:
                st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the listing: it is not part of the tree any more
            link = _readlink(name, frame.fd) if stat.S_ISLNK(st.st_mode) else None
            yield TreeEntry(rel=rel, name=name, dir_fd=frame.fd, st=st, link=link)
    finally:
        for frame in frames:
            os.close(frame.fd)
