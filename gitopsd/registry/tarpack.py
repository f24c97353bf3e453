"""Packing a directory artifact into a deterministic tar, hashing it on the way out.

Sorted names, mtime 0, uid/gid 0, no user names, modes kept: the same tree always gives the same bytes and so
the same digest, wherever and whenever it was written. Both artifact stores pack directories through here.

The tree was written by a training, so it is walked with `beneath`: one descriptor per directory level, no
symbolic link followed (a link is stored as a link), every file opened relative to its directory with
`O_NOFOLLOW` and checked to be the inode the walk saw, and FIFOs, sockets and devices refused by name. A file
is copied for exactly the size the walk saw, in chunks, so memory stays flat however large it is.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import IO, TYPE_CHECKING

from gitopsd.registry.beneath import OutputRefused, TreeEntry, describe_mode, open_child, walk_tree

if TYPE_CHECKING:
    import tarfile


class _HashingWriter:
    """A write-only file object that hashes what passes through it (tarfile writes the packed tree here)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self._out.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def _tar_info(entry: TreeEntry, shown: str) -> tarfile.TarInfo:
    import tarfile

    st = entry.st
    info = tarfile.TarInfo(entry.rel)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISREG(st.st_mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode) and entry.link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, entry.link
    else:
        raise OutputRefused(
            f"artifact directory entry {shown} is neither a file, a directory nor a symlink but "
            f"{describe_mode(st.st_mode)}; it cannot be stored"
        )
    return info


def pack_directory(src: Path, out: IO[bytes], *, shown: str | None = None) -> tuple[str, int]:
    """Write `src` as a deterministic uncompressed tar to `out`; return the tar's digest and size.

    Names are sorted and relative to `src`; mtime, uid and gid are 0 and user names empty; permission bits are
    kept; symlinks are stored as links, never followed. The same tree therefore packs to the same bytes.
    `shown` names `src` in error messages (default: its path).
    """
    import tarfile

    where = shown or str(src)
    writer = _HashingWriter(out)
    root = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for entry in walk_tree(root, where):
                name = f"{where}/{entry.rel}"
                info = _tar_info(entry, name)
                if not info.isreg():
                    tar.addfile(info)
                    continue
                fd, opened = open_child(entry.dir_fd, entry.name, name, directory=False)
                with os.fdopen(fd, "rb") as f:
                    if (opened.st_ino, opened.st_size) != (entry.st.st_ino, entry.st.st_size):
                        raise OutputRefused(f"{name} changed while it was being stored; nothing was stored")
                    try:
                        tar.addfile(info, f)
                    except OSError as exc:  # tarfile: "unexpected end of data" when the file shrank
                        raise OutputRefused(f"{name} changed while it was being stored ({exc})") from None
    finally:
        os.close(root)
    return writer.digest.hexdigest(), writer.size
