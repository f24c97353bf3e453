"""What wakes a repository's reconcile worker: its coalescing queue, the poll timer and the bare-repo watch.

Each repository has one worker thread and one queue of depth one: a trigger that arrives while a pass runs
becomes exactly one more pass, so ten pushes in a second cost one or two passes and the last one sees the
newest commit. Triggers only enqueue; only the worker reconciles. While runs are in flight the worker also
passes on its own, backing off from 2 s to 30 s, so finished jobs are collected without any trigger. When
another process is in a pass of the same state directory (a `gitopsd reconcile` beside the daemon,
`reconcile.passlock`), the worker says so (and again every five minutes while it lasts) and tries again every
second, never blocking its thread on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gitopsd.errors import GitopsdError, retry_delay
from gitopsd.reconcile.passlock import PassBusy

log = logging.getLogger("gitopsd")

FOLLOW_UP_MIN_S = 2.0
FOLLOW_UP_MAX_S = 30.0
BUSY_RETRY_S = 1.0
HELD_UP_SAY_S = 300.0


class PassLike(Protocol):
    @property
    def active(self) -> int: ...


class Reconciling(Protocol):
    def reconcile(self, trigger: str = ...) -> Any: ...

    def retry_stalled(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class PassReport:
    repository: str
    trigger: str
    seconds: float
    result: Any
    error: str = ""


class Worker:
    """The one thread that reconciles one repository, and its coalescing queue."""

    def __init__(
        self,
        name: str,
        make: Callable[[], Reconciling],
        *,
        on_pass: Callable[[PassReport], None],
        beat_s: float = 30.0,
    ) -> None:
        self.name = name
        self._make = make
        self._on_pass = on_pass
        self._beat_s = beat_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: str | None = "startup"
        self._retry = threading.Event()
        self._held_since: float | None = None  # since when another process's pass holds this worker's up
        self._held_said = 0.0  # when that was last logged
        self.first_pass = threading.Event()
        self.last_beat = time.monotonic()
        self.thread = threading.Thread(target=self._loop, name=f"reconcile-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def request(self, trigger: str) -> None:
        """Ask for a pass; while one is pending, further requests coalesce into it."""
        with self._lock:
            if self._pending is None:
                self._pending = trigger
            self._wake.set()

    def retry_stalled(self) -> None:
        """The operator reloaded: retry the work that stalled on a permanent error, in a pass of its own."""
        self._retry.set()
        self.request("reload")

    def stop(self, timeout: float) -> bool:
        """Let the current pass finish, then end the thread; True if it ended in time."""
        self._stop.set()
        self._wake.set()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _take(self) -> str | None:
        with self._lock:
            trigger, self._pending = self._pending, None
            self._wake.clear()
            return trigger

    def _loop(self) -> None:
        reconciler: Reconciling | None = None
        follow_up: float | None = None
        due = float("inf")
        held_up: str | None = None  # the trigger of a pass another process's pass held up
        try:
            reconciler = self._start()
            while reconciler is not None and not self._stop.is_set():
                self.last_beat = time.monotonic()
                trigger = self._take()
                if self._retry.is_set():
                    self._retry.clear()
                    reconciler.retry_stalled()
                    trigger = trigger or "reload"
                if trigger is None and time.monotonic() >= due:
                    trigger = held_up or "runs"
                if trigger is not None:
                    done = self._pass(reconciler, trigger)
                    if done is None:  # held up: the same pass again in a moment
                        held_up, due = trigger, time.monotonic() + BUSY_RETRY_S
                        continue
                    held_up, (active, retry_at) = None, done
                    self.first_pass.set()
                    follow_up = (min((follow_up or FOLLOW_UP_MIN_S / 1.5) * 1.5, FOLLOW_UP_MAX_S)
                                 if active else None)  # fmt: skip
                    due = time.monotonic() + follow_up if follow_up else float("inf")
                    if retry_at is not None:  # a retry's backoff ends: pass then, without waiting for a poll
                        due = min(due, time.monotonic() + max(retry_at - time.time(), 0.0) + 0.05)
                    continue
                self._wake.wait(timeout=max(0.0, min(due - time.monotonic(), self._beat_s)))
        except Exception:
            log.exception("repository %s: the reconcile worker stopped", self.name)
        finally:
            if reconciler is not None:
                reconciler.close()

    def _start(self) -> Reconciling | None:
        """The worker's reconciler; one that cannot be made (a state directory that tracks another
        repository, a database that cannot be opened) is said in one line and tried again with backoff."""
        attempt = 0
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            try:
                return self._make()
            except GitopsdError as exc:
                attempt += 1
                delay = retry_delay(attempt)
                log.error("repository %s: cannot start reconciling (attempt %d, next in %.0f s): %s",
                          self.name, attempt, delay, exc)  # fmt: skip
                until = time.monotonic() + delay
                while not self._stop.is_set() and time.monotonic() < until:
                    self.last_beat = time.monotonic()  # waiting, not hung: the watchdog stays fed
                    self._stop.wait(min(until - time.monotonic(), self._beat_s))
        return None

    def _pass(self, reconciler: Reconciling, trigger: str) -> tuple[int, float | None] | None:
        """One pass; returns its runs in flight and when failed work falls due again (or None), or None when
        another process's pass in the same state directory held it up."""
        started = time.monotonic()
        try:
            result = reconciler.reconcile(trigger)
        except PassBusy as exc:
            if self._held_since is None:
                self._held_since = self._held_said = started
                log.info("repository %s: %s; this daemon's pass waits for it (tried again every %.0f s)",
                         self.name, exc, BUSY_RETRY_S)  # fmt: skip
            elif started - self._held_said >= HELD_UP_SAY_S:  # a long wait is said again, not only at its start
                self._held_said = started
                log.warning("repository %s: %s; this daemon's pass has waited for it for %.0f s", self.name, exc,
                            started - self._held_since)  # fmt: skip
            return None
        except Exception as exc:  # unknown errors are transient: log, report, try again on the next trigger
            log.exception("repository %s: pass failed: %s", self.name, exc)
            self._on_pass(PassReport(repository=self.name, trigger=trigger, seconds=time.monotonic() - started,
                                     result=None, error=str(exc)))  # fmt: skip
            return 1, None
        self._held_since = None
        self._on_pass(PassReport(repository=self.name, trigger=trigger, seconds=time.monotonic() - started,
                                 result=result))  # fmt: skip
        return int(result.active), getattr(result, "retry_at", None)


