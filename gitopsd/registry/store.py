"""The artifact store contract: bytes named by their SHA-256, written once, checked on the way out.

A registered version points at an artifact by digest, so the bytes behind a version can never change without
the change being detected. Every store also keeps the registry's versions as self-describing records
(`records/<model>/<NNNNNNNN>.json`), written once next to the objects, so the SQLite registry can be rebuilt
from the store alone. `ArtifactStore` is that contract; `FileStore` (`filestore`) and `S3Store` (`s3store`)
implement it, `stores.open_store` picks one for a registry's URI, and the helpers here are what both share.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from gitopsd.errors import GitopsdError, IntegrityError

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


#: How old an unfinished upload must be before a sweep takes its writer for dead and aborts it.
STALE_UPLOAD_S = 24 * 3600.0


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

    def check(self) -> None:
        """Raise (`PermanentError`, `TransientError`) unless the store is reachable and writable with the
        configured credentials; cheap, and reads no object."""

    def probe_write(self) -> None:
        """Write one small object outside the artifacts and records, then delete it (`gitopsd doctor`): proof
        that these credentials may write, which listing cannot give. Raises like `check`."""

    def stale_uploads(self, older_than_s: float) -> list[str]:
        """Uploads that never finished (their writer was killed or cut off), at least `older_than_s` old: one
        line each, naming where it is."""

    def abort_stale_uploads(self, older_than_s: float) -> int:
        """Abort (S3) or delete (file store) the unfinished uploads `stale_uploads` lists; how many."""


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


def copy_chunks_hashing(chunks: Iterable[bytes], dst: IO[bytes]) -> tuple[str, int]:
    """Write every chunk to `dst`, returning the digest and size of what was written."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def create_temp(directory: Path, stem: str) -> tuple[Path, IO[bytes]]:
    """A new, exclusively created file in `directory`; its mode follows the umask like any user file."""
    while True:
        tmp = directory / f".{stem}.{os.urandom(8).hex()}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 64 random bits colliding
            continue
        return tmp, os.fdopen(fd, "wb")


def sweep_stale_uploads(open_store: Callable[[], ArtifactStore]) -> None:
    """Abort the uploads to the store `open_store` gives that a killed or cut-off writer left unfinished (older
    than STALE_UPLOAD_S), and say so; a store that cannot be opened or reached is a warning: the next sweep tries
    again."""
    log = logging.getLogger("gitopsd")
    try:
        aborted = open_store().abort_stale_uploads(STALE_UPLOAD_S)
    except GitopsdError as exc:
        log.warning("artifact store: unfinished uploads not swept: %s", exc)
        return
    if aborted:
        log.info("artifact store: aborted %d unfinished upload(s) older than %.0f h", aborted, STALE_UPLOAD_S / 3600)
