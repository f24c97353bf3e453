"""GPU leases in a small SQLite file, so that two runs never share a GPU, even across processes and restarts.

A lease says "device UUID is held by run R (run directory D), since T". The device UUID is the primary key, so
SQLite itself refuses a second lease on a device. Choosing devices and writing their leases happen in one
`BEGIN IMMEDIATE` transaction (`acquire`), so two daemons, or two threads, placing at the same moment see each
other's leases. Leases are recovered rather than trusted after a crash: every `acquire` first asks the caller
whether each holder's run is still alive (the backend checks the run's supervisor) and drops the leases of
runs that are not. Plain `sqlite3`, one short-lived connection per operation, WAL journal.

Every gitopsd that places on the same GPUs must use one file (`lease_file`): by default the daemon's shared state
directory, so that two repositories of one daemon never lease the same device.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gitopsd.backends.protocol import SHARED_STATE_ENV

BUSY_TIMEOUT_MS = 30_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    uuid      TEXT PRIMARY KEY,
    run_id    TEXT NOT NULL,
    run_dir   TEXT NOT NULL,
    backend   TEXT NOT NULL,
    leased_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_run ON leases (run_id);
"""


def lease_file(state_dir: Path, configured: str | None, shared: str | Path | None = None) -> Path:
    """The `leases` setting; else the lease book in the state directory shared by every repository of this
    gitopsd (`shared`, by default `$GITOPSD_SHARED_STATE_DIR`, which the daemon exports); else the backend's
    own state directory."""
    if configured:
        return Path(configured)
    shared = shared or os.environ.get(SHARED_STATE_ENV)
    return (Path(shared) if shared else state_dir) / "nvidia" / "leases.db"


def leased_devices(path: Path) -> dict[str, str]:
    """Device UUID -> run id of every lease in the book at `path`, for reading only ({} if there is none)."""
    if not path.is_file():
        return {}
    return {lease.uuid: lease.run_id for lease in LeaseBook(path).all()}


@dataclass(frozen=True, kw_only=True)
class Lease:
    uuid: str
    run_id: str
    run_dir: Path
    backend: str
    leased_at: float


class LeaseBook:
    """The leases of one state directory. See the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:  # switching to WAL does not wait for a busy database, so wait here
            try:
                with self._connect() as conn:
                    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        conn.execute("PRAGMA journal_mode=WAL")
                    conn.executescript(SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _rows(conn: sqlite3.Connection, where: str = "", args: tuple[str, ...] = ()) -> list[Lease]:
        rows = conn.execute(f"SELECT uuid, run_id, run_dir, backend, leased_at FROM leases {where} ORDER BY uuid", args)
        return [
            Lease(uuid=uuid, run_id=run_id, run_dir=Path(run_dir), backend=backend, leased_at=leased_at)
            for uuid, run_id, run_dir, backend, leased_at in rows
        ]

    def all(self) -> list[Lease]:
        with self._connect() as conn:
            return self._rows(conn)

    def held_by(self, run_id: str) -> list[Lease]:
        with self._connect() as conn:
            return self._rows(conn, "WHERE run_id = ?", (run_id,))

    def acquire(
        self,
        *,
        run_id: str,
        run_dir: Path,
        backend: str,
        choose: Callable[[Mapping[str, str]], Sequence[str]],
        alive: Callable[[Lease], bool],
    ) -> list[Lease]:
        """Lease the devices `choose` picks for this run; return the run's leases (empty: nothing was free).

        In one transaction: leases whose holder is not `alive` are dropped; a run that already holds leases
        keeps them (a submit repeated after a crash); otherwise `choose(leased)` gets the live leases as
        {UUID: run id} and returns the UUIDs to lease (empty for none).
        """
        with self._transaction() as conn:
            for lease in self._rows(conn):
                if lease.run_id != run_id and not alive(lease):
                    conn.execute("DELETE FROM leases WHERE uuid = ? AND run_id = ?", (lease.uuid, lease.run_id))
            mine = self._rows(conn, "WHERE run_id = ?", (run_id,))
            if mine:
                return mine
            leased = {lease.uuid: lease.run_id for lease in self._rows(conn)}
            now = time.time()
            for uuid in choose(leased):
                conn.execute(
                    "INSERT INTO leases (uuid, run_id, run_dir, backend, leased_at) VALUES (?, ?, ?, ?, ?)",
                    (uuid, run_id, str(run_dir), backend, now),
                )
            return self._rows(conn, "WHERE run_id = ?", (run_id,))

    def release(self, run_id: str) -> int:
        """Drop every lease of the run; return how many there were. Releasing twice is not an error."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM leases WHERE run_id = ?", (run_id,)).rowcount

    def sweep(self, alive: Callable[[Lease], bool]) -> list[Lease]:
        """Drop the leases whose holder is no longer alive; return them."""
        with self._transaction() as conn:
            dead = [lease for lease in self._rows(conn) if not alive(lease)]
            for lease in dead:
                conn.execute("DELETE FROM leases WHERE uuid = ? AND run_id = ?", (lease.uuid, lease.run_id))
            return dead
