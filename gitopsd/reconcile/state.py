"""Durable reconciler state in SQLite: runs, the append-only event log, conditions and the applied source.

This is the memory that makes gitopsd crash-safe: a run row is committed before its job is submitted, so after
any crash the next pass knows every job that might exist. Schema changes are numbered migrations recorded in the
database. Inserts and updates of runs, events, models and conditions go through sqlite-utils, imported when
first needed, so that the settled-pass check of `gitopsd reconcile --once` (`quickpass`), which only reads and
writes the source row, never pays for it; the read-only status path lives in `statusview` and uses plain sqlite3.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from gitopsd.errors import PermanentError
from gitopsd.model import Condition, ConditionType, Phase, Reason
from gitopsd.registry.sqlitedb import enable_wal, immediate, migrate, recorded

if TYPE_CHECKING:
    import sqlite_utils

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY, model TEXT NOT NULL, run_key TEXT NOT NULL, spec_digest TEXT NOT NULL,
            commit_id TEXT NOT NULL, spec_path TEXT NOT NULL, backend TEXT NOT NULL, job_id TEXT,
            phase TEXT NOT NULL, attempt INTEGER NOT NULL, reason TEXT NOT NULL DEFAULT '',
            message TEXT NOT NULL DEFAULT '', exit_code INTEGER, metrics TEXT NOT NULL DEFAULT '{}',
            stop_reason TEXT NOT NULL DEFAULT '', version INTEGER, run_dir TEXT NOT NULL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL, ended_at REAL
        );
        CREATE INDEX runs_active ON runs (phase) WHERE phase NOT IN ('Registered', 'Failed', 'Cancelled');
        CREATE INDEX runs_model ON runs (model, created_at);
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, model TEXT NOT NULL, run_id TEXT,
            kind TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
            commit_id TEXT
        );
        CREATE INDEX events_model ON events (model, seq);
        CREATE TRIGGER events_no_update BEFORE UPDATE ON events
            BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
        CREATE TRIGGER events_no_delete BEFORE DELETE ON events
            BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
        CREATE TABLE models (
            name TEXT PRIMARY KEY, spec_path TEXT NOT NULL, run_key TEXT NOT NULL, spec_digest TEXT NOT NULL,
            backend TEXT NOT NULL, suspend INTEGER NOT NULL
        );
        CREATE TABLE conditions (
            model TEXT PRIMARY KEY, type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE sources (
            id INTEGER PRIMARY KEY CHECK (id = 1), url TEXT NOT NULL, branch TEXT,
            fetched_commit TEXT, fetched_at REAL, applied_commit TEXT, applied_at REAL,
            trigger TEXT NOT NULL DEFAULT '', error_reason TEXT NOT NULL DEFAULT '',
            error TEXT NOT NULL DEFAULT ''
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE snapshots (
            run_id TEXT PRIMARY KEY REFERENCES runs (id), snapshot TEXT NOT NULL
        );
        CREATE TRIGGER snapshots_no_update BEFORE UPDATE ON snapshots
            BEGIN SELECT RAISE(ABORT, 'a run snapshot is written once'); END;
        CREATE TRIGGER snapshots_no_delete BEFORE DELETE ON snapshots
            BEGIN SELECT RAISE(ABORT, 'a run snapshot is written once'); END;
        """,
    ),
    (
        3,
        """
        CREATE TABLE troubles (
            key TEXT PRIMARY KEY, model TEXT NOT NULL, what TEXT NOT NULL, reason TEXT NOT NULL,
            message TEXT NOT NULL, attempts INTEGER NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL,
            next_at REAL, input TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE outbox (
            kind TEXT NOT NULL, subject TEXT NOT NULL, model TEXT NOT NULL, payload TEXT NOT NULL,
            created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT '', PRIMARY KEY (kind, subject)
        );
        """,
    ),
    (
        4,
        # What a run's GPU-hours are made of (GPUs x nodes, its timeout), for team budgets and `gitopsd usage`;
        # older runs take them from their snapshot, and count 0 GPUs when they have none. The two indexes keep
        # a pass's budget check to the runs of the last week and of one commit, however long the history.
        """
        ALTER TABLE runs ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE runs ADD COLUMN timeout_s INTEGER;
        UPDATE runs SET
            gpus = coalesce((SELECT CAST(json_extract(s.snapshot, '$.train.resources.gpus') AS INTEGER)
                                    * coalesce(CAST(json_extract(s.snapshot, '$.train.resources.nodes') AS INTEGER), 1)
                             FROM snapshots s WHERE s.run_id = runs.id), 0),
            timeout_s = (SELECT CAST(json_extract(s.snapshot, '$.train.timeout_s') AS INTEGER)
                         FROM snapshots s WHERE s.run_id = runs.id);
        CREATE INDEX runs_ended ON runs (ended_at);
        CREATE INDEX runs_commit ON runs (commit_id);
        """,
    ),
    (
        5,
        """
        CREATE TABLE deliveries (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL,
            subject TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0, stalled INTEGER NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT '', UNIQUE (sink, key)
        );
        CREATE TABLE delivery_cursors (
            sink TEXT PRIMARY KEY, event_seq INTEGER NOT NULL, status TEXT NOT NULL DEFAULT '',
            rejected TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE delivery_counts (
            sink TEXT NOT NULL, result TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (sink, result)
        );
        """,
    ),
    (
        6,
        # Each model's spec labels (`metadata.labels`, JSON), for the dashboard's team filter (`gitopsd.ui`).
        # Rows of older state directories get {} and their labels with the next pass that writes them.
        """
        ALTER TABLE models ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
        """,
    ),
    (
        7,
        # What `gitopsd plan` says of a model the settled commit leaves as it is (`changeplan.Declared`): the run
        # key the pass wanted (bound to its base's version), what one attempt costs, its declared aliases, and
        # why nothing may be submitted. Rows of older state directories are rewritten by their next full pass
        # (a new gitopsd never trusts an older settled record).
        """
        ALTER TABLE models ADD COLUMN wanted_key TEXT NOT NULL DEFAULT '';
        ALTER TABLE models ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE models ADD COLUMN gpu_hours REAL;
        ALTER TABLE models ADD COLUMN timeout_s INTEGER;
        ALTER TABLE models ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE models ADD COLUMN aliases TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE models ADD COLUMN blocked TEXT NOT NULL DEFAULT '';
        ALTER TABLE models ADD COLUMN blocked_reason TEXT NOT NULL DEFAULT '';
        """,
    ),
    (
        8,
        # What an event says last of one subject (`event_once`: an alias's refusal) and the newest event of a
        # kind (an alias moved), each found in one index lookup: a model may declare thousands of aliases,
        # and scanning its events for each of them made a pass quadratic in them.
        """
        CREATE INDEX events_subject ON events (model, kind, reason, seq);
        CREATE INDEX events_kind ON events (model, kind, seq);
        """,
    ),
    (
        9,
        # The failed attempts of each (model, run key, spec digest), which every pass and the settled-pass record
        # read (`failed`), found in an index of the failed runs alone: a scan of `runs` grew with every run ever
        # registered (56 ms at 100,000 runs, 2,000 of them failed; 6.5 ms with it).
        """
        CREATE INDEX runs_failed ON runs (model, run_key, spec_digest) WHERE phase = 'Failed';
        """,
    ),
)


