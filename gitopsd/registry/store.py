"""The content-addressed artifact store: bytes named by their SHA-256, written once, checked on the way out.

A registered version points at an artifact by digest, so the bytes behind a version can never change without
the change being detected. `FileStore` keeps objects under `ROOT/sha256/ab/cdef...`, writes them with a
copy-while-hashing pass into a temporary file, fsyncs, and moves them into place atomically and read-only. A
directory artifact is packed first into a deterministic tar, so the same tree always yields the same digest.

Every store also keeps the registry's versions as self-describing records (`records/<model>/<NNNNNNNN>.json`),
written once next to the objects, so the SQLite registry can be rebuilt from the store alone. `ArtifactStore`
is the interface both stores implement; `open_store` turns a registry's artifact URI into one (`file://` here,
`s3://` in `gitopsd.registry.s3store`, imported only when asked for because boto3 is slow to import).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from gitopsd.errors import IntegrityError, PermanentError
from gitopsd.registry.tarpack import pack_directory

CHUNK = 1 << 20
"""Bytes per read when copying while hashing; large reads keep hashing, not syscalls, the bottleneck."""

_HEX = frozenset("0123456789abcdef")
_RECORD_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_RECORD_FILE = re.compile(r"^([0-9]{8,})\.json$")


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True, kw_only=True)
class ArtifactRef:
    """Where a stored artifact lives and what its bytes must hash to."""

    sha256: str
    size: int
    uri: str


@runtime_checkable
class ArtifactStore(Protocol):
    """What the registry needs of a place that keeps artifacts and version records: `FileStore`, `S3Store`."""

    @property
    def uri(self) -> str:
        """The store's root: `file:///abs/dir` or `s3://bucket/prefix`."""

    def put(self, src: Path) -> ArtifactRef:
        """Store a file, or a directory packed as a deterministic tar; keep what is there if intact."""

    def exists(self, sha256: str) -> bool: ...

    def verify(self, sha256: str, size: int | None = None) -> None:
        """Re-hash a stored object; raise `IntegrityError` if it is missing, resized or altered."""

    def copy_out(self, sha256: str, dest: Path) -> None:
        """Copy a stored object to `dest`, hashing as it goes; on a mismatch raise and leave no `dest`."""

    def put_record(self, model: str, number: int, record: bytes) -> None:
        """Write a version record once; the same bytes again are a no-op, other bytes an `IntegrityError`."""

    def get_record(self, model: str, number: int) -> bytes | None: ...

    def records(self) -> Iterator[tuple[str, int, bytes]]:
        """Every record as (model, number, bytes), in (model, number) order."""


def check_digest(sha256: str) -> str:
    if len(sha256) != 64 or not _HEX.issuperset(sha256):
        raise ValueError(f"artifact digest {sha256!r} is not a sha256: expected 64 lowercase hex characters")
    return sha256


def record_name(model: str, number: int) -> str:
    """The store-relative name of a version record: `records/<model>/<number as %08d>.json`."""
    if not isinstance(model, str) or not _RECORD_MODEL.match(model):
        raise ValueError(
            f"record model name {model!r} cannot name a store path: expected letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"record version number {number!r} for {model!r}: expected a whole number >= 1")
    return f"records/{model}/{number:08d}.json"


def parse_record_name(model: str, filename: str) -> int | None:
    """The version number in a record's file name, or None for anything that is not a record."""
    found = _RECORD_FILE.match(filename)
    if not found or not _RECORD_MODEL.match(model) or int(found.group(1)) < 1:
        return None
    return int(found.group(1))


def record_conflict(where: str, model: str, number: int, existing: bytes, new: bytes) -> IntegrityError:
    """The error for a second, different write of a write-once record."""
    return IntegrityError(
        f"record {where}: {model}@{number} is already stored with other bytes (sha256 "
        f"{hashlib.sha256(existing).hexdigest()}, {len(existing)} bytes); refusing to overwrite it with sha256 "
        f"{hashlib.sha256(new).hexdigest()} ({len(new)} bytes): a version record is written once"
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_chunks_hashing(chunks: Iterable[bytes], dst: IO[bytes]) -> tuple[str, int]:
    """Write every chunk to `dst`, returning the digest and size of what was written."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


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


def create_temp(directory: Path, stem: str) -> tuple[Path, IO[bytes]]:
    """A new, exclusively created file in `directory`; its mode follows the umask like any user file."""
    while True:
        tmp = directory / f".{stem}.{secrets.token_hex(8)}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 64 random bits colliding
            continue
        return tmp, os.fdopen(fd, "wb")


class FileStore:
    """A content-addressed store in a local (or shared, POSIX) directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.uri = self.root.as_uri()
        self._objects = self.root / "sha256"
        self._records = self.root / "records"
        self._tmp = self.root / "tmp"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

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


def open_store(
    uri: str | None,
    default_root: Path,
    *,
    endpoint_url: str | None = None,
    object_lock_days: int | None = None,
) -> ArtifactStore:
    """The store named by a registry's artifact URI.

    None -> a `FileStore` at `default_root`; `file:///abs/dir` -> a `FileStore` there; `s3://bucket/prefix` ->
    an `S3Store` (credentials from the standard AWS chain; `endpoint_url` else boto3's `AWS_ENDPOINT_URL`).
    `object_lock_days` applies to S3 only: a file store's objects are already read-only.
    """
    if uri is None:
        return FileStore(default_root)
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise PermanentError(f"artifact store URI {uri!r} names no bucket: expected s3://bucket/prefix")
        from gitopsd.registry.s3store import S3Store

        return S3Store(
            parsed.netloc,
            unquote(parsed.path).strip("/"),
            endpoint_url=endpoint_url,
            object_lock_days=object_lock_days,
        )
    if parsed.scheme != "file":
        raise PermanentError(
            f"artifact store URI {uri!r} has an unknown scheme {parsed.scheme!r}: "
            "expected file:///absolute/dir or s3://bucket/prefix"
        )
    if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
        raise PermanentError(
            f"artifact store URI {uri!r} does not name an absolute local directory: expected file:///absolute/dir"
        )
    return FileStore(Path(unquote(parsed.path)))
