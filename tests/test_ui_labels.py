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


def _pass(demo_repo: GitRepo, state_dir: Path) -> None:
    """One new process's passes until settled, as a restarted daemon or a `reconcile --once` makes them."""
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    try:
        rec.reconcile_until_settled(timeout_s=60)
        rec.reconcile("test")
    finally:
        rec.close()


def test_a_refused_alias_move_is_one_event_from_where_it_began_until_it_changes_or_an_alias_moves(
    demo_repo: GitRepo, state_dir: Path
) -> None:
    demo_repo.edit(MODEL, "spec:\n  train:", "spec:\n  aliases:\n    production: 3\n  train:")
    commit = demo_repo.commit("Promote a version that does not exist")
    _pass(demo_repo, state_dir)
    first = _refusals(state_dir)  # refused before blobs@1 is registered ("none is registered yet"), then after
    assert [(m, c) for m, _, c in first] == [("blobs", commit)] * 2, first
    assert first[-1][1].startswith("alias production -> blobs@3 refused"), first
    assert first[-1][1].endswith("latest is blobs@1)"), first
    _pass(demo_repo, state_dir)  # a restarted daemon finds the same refusal: no new event
    assert _refusals(state_dir) == first

    demo_repo.write("NOTES.md", "a commit that leaves the model as it is\n")
    demo_repo.commit("Unrelated")
    _pass(demo_repo, state_dir)  # a new process at a new commit: the refusal goes on, no new event
    assert _refusals(state_dir) == first

    demo_repo.edit(MODEL, "production: 3", "production: 4")
    other = demo_repo.commit("Promote another version that does not exist")
    _pass(demo_repo, state_dir)
    assert [(m, c) for m, _, c in _refusals(state_dir)] == [("blobs", commit)] * 2 + [("blobs", other)]

    demo_repo.edit(MODEL, "production: 4", "production: 1")
    demo_repo.commit("Promote the version that exists")
    _pass(demo_repo, state_dir)
    demo_repo.edit(MODEL, "production: 1", "production: 4")
    again = demo_repo.commit("The same mistake again")
    _pass(demo_repo, state_dir)  # the alias moved in between: the same words are a new refusal
    refusals = _refusals(state_dir)
    assert [c for _, _, c in refusals] == [commit, commit, other, again]
    assert refusals[2][1] == refusals[3][1]
