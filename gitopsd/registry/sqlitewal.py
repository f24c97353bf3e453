"""Switching a SQLite database to WAL mode when several processes open it at once.

Every gitopsd database runs in WAL mode, and a new one is switched by whichever process opens it first. SQLite
does not always wait for a busy database while it changes journal modes (the busy handler is skipped for some
of the locks involved), so processes that open a new database at the same moment (a daemon and a command, or
the workers of a test) could fail with "database is locked" although the connection waits 30 s for any other
lock. `enable_wal` asks first (a database already in WAL mode needs no switch) and waits for the switch itself.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["enable_wal"]


def enable_wal(conn: sqlite3.Connection, *, timeout_s: float = 30.0) -> None:
    """Put `conn`'s database in WAL mode, retrying while it is locked, for at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
