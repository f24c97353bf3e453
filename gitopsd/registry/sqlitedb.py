"""How every gitopsd database is opened, written and migrated: WAL mode, write transactions that lock first,
numbered schema migrations.

Every gitopsd database runs in WAL mode, and a new one is switched by whichever process opens it first. SQLite
does not always wait for a busy database while it changes journal modes (the busy handler is skipped for some
of the locks involved), so processes that open a new database at the same moment (a daemon and a command, or
the workers of a test) could fail with "database is locked" although the connection waits 30 s for any other
lock. `enable_wal` asks first (a database already in WAL mode needs no switch) and waits for the switch itself.

A write is one `immediate` transaction: it takes the write lock at BEGIN, so two processes that read and then
write never deadlock upgrading their locks (one waits for the other instead), and it commits when its block
ends or rolls back whatever the block raised (a commit that fails too). A `snapshot` is the reader's side: the
queries of one block see one state of each database.

A schema is a list of numbered migrations, recorded in the database's `migrations` table as they are applied,
each in its own transaction; a process that waited for the write lock while another applied one skips it. A
database that a newer gitopsd migrated further is refused by name: its rows have columns this code does not
know, and reading them would fail somewhere less clear.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from gitopsd.errors import PermanentError

__all__ = ["enable_wal", "immediate", "migrate", "snapshot", "statements"]


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on `conn` (in autocommit mode, `isolation_level=None`): BEGIN IMMEDIATE, then COMMIT
    when the block ends, or ROLLBACK when it, or the commit, raises anything."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


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


@contextmanager
def snapshot(*conns: sqlite3.Connection | None) -> Iterator[None]:
    """Read transactions on `conns` (None: a database that does not exist), so that every query of the block sees
    each database as it was at its first read, whatever other processes write meanwhile."""
    opened = [conn for conn in conns if conn is not None]
    try:
        for conn in opened:
            conn.execute("BEGIN")
        yield
    finally:
        for conn in opened:
            if conn.in_transaction:
                conn.execute("ROLLBACK")


def migrate(conn: sqlite3.Connection, migrations: Sequence[tuple[int, str]], *, what: str) -> None:
    """Apply the `migrations` (number, SQL script) that `conn`'s database has not recorded, in order. `what`
    names the database in errors ("registry /x/registry.db"): a newer schema, a migration that fails."""
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (number INTEGER PRIMARY KEY, applied_at REAL)")
    known = max((number for number, _ in migrations), default=0)
    (newest,) = conn.execute("SELECT COALESCE(MAX(number), 0) FROM migrations").fetchone()
    if newest > known:
        raise PermanentError(
            f"{what} has schema migration {newest} but this gitopsd knows only up to {known}: it was written by a "
            "newer gitopsd; upgrade gitopsd"
        )
    done = {number for (number,) in conn.execute("SELECT number FROM migrations")}
    for number, sql in migrations:
        if number in done:
            continue
        try:
            with immediate(conn):
                # Another process may have applied it while this one waited for the write lock.
                if conn.execute("SELECT 1 FROM migrations WHERE number = ?", (number,)).fetchone() is None:
                    for statement in statements(sql):
                        conn.execute(statement)
                    conn.execute("INSERT INTO migrations (number, applied_at) VALUES (?, ?)", (number, time.time()))
        except sqlite3.Error as exc:
            raise PermanentError(f"{what}: migration {number} failed: {exc}") from exc


def statements(sql: str) -> list[str]:
    """A script cut into complete statements (a trigger's body keeps its inner semicolons)."""
    found: list[str] = []
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                found.append(pending.strip())
            pending = ""
    return found
