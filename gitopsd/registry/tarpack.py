"""Packing a directory artifact into a deterministic tar, hashing it on the way out.

Sorted names, mtime 0, uid/gid 0, no user names, modes kept: the same tree always gives the same bytes and so
the same digest, wherever and whenever it was written. Both artifact stores pack directories through here.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import IO, TYPE_CHECKING

from gitopsd.errors import PermanentError

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


def _tar_entries(root: Path) -> list[Path]:
    """Every path under `root` (not `root` itself), sorted by their POSIX relative names."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        found.extend(base / name for name in dirnames)
        found.extend(base / name for name in filenames)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _tar_info(path: Path, name: str) -> tarfile.TarInfo:
    import tarfile

    st = path.lstat()
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISREG(st.st_mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    else:
        raise PermanentError(
            f"artifact directory entry {path} is neither a file, a directory nor a symlink "
            f"(mode {stat.filemode(st.st_mode)}); it cannot be stored"
        )
    return info


def pack_directory(src: Path, out: IO[bytes]) -> tuple[str, int]:
    """Write `src` as a deterministic uncompressed tar to `out`; return the tar's digest and size.

    Names are sorted and relative to `src`; mtime, uid and gid are 0 and user names empty; permission bits are
    kept; symlinks are stored as links, never followed. The same tree therefore packs to the same bytes.
    """
    import tarfile

    writer = _HashingWriter(out)
    with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for path in _tar_entries(src):
            info = _tar_info(path, path.relative_to(src).as_posix())
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return writer.digest.hexdigest(), writer.size
