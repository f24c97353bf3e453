"""The persistent parse cache: what loading each spec blob gave, kept in the state directory across processes.

The daemon's `DesiredLoader` re-parses only the spec files whose blobs changed, but every `gitopsd plan` and
`gitopsd reconcile --once` is a new process that would parse every spec of the repository again (most of a
pass at 10,000 specs). This cache remembers, by Git blob id, what `load_model` made of a blob: the validated
model as its JSON (`exclude_unset`, so that re-validating it gives an equal model with the same set fields),
or the problems it had (by blob and path, since every problem names its file). A second table remembers the
run key and spec digest of a model by everything they are computed from (the blob, the repository's
configuration as resolved for the operator, the Git ids of the code tree and of the requirements file).

A third table keeps the sha256 of each repository data file the loader checked against its spec (by blob id), so
that a file is hashed once per state directory, not once per process.

It grows with the repository, not with its history: an entry whose value is many times its blob's size (YAML
aliases spelled out) is not kept, once the cache holds well beyond twice the files of the commit just loaded,
entries of other files go, and the digests start again past `MAX_DIGESTS`.

It is an optimisation only: a missing, locked, corrupt, truncated or foreign cache, or any entry that does not
check out, is a miss, and the blob is parsed as if there were no cache. Trust comes from two things:

- each entry is keyed by the *generation* of the code that wrote it: gitopsd's version, the spec schema
  version, a digest of the source of `gitopsd.spec` and the versions of pydantic and PyYAML, so an upgrade (or
  a development checkout with edited loading code) never reuses an old parse;
- each entry carries a keyed BLAKE2b MAC over its generation, key and value, with a random key kept in
  `speccache.key` (mode 0600) beside the database. Only the state directory's owner can write either file; a
  database copied from another state directory, or an entry written by anything but gitopsd, does not verify
  and is ignored. A valid-model entry is re-validated by pydantic when it is read, so even a verified entry can
  never yield a model that pydantic would refuse.

The database uses SQLite's rollback journal, not WAL: `gitopsd plan` opens it with `mode=ro` and then SQLite
creates no file at all in the state directory (a WAL reader may create `-wal` and `-shm` files). Writers (the
daemon, `reconcile`) take SQLite's lock for a moment per pass with new blobs; readers wait up to a few seconds
for it and otherwise treat the cache as a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml

import gitopsd
from gitopsd.errors import SpecProblem
from gitopsd.reconcile.statekey import KEY_FILE, state_key
from gitopsd.reconcile.statekey import key as _key
from gitopsd.registry.sqlitedb import immediate
from gitopsd.spec.schema import SCHEMA_VERSION, ModelSpec

__all__ = ["CACHE_FILE", "KEY_FILE", "Keys", "Parsed", "SpecCache", "generation", "state_key"]

log = logging.getLogger("gitopsd")

CACHE_FILE = "speccache.db"
#: The layout of this module's tables and MACs.
FORMAT = 1
#: Rows kept beyond twice the spec files of the last commit stored, before the cache forgets old blobs.
SLACK_ROWS = 1000
#: The most data digests kept (a hash each, about 200 bytes a row).
MAX_DIGESTS = 100_000
#: An entry is kept only when its value is at most this many times its blob's size, plus `GROWTH_SLACK` bytes.
MAX_GROWTH = 4
GROWTH_SLACK = 4096
BUSY_TIMEOUT_MS = 2000
#: Up to this many blobs are looked up one query per 500; more, and the whole generation is read at once.
FEW = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS parsed (
    generation TEXT NOT NULL,
    blob TEXT NOT NULL,
    path TEXT NOT NULL,
    ok INTEGER NOT NULL,
    payload TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (generation, blob, path)
);
CREATE TABLE IF NOT EXISTS keyed (
    generation TEXT NOT NULL,
    inputs TEXT NOT NULL,
    run_key TEXT NOT NULL,
    spec_digest TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (generation, inputs)
);
CREATE TABLE IF NOT EXISTS digests (
    generation TEXT NOT NULL,
    blob TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (generation, blob)
);
"""


