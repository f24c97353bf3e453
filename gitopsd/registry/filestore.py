"""The file store: a content-addressed artifact store in a local (or shared, POSIX) directory.

`FileStore` keeps objects under `ROOT/sha256/ab/cdef...`, writes them with a copy-while-hashing pass into a
temporary file, fsyncs, and moves them into place atomically and read-only. A directory artifact is packed first
into a deterministic tar, so the same tree always yields the same digest. Records live under `ROOT/records/`.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from gitopsd.errors import GitopsdError, IntegrityError, PermanentError, TransientError, is_permanent
from gitopsd.registry.store import (
    CHUNK,
    ArtifactRef,
    check_digest,
    create_temp,
    parse_record_name,
    record_conflict,
    record_name,
)
from gitopsd.registry.tarpack import pack_directory


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_hashing(src: io.BufferedReader, dst: IO[bytes]) -> tuple[str, int]:
    """Copy `src` to `dst` in one pass, returning the digest and size of what was copied."""
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    while n := src.readinto(view):
        chunk = view[:n]
        digest.update(chunk)
        dst.write(chunk)
        size += n
    return digest.hexdigest(), size


def store_os_error(exc: OSError, root: Path, action: str) -> GitopsdError:
    """An OS error in a file store as one line naming the path and what to fix: permanent when a permission, a
    read-only mount or a path is wrong (`is_permanent`), else transient (a full disk, a flaky network mount)."""
    what = exc.strerror or type(exc).__name__
    path = exc.filename or root
    if is_permanent(exc):
        return PermanentError(
            f"artifact store {root}: cannot {action} {path}: {what} (uid {os.getuid()}); fix its permissions or "
            "mount, or [registry] artifacts in the daemon configuration"
        )
    return TransientError(f"artifact store {root}: cannot {action} {path}: {what}; will retry")


class FileStore:
    """A content-addressed store in a local (or shared, POSIX) directory."""

    def __init__(self, root: Path, *, create: bool = True) -> None:
        """`create`: make the store's folders (False: only look, e.g. from `gitopsd plan`, which writes nothing)."""
        self.root = Path(root).absolute()
        self.uri = self.root.as_uri()
        self._objects = self.root / "sha256"
        self._records = self.root / "records"
        self._tmp = self.root / "tmp"
        if create:
            with self._os("create"):
                self._objects.mkdir(parents=True, exist_ok=True)
                self._tmp.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _os(self, action: str) -> Iterator[None]:
        """OS errors (other than a missing object, which callers handle) as gitopsd's errors."""
        try:
            yield
        except (FileNotFoundError, GitopsdError):
            raise
        except OSError as exc:
            raise store_os_error(exc, self.root, action) from exc

    def check(self) -> None:
        """Raise unless the store's directories exist and this user may write them."""
        for directory in (self.root, self._objects, self._tmp):
            if not directory.is_dir():
                raise PermanentError(
                    f"artifact store {self.root}: {directory} is missing; create it or fix [registry] artifacts in "
                    "the daemon configuration"
                )
            if not os.access(directory, os.W_OK | os.X_OK):
                raise PermanentError(
                    f"artifact store {self.root}: {directory} is not writable by uid {os.getuid()}; fix its "
                    "permissions, or [registry] artifacts in the daemon configuration"
                )

    def probe_write(self) -> None:
        """Create and delete a small file among the temporary files of puts."""
        self.check()
        with self._os("write a probe file in"):
            probe, handle = create_temp(self._tmp, "doctor-probe")
            try:
                with handle:
                    handle.write(b"gitopsd doctor\n")
                    handle.flush()
                    os.fsync(handle.fileno())
            finally:
                probe.unlink(missing_ok=True)

    def stale_uploads(self, older_than_s: float) -> list[str]:
        """Temporary files of puts that never finished (the process was killed), at least `older_than_s` old."""
        return [
            f"{path} ({os.path.getsize(path)} bytes, left {age:.0f} s ago)" for path, age in self._stale(older_than_s)
        ]

    def _stale(self, older_than_s: float) -> list[tuple[Path, float]]:
        now = time.time()
        found: list[tuple[Path, float]] = []
        with self._os("list"):
            for path in sorted(self._tmp.glob(".*.part")):
                try:
                    age = now - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age >= older_than_s:
                    found.append((path, age))
        return found

    def abort_stale_uploads(self, older_than_s: float) -> int:
        """Delete the temporary files of puts that never finished, older than `older_than_s`; how many."""
        removed = 0
        for path, _ in self._stale(older_than_s):
            with self._os("remove"):
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
            removed += 1
        return removed

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    def path(self, sha256: str) -> Path:
        """Where the object with this digest lives (whether or not it exists)."""
        check_digest(sha256)
        return self._objects / sha256[:2] / sha256[2:]

    def object_uri(self, sha256: str) -> str:
        return "file://" + str(self.path(sha256))

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, src: Path) -> ArtifactRef:
        """Store a file, or a directory packed as a deterministic tar, and return its reference.

        Storing bytes that are already present keeps the existing object after checking it is intact.
        """
        src = Path(src)
        with self._os("store"):
            return self._put(src)

    def _put(self, src: Path) -> ArtifactRef:
        tmp, out = create_temp(self._tmp, "put")
        try:
            with out:
                if src.is_dir():
                    digest, size = pack_directory(src, out)
                else:
                    try:
                        with open(src, "rb") as f:
                            digest, size = _copy_hashing(f, out)
                    except FileNotFoundError:
                        raise PermanentError(f"artifact {src} does not exist: nothing to store") from None
                out.flush()
                if not self.exists(digest):  # a duplicate's temp copy is dropped, so it needs no fsync
                    os.fsync(out.fileno())
            os.chmod(tmp, 0o444)
            self._place(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
        return ArtifactRef(sha256=digest, size=size, uri=self.object_uri(digest))

    def _place(self, tmp: Path, digest: str) -> None:
        """Move a finished temp file to its object path, never replacing an object that is already there."""
        final = self.path(digest)
        shard = final.parent
        if not shard.is_dir():
            shard.mkdir(exist_ok=True)
            _fsync_dir(self._objects)
        if final.exists():
            self.verify(digest)
            return
        try:
            # A hard link fails if the name exists, so a concurrent put of the same bytes cannot be clobbered.
            os.link(tmp, final)
        except FileExistsError:
            self.verify(digest)
            return
        except OSError:  # a filesystem without hard links: rename is still atomic
            os.replace(tmp, final)
        _fsync_dir(shard)

    def verify(self, sha256: str, size: int | None = None) -> None:
        """Re-hash a stored object; raise `IntegrityError` if it is missing, resized or altered."""
        path = self.path(sha256)
        try:
            with open(path, "rb") as f:
                actual_size = os.fstat(f.fileno()).st_size
                if size is not None and actual_size != size:
                    raise IntegrityError(
                        f"artifact {path}: expected {size} bytes with sha256 {sha256}, found {actual_size} bytes"
                    )
                actual = hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            raise IntegrityError(f"artifact {path}: expected sha256 {sha256}, found missing") from None
        if actual != sha256:
            raise IntegrityError(f"artifact {path}: expected sha256 {sha256}, found sha256 {actual}")

    def copy_out(self, sha256: str, dest: Path) -> None:
        """Copy a stored object to `dest`, hashing as it goes; on a mismatch raise and leave no `dest`."""
        src = self.path(sha256)
        dest = Path(dest)
        tmp, out = create_temp(dest.parent, dest.name)
        try:
            with out:
                try:
                    with open(src, "rb") as f:
                        actual, _ = _copy_hashing(f, out)
                except FileNotFoundError:
                    raise IntegrityError(f"artifact {src}: expected sha256 {sha256}, found missing") from None
                out.flush()
                os.fsync(out.fileno())
            if actual != sha256:
                raise IntegrityError(
                    f"artifact {src}: expected sha256 {sha256}, found sha256 {actual}; not copied to {dest}"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def record_path(self, model: str, number: int) -> Path:
        """Where the record of `model@number` lives (whether or not it exists)."""
        return self.root / record_name(model, number)

    def put_record(self, model: str, number: int, record: bytes) -> None:
        """Write `model@number`'s record once, read-only and atomically (temp file, fsync, hard link).

        The hard link fails when the name exists, so two writers can never replace each other's record.
        """
        with self._os("write record in"):
            self._put_record(model, number, record)

    def _put_record(self, model: str, number: int, record: bytes) -> None:
        final = self.record_path(model, number)
        existing = self.get_record(model, number)
        if existing is not None:
            if existing != record:
                raise record_conflict(str(final), model, number, existing, record)
            return
        if not final.parent.is_dir():
            final.parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self._records)
            _fsync_dir(self.root)
        tmp, out = create_temp(self._tmp, "record")
        try:
            with out:
                out.write(record)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, final)
            except FileExistsError:
                pass  # a concurrent writer won: compare below
            except OSError:  # a filesystem without hard links: check, then rename (a tiny race remains)
                if not final.exists():
                    os.replace(tmp, final)
            _fsync_dir(final.parent)
        finally:
            tmp.unlink(missing_ok=True)
        stored = final.read_bytes()
        if stored != record:
            raise record_conflict(str(final), model, number, stored, record)

    def get_record(self, model: str, number: int) -> bytes | None:
        try:
            return self.record_path(model, number).read_bytes()
        except FileNotFoundError:
            return None

    def records(self) -> Iterator[tuple[str, int, bytes]]:
        """Every record as (model, number, bytes), in (model, number) order; other files are ignored."""
        try:
            models = sorted(p.name for p in self._records.iterdir() if p.is_dir())
        except FileNotFoundError:
            return
        for model in models:
            numbers = sorted(
                number
                for entry in (self._records / model).iterdir()
                if (number := parse_record_name(model, entry.name)) is not None
            )
            for number in numbers:
                data = self.get_record(model, number)
                if data is not None:
                    yield model, number, data
