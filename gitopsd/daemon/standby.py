"""Active or standby: one daemon per repository acts, whatever the number of login nodes running gitopsd.

With `[standby]` in the configuration, each repository gets an `Elector`: a thread that holds the
repository's lease (`lease`, `leasefile`) while this daemon is active, renewing it every `renew` seconds, and
that polls it as often while standing by, claiming the next generation once the lease has expired. Its
`fence()` is what the reconciler calls before every side effect (submit, cancel, registration, alias move,
outbox): an in-memory check, no I/O, that raises `LeaseLost` once the lease is not held or has lapsed (a
daemon paused past its lease wakes up unable to act). `Leased` wraps the repository's reconciler: a standby
does no pass at all, and a pass after a take-over first brings `registry.db` up to date with the artifact store
(the reconciler adopts the old daemon's runs on every pass). The elector writes `STATE_DIR/<repo>/lease.json`
for `gitopsd status`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gitopsd.daemon.lease import (
    Holder,
    LeaseRecord,
    Sighting,
    Timing,
    acts_until,
    claim,
    expired,
    released,
    renewed,
    sighted,
)
from gitopsd.daemon.leasefile import LeaseDir
from gitopsd.errors import GitopsdError, LeaseLost
from gitopsd.reconcile.reconciler import PassResult, Reconciler
from gitopsd.reconcile.statusview import LEASE_FILE

log = logging.getLogger("gitopsd")

STATUS_FILE = LEASE_FILE
ACTIVE, STANDBY = "active", "standby"


def boottime() -> float:
    """The local clock of the lease rules: it keeps counting while this process is stopped or the host sleeps."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def this_holder() -> Holder:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    return Holder(host=socket.gethostname(), pid=os.getpid(), boot_id=boot_id, started_at=time.time(),
                  nonce=secrets.token_hex(8))  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Role:
    """What this daemon is for one repository, and why (what `status` shows)."""

    role: str
    generation: int
    why: str
    since: float
    record: LeaseRecord | None


