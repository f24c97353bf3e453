"""The durable queue of notifications in `state.db`, and what goes into it after each pass.

After a pass, and before the next one, the repository's worker reads what the pass recorded (new rows of the
append-only `events` table past a cursor kept per sink, the models' conditions, the source row's rejection) and
turns them into deliveries: one INSERT transaction that also moves the sink's cursor, so a crash either keeps
both or neither, nothing is missed over a restart and nothing is queued twice (each delivery also has a key,
unique per sink). Sending is the courier's (`daemon/courier.py`), on its own thread. A sink that stays down
cannot grow the queue without bound: past its `max_pending`, its oldest deliveries are dropped, counted and
logged. `gitopsd status` and `/metrics` read the same tables.

What is derived, purely (`notices`): for a status sink, the commit status of the applied commit (pending while
any model reconciles, failure naming the models that stalled, success when every model is Ready) once per
change of (commit, state, description), and a failure on a rejected commit; for an event sink, version
registered, gate failed, training failed, alias moved and commit rejected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from gitopsd.daemon.config import STATUS_KINDS, NotificationConfig
from gitopsd.daemon.forges import shorten
from gitopsd.registry.sqlitedb import immediate
from gitopsd.source.redact import redact_text

log = logging.getLogger("gitopsd")

EVENTS_PER_ROUND = 1000
"""The most events one enqueue reads; the rest wait for the next pass (the cursor says where it stopped)."""

_REJECTED = {"SpecInvalid": "spec invalid", "SignatureInvalid": "signature invalid"}
_ALIAS = re.compile(r"^alias (?P<alias>\S+) (?P<kind>\S+): (?P<before>\S+) -> (?P<after>\S+)$")


@dataclass(frozen=True, kw_only=True)
class Notice:
    """One thing to deliver to one sink."""

    kind: str  # "status" or "event"
    key: str  # unique per sink: the same key is never queued twice
    subject: str  # statuses: the commit (a newer status of it supersedes a waiting one)
    payload: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class Cursor:
    """How far a sink has been given the repository's history."""

    event_seq: int
    status: str = ""  # "sha|state|description" of the last status queued for the applied commit
    rejected: str = ""  # the last rejected commit queued


@dataclass(frozen=True, kw_only=True)
class Facts:
    """What one pass left in `state.db` that notifications are made of."""

    repository: str
    events: Sequence[Mapping[str, Any]]  # rows of `events` (with the run's `version`), oldest first
    applied: str | None
    conditions: Mapping[str, tuple[str, str]]  # model -> (condition type, reason)
    rejected: tuple[str, str, str] | None = None  # (commit, reason, error) of a rejected commit
    last_seq: int = 0


@dataclass(frozen=True, kw_only=True)
class Delivery:
    seq: int
    sink: str
    key: str
    kind: str
    subject: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    attempts: int = 0
    next_at: float = 0.0
    stalled: bool = False
    error: str = ""

    @property
    def delivery_id(self) -> str:
        """The id receivers dedupe by: the same for every attempt of this delivery, across restarts."""
        return hashlib.sha256(f"{self.payload.get('repository')}\0{self.sink}\0{self.key}".encode()).hexdigest()[:32]


def commit_status(applied: str | None, conditions: Mapping[str, tuple[str, str]]) -> tuple[str, str] | None:
    """(state, description) of the applied commit: pending, failure or success. None before any commit."""
    if applied is None:
        return None
    reconciling = sorted(m for m, (kind, _) in conditions.items() if kind == "Reconciling")
    stalled = sorted((m, reason) for m, (kind, reason) in conditions.items()
                     if kind == "Stalled" and reason != "Suspended")  # fmt: skip
    total = len(conditions)
    if reconciling:
        ready = sum(1 for kind, _ in conditions.values() if kind == "Ready")
        return "pending", f"{ready}/{total} ready; training: {', '.join(reconciling)}"
    if stalled:
        return "failure", "failed: " + ", ".join(f"{m} ({reason})" for m, reason in stalled)
    return "success", f"{total} model(s) ready" if total else "no models declared"


def event_payload(row: Mapping[str, Any], repository: str) -> dict[str, Any] | None:
    """The notification an event row stands for, or None for an event nobody is notified of."""
    kind, reason = str(row["kind"]), str(row.get("reason") or "")
    if kind == "Registered":
        event = "version-registered"
    elif kind == "Failed":
        event = "gate-failed" if reason == "GateFailed" else "training-failed"
    elif kind == "AliasMoved":
        event = "alias-moved"
    else:
        return None
    payload: dict[str, Any] = {
        "event": event, "repository": repository, "model": row["model"], "commit": row.get("commit_id") or None,
        "run_id": row.get("run_id") or None, "reason": reason, "at": float(row["at"]),
        "message": shorten(redact_text(str(row.get("message") or "")), 1000),
    }  # fmt: skip
    if event == "version-registered":
        payload["version"] = row.get("version")
    if event == "alias-moved":
        match = _ALIAS.match(str(row.get("message") or ""))
        if match:
            payload |= {"alias": match["alias"], "from": _version(match["before"]), "to": _version(match["after"])}
    return payload


