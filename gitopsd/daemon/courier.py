"""The courier: one thread per repository that sends its queued notifications, so no sink ever blocks a pass.

The worker calls `enqueue` after each pass (reads and INSERTs in `state.db`, no network); the courier's own
thread sends what is due, with the standard library and the sink's timeout, one request at a time. Credentials
are resolved from their references at send time, so a rotated token takes effect at once and no secret is ever
written to `state.db`; every message that could quote one (an error, an answer's body) has it replaced by ***.
Retries: a timeout, a refused connection, 408, 429 and 5xx wait `errors.retry_delay` (or the sink's
Retry-After, if longer), and hold the sink's other deliveries as long (it is down); a refusal that waiting cannot
mend (401, 403, 404, 422, other 4xx, a redirect, a secret that cannot be resolved) stalls: retried after a
reload (SIGHUP) or an hour. Stopping waits at most the grace it is given: a request in flight is repeated after
the restart (at-least-once; webhook receivers dedupe by the delivery id).
"""

from __future__ import annotations

import http.client
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitopsd.daemon.config import STATUS_KINDS, NotificationConfig, resolve_secret
from gitopsd.daemon.deliveries import EVENTS_PER_ROUND, Cursor, Delivery, DeliveryQueue, notices
from gitopsd.daemon.forges import (
    Outcome,
    Request,
    classify,
    slack_request,
    status_request,
    webhook_request,
)
from gitopsd.errors import GitopsdError, PermanentError, retry_delay
from gitopsd.reconcile.troubles import describe
from gitopsd.registry.sqlitedb import enable_wal
from gitopsd.units import format_time

log = logging.getLogger("gitopsd")

STALL_RETRY_S = 3600.0
"""How long a stalled delivery waits when no reload comes first."""
ANSWER_MAX_BYTES = 65536
IDLE_WAKE_S = 30.0


@dataclass(frozen=True, kw_only=True)
class Answer:
    status: int | None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""


