"""What the dashboard needs the reconciler to keep: each model's labels (migration 6) and refused alias moves."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from gitopsd.reconcile.reconciler import ALIAS_REFUSED_EVENT, Reconciler
from gitopsd.reconcile.state import MIGRATIONS, StateStore, connect
from gitopsd.registry.sqlitedb import migrate
from tests.conftest import GitRepo

MODEL = "models/blobs.yaml"


def _labels(state_dir: Path) -> dict[str, dict[str, str]]:
    conn = sqlite3.connect(state_dir / "state.db")
    rows = conn.execute("SELECT name, labels FROM models").fetchall()
    conn.close()
    return {name: json.loads(text) for name, text in rows}


def test_an_old_state_dir_migrates_and_its_models_get_labels_on_the_next_pass(
    demo_repo: GitRepo, state_dir: Path
) -> None:
    state_dir.mkdir(parents=True)
    conn = connect(state_dir / "state.db")
    migrate(conn, [m for m in MIGRATIONS if m[0] < 6], what=str(state_dir / "state.db"))
    conn.execute(
        "INSERT INTO models (name, spec_path, run_key, spec_digest, backend, suspend) "
        "VALUES ('old', 'models/old.yaml', 'k', 'd', 'local', 0)"
    )
    conn.close()

    with StateStore(state_dir / "state.db") as store:
        assert store.models()["old"].labels == "{}"
    assert _labels(state_dir) == {"old": {}}

    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    try:
        rec.reconcile("test", dry_run=False)
        assert _labels(state_dir) == {"blobs": {"team": "demo"}}, "the pass replaced the rows with the spec's"
        demo_repo.edit(MODEL, "team: demo", "team: research")
        demo_repo.commit("Another team")
        rec.reconcile_until_settled(timeout_s=60)
    finally:
        rec.close()
    assert _labels(state_dir) == {"blobs": {"team": "research"}}, "a label-only commit updates the row"


def _refusals(state_dir: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(state_dir / "state.db")
    rows = conn.execute(
        "SELECT model, message, commit_id FROM events WHERE kind = ? AND reason = 'production' ORDER BY seq",
        (ALIAS_REFUSED_EVENT,),
    ).fetchall()
    conn.close()
    return [(r[0], r[1], r[2]) for r in rows]


def test_a_refused_alias_move_is_an_event_once_per_commit_also_across_restarts(
    demo_repo: GitRepo, state_dir: Path
) -> None:
    demo_repo.edit(MODEL, "spec:\n  train:", "spec:\n  aliases:\n    production: 3\n  train:")
    commit = demo_repo.commit("Promote a version that does not exist")
    for _ in range(2):  # a restarted daemon finds the same refusal: still one event
        rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
        try:
            rec.reconcile_until_settled(timeout_s=60)
            rec.reconcile("test")
        finally:
            rec.close()
    refusals = _refusals(state_dir)
    assert len(refusals) == 1, refusals
    model, message, at = refusals[0]
    assert (model, at) == ("blobs", commit)
    assert message.startswith("alias production -> blobs@3 refused"), message

    demo_repo.edit(MODEL, "production: 3", "production: 4")
    other = demo_repo.commit("Promote another version that does not exist")
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    try:
        rec.reconcile_until_settled(timeout_s=60)
    finally:
        rec.close()
    assert [(m, c) for m, _, c in _refusals(state_dir)] == [("blobs", commit), ("blobs", other)]