class Failed(NamedTuple):
    """The failed attempts at one (model, run key, spec digest): how many, and when and why the latest ended."""

    attempts: int
    ended_at: float
    reason: str


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One row of `runs`: one attempt at producing a version for a run key."""

    id: str
    model: str
    run_key: str
    spec_digest: str
    commit_id: str
    spec_path: str
    backend: str
    phase: Phase
    attempt: int
    run_dir: str
    created_at: float
    updated_at: float
    job_id: str | None = None
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    stop_reason: str = ""
    version: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    gpus: int = 0
    """GPUs x nodes the run asked for (what its GPU-hours are counted with)."""
    timeout_s: int | None = None

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = str(self.phase)
        data["metrics"] = json.dumps(dict(self.metrics), sort_keys=True)
        return data

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunRecord:
        data = dict(row)
        data["phase"] = Phase(data["phase"])
        data["metrics"] = json.loads(data["metrics"] or "{}")
        return cls(**data)


_CONDITION_TYPES = {str(t): t for t in ConditionType}
_REASONS = {str(r): r for r in Reason}


def run_fields(run: RunRecord) -> dict[str, str]:
    """What a log line about a run carries as structured fields (JSON logs)."""
    return {"model": run.model, "run_id": run.id, "commit": run.commit_id[:12], "reason": run.reason}


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRow:
    """What the last applied commit wants of one model, as `gitopsd status` shows it."""

    name: str
    spec_path: str
    run_key: str
    spec_digest: str
    backend: str
    suspend: bool
    labels: str = "{}"
    """The spec's `metadata.labels` as canonical JSON (sorted keys): a string, so rows compare and hash."""
    wanted_key: str = ""
    """The run key the pass wanted: `run_key`, or for a model on a base model the key bound to its version."""
    gpus: int = 0
    """GPUs one attempt holds (GPUs x nodes)."""
    gpu_hours: float | None = 0.0
    """The GPU-hours one attempt's time limit allows (None: GPUs without a timeout, unbounded)."""
    timeout_s: int | None = None
    retries: int = 0
    aliases: str = "{}"
    """The aliases the spec declares (alias: number or "latest") as canonical JSON."""
    blocked: str = ""
    """Why the pass may submit nothing for it ('' when it may), and the reason code of that."""
    blocked_reason: str = ""