class BareRepoWatch:
    """Watches a local bare repository's refs (inotify, through watchfiles): a `git push` wakes the worker."""

    def __init__(self, path: Path, on_push: Callable[[], None]) -> None:
        self.path = path
        self._on_push = on_push
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"watch-{path.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def _loop(self) -> None:
        from watchfiles import watch

        refs = str(self.path / "refs" / "heads")  # branches only: our own audit tags land in refs/tags
        packed = str(self.path / "packed-refs")

        def is_ref(_: object, path: str) -> bool:
            return (path.startswith(refs) or path == packed) and not path.endswith(".lock")

        try:
            # A burst of pushes (step: 250 ms of quiet, at most 700 ms) becomes one trigger; one push still
            # reaches the worker in well under a second.
            for _changes in watch(self.path, watch_filter=is_ref, debounce=700, step=250, stop_event=self._stop,
                                  rust_timeout=5000, yield_on_timeout=False):  # fmt: skip
                self._on_push()
        except Exception:
            log.exception("watch of %s stopped", self.path)


class PollTimer:
    """Polls each repository at its interval, with jitter so many daemons do not hit a forge together."""

    def __init__(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.start()

    def every(self, name: str, seconds: int, action: Callable[[], None]) -> None:
        self._scheduler.add_job(action, "interval", seconds=seconds, jitter=max(1, seconds // 10), id=name,
                                replace_existing=True, coalesce=True, max_instances=1)  # fmt: skip

    def cancel(self, name: str) -> None:
        if self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)

    def shutdown(self) -> None:
        self._scheduler.shutdown(wait=False)
