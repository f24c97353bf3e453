"""Several processes opening a new gitopsd database at once all end up on it in WAL mode."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gitopsd.registry.sqlitewal import enable_wal


def _open_and_write(path: str, worker: int, start: Any) -> None:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    start.wait()
    enable_wal(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS t (worker INTEGER)")
    conn.execute("INSERT INTO t VALUES (?)", (worker,))
    conn.close()


def test_processes_racing_to_open_a_new_database_all_switch_it_to_wal(tmp_path: Path) -> None:
    for attempt in range(5):  # the race is in the first moments of a new file: give it several new files
        path = tmp_path / f"race{attempt}.db"
        ctx = multiprocessing.get_context("fork")
        start = ctx.Event()
        procs = [ctx.Process(target=_open_and_write, args=(str(path), w, start)) for w in range(6)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0] * 6
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert sorted(r[0] for r in conn.execute("SELECT worker FROM t")) == list(range(6))
        conn.close()


def test_a_database_held_past_the_deadline_is_still_an_error(tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / "held.db", isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # nobody else may even read it
    waiter = sqlite3.connect(tmp_path / "held.db", timeout=0.05, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enable_wal(waiter, timeout_s=0.3)
    holder.execute("COMMIT")
    enable_wal(waiter, timeout_s=0.3)
    assert waiter.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