class PlanLine(NamedTuple):
    """The columns of a `models` row that `gitopsd plan` says of a model the settled commit leaves as it is."""

    name: str
    spec_path: str
    suspend: int
    wanted_key: str
    backend: str
    gpus: int
    gpu_hours: float | None
    timeout_s: int | None
    retries: int
    aliases: str
    blocked: str
    blocked_reason: str


@dataclass(frozen=True, kw_only=True)
class SourceRow:
    url: str
    branch: str | None = None
    fetched_commit: str | None = None
    fetched_at: float | None = None
    applied_commit: str | None = None
    applied_at: float | None = None
    trigger: str = ""
    error_reason: str = ""
    error: str = ""


def _reading(path: Path) -> sqlite3.Connection:
    """`path` opened read-only, when this code's migrations are all applied to it (else PermanentError: the next
    pass applies them)."""
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=30, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        newest = max(recorded(conn), default=0)
        known = max(number for number, _ in MIGRATIONS)
        if newest != known:
            raise PermanentError(f"{path} has schema migration {newest}, this gitopsd's is {known}: a pass updates it")
    except BaseException:
        conn.close()
        raise
    return conn


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with the pragmas every gitopsd database uses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    enable_wal(conn)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class StateStore:
    """The reconciler's read-write view of `state.db` (`readonly`: a view that writes nothing, not even a
    migration: `gitopsd plan` reading the state directory it must leave as it is)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                self.conn = _reading(path)
            else:
                self.conn = connect(path)
                migrate(self.conn, MIGRATIONS, what=str(path))
        except sqlite3.DatabaseError as exc:
            raise PermanentError(
                f"cannot read {path}: {exc} (the file is damaged or not a gitopsd state database: move it away "
                "and reconcile again; runs in flight are then found by their run ids)"
            ) from exc
        self._db: sqlite_utils.Database | None = None

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the same connection, made on the first insert or update (its import costs ~70 ms)."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with immediate(self.conn):
            yield

    # runs ------------------------------------------------------------------------------------------------
    def create_run(self, run: RunRecord, *, message: str, snapshot: Mapping[str, Any] | None = None) -> None:
        """Commit the run row (and its event, and its snapshot) before anything is submitted."""
        with self.transaction():
            self.db.table("runs").insert(run.row())
            if snapshot is not None:
                self._keep_snapshot(run.id, snapshot)
            self._event(run.model, run.id, "RunCreated", "", message, run.commit_id)

    def snapshot(self, run_id: str) -> dict[str, Any] | None:
        """What the run was started from (see `reconcile.snapshot`), or None for a run that has none kept."""
        row = self.conn.execute("SELECT snapshot FROM snapshots WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        data: dict[str, Any] = json.loads(row[0])
        return data

    def keep_snapshot(self, run_id: str, snapshot: Mapping[str, Any]) -> None:
        """Keep a run's snapshot if it has none yet; a kept snapshot is never replaced."""
        with self.transaction():
            self._keep_snapshot(run_id, snapshot)

    def _keep_snapshot(self, run_id: str, snapshot: Mapping[str, Any]) -> None:
        text = json.dumps(dict(snapshot), sort_keys=True, default=str)
        self.conn.execute("INSERT OR IGNORE INTO snapshots (run_id, snapshot) VALUES (?, ?)", (run_id, text))

    def update_run(self, run: RunRecord, *, event: str = "", message: str = "", **changes: Any) -> RunRecord:
        """Change a run and, when `event` is given, append the matching event in the same transaction.

        A message (with or without an event) becomes the run's latest message.
        """
        if message:
            changes.setdefault("message", message)
        updated = replace(run, updated_at=time.time(), **changes)
        row = updated.row()
        diff = {k: v for k, v in row.items() if run.row()[k] != v}
        with self.transaction():
            self.db.table("runs").update(run.id, diff)
            if event:
                self._event(run.model, run.id, event, updated.reason, message, run.commit_id)
        return updated

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return RunRecord.from_row(row) if row else None

    def ever_ran(self) -> bool:
        """Whether any run was ever recorded here (one index step)."""
        return self.conn.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is not None

    def active_runs(self) -> list[RunRecord]:
        rows = self.conn.execute(
            "SELECT * FROM runs WHERE phase NOT IN ('Registered', 'Failed', 'Cancelled') ORDER BY created_at, id"
        )
        return [RunRecord.from_row(r) for r in rows]

    def failed(self, wanted: Mapping[str, str] | None = None) -> dict[tuple[str, str, str], Failed]:
        """(model, run key, spec digest) -> how many runs ended Failed for it, and when and why the latest did
        (what a retry's backoff is measured from), for the run key each model wants: `wanted` (model -> run key),
        else the `wanted_key` of each model's row (what the settled-pass record digests).

        Read in the index of the failed runs alone (the runs registered cost nothing), whichever way is shorter:
        all of them when there are at most a quarter as many as models asking (reading one costs about four
        lookups: 10,000 of each took 40 and 10 ms), else each model's key looked up in it (failures of keys no
        longer wanted cost nothing either)."""
        (failures,) = self.conn.execute("SELECT count(*) FROM runs WHERE phase = 'Failed'").fetchone()
        asking = len(wanted) if wanted is not None else self.conn.execute("SELECT count(*) FROM models").fetchone()[0]
        params: tuple[str, ...] = ()
        if failures * 4 <= asking:
            source = "runs AS r" if wanted is not None else "runs AS r CROSS JOIN models AS w ON w.name = r.model"
            keyed = "" if wanted is not None else "AND r.run_key = w.wanted_key"
        else:
            keys = "(SELECT key AS name, value AS wanted_key FROM json_each(?))" if wanted is not None else "models"
            source, keyed = f"{keys} AS w CROSS JOIN runs AS r ON r.model = w.name", "AND r.run_key = w.wanted_key"
            params = (json.dumps(dict(wanted)),) if wanted is not None else ()
        rows = self.conn.execute(
            f"WITH f AS (SELECT r.model, r.run_key, r.spec_digest, count(*) AS n, max(r.rowid) AS newest FROM {source} "
            f"WHERE r.phase = 'Failed' {keyed} GROUP BY r.model, r.run_key, r.spec_digest) "
            "SELECT f.model, f.run_key, f.spec_digest, f.n, coalesce(x.ended_at, x.updated_at), x.reason "
            "FROM f JOIN runs AS x ON x.rowid = f.newest ORDER BY f.model, f.run_key, f.spec_digest",
            params,
        )
        return {(r[0], r[1], r[2]): Failed(r[3], float(r[4]), str(r[5] or ""))
                for r in rows if wanted is None or wanted.get(r[0]) == r[1]}  # fmt: skip

    def ended_runs(self, model: str, *, skip: int = 0) -> list[RunRecord]:
        """Ended runs of `model`, newest first, leaving out the newest `skip`."""
        rows = self.conn.execute(
            "SELECT * FROM runs WHERE model = ? AND phase IN ('Registered', 'Failed', 'Cancelled') "
            "ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?",
            (model, skip),
        )
        return [RunRecord.from_row(r) for r in rows]

    def last_finished_runs(self, models: Collection[str] | None = None) -> dict[str, RunRecord]:
        """The most recent terminal run of each model; of `models` only, when given (each found among the runs
        of that model, in its index: a pass that recomputes a few models' conditions reads a few models' runs,
        not every run ever recorded)."""
        if models is None:
            rows = self.conn.execute(
                "SELECT * FROM runs WHERE rowid IN (SELECT max(rowid) FROM runs "
                "WHERE phase IN ('Registered', 'Failed', 'Cancelled') GROUP BY model)"
            )
        else:
            rows = self.conn.execute(
                "SELECT r.* FROM json_each(?) AS k JOIN runs AS r ON r.rowid = (SELECT max(rowid) FROM runs "
                "WHERE model = k.value AND phase IN ('Registered', 'Failed', 'Cancelled'))",
                (json.dumps(sorted(models)),),
            )
        return {r["model"]: RunRecord.from_row(r) for r in rows}

    def gpu_runs(self, since: float) -> list[RunRecord]:
        """The runs with GPUs that ended at or after `since`, and those in flight (indexed: not the whole
        history)."""
        rows = self.conn.execute(
            "SELECT * FROM runs WHERE ended_at >= ? AND gpus > 0 AND phase IN ('Registered', 'Failed', 'Cancelled') "
            "UNION ALL SELECT * FROM runs WHERE phase NOT IN ('Registered', 'Failed', 'Cancelled') AND gpus > 0",
            (since,),
        )
        return [RunRecord.from_row(r) for r in rows]

    def runs_of_commit(self, commit: str) -> list[RunRecord]:
        """Every run started for `commit` (indexed)."""
        rows = self.conn.execute("SELECT * FROM runs WHERE commit_id = ? ORDER BY rowid", (commit,))
        return [RunRecord.from_row(r) for r in rows]

    # events ----------------------------------------------------------------------------------------------
    def event(
        self,
        model: str,
        kind: str,
        *,
        run_id: str | None = None,
        reason: str = "",
        message: str = "",
        commit_id: str | None = None,
    ) -> None:
        with self.transaction():
            self._event(model, run_id, kind, reason, message, commit_id)

    def _event(
        self, model: str, run_id: str | None, kind: str, reason: str, message: str, commit_id: str | None
    ) -> None:
        # Plain SQL: sqlite-utils spends ~100 us building each insert, and a first pass may record thousands.
        self.conn.execute(
            "INSERT INTO events (at, model, run_id, kind, reason, message, commit_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), model, run_id, kind, reason, message, commit_id),
        )

    def event_once(self, model: str, kind: str, *, reason: str, message: str, commit_id: str, ended_by: str) -> bool:
        """Append the event unless the newest word on its subject already says it: the newest event of `model`
        that is of `kind` with this `reason`, or of kind `ended_by`, is of `kind` with this message. For what a
        pass finds again and again (an alias refused): one event where it began, whatever the restarts, new
        processes and commits since, until it says something else or an `ended_by` event (an alias of the model
        moved) closes it. Whether it was appended. Asked first outside a transaction: a pass that finds ten
        thousand known refusals writes nothing."""
        if self._said(model, kind, reason, message, ended_by):
            return False
        with self.transaction():  # the lease makes this process the only writer; asked again inside all the same
            if self._said(model, kind, reason, message, ended_by):
                return False
            self._event(model, None, kind, reason, message, commit_id)
        return True

    def _said(self, model: str, kind: str, reason: str, message: str, ended_by: str) -> bool:
        newest = self.conn.execute(
            "SELECT seq, message FROM events WHERE model = ? AND kind = ? AND reason = ? ORDER BY seq DESC LIMIT 1",
            (model, kind, reason),
        ).fetchone()
        if newest is None or newest[1] != message:
            return False
        closed = self.conn.execute(
            "SELECT 1 FROM events WHERE model = ? AND kind = ? AND seq > ? LIMIT 1", (model, ended_by, newest[0])
        ).fetchone()
        return closed is None

    def last_event(self) -> int:
        """The sequence number of the newest event: it moves whenever any run or condition changes."""
        row = self.conn.execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def events(self, model: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        where, args = ("WHERE model = ?", [model]) if model else ("", [])
        rows = self.conn.execute(f"SELECT * FROM events {where} ORDER BY seq DESC LIMIT ?", [*args, limit])
        return [dict(r) for r in rows][::-1]

    # desired models and conditions -------------------------------------------------------------------------
    def models(self) -> dict[str, ModelRow]:
        """Every model's row by name (ten thousand in a large repository: read as plain tuples)."""
        cursor = self.conn.cursor()
        cursor.row_factory = None
        fields = ModelRow.__dataclass_fields__
        found = {}
        for values in cursor.execute(f"SELECT {', '.join(fields)} FROM models"):
            row = dict(zip(fields, values, strict=True))
            row["suspend"] = bool(row["suspend"])
            found[values[0]] = ModelRow(**row)
        return found

    def plan_lines(self) -> list[PlanLine]:
        """Every model's `PlanLine`, by name: plain tuples, for a plan of ten thousand models in a few ms."""
        cursor = self.conn.cursor()
        cursor.row_factory = None
        rows = cursor.execute(f"SELECT {', '.join(PlanLine._fields)} FROM models ORDER BY name")
        return list(map(PlanLine._make, rows))

    def settled_quiet(self, aliased: Collection[str]) -> tuple[list[PlanLine], int, int]:
        """For a brief plan of the settled commit: the `PlanLine` of each model whose line may say more than
        "unchanged" or "suspended" (blocked, declaring aliases, or among `aliased`: the models the registry holds
        aliases of; and any row with no wanted key, which the caller refuses), by name; then how many other rows
        there are and how many of those are suspended (each line `changeplan.unchanged` gives them is a quiet one).
        Two scans in SQLite, one tuple per model of note: ten thousand quiet models cost about a millisecond."""
        noted = "blocked != '' OR aliases != '{}' OR wanted_key = '' OR name IN (SELECT value FROM json_each(?))"
        names = json.dumps(sorted(aliased))
        cursor = self.conn.cursor()
        cursor.row_factory = None
        rows = cursor.execute(f"SELECT {', '.join(PlanLine._fields)} FROM models WHERE {noted} ORDER BY name", [names])
        lines = list(map(PlanLine._make, rows))
        quiet, suspended = cursor.execute(
            f"SELECT count(*), coalesce(sum(suspend != 0), 0) FROM models WHERE NOT ({noted})", [names]
        ).fetchone()
        return lines, quiet, suspended

    def sync_models(self, wanted: Mapping[str, ModelRow], known: Mapping[str, ModelRow]) -> None:
        """Make the `models` table equal `wanted`, writing only the rows that differ from `known`."""
        changed = [asdict(m) for name, m in wanted.items() if known.get(name) != m]
        removed = [name for name in known if name not in wanted]
        if not changed and not removed:
            return
        with self.transaction():
            if changed:
                self.db.table("models").upsert_all(changed, pk="name")
            for name in removed:
                self.conn.execute("DELETE FROM models WHERE name = ?", (name,))
                self.conn.execute("DELETE FROM conditions WHERE model = ?", (name,))

    def conditions(self) -> dict[str, Condition]:
        """Every model's condition by name; each type and reason found in a dict, not by calling its enum (a
        third of the time for ten thousand models); a value this gitopsd does not know raises ValueError."""
        types, reasons = _CONDITION_TYPES, _REASONS
        cursor = self.conn.cursor()
        cursor.row_factory = None
        rows = cursor.execute("SELECT model, type, reason, message FROM conditions")
        return {
            model: Condition(type=types.get(kind) or ConditionType(kind), reason=reasons.get(why) or Reason(why),
                             message=message)
            for model, kind, why, message in rows
        }  # fmt: skip

    def set_conditions(self, wanted: Mapping[str, Condition], known: Mapping[str, Condition]) -> None:
        """Write the conditions that changed; each change of reason is also an event."""
        changed = {name: c for name, c in wanted.items() if known.get(name) != c}
        if not changed:
            return
        now = time.time()
        with self.transaction():
            self.db.table("conditions").upsert_all(
                [
                    {
                        "model": n,
                        "type": str(c.type),
                        "reason": str(c.reason),
                        "message": c.message,
                        "updated_at": now,
                    }
                    for n, c in changed.items()
                ],
                pk="model",
            )
            for name, cond in changed.items():
                old = known.get(name)
                if old is None or old.reason != cond.reason:
                    self._event(name, None, f"Condition{cond.type}", str(cond.reason), cond.message, None)

    # source ----------------------------------------------------------------------------------------------
    def source(self) -> SourceRow | None:
        row = self.conn.execute("SELECT * FROM sources WHERE id = 1").fetchone()
        if row is None:
            return None
        data = dict(row)
        data.pop("id")
        return SourceRow(**data)

    def set_source(self, source: SourceRow) -> None:
        row = asdict(source)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        updates = ", ".join(f"{name} = excluded.{name}" for name in row)
        with self.transaction():
            self.conn.execute(
                f"INSERT INTO sources (id, {columns}) VALUES (1, {marks}) ON CONFLICT (id) DO UPDATE SET {updates}",
                tuple(row.values()),
            )