def _version(text: str) -> int | None:
    _, _, number = text.rpartition("@")
    return int(number) if number.isascii() and number.isdigit() else None


def notices(sink: NotificationConfig, cursor: Cursor, facts: Facts, *, now: float) -> tuple[list[Notice], Cursor]:
    """What `sink` is to be sent after a pass that left `facts`, and its cursor afterwards. Pure."""
    out: list[Notice] = []
    status, rejected = cursor.status, cursor.rejected
    if sink.kind in STATUS_KINDS:
        state = commit_status(facts.applied, facts.conditions)
        if state is not None and facts.applied is not None:
            value = f"{facts.applied}|{state[0]}|{state[1]}"
            if value != status:
                digest = hashlib.sha256(value.encode()).hexdigest()[:16]
                out.append(Notice(kind="status", key=f"status:{digest}", subject=facts.applied,
                                  payload={"repository": facts.repository, "sha": facts.applied, "state": state[0],
                                           "description": state[1]}))  # fmt: skip
                status = value
        if facts.rejected is not None and facts.rejected[0] != rejected:
            commit, reason, error = facts.rejected
            description = f"{_REJECTED.get(reason, reason)}: {redact_text(error)}"
            out.append(Notice(kind="status", key=f"rejected:{commit}", subject=commit,
                              payload={"repository": facts.repository, "sha": commit, "state": "failure",
                                       "description": description}))  # fmt: skip
            rejected = commit
        return out, Cursor(event_seq=facts.last_seq, status=status, rejected=rejected)
    wanted = set(sink.events) if sink.events is not None else None
    for row in facts.events:
        payload = event_payload(row, facts.repository)
        if payload is not None and (wanted is None or payload["event"] in wanted):
            out.append(Notice(kind="event", key=f"event:{row['seq']}", subject=str(row["model"]), payload=payload))
    if facts.rejected is not None and facts.rejected[0] != rejected:
        commit, reason, error = facts.rejected
        if wanted is None or "commit-rejected" in wanted:
            payload = {"event": "commit-rejected", "repository": facts.repository, "model": None, "commit": commit,
                       "reason": reason, "at": now, "message": shorten(redact_text(error), 1000)}  # fmt: skip
            out.append(Notice(kind="event", key=f"rejected:{commit}", subject=commit, payload=payload))
        rejected = commit
    return out, Cursor(event_seq=facts.last_seq, status=status, rejected=rejected)