class Elector:
    """Holds or watches one repository's lease; see the module docstring."""

    def __init__(
        self,
        repository: str,
        lease: LeaseDir,
        timing: Timing,
        *,
        status_path: Path,
        identity: str = "",
        on_active: Callable[[], None] = lambda: None,
        holder: Holder | None = None,
        clock: Callable[[], float] = boottime,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.repository = repository
        self.lease = lease
        self.timing = timing
        self.status_path = status_path
        self.identity = identity
        self.holder = holder or this_holder()
        self.on_active = on_active
        self.clock = clock
        self.wall = wall
        self._lock = threading.Lock()
        self._record: LeaseRecord | None = None  # ours, while active
        self._acts_until = float("-inf")
        self._sighting: Sighting | None = None
        self._role = Role(role=STANDBY, generation=0, why="starting", since=wall(), record=None)
        self._warned = ""
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"lease-{repository}", daemon=True)

    # what the reconciler sees ----------------------------------------------------------------------------------
    @property
    def role(self) -> Role:
        return self._role

    @property
    def generation(self) -> int | None:
        """The generation this daemon acts under, None while it stands by."""
        with self._lock:
            return self._record.generation if self._record is not None else None

    def fence(self) -> None:
        """Raise `LeaseLost` unless this daemon holds the lease now (no I/O: the heartbeat thread does that)."""
        with self._lock:
            record, until = self._record, self._acts_until
        if record is None:
            raise LeaseLost(f"repository {self.repository}: this daemon is standing by: {self._role.why}")
        if self.clock() >= until:
            raise LeaseLost(
                f"repository {self.repository}: the lease of generation {record.generation} lapsed (not renewed for "
                f"{self.timing.ttl - self.timing.max_clock_skew:g} s: this daemon was paused, or the lease directory "
                f"{self.lease.path} did not answer); nothing more is done until it is held again"
            )

    # the heartbeat ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the heartbeat; an active daemon releases its lease so a standby takes over at once."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
        with self._lock:
            record, self._record = self._record, None
        if record is not None:
            try:
                self.lease.write(released(record, wall=self.wall()))
                log.info("repository %s: lease of generation %d released", self.repository, record.generation)
            except GitopsdError as exc:
                log.warning("repository %s: lease not released (a standby takes over when it expires): %s",
                            self.repository, exc)  # fmt: skip

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the heartbeat must outlive any bug; without it the daemon only stands by
                log.exception("repository %s: lease heartbeat failed", self.repository)
            self._stop.wait(self.timing.renew)

    def step(self) -> None:
        """One heartbeat: renew the lease while active, else look at it and take it over once it expired."""
        if self._record is not None and self._renew():
            self._report()
            return
        self._watch()
        self._report()

    def _renew(self) -> bool:
        """Renew our lease; False when it is no longer ours to renew (lost, or lapsed while we were paused)."""
        record = self._record
        assert record is not None
        started = self.clock()
        if started >= self._acts_until:
            self._step_down(f"the lease of generation {record.generation} lapsed before it was renewed")
            return False
        try:
            newest = self.lease.newest()
            if newest != record.generation:
                holder = self.lease.read()
                who = holder.holder.shown if holder else "another daemon"
                self._step_down(f"{who} claimed generation {newest}")
                return False
            fresh = renewed(record, wall=self.wall(), timing=self.timing)
            self.lease.write(fresh)
        except GitopsdError as exc:
            self._warn(f"lease not renewed (acting until it lapses in {self._acts_until - started:.0f} s): {exc}")
            return True
        with self._lock:
            self._record = fresh
            self._acts_until = acts_until(started, self.timing)
        self._warned = ""
        if fresh.beat % 100 == 0:
            self.lease.prune(fresh.generation)
        return True

    def _watch(self) -> None:
        local = self.clock()
        try:
            current = self.lease.read()
        except GitopsdError as exc:
            self._unknown(f"lease not readable, standing by: {exc}")
            return
        self._sighting = sighted(self._sighting, current, local=local)
        why = expired(self._sighting, local=local, wall=self.wall(), timing=self.timing)
        if why is None:
            assert current is not None
            self._standing_by(current, f"{current.holder.shown} is active")
            return
        generation = (current.generation if current else 0) + 1
        mine = claim(generation, self.holder, wall=self.wall(), timing=self.timing, repository=self.identity)
        try:
            won = self.lease.claim(mine)
        except GitopsdError as exc:
            self._unknown(f"lease not claimed, standing by: {exc}")
            return
        if not won:
            self._sighting = None
            self._standing_by(current, f"another daemon claimed generation {generation} first")
            return
        with self._lock:
            self._record = mine
            self._acts_until = acts_until(local, self.timing)
        self._role = Role(role=ACTIVE, generation=generation, why=why, since=self.wall(), record=mine)
        self._sighting = None
        log.warning("repository %s: this daemon (%s) is now active, lease generation %d: %s", self.repository,
                    self.holder.shown, generation, why)  # fmt: skip
        if current is not None and current.repository and self.identity and current.repository != self.identity:
            log.error("repository %s: the lease was last held for another repository (%s, this one is %s): two "
                      "repositories of the same name share lease_dir", self.repository, current.repository,
                      self.identity)  # fmt: skip
        self.on_active()

    def _step_down(self, why: str) -> None:
        with self._lock:
            self._record = None
            self._acts_until = float("-inf")
        self._sighting = None
        log.warning("repository %s: this daemon stopped acting and stands by: %s", self.repository, why)
        self._role = Role(role=STANDBY, generation=self._role.generation, why=why, since=self.wall(), record=None)

    def _standing_by(self, current: LeaseRecord | None, why: str) -> None:
        previous = self._role
        if previous.role != STANDBY or previous.generation != (current.generation if current else 0):
            log.info("repository %s: standing by: %s (lease generation %d)", self.repository, why,
                     current.generation if current else 0)  # fmt: skip
            since = self.wall()
        else:
            since = previous.since
        self._role = Role(role=STANDBY, generation=current.generation if current else 0, why=why, since=since,
                          record=current)  # fmt: skip

    def _unknown(self, why: str) -> None:
        """Standing by because the lease cannot be read or claimed now: said once in the log, and in status."""
        self._warn(why)
        self._role = replace(self._role, why=why, record=None)

    def _warn(self, message: str) -> None:
        if message != self._warned:
            log.warning("repository %s: %s", self.repository, message)
            self._warned = message

    def _report(self) -> None:
        """Write what `gitopsd status` shows of the lease (best effort: status is not worth a pass)."""
        role = self._role
        record = self._record if role.role == ACTIVE else role.record
        doc: dict[str, Any] = {
            "role": role.role,
            "host": self.holder.host,
            "pid": self.holder.pid,
            "generation": role.generation,
            "why": role.why,
            "since": role.since,
            "ttl": self.timing.ttl,
            "active_host": record.holder.host if record is not None else None,
            "active_pid": record.holder.pid if record is not None else None,
            "renewed_at": record.renewed_at if record is not None else None,
            "expires_at": record.expires_at if record is not None else None,
            "lease_dir": str(self.lease.path),
            "written_at": self.wall(),
        }
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_path.with_name(f".{self.status_path.name}.tmp")
            tmp.write_text(json.dumps(doc, sort_keys=True) + "\n")
            tmp.replace(self.status_path)
        except OSError as exc:
            self._warn(f"cannot write {self.status_path}: {exc.strerror or exc}")


class Leased:
    """A repository's reconciler behind its lease: passes only while active (see the module docstring)."""

    def __init__(self, inner: Reconciler, elector: Elector) -> None:
        self.inner = inner
        self.elector = elector
        self._generation: int | None = None

    def reconcile(self, trigger: str = "cli") -> PassResult:
        generation = self.elector.generation
        if generation is None:
            return PassResult(commit=None, actions=(), active=0)
        try:
            self.elector.fence()
            if generation != self._generation:
                self.inner.take_over()
                self._generation = generation
            return self.inner.reconcile(trigger)
        except LeaseLost as exc:
            log.warning("%s", exc)
            return PassResult(commit=None, actions=(), active=0, error=str(exc))

    def retry_stalled(self) -> int:
        return self.inner.retry_stalled()

    def close(self) -> None:
        self.inner.close()
