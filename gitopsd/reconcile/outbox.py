"""The durable outbox: work that must reach another system and survive its outages, kept in `state.db`.

An alias move is committed to `registry.db` at once, but its record must also reach the artifact store (so that
`registry rebuild` can restore it), and an audit tag must reach the Git remote. Either may be down. So the pass
writes an entry here in the same breath as the change it follows, and drains the outbox at its end: an entry
that goes through is deleted, one that fails waits `errors.retry_delay` and is shown by `status` ("1 alias
journal(s) waiting for the artifact store"). Entries are idempotent by (kind, subject): a second alias move of the
same model before the store came back is one entry, and its handler writes the model's whole journal.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gitopsd.errors import LeaseLost, retry_delay
from gitopsd.reconcile.troubles import describe

log = logging.getLogger("gitopsd")


@dataclass(frozen=True, kw_only=True)
class Entry:
    kind: str
    subject: str
    model: str
    payload: Mapping[str, Any]
    attempts: int
    next_at: float
    error: str


class Outbox:
    """The `outbox` table of `state.db`."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float]) -> None:
        self.conn = conn
        self.clock = clock

    def put(self, kind: str, subject: str, *, model: str, payload: Mapping[str, Any] | None = None) -> None:
        """Add (or refresh) an entry; it is due at once, and an earlier failure count is kept."""
        self.conn.execute(
            "INSERT INTO outbox (kind, subject, model, payload, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, subject) DO UPDATE SET payload = excluded.payload, next_at = 0",
            (kind, subject, model, json.dumps(dict(payload or {}), sort_keys=True), self.clock()),
        )

    def entries(self) -> list[Entry]:
        rows = self.conn.execute(
            "SELECT kind, subject, model, payload, attempts, next_at, error FROM outbox ORDER BY created_at"
        ).fetchall()
        return [
            Entry(kind=kind, subject=subject, model=model, payload=json.loads(payload), attempts=attempts,
                  next_at=next_at, error=error)
            for kind, subject, model, payload, attempts, next_at, error in rows
        ]  # fmt: skip

    def drain(self, handlers: Mapping[str, Callable[[Entry], None]]) -> int:
        """Hand every due entry to the handler of its kind; returns how many are still waiting."""
        now = self.clock()
        waiting = 0
        for entry in self.entries():
            if entry.next_at > now or entry.kind not in handlers:
                waiting += 1
                continue
            try:
                handlers[entry.kind](entry)
            except LeaseLost:  # this daemon may no longer act: the entry waits for the one that may
                raise
            except Exception as exc:  # an outage, or a bug in a handler: kept, retried with backoff, shown
                attempts = entry.attempts + 1
                delay = retry_delay(attempts)
                log.warning(
                    "%s: %s %s failed (attempt %d, retry in %.0f s): %s",
                    entry.model, entry.kind, entry.subject, attempts, delay, describe(exc),
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )  # fmt: skip
                self.conn.execute(
                    "UPDATE outbox SET attempts = ?, next_at = ?, error = ? WHERE kind = ? AND subject = ?",
                    (attempts, now + delay, describe(exc), entry.kind, entry.subject),
                )
                waiting += 1
                continue
            self.conn.execute("DELETE FROM outbox WHERE kind = ? AND subject = ?", (entry.kind, entry.subject))
            if entry.attempts:
                log.info("%s: %s %s went through after %d failed attempt(s)", entry.model, entry.kind,
                         entry.subject, entry.attempts)  # fmt: skip
        return waiting
