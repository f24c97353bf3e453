"""A run is judged by the snapshot kept in state.db when it was submitted, not by anything in its run directory.

The snapshot is committed with the run's row and never replaced; `run.json` is written for people and
trainings but never read back, except (checked like a spec, size-capped, no link followed) for a run that an
older gitopsd submitted before snapshots were kept, and then only once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gitopsd.model import Phase
from gitopsd.reconcile.snapshot import SNAPSHOT, SnapshotMissing, load_snapshot, write_snapshot
from gitopsd.reconcile.state import RunRecord, StateStore

SNAP: dict[str, Any] = {
    "model": "iris",
    "repo_url": "file:///repo",
    "commit": "c" * 40,
    "spec_path": "models/iris.yaml",
    "code_tree": "t" * 40,
    "train": {"workdir": "src", "command": "python3 train.py", "backend_type": "local"},
    "outputs": {"artifact": "model.json", "metrics": "metrics.jsonl"},
    "validate": ["accuracy >= 0.9"],
    "data": [],
}


def new_run(state: StateStore, root: Path, run_id: str, snapshot: dict[str, Any] | None) -> RunRecord:
    now = time.time()
    run = RunRecord(
        id=run_id, model="iris", phase=Phase.VALIDATING, attempt=1, run_dir=str(root / "runs" / run_id),
        created_at=now, updated_at=now, run_key="k", spec_digest="d", commit_id="c" * 40,
        spec_path="models/iris.yaml", backend="local",
    )  # fmt: skip
    Path(run.run_dir).mkdir(parents=True)
    state.create_run(run, message="test", snapshot=snapshot)
    return run


def test_the_kept_snapshot_wins_over_a_rewritten_run_json_and_is_never_replaced(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as state:
        run = new_run(state, tmp_path, "r1", SNAP)
        write_snapshot(Path(run.run_dir), {**SNAP, "validate": [], "outputs": {"artifact": "../../etc/passwd"}})
        assert load_snapshot(state, run) == SNAP
        state.keep_snapshot(run.id, {**SNAP, "validate": []})
        assert load_snapshot(state, run)["validate"] == ["accuracy >= 0.9"]
        with pytest.raises(sqlite3.IntegrityError, match="a run snapshot is written once"):
            state.conn.execute("UPDATE snapshots SET snapshot = '{}' WHERE run_id = 'r1'")
        with pytest.raises(sqlite3.IntegrityError, match="a run snapshot is written once"):
            state.conn.execute("DELETE FROM snapshots WHERE run_id = 'r1'")


def test_run_json_replaces_a_planted_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / (SNAPSHOT + ".tmp")).symlink_to(outside)
    (run_dir / SNAPSHOT).symlink_to(outside)
    write_snapshot(run_dir, SNAP)
    assert outside.read_text() == "keep me"
    assert json.loads((run_dir / SNAPSHOT).read_text()) == SNAP
    assert not (run_dir / SNAPSHOT).is_symlink()


def test_a_run_from_an_older_gitopsd_is_judged_by_its_checked_run_json_read_once(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as state:
        run = new_run(state, tmp_path, "legacy", None)
        write_snapshot(Path(run.run_dir), SNAP)
        assert load_snapshot(state, run) == SNAP
        write_snapshot(Path(run.run_dir), {**SNAP, "validate": []})  # rewritten after the first read
        assert load_snapshot(state, run) == SNAP
        assert state.snapshot(run.id) == SNAP


def _legacy_fifo(run_dir: Path) -> None:
    os.mkfifo(run_dir / SNAPSHOT)


def _legacy_link(run_dir: Path) -> None:
    (run_dir / SNAPSHOT).symlink_to("/etc/hostname")


def _legacy_huge(run_dir: Path) -> None:
    with (run_dir / SNAPSHOT).open("wb") as handle:
        handle.truncate(2 << 30)


def _legacy_json(data: object) -> Any:
    return lambda run_dir: (run_dir / SNAPSHOT).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("plant", "fragment"),
    [
        (lambda run_dir: None, "no snapshot in state.db and no"),
        (_legacy_fifo, "is a FIFO (named pipe)"),
        (_legacy_link, "is a symbolic link (to '/etc/hostname')"),
        (_legacy_huge, "is over 1048576 bytes"),
        (_legacy_json({**SNAP, "outputs": {"artifact": "../../../secret"}}), "path escapes the output directory"),
        (_legacy_json({**SNAP, "outputs": {"artifact": "/etc/passwd"}}), "absolute path '/etc/passwd' is not allowed"),
        (_legacy_json({**SNAP, "validate": ["__import__('os')"]}), "invalid gate"),
        (_legacy_json({"validate": []}), "is not a run snapshot: it needs the keys"),
        (lambda run_dir: (run_dir / SNAPSHOT).write_text("[" * 100_000), "cannot be used as the run's snapshot"),
    ],
)
def test_a_legacy_run_json_that_is_not_what_gitopsd_wrote_is_refused_by_name(
    tmp_path: Path, plant: Any, fragment: str
) -> None:
    with StateStore(tmp_path / "state.db") as state:
        run = new_run(state, tmp_path, "legacy", None)
        plant(Path(run.run_dir))
        with pytest.raises(SnapshotMissing) as refused:
            load_snapshot(state, run)
        assert fragment in str(refused.value)
        assert str(Path(run.run_dir) / SNAPSHOT) in str(refused.value)
        assert state.snapshot(run.id) is None