Sender = Callable[[Request, float], Answer]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered, not followed: it would carry the credential to wherever it points."""

    def redirect_request(self, *_: object, **__: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def http_send(request: Request, timeout: float) -> Answer:
    """One HTTP request with the standard library; an answer, or why none came."""
    if not request.url.startswith(("https://", "http://")):
        return Answer(status=None, error="not an http(s) URL")
    sent = urllib.request.Request(request.url, data=request.body, headers=dict(request.headers),
                                  method=request.method)  # fmt: skip
    try:
        with _OPENER.open(sent, timeout=timeout) as answer:
            return Answer(status=answer.status, body=answer.read(ANSWER_MAX_BYTES), headers=dict(answer.headers))
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(ANSWER_MAX_BYTES)
        except (OSError, http.client.HTTPException):
            body = b""
        return Answer(status=exc.code, body=body, headers=dict(exc.headers or {}))
    except TimeoutError:
        return Answer(status=None, error=f"no answer within {timeout:.0f} s")
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return Answer(status=None, error=f"no answer within {timeout:.0f} s")
        return Answer(status=None, error=f"cannot connect: {getattr(reason, 'strerror', None) or reason}")
    except (OSError, http.client.HTTPException) as exc:
        return Answer(status=None, error=f"connection failed: {describe(exc)}")


class Courier:
    """Queues (after each pass) and delivers (on its own thread) one repository's notifications."""

    def __init__(self, repository: str, state_db: Path, sinks: Sequence[NotificationConfig], *,
                 clock: Callable[[], float] = time.time, send: Sender = http_send) -> None:  # fmt: skip
        self.repository = repository
        self.state_db = state_db
        self.clock = clock
        self.send = send
        self._lock = threading.Lock()
        self._queue: DeliveryQueue | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sinks: tuple[NotificationConfig, ...] = ()
        self._seen_at: dict[str, float] = {}
        self._marker: tuple[Any, ...] | None = None
        self.configure(sinks)
        self.thread = threading.Thread(target=self._loop, name=f"notify-{repository}", daemon=True)

    # configuration -------------------------------------------------------------------------------------------
    def configure(self, sinks: Sequence[NotificationConfig]) -> None:
        """The sinks that serve this repository (at start and on reload); a new one starts from now."""
        mine = tuple(s for s in sinks if s.serves(self.repository))
        now = self.clock()
        with self._lock:  # not in the middle of an enqueue
            self._seen_at = {sink.name: self._seen_at.get(sink.name, now) for sink in mine}
            self._sinks = mine
            self._marker = None  # look again: a new sink starts its cursor, a removed one leaves

    def _db(self) -> DeliveryQueue | None:
        """The queue, once the first pass has created `state.db` and its tables."""
        if self._stop.is_set():
            return None
        if self._queue is None and self.state_db.exists():
            conn = _shared_connection(self.state_db)
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'deliveries'").fetchone() is None:
                conn.close()
                return None
            self._queue = DeliveryQueue(conn, self.clock)
            if self._queue.forgive():  # a start, like a reload: the operator may have fixed what stalled
                log.info("notifications: retrying the stalled deliveries of %s", self.repository)
        return self._queue

    # after a pass (the worker's thread) -----------------------------------------------------------------------
    def enqueue(self) -> int:
        """Queue what the last pass recorded, for every sink; returns how many deliveries were queued. Never
        raises: a notification problem must not touch the pass."""
        queued = 0
        try:
            with self._lock:
                queue = self._db()
                if queue is None:
                    return 0
                marker = queue.marker()
                if marker == self._marker:  # a pass that changed nothing (most of them): nothing to read
                    return 0
                gone = queue.forget_sinks({s.name for s in self._sinks})
                if gone:
                    log.warning("notifications: %d undelivered notification(s) of sinks no longer configured for "
                                "%s dropped", gone, self.repository)  # fmt: skip
                if not self._sinks:
                    self._marker = marker
                    return 0
                for sink in self._sinks:
                    cursor = queue.cursor(sink.name) or Cursor(
                        event_seq=queue.last_event(before=self._seen_at.get(sink.name))
                    )
                    dropped, more = 0, True
                    while more:  # a long history comes in slices, each queued with its cursor
                        facts = queue.facts(self.repository, cursor.event_seq)
                        more = len(facts.events) >= EVENTS_PER_ROUND
                        found, moved = notices(sink, cursor, facts, now=self.clock())
                        if found or moved != cursor:
                            dropped += queue.enqueue(sink, found, moved)
                            queued += len(found)
                        cursor = moved
                    if dropped:
                        log.warning("notifications: %s keeps failing; its %d oldest undelivered notification(s) "
                                    "were dropped (max_pending = %d)", sink.name, dropped,
                                    sink.max_pending)  # fmt: skip
                self._marker = marker
        except Exception as exc:  # a bug or a locked database must not stop the worker
            log.error("notifications for %s not queued: %s", self.repository, describe(exc))
        if queued:
            self._wake.set()
        return queued

    def retry_stalled(self) -> int:
        with self._lock:
            queue = self._db()
            count = queue.forgive() if queue is not None else 0
        if count:
            log.info("notifications: retrying %d stalled delivery(ies) of %s", count, self.repository)
            self._wake.set()
        return count

    # delivering (the courier's thread) ------------------------------------------------------------------------
    def deliver_due(self) -> None:
        """Send every due delivery, sink by sink, oldest first; a sink that fails is left for its retry."""
        for sink in self._sinks:
            with self._lock:
                queue = self._db()
                due = queue.due(sink.name) if queue is not None else []
            for delivery in due:
                if self._stop.is_set():
                    return
                outcome = self._attempt(sink, delivery)
                if not self._record(sink, delivery, outcome):
                    break

    def _attempt(self, sink: NotificationConfig, delivery: Delivery) -> Outcome:
        secrets: list[str] = []
        try:
            request = self._request(sink, delivery, secrets)
        except GitopsdError as exc:
            return Outcome(stall=True, sink_wide=True, message=_scrub(str(exc), secrets))
        except (ValueError, KeyError) as exc:
            return Outcome(stall=True, message=f"cannot build the request: {_scrub(describe(exc), secrets)}")
        answer = self.send(request, float(sink.timeout))
        outcome = classify(sink, answer.status, answer.body, answer.headers, answer.error, now=self.clock())
        return Outcome(delivered=outcome.delivered, stall=outcome.stall, sink_wide=outcome.sink_wide,
                       retry_after_s=outcome.retry_after_s, message=_scrub(outcome.message, secrets))  # fmt: skip

    def _request(self, sink: NotificationConfig, delivery: Delivery, secrets: list[str]) -> Request:
        if sink.kind in STATUS_KINDS:
            token = _text(resolve_secret(str(sink.token)), str(sink.token))
            secrets.append(token)
            return status_request(sink, token, delivery.payload, self.repository)
        if sink.kind == "slack":
            url = _text(resolve_secret(str(sink.url)), str(sink.url))
            secrets.append(url)
            return slack_request(url, delivery.payload)
        key = resolve_secret(str(sink.secret))
        secrets.append(key.decode(errors="replace"))
        return webhook_request(sink.api(), key, delivery.payload, delivery=delivery.delivery_id, now=self.clock())

    def _record(self, sink: NotificationConfig, delivery: Delivery, outcome: Outcome) -> bool:
        """Write down what became of one attempt; False when the sink's other deliveries must wait."""
        now = self.clock()
        what = f"{delivery.kind} {delivery.key}"
        with self._lock:
            queue = self._db()
            if queue is None:
                return False
            if outcome.delivered:
                queue.delivered(delivery)
                if delivery.attempts:
                    log.info("notifications: %s delivered to %s after %d failed attempt(s)", what, sink.name,
                             delivery.attempts)  # fmt: skip
                return True
            attempts = delivery.attempts + 1
            if outcome.stall:
                next_at = now + STALL_RETRY_S
                queue.failed(delivery, next_at=next_at, error=outcome.message, stall=True,
                             sink_wide=outcome.sink_wide)  # fmt: skip
                log.error("notifications: %s stalled: %s; fix it and reload the daemon (SIGHUP), or it is tried "
                          "again at %s", sink.name, outcome.message, format_time(next_at))  # fmt: skip
                return not outcome.sink_wide
            delay = max(retry_delay(attempts), outcome.retry_after_s or 0.0)
            queue.failed(delivery, next_at=now + delay, error=outcome.message, stall=False, sink_wide=True)
        log.warning("notifications: %s to %s failed (attempt %d, next retry at %s): %s", what, sink.name, attempts,
                    format_time(now + delay), outcome.message)  # fmt: skip
        return False

    # the thread -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Stop after the request in flight, waiting at most `timeout` s; whether the thread ended."""
        self._stop.set()
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
        with self._lock:  # no enqueue or record runs now; one that comes later finds the courier stopped
            if self._queue is not None:
                self._queue.conn.close()
                self._queue = None
        return not self.thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
                with self._lock:
                    queue = self._db() if self._sinks else None
                    due = queue.next_due() if queue is not None else None
            except Exception as exc:  # shown, then tried again; the thread must live on
                log.error("notifications for %s: %s", self.repository, describe(exc))
                due = self.clock() + IDLE_WAKE_S
            wait = IDLE_WAKE_S if due is None else min(IDLE_WAKE_S, max(0.05, due - self.clock()))
            self._wake.wait(wait)
            self._wake.clear()


def _shared_connection(path: Path) -> sqlite3.Connection:
    """A connection the worker (enqueue) and the courier's thread share, one at a time under the lock."""
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    enable_wal(conn)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _text(secret: bytes, ref: str) -> str:
    try:
        return secret.decode()
    except UnicodeDecodeError:
        raise PermanentError(f"secret {ref} is not UTF-8 text") from None


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret of this request replaced by ***."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
