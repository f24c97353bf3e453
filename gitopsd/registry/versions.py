"""The model registry: numbered, immutable versions in their own SQLite file.

Every model that passes its gates becomes `name@N` (N = 1, 2, 3 ... per model) with its artifact digest,
metrics, gate results and lineage. A version is never changed or removed, and SQLite itself enforces that with
triggers, so no code path (ours, a script, the `sqlite3` shell) can quietly rewrite history. Registering is
idempotent by run id, so a crash between "registered" and "recorded in the state DB" is harmless. The read
path (`gitopsd status`) opens the file read-only, runs no migrations and imports nothing heavy.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from gitopsd.errors import IntegrityError, PermanentError
from gitopsd.registry.sqlitedb import enable_wal, immediate, migrate
from gitopsd.registry.store import ArtifactRef, ArtifactStore

_IMMUTABLE = "versions are immutable: register a new version instead"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        f"""
        CREATE TABLE versions (
            model TEXT NOT NULL,
            number INTEGER NOT NULL CHECK (number >= 1),
            run_id TEXT NOT NULL UNIQUE,
            run_key TEXT NOT NULL,
            artifact_sha256 TEXT NOT NULL,
            artifact_size INTEGER NOT NULL,
            artifact_uri TEXT NOT NULL,
            metrics TEXT NOT NULL,
            gates TEXT NOT NULL,
            lineage TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (model, number)
        );
        CREATE INDEX versions_model_run_key ON versions (model, run_key);
        CREATE TRIGGER versions_no_update BEFORE UPDATE ON versions
        BEGIN
            SELECT RAISE(ABORT, '{_IMMUTABLE} (UPDATE refused)');
        END;
        CREATE TRIGGER versions_no_delete BEFORE DELETE ON versions
        BEGIN
            SELECT RAISE(ABORT, '{_IMMUTABLE} (DELETE refused)');
        END;
        -- INSERT OR REPLACE deletes the old row without firing the DELETE trigger: refuse it up front.
        CREATE TRIGGER versions_no_replace BEFORE INSERT ON versions
        WHEN EXISTS (
            SELECT 1 FROM versions
            WHERE (model = NEW.model AND number = NEW.number) OR run_id = NEW.run_id
        )
        BEGIN
            SELECT RAISE(ABORT, '{_IMMUTABLE} (this model@number or run_id already exists)');
        END;
        """,
    ),
    (
        2,
        """
        CREATE TABLE alias_moves (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            model TEXT NOT NULL,
            alias TEXT NOT NULL,
            version INTEGER,
            previous INTEGER,
            kind TEXT NOT NULL,
            commit_id TEXT NOT NULL,
            subject TEXT NOT NULL DEFAULT '',
            at REAL NOT NULL
        );
        CREATE INDEX alias_moves_model ON alias_moves (model, alias, seq);
        CREATE TRIGGER alias_moves_no_update BEFORE UPDATE ON alias_moves
        BEGIN
            SELECT RAISE(ABORT, 'alias moves are append-only: move the alias again instead');
        END;
        CREATE TRIGGER alias_moves_no_delete BEFORE DELETE ON alias_moves
        BEGIN
            SELECT RAISE(ABORT, 'alias moves are append-only: move the alias again instead');
        END;
        """,
    ),
    (
        3,
        """
        -- Training environments by digest (registry/environments.py): content-addressed, so write-once; a
        -- second insert of a digest is skipped (RAISE(IGNORE)), which also keeps INSERT OR REPLACE out.
        CREATE TABLE environments (
            digest TEXT PRIMARY KEY,
            python TEXT,
            packages TEXT NOT NULL
        );
        CREATE TRIGGER environments_once BEFORE INSERT ON environments
        WHEN EXISTS (SELECT 1 FROM environments WHERE digest = NEW.digest)
        BEGIN
            SELECT RAISE(IGNORE);
        END;
        CREATE TRIGGER environments_no_update BEFORE UPDATE ON environments
        BEGIN
            SELECT RAISE(ABORT, 'environments are content-addressed and immutable (UPDATE refused)');
        END;
        CREATE TRIGGER environments_no_delete BEFORE DELETE ON environments
        BEGIN
            SELECT RAISE(ABORT, 'environments are content-addressed and immutable (DELETE refused)');
        END;
        """,
    ),
    (
        4,
        """
        -- Where each alias points now (registry/aliases.py `current`), kept by a trigger as moves are appended:
        -- read without scanning the moves, whose number grows with every registration that moves `latest`.
        CREATE TABLE alias_current (
            model TEXT NOT NULL,
            alias TEXT NOT NULL,
            version INTEGER,
            seq INTEGER NOT NULL,
            PRIMARY KEY (model, alias)
        ) WITHOUT ROWID;
        INSERT INTO alias_current (model, alias, version, seq)
            SELECT model, alias, version, max(seq) FROM alias_moves GROUP BY model, alias;
        CREATE TRIGGER alias_moves_current AFTER INSERT ON alias_moves
        BEGIN
            INSERT INTO alias_current (model, alias, version, seq) VALUES (NEW.model, NEW.alias, NEW.version, NEW.seq)
            ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version, seq = excluded.seq
            WHERE excluded.seq > alias_current.seq;
        END;
        """,
    ),
]
"""Numbered schema changes, applied in order, each in its own transaction, each recorded in `migrations`."""

_COLUMNS = (
    "model, number, run_id, run_key, artifact_sha256, artifact_size, artifact_uri, metrics, gates, lineage, created_at"
)


@dataclass(frozen=True, kw_only=True)
class Version:
    """One registered, immutable model version."""

    model: str
    number: int
    run_id: str
    run_key: str
    artifact: ArtifactRef
    metrics: dict[str, float]
    gates: list[dict[str, Any]]
    lineage: dict[str, Any]
    created_at: float

    @property
    def label(self) -> str:
        return f"{self.model}@{self.number}"


def parse_label(label: str) -> tuple[str, int]:
    """Split `"iris@3"` into `("iris", 3)`; N is ASCII digits, and no larger than any number a registry stores
    (SQLite's integers)."""
    model, sep, number = label.rpartition("@")
    if not sep or not model or not (number.isascii() and number.isdigit()) or not 0 < int(number) < 2**63:
        raise ValueError(f"version label {label!r} is not of the form MODEL@N with N a whole number >= 1")
    return model, int(number)


def _to_json(value: object, what: str, model: str, run_id: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PermanentError(
            f"cannot register {model} (run {run_id}): {what} must be JSON with finite numbers: {exc}"
        ) from exc


def version_from_row(row: tuple[Any, ...]) -> Version:
    """The version of a row of `_COLUMNS` (its JSON decoded: a row that is not JSON raises ValueError)."""
    model, number, run_id, run_key, sha, size, uri, metrics, gates, lineage, created_at = row
    return Version(
        model=model,
        number=number,
        run_id=run_id,
        run_key=run_key,
        artifact=ArtifactRef(sha256=sha, size=size, uri=uri),
        metrics=json.loads(metrics),
        gates=json.loads(gates),
        lineage=json.loads(lineage),
        created_at=created_at,
    )


def damaged(path: Path, exc: Exception) -> str:
    """The one line for a registry database SQLite cannot read, with the way back."""
    return (
        f"cannot read {path}: {exc} (the file is damaged or not a gitopsd registry: move it away and run "
        "`gitopsd registry rebuild`, which restores it from the artifact store)"
    )


class Registry:
    """Versions of every model, in `STATE_DIR/registry.db`."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if self._conn is not None:
                self._conn.close()
            raise PermanentError(damaged(self.path, exc)) from exc

    def _open(self) -> None:
        readonly = self.readonly
        if readonly:
            if not self.path.exists():
                return  # nothing registered yet: behave as an empty registry
            uri = self.path.absolute().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'versions'")
            if exists.fetchone() is None:
                conn.close()
                return
            self._conn = conn
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn
        self._migrate()

    def _migrate(self) -> None:
        migrate(self._writable(), MIGRATIONS, what=f"registry {self.path}")

    @property
    def conn(self) -> sqlite3.Connection | None:
        """The open connection (None for a read-only registry that does not exist yet), for modules that keep
        their own tables in the registry database (aliases)."""
        return self._conn

    def _writable(self) -> sqlite3.Connection:
        if self._closed:
            raise PermanentError(f"registry {self.path} is closed")
        if self.readonly or self._conn is None:
            raise PermanentError(f"registry {self.path} is open read-only: cannot write to it")
        return self._conn

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        if self._closed:
            raise PermanentError(f"registry {self.path} is closed")
        if self._conn is None:
            return []
        return self._conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: tuple[Any, ...]) -> Version | None:
        rows = self._rows(sql, params)
        return version_from_row(rows[0]) if rows else None

    def register(
        self,
        *,
        model: str,
        run_id: str,
        run_key: str,
        artifact: ArtifactRef,
        metrics: dict[str, float],
        gates: builtins.list[dict[str, Any]],
        lineage: dict[str, Any],
        created_at: float,
    ) -> Version:
        """Record a new version (number = previous + 1), or return the one already recorded for `run_id`."""
        conn = self._writable()
        encoded = (
            _to_json(metrics, "metrics", model, run_id),
            _to_json(gates, "gates", model, run_id),
            _to_json(lineage, "lineage", model, run_id),
        )
        with immediate(conn):
            existing = self.by_run_id(run_id)
            if existing is None:
                (number,) = conn.execute(
                    "SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE model = ?", (model,)
                ).fetchone()
                row = (model, number, run_id, run_key, artifact.sha256, artifact.size, artifact.uri)
                conn.execute(
                    f"INSERT INTO versions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*row, *encoded, created_at),
                )
        if existing is None:
            return version_from_row((*row, *encoded, created_at))
        if existing.model != model:
            raise PermanentError(
                f"run {run_id} is already registered as {existing.label}; it cannot also become a version of {model!r}"
            )
        return existing

    def get(self, model: str, number: int) -> Version | None:
        return self._one(f"SELECT {_COLUMNS} FROM versions WHERE model = ? AND number = ?", (model, number))

    def latest(self, model: str) -> Version | None:
        return self._one(f"SELECT {_COLUMNS} FROM versions WHERE model = ? ORDER BY number DESC LIMIT 1", (model,))

    def list(self, model: str | None = None) -> builtins.list[Version]:
        """All versions (or one model's), ordered by model then number."""
        return [version_from_row(row) for row in self.rows(model)]

    def rows(self, model: str | None = None, *, extra: str = "", by_time: bool = False) -> Iterator[tuple[Any, ...]]:
        """The raw rows behind `list` (the columns of `_COLUMNS`, then those of `extra`, SQL expressions), read
        from a cursor as they are consumed, so a listing of any size holds one row at a time
        (`gitopsd.registry.listing`). `by_time`: one model's, oldest first (then by number)."""
        if self._closed:
            raise PermanentError(f"registry {self.path} is closed")
        if self._conn is None:
            return iter(())
        columns = f"{_COLUMNS}, {extra}" if extra else _COLUMNS
        if model is None:
            return self._conn.execute(f"SELECT {columns} FROM versions ORDER BY model, number")
        order = "created_at, number" if by_time else "number"
        return self._conn.execute(f"SELECT {columns} FROM versions WHERE model = ? ORDER BY {order}", (model,))

    def by_run_id(self, run_id: str) -> Version | None:
        return self._one(f"SELECT {_COLUMNS} FROM versions WHERE run_id = ?", (run_id,))

    def by_run_key(self, model: str, run_key: str) -> Version | None:
        """The newest version of `model` trained with this run key (same key = same training)."""
        return self._one(
            f"SELECT {_COLUMNS} FROM versions WHERE model = ? AND run_key = ? ORDER BY number DESC LIMIT 1",
            (model, run_key),
        )

    def wanted_numbers(self, wanted: Mapping[str, str]) -> dict[tuple[str, str], int]:
        """(model, run key) -> the newest version number trained from that key, for the one run key each model
        in `wanted` (model -> run key) wants now; a key with no version is left out. Whichever way is shorter:
        every version when there are at most half as many of them as models asking, else each key looked up in the
        (model, run key) index, so a pass never pays for more history than it has models. A version read costs
        about twice a lookup (10,000 of each: 20 and 11 ms), hence the factor."""
        newest = self._rows("SELECT max(rowid) FROM versions")  # versions are never deleted: as many as there are
        if (int(newest[0][0] or 0) if newest else 0) * 2 <= len(wanted):
            rows = self._rows("SELECT model, run_key, MAX(number) FROM versions GROUP BY model, run_key")
        else:
            rows = self._rows(
                "SELECT v.model, v.run_key, MAX(v.number) FROM json_each(?) AS k JOIN versions AS v "
                "ON v.model = k.key AND v.run_key = k.value GROUP BY v.model, v.run_key",
                (json.dumps(dict(wanted)),),
            )
        return {(model, run_key): number for model, run_key, number in rows if wanted.get(model) == run_key}

    def alias_numbers(self, named: Mapping[str, Collection[int]]) -> dict[str, set[int]]:
        """What moving the aliases of each model in `named` needs to know of its versions: its newest number,
        and which of the numbers its aliases name (`named[model]`) are registered. A model with no version is
        left out. Index steps per model and number named, however long its history."""
        found: dict[str, set[int]] = {}
        newest = self._rows(
            "SELECT k.value, (SELECT MAX(number) FROM versions WHERE model = k.value) AS newest FROM json_each(?) "
            "AS k WHERE newest IS NOT NULL",
            (json.dumps(sorted(named)),),
        )
        for model, number in newest:
            found[model] = {number}
        pairs = [[model, number] for model, numbers in named.items() if model in found for number in numbers]
        for model, number in self._rows(
            "SELECT v.model, v.number FROM json_each(?) AS k JOIN versions AS v "
            "ON v.model = k.value ->> 0 AND v.number = k.value ->> 1",
            (json.dumps(pairs),),
        ):
            found[model].add(number)
        return found

    def empty(self) -> bool:
        """Whether no version is registered (one index step)."""
        return not self._rows("SELECT 1 FROM versions LIMIT 1")

    def newest_row(self) -> tuple[Any, ...]:
        """How many versions there are and the newest row's identity (rowid, model, number, run id, artifact
        digest): versions are only ever added (the triggers refuse the rest), so this changes exactly when the
        registry's versions do. What the settled-pass record digests, at the cost of one count of the
        smallest index instead of a read of all history."""
        found = self._rows(
            "SELECT (SELECT count(*) FROM versions), rowid, model, number, run_id, artifact_sha256 FROM versions "
            "WHERE rowid = (SELECT max(rowid) FROM versions)"
        )
        return tuple(found[0]) if found else (0,)

    def verify(self, store: ArtifactStore) -> builtins.list[str]:
        """Re-hash every version's artifact in `store`; one line per missing or tampered artifact."""
        problems: builtins.list[str] = []
        for version in self.list():
            try:
                store.verify(version.artifact.sha256, version.artifact.size)
            except IntegrityError as exc:
                problems.append(f"{version.label}: {exc}")
        return problems

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