def generation() -> str:
    """What an entry must have been written by to be used: this gitopsd, its spec loading and run key code (the
    source of `gitopsd.spec`, `reconcile/desired.py` and this module), its libraries."""
    package = Path(__file__).resolve().parent.parent
    files = [*sorted((package / "spec").glob("*.py")), package / "reconcile" / "desired.py", Path(__file__).resolve()]
    source = hashlib.sha256()
    for path in files:
        source.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    parts = (
        f"cache {FORMAT}",
        f"gitopsd {gitopsd.__version__}",
        f"schema {SCHEMA_VERSION}",
        f"spec {source.hexdigest()[:16]}",
        f"pydantic {pydantic.VERSION}",
        f"pyyaml {yaml.__version__}",
    )
    return "; ".join(parts)


@dataclass(frozen=True)
class Parsed:
    """What loading one blob at one path gave: a model, or the problems of the file."""

    model: ModelSpec | None
    problems: tuple[SpecProblem, ...] = ()


@dataclass(frozen=True)
class Keys:
    run_key: str
    spec_digest: str


def _mac(key: bytes, *parts: str) -> bytes:
    return hashlib.blake2b("\0".join(parts).encode(), key=key, digest_size=32).digest()


class SpecCache:
    """One state directory's parse cache. Every method answers (a miss, nothing stored) rather than raise."""

    def __init__(self, conn: sqlite3.Connection, key: bytes, *, writable: bool) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._key = key
        self.writable = writable
        self.generation = generation()
        if writable:
            self._forget_other_generations()

    @classmethod
    def open(cls, state_dir: Path, *, writable: bool) -> SpecCache | None:
        """The cache of `state_dir`, created when `writable` (a reconciler's own state directory); read-only
        otherwise (`gitopsd plan`: nothing is created or written). None when there is none or it cannot be used."""
        db = state_dir / CACHE_FILE
        try:
            key = _key(state_dir / KEY_FILE, create=writable)
            if key is None:
                return None
            if not writable:
                if not db.is_file():
                    return None
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
                return cls(conn, key, writable=False)
            try:
                return cls(_prepared(db), key, writable=True)
            except sqlite3.DatabaseError:  # not a database, or a damaged one: it held nothing that cannot be redone
                for stale in (db, db.with_name(db.name + "-journal")):
                    stale.unlink(missing_ok=True)
                return cls(_prepared(db), key, writable=True)
        except (OSError, sqlite3.Error) as exc:
            log.warning("spec cache in %s not used: %s", state_dir, exc)
            return None

    def _forget_other_generations(self) -> None:
        try:
            with self._transaction() as conn:
                conn.execute("DELETE FROM parsed WHERE generation != ?", (self.generation,))
                conn.execute("DELETE FROM keyed WHERE generation != ?", (self.generation,))
                conn.execute("DELETE FROM digests WHERE generation != ?", (self.generation,))
        except sqlite3.Error as exc:
            self._failed("cleaning", exc)

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.OperationalError("the spec cache is closed")
        return self._conn

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate(self._require())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        """A busy database (another process writing for longer than the timeout) costs this one call; any other
        error closes the cache for the rest of this process."""
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            log.debug("spec cache: %s skipped: %s", what, exc)
            return
        log.warning("spec cache: %s failed, loading without it: %s", what, exc)
        self.close()

    def _rows(self, query: str, column: str, wanted: set[str] | None) -> list[Any]:
        """The rows of `query` (which selects one generation); when `wanted` is small, only those whose `column`
        is in it (a pass with a few new blobs does not read the whole cache)."""
        conn = self._conn
        if conn is None:
            return []
        try:
            if wanted is None or len(wanted) > FEW:
                return conn.execute(query, (self.generation,)).fetchall()
            rows: list[Any] = []
            ordered = sorted(wanted)
            for start in range(0, len(ordered), 500):
                chunk = ordered[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                rows += conn.execute(f"{query} AND {column} IN ({marks})", (self.generation, *chunk)).fetchall()
            return rows
        except sqlite3.Error as exc:
            self._failed("reading", exc)
            return []

    # ---- parsed blobs ---------------------------------------------------------------------------------------

    def parsed(self, wanted: Mapping[str, str]) -> dict[str, Parsed]:
        """For each path of `wanted` (path -> blob id) whose blob the cache knows, what loading it gave."""
        if self._conn is None or not wanted:
            return {}
        blobs = set(wanted.values())
        rows = self._rows("SELECT blob, path, ok, payload, mac FROM parsed WHERE generation = ?", "blob", blobs)
        found: dict[tuple[str, str], tuple[int, str]] = {}
        for blob, path, ok, payload, mac in rows:
            if blob not in blobs or not isinstance(payload, str) or not isinstance(mac, bytes) or ok not in (0, 1):
                continue
            expected = _mac(self._key, self.generation, "parsed", str(blob), str(path), str(ok), payload)
            if hmac.compare_digest(mac, expected):
                found[(blob, path)] = (ok, payload)
        out: dict[str, Parsed] = {}
        for path, blob in wanted.items():
            entry = found.get((blob, "")) or found.get((blob, path))
            if entry is not None:
                parsed = _restore(entry[0], entry[1], path)
                if parsed is not None:
                    out[path] = parsed
        return out

    def store_parsed(self, fresh: Mapping[str, tuple[str, int, Parsed]], keep: Mapping[str, str] | None = None) -> None:
        """Remember `fresh` (path -> (blob id, its size in bytes, what loading it gave)); then, when the cache has
        grown well beyond the files of `keep` (path -> blob id: the commit just loaded), forget every entry that
        is not of one of them.

        An entry whose value is far larger than its blob is not kept: YAML aliases let a few bytes name a long
        value many times over, which a parse shares but a model's JSON spells out at each use, so such a file
        would cost the cache (and each restore) hundreds of times its size. It is parsed again instead."""
        if self._conn is None or not self.writable or not fresh:
            return
        rows = []
        for path, (blob, size, parsed) in fresh.items():
            if parsed.model is not None:
                where, ok, payload = "", 1, parsed.model.model_dump_json(by_alias=True, exclude_unset=True)
            else:
                problems = [[p.file, p.line, p.field, p.message] for p in parsed.problems]
                where, ok, payload = path, 0, json.dumps(problems)
            if len(payload) > MAX_GROWTH * size + GROWTH_SLACK:
                continue
            mac = _mac(self._key, self.generation, "parsed", blob, where, str(ok), payload)
            rows.append((self.generation, blob, where, ok, payload, mac))
        try:
            with self._transaction() as conn:
                conn.executemany("INSERT OR REPLACE INTO parsed VALUES (?, ?, ?, ?, ?, ?)", rows)
                (count,) = conn.execute("SELECT count(*) FROM parsed").fetchone()
                if keep and count > 2 * len(keep) + SLACK_ROWS:
                    # a model is kept by blob alone (path ""), a file's problems by blob and path: the same
                    # invalid blob at ever new paths must not pile up behind a blob that is still in use
                    blobs, files = set(keep.values()), set(keep.items())
                    old = [
                        (b, where)
                        for b, where in conn.execute("SELECT DISTINCT blob, path FROM parsed")
                        if not (b in blobs if where == "" else (where, b) in files)
                    ]
                    conn.executemany("DELETE FROM parsed WHERE blob = ? AND path = ?", old)
        except sqlite3.Error as exc:
            self._failed("storing", exc)

    # ---- run keys -------------------------------------------------------------------------------------------

    def keys(self, wanted: Iterable[str] | None = None) -> dict[str, Keys]:
        """By the digest of their inputs, the run keys and spec digests the cache knows: of `wanted`, or all."""
        if self._conn is None:
            return {}
        query = "SELECT inputs, run_key, spec_digest, mac FROM keyed WHERE generation = ?"
        rows = self._rows(query, "inputs", None if wanted is None else set(wanted))
        out: dict[str, Keys] = {}
        for digest, run_key, spec_digest, mac in rows:
            if not isinstance(mac, bytes):
                continue
            expected = _mac(self._key, self.generation, "keyed", str(digest), str(run_key), str(spec_digest))
            if hmac.compare_digest(mac, expected):
                out[digest] = Keys(run_key=str(run_key), spec_digest=str(spec_digest))
        return out

    def store_keys(self, fresh: Mapping[str, Keys], keep: Iterable[str] = ()) -> None:
        if self._conn is None or not self.writable or not fresh:
            return
        rows = [
            (self.generation, d, k.run_key, k.spec_digest, _mac(self._key, self.generation, "keyed", d, k.run_key,
                                                                 k.spec_digest))
            for d, k in fresh.items()
        ]  # fmt: skip
        kept = set(keep)
        try:
            with self._transaction() as conn:
                conn.executemany("INSERT OR REPLACE INTO keyed VALUES (?, ?, ?, ?, ?)", rows)
                (count,) = conn.execute("SELECT count(*) FROM keyed").fetchone()
                if kept and count > 2 * len(kept) + SLACK_ROWS:
                    old = [(d,) for (d,) in conn.execute("SELECT inputs FROM keyed") if d not in kept]
                    conn.executemany("DELETE FROM keyed WHERE inputs = ?", old)
        except sqlite3.Error as exc:
            self._failed("storing", exc)

    # ---- repository data digests ---------------------------------------------------------------------------

    def digest(self, blob: str) -> str | None:
        """The sha256 of the content of data blob `blob`, if the cache knows it (each repository data file is
        hashed once per state directory, not once per process)."""
        if self._conn is None:
            return None
        try:
            row = self._conn.execute(
                "SELECT sha256, mac FROM digests WHERE generation = ? AND blob = ?", (self.generation, blob)
            ).fetchone()
        except sqlite3.Error:  # a cache written before this table (read-only): a miss, the rest still serves
            return None
        if row is None or not isinstance(row[0], str) or not isinstance(row[1], bytes):
            return None
        sha256, mac = row
        return sha256 if hmac.compare_digest(mac, _mac(self._key, self.generation, "digest", blob, sha256)) else None

    def store_digests(self, fresh: Mapping[str, str]) -> None:
        """Remember the sha256 of each data blob of `fresh`; past `MAX_DIGESTS` rows, start again from these."""
        if self._conn is None or not self.writable or not fresh:
            return
        rows = [(self.generation, b, d, _mac(self._key, self.generation, "digest", b, d)) for b, d in fresh.items()]
        try:
            with self._transaction() as conn:
                (count,) = conn.execute("SELECT count(*) FROM digests").fetchone()
                if count + len(rows) > MAX_DIGESTS:
                    conn.execute("DELETE FROM digests")
                conn.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            self._failed("storing", exc)


def _prepared(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.executescript(_SCHEMA)
        conn.execute("SELECT generation, blob, path, ok, payload, mac FROM parsed LIMIT 1").fetchall()
        conn.execute("SELECT generation, inputs, run_key, spec_digest, mac FROM keyed LIMIT 1").fetchall()
        conn.execute("SELECT generation, blob, sha256, mac FROM digests LIMIT 1").fetchall()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _restore(ok: int, payload: str, path: str) -> Parsed | None:
    """An entry's value, or None when it does not hold what this module writes."""
    try:
        if ok == 1:
            return Parsed(ModelSpec.model_validate_json(payload))
        problems = json.loads(payload)
        restored = tuple(
            SpecProblem(file=file, line=line, field=field, message=message)
            for file, line, field, message in problems
            if file == path
            and (line is None or (isinstance(line, int) and not isinstance(line, bool)))
            and isinstance(field, str)
            and isinstance(message, str)
        )
        return Parsed(None, restored) if restored and len(restored) == len(problems) else None
    except (pydantic.ValidationError, ValueError, TypeError):
        return None
