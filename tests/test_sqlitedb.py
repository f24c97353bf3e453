"""How every gitopsd database is opened, written and migrated (`gitopsd.registry.sqlitedb`): processes opening or
migrating a new database at once all end up on it in WAL mode with each migration applied once; a write
transaction commits whole or not at all; a database a newer gitopsd migrated is refused by name."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gitopsd.errors import PermanentError
from gitopsd.reconcile.state import StateStore
from gitopsd.registry.sqlitedb import created, enable_wal, immediate, migrate, snapshot, statements
from tests.race import race


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
        race(_open_and_write, path, 6)
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


TRIGGER = "CREATE TRIGGER t_keep BEFORE DELETE ON t BEGIN SELECT RAISE(ABORT, 'kept; always'); END;"
SCHEMA = (
    (1, f"CREATE TABLE t (x INTEGER);\n{TRIGGER}"),
    (2, "ALTER TABLE t ADD COLUMN y TEXT NOT NULL DEFAULT 'a;b';"),
)


def _open_and_migrate(path: str, _worker: int, start: Any) -> None:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    start.wait()
    enable_wal(conn)
    migrate(conn, SCHEMA, what=path)
    conn.close()


def test_processes_racing_to_migrate_a_new_database_apply_each_migration_once(tmp_path: Path) -> None:
    for attempt in range(3):
        path = tmp_path / f"race{attempt}.db"
        race(_open_and_migrate, path, 4)
        conn = sqlite3.connect(path)
        assert [n for (n,) in conn.execute("SELECT number FROM migrations ORDER BY number")] == [1, 2]
        conn.close()


def test_a_script_is_cut_into_statements_that_keep_trigger_bodies_and_strings_whole() -> None:
    assert statements(SCHEMA[0][1]) == ["CREATE TABLE t (x INTEGER);", TRIGGER]
    assert statements(SCHEMA[1][1]) == [SCHEMA[1][1]]


def _write(conn: sqlite3.Connection, *sql: str, interrupt: bool = False) -> None:
    with immediate(conn):
        for statement in sql:
            conn.execute(statement)
        if interrupt:
            raise KeyboardInterrupt


def test_a_write_commits_whole_or_not_at_all(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    migrate(conn, SCHEMA, what="w.db")
    with immediate(conn):
        conn.execute("INSERT INTO t (x) VALUES (1)")
    with pytest.raises(KeyboardInterrupt):
        _write(conn, "INSERT INTO t (x) VALUES (2)", interrupt=True)
    with pytest.raises(sqlite3.IntegrityError):
        _write(conn, "INSERT INTO t (x) VALUES (3)", "DELETE FROM t")  # the trigger aborts the second
    assert not conn.in_transaction
    assert [x for (x,) in conn.execute("SELECT x FROM t")] == [1]


def test_a_failing_migration_is_named_and_leaves_none_of_the_pending_ones_applied(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    broken = (*SCHEMA, (3, "CREATE TABLE u (x); CREATE TABLE t (x);"))
    with pytest.raises(PermanentError, match=r"m\.db: migration 3 failed: table t already exists"):
        migrate(conn, broken, what="m.db")
    assert not created(conn), "a new database gets its whole schema or none of it"
    migrate(conn, SCHEMA[:1], what="m.db")
    with pytest.raises(PermanentError, match=r"m\.db: migration 3 failed"):
        migrate(conn, broken, what="m.db")
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'u'").fetchone() is None
    assert [c[1] for c in conn.execute("PRAGMA table_info(t)")] == ["x"], "migration 2 went back with 3"
    assert [n for (n,) in conn.execute("SELECT number FROM migrations")] == [1]
    migrate(conn, SCHEMA, what="m.db")
    assert [n for (n,) in conn.execute("SELECT number FROM migrations")] == [1, 2] and created(conn)


def test_a_reader_finds_no_schema_or_all_of_it_while_a_new_database_is_made(tmp_path: Path) -> None:
    writer = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    enable_wal(writer)  # the file exists from here on, with no table yet
    reader = sqlite3.connect(f"{(tmp_path / 'r.db').as_uri()}?mode=ro", uri=True, isolation_level=None)
    assert not created(reader)
    writer.execute("BEGIN IMMEDIATE")  # a migration another process holds open: the reader still sees nothing
    writer.execute("CREATE TABLE half (x)")
    assert not created(reader)
    writer.execute("ROLLBACK")
    migrate(writer, SCHEMA, what="r.db")
    assert created(reader)
    assert {n for (n,) in reader.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"migrations", "t"}


def test_a_database_a_newer_gitopsd_migrated_is_refused_by_name(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "n.db", isolation_level=None)
    migrate(conn, SCHEMA, what="n.db")
    with pytest.raises(PermanentError, match=r"n\.db has schema migration 2 but this gitopsd knows only up to 1"):
        migrate(conn, SCHEMA[:1], what="n.db")


def test_a_snapshot_sees_one_state_of_each_database_whatever_is_written_meanwhile(tmp_path: Path) -> None:
    writer = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    enable_wal(writer)
    migrate(writer, SCHEMA, what="s.db")
    _write(writer, "INSERT INTO t (x) VALUES (1)")
    reader = sqlite3.connect(f"{(tmp_path / 's.db').as_uri()}?mode=ro", uri=True, isolation_level=None)
    with snapshot(reader, None):
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 1
        _write(writer, "INSERT INTO t (x) VALUES (2)")
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    assert not reader.in_transaction
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 2


def test_a_read_only_state_store_writes_nothing_and_wants_this_codes_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    before = path.read_bytes()
    with StateStore(path, readonly=True) as store:
        assert store.models() == {}
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.conn.execute("DELETE FROM models")
    assert path.read_bytes() == before
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DELETE FROM migrations WHERE number = (SELECT MAX(number) FROM migrations)")
    conn.close()
    with pytest.raises(PermanentError, match="a pass updates it"):
        StateStore(path, readonly=True)
