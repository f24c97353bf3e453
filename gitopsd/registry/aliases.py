"""Aliases (`production`, `staging`, …) declared in Git, moved by the daemon, remembered forever.

A model spec says where each alias should point: a version number or `latest`. The daemon moves an alias only
onto a registered version (a version exists only if it passed its gates) and refuses anything else with a
reason. Every move is an append-only row in the registry with the commit that asked for it, so rolling back is
a `git revert` and the history shows both moves. Planning the moves is pure; `AliasBook` stores them.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass
from typing import Any

from gitopsd.registry.sqlitedb import immediate

LATEST = "latest"


@dataclass(frozen=True, kw_only=True)
class AliasMove:
    model: str
    alias: str
    version: int | None
    previous: int | None


@dataclass(frozen=True, kw_only=True)
class AliasRecord:
    """One row of the alias history."""

    model: str
    alias: str
    version: int | None
    previous: int | None
    kind: str
    commit_id: str
    subject: str
    at: float


def plan_aliases(
    model: str, declared: Mapping[str, int | str], versions: Set[int], current: Mapping[str, int]
) -> tuple[list[AliasMove], list[str]]:
    """The moves that make `current` what Git declares, and a reason for each alias that cannot move now."""
    moves: list[AliasMove] = []
    refused: list[str] = []
    latest = max(versions) if versions else None
    for alias, target in sorted(declared.items()):
        wanted = latest if target == LATEST else int(target)
        if wanted is None:
            refused.append(f"alias {alias}: {model} has no version yet")
            continue
        if wanted not in versions:
            known = f"latest is {model}@{latest}" if latest else "none is registered yet"
            refused.append(
                f"alias {alias} -> {model}@{wanted} refused: no such registered version "
                f"(a version exists only once its run passed its gates; {known})"
            )
            continue
        if current.get(alias) != wanted:
            moves.append(AliasMove(model=model, alias=alias, version=wanted, previous=current.get(alias)))
    for alias in sorted(set(current) - set(declared)):
        moves.append(AliasMove(model=model, alias=alias, version=None, previous=current[alias]))
    return moves, refused


def alias_targets(
    declared: Iterable[tuple[str, Mapping[str, int | str]]], current: Iterable[tuple[str, str]]
) -> dict[str, set[int]]:
    """model -> the version numbers its aliases name, for each model that declares an alias (`declared`: model,
    aliases) or holds one in the registry (`current`: (model, alias) keys): what `Registry.alias_numbers` must
    read of each for `plan_aliases` (and `gitopsd plan`)."""
    named: dict[str, set[int]] = {model: set() for model, _ in current}
    for model, aliases in declared:
        if aliases:
            named.setdefault(model, set()).update(t for t in aliases.values() if isinstance(t, int))
    return named


def kind_of(move: AliasMove, subject: str) -> str:
    if move.version is None:
        return "removed"
    if move.previous is None:
        return "set"
    if move.version < move.previous or subject.startswith("Revert"):
        return "rolled back"
    return "moved"


class AliasBook:
    """Alias positions and their history, in the registry database."""

    def __init__(self, conn: sqlite3.Connection | None, *, schema: str = "main") -> None:
        """`schema`: the name the registry database has on `conn` ("reg" where state.db attached it, as
        `gitopsd status` and the dashboard read it)."""
        self.conn = conn
        self.schema = schema

    def current(self, model: str | None = None) -> dict[tuple[str, str], int]:
        """(model, alias) -> version, for every alias that points somewhere now: read from `alias_current`, which
        a trigger keeps as moves are appended, so the cost follows the aliases, not the length of their history.
        A registry opened read-only before a pass applied that migration is read from the moves themselves."""
        if self.conn is None:
            return {}
        where, args = ("AND model = ?", (model,)) if model else ("", ())
        db = self.schema
        try:
            rows = self.conn.execute(
                f"SELECT model, alias, version FROM {db}.alias_current WHERE version IS NOT NULL {where}", args
            )
        except sqlite3.OperationalError:  # no such table: an older registry, read-only
            rows = self.conn.execute(
                f"SELECT model, alias, version FROM {db}.alias_moves WHERE version IS NOT NULL AND seq IN "
                f"(SELECT max(seq) FROM {db}.alias_moves WHERE true {where} GROUP BY model, alias)",
                args,
            )
        return {(m, a): v for m, a, v in rows}

    def newest_move(self) -> tuple[Any, ...]:
        """The newest move's sequence number and what it did (model, alias, version): moves are only ever
        appended (the triggers refuse the rest), so this changes exactly when any alias moves. The settled-pass
        record digests this, not every alias's position (a scan of all moves)."""
        if self.conn is None:
            return ()
        found = self.conn.execute(
            "SELECT seq, model, alias, version FROM alias_moves WHERE seq = (SELECT max(seq) FROM alias_moves)"
        ).fetchone()
        return tuple(found) if found else ()

    def record(self, moves: list[AliasMove], *, commit: str, subject: str) -> list[AliasRecord]:
        """Append the moves, in one transaction."""
        if not moves or self.conn is None:
            return []
        now = time.time()
        records = [
            AliasRecord(model=m.model, alias=m.alias, version=m.version, previous=m.previous,
                        kind=kind_of(m, subject), commit_id=commit, subject=subject, at=now)
            for m in moves
        ]  # fmt: skip
        self._insert(records)
        return records

    def history(self, model: str | None = None) -> list[AliasRecord]:
        return list(self.moves(model))

    def moves(self, model: str | None = None, *, by_time: bool = False) -> Iterator[AliasRecord]:
        """The moves in the order they were made (`by_time`: by their time, then that order), one at a time."""
        if self.conn is None:
            return
        where, args = ("WHERE model = ?", (model,)) if model else ("", ())
        order = "at, seq" if by_time else "seq"
        rows = self.conn.execute(
            f"SELECT model, alias, version, previous, kind, commit_id, subject, at FROM alias_moves {where} "
            f"ORDER BY {order}",
            args,
        )
        for r in rows:
            yield AliasRecord(model=r[0], alias=r[1], version=r[2], previous=r[3], kind=r[4], commit_id=r[5],
                              subject=r[6], at=r[7])  # fmt: skip

    def restore(self, records: list[AliasRecord]) -> None:
        """Replay recorded moves into an empty alias history (disaster recovery)."""
        if records and self.conn is not None:
            self._insert(records)

    def _insert(self, records: list[AliasRecord]) -> None:
        assert self.conn is not None
        with immediate(self.conn):
            self.conn.executemany(
                "INSERT INTO alias_moves (model, alias, version, previous, kind, commit_id, subject, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.model, r.alias, r.version, r.previous, r.kind, r.commit_id, r.subject, r.at) for r in records],
            )
