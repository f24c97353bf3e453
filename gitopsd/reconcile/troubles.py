"""The retry book: every piece of work that failed, whether it is retried and when, kept in `state.db`.

A pass that fails at something (collecting a run when the artifact store is down, any action that raised)
records it here under a key that names the work (`collect:RUN_ID`, `Submit:MODEL`). A transient failure gets
the next retry time from `errors.retry_delay`, and the work is skipped until then; a permanent one has no next
time: the work is not tried again until its input changes (the key's `input`, e.g. the operator's store
settings) or the operator reloads or restarts the daemon, which says "I fixed it" (`forgive_permanent`).
Success clears the entry. `status` reads the book, so no failure is silent: the model's condition carries the
attempt count and the next retry time, or Stalled with the message that names the fix.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gitopsd.errors import is_permanent, retry_delay
from gitopsd.model import Reason


@dataclass(frozen=True, kw_only=True)
class Trouble:
    """One piece of work that failed: what it was, why, how often, and when it is tried again."""

    key: str
    model: str
    what: str  # "storing the artifact of run blobs-1a2b", for a person
    reason: Reason
    message: str
    attempts: int
    first_at: float
    last_at: float
    next_at: float | None  # None: permanent, not retried until the input changes or the daemon is reloaded
    input: str = ""

    @property
    def subject(self) -> str:
        """What the work is about: the run id of `Collect:RUN_ID`, the model of `Submit:MODEL`."""
        return self.key.partition(":")[2]

    @property
    def permanent(self) -> bool:
        return self.next_at is None


def describe(exc: BaseException) -> str:
    """One line for a person: the message of an error gitopsd raised on purpose, the type of anything else."""
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, OSError | ValueError) and type(exc).__module__ != "gitopsd.errors":
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split())


class RetryBook:
    """The `troubles` table of `state.db`."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float]) -> None:
        self.conn = conn
        self.clock = clock
        self._cache: dict[str, Trouble] | None = None

    def all(self) -> dict[str, Trouble]:
        if self._cache is None:
            rows = self.conn.execute(
                "SELECT key, model, what, reason, message, attempts, first_at, last_at, next_at, input FROM troubles"
            ).fetchall()
            self._cache = {row[0]: _trouble(row) for row in rows}
        return self._cache

    def due(self, key: str, input: str = "") -> bool:
        """Whether the work under `key` may be tried now: never failed, its input changed, or its retry is due."""
        trouble = self.all().get(key)
        if trouble is None or trouble.input != input:
            return True
        return trouble.next_at is not None and self.clock() >= trouble.next_at

    def failed(
        self, key: str, *, model: str, what: str, reason: Reason, exc: BaseException, input: str = ""
    ) -> Trouble:
        """Record a failure of the work under `key`; returns the entry with its next retry (or none)."""
        now = self.clock()
        before = self.all().get(key)
        same = before is not None and before.input == input
        attempts = before.attempts + 1 if same and before is not None else 1
        trouble = Trouble(
            key=key,
            model=model,
            what=what,
            reason=reason,
            message=describe(exc),
            attempts=attempts,
            first_at=before.first_at if same and before is not None else now,
            last_at=now,
            next_at=None if is_permanent(exc) else now + retry_delay(attempts),
            input=input,
        )
        self.conn.execute(
            "INSERT OR REPLACE INTO troubles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (trouble.key, trouble.model, trouble.what, str(trouble.reason), trouble.message, trouble.attempts,
             trouble.first_at, trouble.last_at, trouble.next_at, trouble.input),
        )  # fmt: skip
        self.all()[key] = trouble
        return trouble

    def cleared(self, key: str) -> bool:
        """Forget the failures of the work under `key` (it succeeded); True when there were any."""
        if key not in self.all():
            return False
        self.conn.execute("DELETE FROM troubles WHERE key = ?", (key,))
        del self.all()[key]
        return True

    def forget_where(self, keep: Callable[[Trouble], bool]) -> None:
        """Drop every entry `keep` rejects (work that no longer exists: an ended run, a removed model)."""
        gone = [key for key, trouble in self.all().items() if not keep(trouble)]
        for key in gone:
            self.cleared(key)

    def forgive_permanent(self) -> int:
        """Make every permanent failure due again: the operator reloaded or restarted the daemon."""
        stalled = [t for t in self.all().values() if t.permanent]
        for trouble in stalled:
            self.conn.execute("UPDATE troubles SET next_at = ? WHERE key = ?", (0.0, trouble.key))
        self._cache = None
        return len(stalled)

    def by_model(self) -> Mapping[str, Trouble]:
        """The most pressing trouble of each model: a permanent one first, else the latest."""
        worst: dict[str, Trouble] = {}
        for trouble in self.all().values():
            held = worst.get(trouble.model)
            if held is None or (trouble.permanent, trouble.last_at) > (held.permanent, held.last_at):
                worst[trouble.model] = trouble
        return worst


def _trouble(row: tuple[object, ...] | sqlite3.Row) -> Trouble:
    key, model, what, reason, message, attempts, first_at, last_at, next_at, input_ = tuple(row)
    return Trouble(
        key=str(key),
        model=str(model),
        what=str(what),
        reason=Reason(reason) if reason in Reason._value2member_map_ else Reason.PROGRESSING,
        message=str(message),
        attempts=int(str(attempts)),
        first_at=float(str(first_at)),
        last_at=float(str(last_at)),
        next_at=None if next_at is None else float(str(next_at)),
        input=str(input_),
    )
