"""A long history for a bench state directory: what a repository that has trained for years leaves behind.

Shared by `bench/specload.py` (the command line on it) and `bench/run.py` (the daemon's passes on it): a pass
that has work to do, or none, must not pay for the versions, alias moves and runs of the past.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

#: Versions of each model (100,000 at 10,000 models), each with its run, after one failed attempt per model.
HISTORY_PER_MODEL = 10


def add_history(state_dir: Path, names: list[str], per_model: int) -> int:
    """Give `state_dir` a long history: `per_model` versions of each model in `names`, each trained by a run that
    `state.db` remembers (after one failed attempt at the first), each of which moved its `latest` alias, and a
    last move that took the alias away again (the specs declare none, so a pass has nothing to do with them).
    Plain SQL inserts in one transaction into each database's own schema, as `bench/listings.py` builds its
    registry: registering them one by one would take most of a minute. Returns how many versions it added."""
    at = time.time()
    with sqlite3.connect(state_dir / "registry.db") as conn:  # numbered after the versions a model already has
        have = dict(conn.execute("SELECT model, MAX(number) FROM versions GROUP BY model").fetchall())
    versions: list[tuple[object, ...]] = []
    moves: list[tuple[object, ...]] = []
    runs: list[tuple[object, ...]] = []
    for i, name in enumerate(names):
        first = have.get(name, 0) + 1
        runs.append((f"fail-{i}", name, f"{i:032x}{0:032x}", "Failed", None))
        for number in range(first, first + per_model):
            digest = f"{i:032x}{number:032x}"
            versions.append((name, number, f"hist-{i}-{number}", digest, digest, 1024,
                             f"file:///store/sha256/{digest[:2]}/{digest[2:]}", "{}", "[]", "{}", at))  # fmt: skip
            moves.append((name, "latest", number, number - 1 or None, "moved", "0" * 40, "", at))
            runs.append((f"hist-{i}-{number}", name, digest, "Registered", number))
        moves.append((name, "latest", None, first + per_model - 1, "removed", "0" * 40, "", at))
    with sqlite3.connect(state_dir / "state.db") as conn:
        conn.executemany(
            "INSERT INTO runs (id, model, run_key, spec_digest, commit_id, spec_path, backend, phase, attempt, "
            "version, run_dir, created_at, updated_at, ended_at) "
            f"VALUES (?1, ?2, ?3, 'history', '{'0' * 40}', 'models/x.yaml', 'local', ?4, 1, ?5, '/nonexistent', "
            f"{at}, {at}, {at})", runs)  # fmt: skip
    with sqlite3.connect(state_dir / "registry.db") as conn:
        conn.executemany(
            "INSERT INTO versions (model, number, run_id, run_key, artifact_sha256, artifact_size, artifact_uri, "
            "metrics, gates, lineage, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", versions)  # fmt: skip
        conn.executemany(
            "INSERT INTO alias_moves (model, alias, version, previous, kind, commit_id, subject, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", moves)  # fmt: skip
    return len(versions)
