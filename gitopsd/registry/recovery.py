"""The self-describing store: every version and alias move also lives as an immutable JSON record next to the
artifacts, so the registry can be rebuilt from the store alone after a disaster.

Version `NAME@N` is the record `records/NAME/N`. The alias moves of model NAME are the records
`records/ALIASES.NAME/1, 2, …` in the order they happened (model names are lowercase, so the upper-case prefix
can never collide with a model). The training environments versions name by digest are the records
`records/ENVIRONMENT.<hex>/1` (`environments`). `rebuild` replays all three into an empty registry database.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gitopsd.errors import IntegrityError, PermanentError
from gitopsd.registry import environments
from gitopsd.registry.aliases import AliasBook, AliasRecord
from gitopsd.registry.sqlitedb import immediate
from gitopsd.registry.store import ArtifactRef, ArtifactStore
from gitopsd.registry.versions import Registry, Version

ALIASES_PREFIX = "ALIASES."


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, indent=1, allow_nan=False).encode() + b"\n"


def version_record(version: Version) -> bytes:
    return _encode({"record": "version", **asdict(version)})


def parse_version(raw: bytes, where: str) -> Version:
    try:
        data = json.loads(raw)
        data.pop("record", None)
        data["artifact"] = ArtifactRef(**data["artifact"])
        return Version(**data)
    except (ValueError, TypeError, KeyError) as exc:
        raise IntegrityError(f"version record {where} is not readable: {exc}") from exc


def parse_environment(name: str, number: int, raw: bytes) -> environments.Environment:
    """The environment in the store's record `name` (`ENVIRONMENT.<hex>`); `IntegrityError` when the record does
    not hash to its name, which a rebuild refuses rather than restore an environment no version can trust."""
    hex_digest = name.removeprefix(environments.PREFIX)
    if number != 1:
        raise IntegrityError(f"record {name}@{number}: an environment record is number 1")
    try:
        return environments.parse_record(raw, hex_digest)
    except IntegrityError as exc:
        raise IntegrityError(
            f"record {name}@{number}: {exc}; move it out of the store's records/ to rebuild without it (the "
            "versions that name it then show their environment as unknown)"
        ) from None


def save_version(store: ArtifactStore, version: Version) -> None:
    """Write the version's record (idempotent: the same version always gives the same bytes)."""
    store.put_record(version.model, version.number, version_record(version))


def save_alias_journal(store: ArtifactStore, book: AliasBook, model: str) -> None:
    """Write the model's alias moves to its journal in the store, numbered in order (idempotent: records the
    store already holds are written again with the same bytes)."""
    for index, record in enumerate(book.history(model), start=1):
        store.put_record(ALIASES_PREFIX + model, index, _encode({"record": "alias-move", **asdict(record)}))


def journal_problems(store: ArtifactStore, book: AliasBook, models: list[str]) -> list[str]:
    """What the store's alias journals lack or hold differently from the registry's alias history: a move that
    never reached the store would be lost by `rebuild` (the daemon's outbox sends it once the store is back)."""
    problems = []
    for model in models:
        history = book.history(model)
        for index, record in enumerate(history, start=1):
            stored = store.get_record(ALIASES_PREFIX + model, index)
            if stored != _encode({"record": "alias-move", **asdict(record)}):
                problems.append(
                    f"alias journal of {model} in {store.uri}: move {index} of {len(history)} "
                    f"({record.alias} -> {record.version}) is {'missing' if stored is None else 'different'}; "
                    "the daemon sends it while its outbox waits for the store (see gitopsd status)"
                )
                break
    return problems


def restore_lost(store: ArtifactStore, registry_path: Path) -> tuple[int, int] | None:
    """Rebuild `registry_path` from the store when it holds no version but the store holds records (the
    registry was lost); None when there is nothing to restore. Numbering must never start again at 1 while
    the store keeps `NAME@1`."""
    if registry_path.exists():
        with Registry(registry_path, readonly=True) as registry:
            if not registry.empty():
                return None
    if next(iter(store.records()), None) is None:
        return None
    for leftover in (registry_path, *registry_path.parent.glob(registry_path.name + "-*")):
        leftover.unlink(missing_ok=True)  # an empty registry (and its WAL files), created before the check
    return rebuild(store, registry_path)