class DeliveryQueue:
    """The `deliveries`, `delivery_cursors` and `delivery_counts` tables of one repository's `state.db`."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float]) -> None:
        self.conn = conn
        self.clock = clock

    # reading what a pass left ---------------------------------------------------------------------------------
    def facts(self, repository: str, since: int) -> Facts:
        events = [dict(r) for r in self.conn.execute(
            "SELECT e.seq, e.at, e.model, e.run_id, e.kind, e.reason, e.message, e.commit_id, r.version "
            "FROM events e LEFT JOIN runs r ON r.id = e.run_id WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
            (since, EVENTS_PER_ROUND),
        )]  # fmt: skip
        last_seq = int(events[-1]["seq"]) if events else since
        source = self.conn.execute(
            "SELECT fetched_commit, applied_commit, error_reason, error FROM sources WHERE id = 1"
        ).fetchone()
        rows = self.conn.execute("SELECT c.model, c.type, c.reason FROM conditions c JOIN models m ON m.name = c.model")
        conditions = {str(r[0]): (str(r[1]), str(r[2])) for r in rows}
        applied = source[1] if source else None
        rejected = None
        if source and source[2] in _REJECTED and source[0] and source[0] != applied:
            rejected = (str(source[0]), str(source[2]), str(source[3]))
        return Facts(repository=repository, events=events, applied=applied, conditions=conditions,
                     rejected=rejected, last_seq=last_seq)  # fmt: skip

    def marker(self) -> tuple[Any, ...]:
        """What changes whenever a pass recorded anything notifications are made of: the newest event (every
        change of a run or of a condition's reason is one) and the source row (a new applied or rejected commit)."""
        row = self.conn.execute(
            "SELECT fetched_commit, applied_commit, error_reason FROM sources WHERE id = 1"
        ).fetchone()
        return (self.last_event(), *(tuple(row) if row else ()))

    def last_event(self, before: float | None = None) -> int:
        where, args = ("WHERE at < ?", (before,)) if before is not None else ("", ())
        row = self.conn.execute(f"SELECT max(seq) FROM events {where}", args).fetchone()
        return int(row[0] or 0)

    def cursor(self, sink: str) -> Cursor | None:
        row = self.conn.execute(
            "SELECT event_seq, status, rejected FROM delivery_cursors WHERE sink = ?", (sink,)
        ).fetchone()
        return Cursor(event_seq=int(row[0]), status=str(row[1]), rejected=str(row[2])) if row else None

    # writing ---------------------------------------------------------------------------------------------------
    def enqueue(self, sink: NotificationConfig, found: Sequence[Notice], cursor: Cursor) -> int:
        """Queue `found` for `sink` and move its cursor, in one transaction; returns how many old deliveries
        were dropped to keep the sink within its `max_pending`."""
        now = self.clock()
        with immediate(self.conn):
            for notice in found:
                if notice.kind == "status":  # a newer status of the same commit makes a waiting one moot
                    self.conn.execute("DELETE FROM deliveries WHERE sink = ? AND kind = 'status' AND subject = ?",
                                      (sink.name, notice.subject))  # fmt: skip
                self.conn.execute(
                    "INSERT OR IGNORE INTO deliveries (sink, key, kind, subject, payload, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (sink.name, notice.key, notice.kind, notice.subject, json.dumps(dict(notice.payload)), now),
                )
            self.conn.execute(
                "INSERT INTO delivery_cursors (sink, event_seq, status, rejected) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sink) DO UPDATE SET event_seq = excluded.event_seq, status = excluded.status, "
                "rejected = excluded.rejected",
                (sink.name, cursor.event_seq, cursor.status, cursor.rejected),
            )
            dropped = self._bound(sink)
        return dropped

    def _bound(self, sink: NotificationConfig) -> int:
        count = self.conn.execute("SELECT count(*) FROM deliveries WHERE sink = ?", (sink.name,)).fetchone()[0]
        extra = int(count) - sink.max_pending
        if extra <= 0:
            return 0
        self.conn.execute(
            "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries WHERE sink = ? ORDER BY seq LIMIT ?)",
            (sink.name, extra),
        )
        self._count(sink.name, "dropped", extra)
        return extra

    def _count(self, sink: str, result: str, n: int = 1) -> None:
        self.conn.execute(
            "INSERT INTO delivery_counts (sink, result, count) VALUES (?, ?, ?) "
            "ON CONFLICT (sink, result) DO UPDATE SET count = count + excluded.count",
            (sink, result, n),
        )

    def due(self, sink: str) -> list[Delivery]:
        rows = self.conn.execute(
            "SELECT seq, sink, key, kind, subject, payload, attempts, next_at, stalled, error FROM deliveries "
            "WHERE sink = ? AND next_at <= ? ORDER BY seq",
            (sink, self.clock()),
        ).fetchall()
        return [Delivery(seq=r[0], sink=r[1], key=r[2], kind=r[3], subject=r[4], payload=json.loads(r[5]),
                         attempts=r[6], next_at=r[7], stalled=bool(r[8]), error=r[9]) for r in rows]  # fmt: skip

    def delivered(self, delivery: Delivery) -> None:
        with self._transaction():
            self.conn.execute("DELETE FROM deliveries WHERE seq = ?", (delivery.seq,))
            self._count(delivery.sink, "delivered")

    def failed(self, delivery: Delivery, *, next_at: float, error: str, stall: bool, sink_wide: bool) -> None:
        """Record a failed attempt; the delivery waits until `next_at`. `sink_wide`: every other waiting
        delivery of the sink waits as long and carries the same error (the sink is down, or refuses us)."""
        with self._transaction():
            self.conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_at = ?, stalled = ?, error = ? WHERE seq = ?",
                (next_at, int(stall), error, delivery.seq),
            )
            if sink_wide:
                self.conn.execute(
                    "UPDATE deliveries SET next_at = max(next_at, ?), stalled = ?, error = ? "
                    "WHERE sink = ? AND seq != ?",
                    (next_at, int(stall), error, delivery.sink, delivery.seq),
                )
            self._count(delivery.sink, "failed")

    def forgive(self) -> int:
        """Make the stalled deliveries due again (a reload: the operator may have fixed the token)."""
        with self._transaction():
            return self.conn.execute("UPDATE deliveries SET next_at = 0, stalled = 0 WHERE stalled = 1").rowcount

    def forget_sinks(self, keep: set[str]) -> int:
        """Drop the deliveries and cursors of sinks no longer configured (one added again starts afresh);
        returns how many deliveries were dropped."""
        rows = self.conn.execute("SELECT sink FROM deliveries UNION SELECT sink FROM delivery_cursors").fetchall()
        gone = [str(r[0]) for r in rows if r[0] not in keep]
        dropped = 0
        if gone:
            with self._transaction():
                for sink in gone:
                    dropped += self.conn.execute("DELETE FROM deliveries WHERE sink = ?", (sink,)).rowcount
                    self.conn.execute("DELETE FROM delivery_cursors WHERE sink = ?", (sink,))
        return dropped

    def next_due(self) -> float | None:
        row = self.conn.execute("SELECT min(next_at) FROM deliveries").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self.conn)
