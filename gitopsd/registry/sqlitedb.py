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

A schema is a list of numbered migrations, recorded in the database's `migrations` table; those a database lacks
are applied together in one transaction, so that a reader never finds part of a schema (`created` tells a
database still being made, with no table yet, from a damaged one), and a process that waited for the write lock
while another applied them skips them. A database that a newer gitopsd migrated further is refused by name: its
rows have columns this code does not know, and reading them would fail somewhere less clear.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from gitopsd.errors import PermanentError

__all__ = ["created", "enable_wal", "immediate", "migrate", "recorded", "snapshot", "statements"]


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
    """Apply the `migrations` (number, SQL script) that `conn`'s database has not recorded, in order and in one
    transaction: another process sees the schema as it was or as it is after all of them, never part of it (a
    new database's tables appear together), and a migration that fails leaves none of them applied. `what`
    names the database in errors ("registry /x/registry.db"): a newer schema, a migration that fails."""
    known = max((number for number, _ in migrations), default=0)
    done = recorded(conn)
    _refuse_newer(done, known, what)
    if done >= {number for number, _ in migrations}:
        return  # nothing to apply: no write lock taken
    applying: int | None = None
    try:
        with immediate(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS migrations (number INTEGER PRIMARY KEY, applied_at REAL)")
            done = recorded(conn)  # again under the write lock: another process may have applied some meanwhile
            _refuse_newer(done, known, what)
            for number, sql in migrations:
                if number in done:
                    continue
                applying = number
                for statement in statements(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO migrations (number, applied_at) VALUES (?, ?)", (number, time.time()))
    except sqlite3.Error as exc:
        if applying is None:
            raise
        raise PermanentError(f"{what}: migration {applying} failed: {exc}") from exc


def recorded(conn: sqlite3.Connection) -> set[int]:
    """The migrations `conn`'s database records (none before its `migrations` table exists)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'").fetchone() is None:
        return set()
    return {number for (number,) in conn.execute("SELECT number FROM migrations")}


def _refuse_newer(done: set[int], known: int, what: str) -> None:
    newest = max(done, default=0)
    if newest > known:
        raise PermanentError(
            f"{what} has schema migration {newest} but this gitopsd knows only up to {known}: it was written by a "
            "newer gitopsd; upgrade gitopsd"
        )


def created(conn: sqlite3.Connection) -> bool:
    """Whether `conn`'s database has a schema yet. A process that creates a database makes the file before its
    first migration commits; a reader that finds no table in it has found a database still being created, not a
    damaged one."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone() is not None


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