def import_missing(store: ArtifactStore, registry: Registry) -> tuple[int, int]:
    """Bring `registry` up to date with its store: insert the versions and alias moves whose records it lacks
    (another daemon registered them: a take-over, see `[standby]`). Returns (versions, alias moves) imported.
    A record whose number the registry holds for another run is an IntegrityError: two daemons numbered apart."""
    conn = registry.conn
    assert conn is not None
    known = {(v.model, v.number): v for v in registry.list()}
    book = AliasBook(conn)
    had: dict[str, int] = {}
    versions: list[Version] = []
    journals: dict[str, list[tuple[int, bytes]]] = {}
    found: list[environments.Environment] = []
    for name, number, raw in store.records():
        if name.startswith(ALIASES_PREFIX):
            journals.setdefault(name.removeprefix(ALIASES_PREFIX), []).append((number, raw))
            continue
        if name.startswith(environments.PREFIX):
            found.append(parse_environment(name, number, raw))
            continue
        version = parse_version(raw, f"{name}@{number}")
        if (version.model, version.number) != (name, number):
            raise IntegrityError(f"record {name}@{number} describes {version.label}")
        mine = known.get((name, number))
        if mine is None:
            versions.append(version)
        elif mine.run_id != version.run_id:
            raise IntegrityError(
                f"{name}@{number} is run {version.run_id} in the artifact store {store.uri} but run {mine.run_id} in "
                f"{registry.path}: two daemons registered the same number; move registry.db away and run "
                "`gitopsd registry rebuild`"
            )
    moves: list[AliasRecord] = []
    for model, journal in sorted(journals.items()):
        had[model] = len(book.history(model))
        for index, raw in sorted(journal):
            if index > had[model]:
                data = json.loads(raw)
                data.pop("record", None)
                moves.append(AliasRecord(**data))
    if versions or found:
        with immediate(conn):
            environments.insert(conn, found)
            _insert_versions(conn, versions)
    book.restore(moves)
    return len(versions), len(moves)


def _insert_versions(conn: sqlite3.Connection, versions: list[Version]) -> None:
    conn.executemany(
        "INSERT INTO versions (model, number, run_id, run_key, artifact_sha256, artifact_size, "
        "artifact_uri, metrics, gates, lineage, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (v.model, v.number, v.run_id, v.run_key, v.artifact.sha256, v.artifact.size, v.artifact.uri,
             json.dumps(v.metrics, sort_keys=True), json.dumps(v.gates, sort_keys=True),
             json.dumps(v.lineage, sort_keys=True), v.created_at)
            for v in versions
        ],
    )  # fmt: skip


def rebuild(store: ArtifactStore, registry_path: Path) -> tuple[int, int]:
    """Create `registry_path` from the store's records; returns (versions, alias moves) restored."""
    if registry_path.exists():
        raise PermanentError(f"{registry_path} exists: move it away first; rebuild never overwrites a registry")
    versions: list[Version] = []
    moves: list[AliasRecord] = []
    found: list[environments.Environment] = []
    for name, number, raw in store.records():
        where = f"{name}@{number}"
        if name.startswith(ALIASES_PREFIX):
            data = json.loads(raw)
            data.pop("record", None)
            moves.append(AliasRecord(**data))
        elif name.startswith(environments.PREFIX):
            found.append(parse_environment(name, number, raw))
        else:
            version = parse_version(raw, where)
            if (version.model, version.number) != (name, number):
                raise IntegrityError(f"record {where} describes {version.label}")
            versions.append(version)
    with Registry(registry_path) as registry:
        conn = registry.conn
        assert conn is not None
        with immediate(conn):
            environments.insert(conn, found)
            _insert_versions(conn, versions)
        moves.sort(key=lambda m: m.at)
        AliasBook(conn).restore(moves)
    return len(versions), len(moves)
