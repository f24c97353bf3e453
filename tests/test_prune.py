"""Run-directory retention (`runs.keep` in gitops.yaml): old runs give their disk back, and nothing a user still
needs goes with it.

End to end through the real reconciler and the local backend: retraining three times with `keep: 1` leaves
the newest run whole and the older ones with only their logs and records, while every version stays
verifiable in the registry. On a real state database: active runs are never touched, and the newest `keep`
ended runs of each model are counted per model. On real directories: read-only trees the training left go too,
and pruning twice is harmless.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitopsd.model import Phase
from gitopsd.reconcile.prune import PRUNED, prune_model_runs, prune_run_dir
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.reconcile.state import RunRecord, StateStore
from tests.conftest import GitRepo, gitopsd

MODEL = "models/blobs.yaml"


def run_dirs(state_dir: Path) -> dict[str, Path]:
    """Run id -> directory, oldest first."""
    with StateStore(state_dir / "state.db") as state:
        rows = state.conn.execute("SELECT id, run_dir FROM runs ORDER BY created_at").fetchall()
    return {row[0]: Path(row[1]) for row in rows}


def test_retraining_with_keep_1_leaves_old_runs_only_their_logs_and_records(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    demo_repo.edit("gitops.yaml", "keep: 3", "keep: 1")
    demo_repo.commit("Keep only the newest run whole")
    reconciler.reconcile_until_settled(timeout_s=60)
    for n in (2, 3):
        demo_repo.edit("src/train.py", "random.shuffle(rows)", f"random.shuffle(rows)  # change {n}")
        demo_repo.commit(f"Change {n}")
        reconciler.reconcile_until_settled(timeout_s=60)

    dirs = list(run_dirs(state_dir).values())
    assert len(dirs) == 3
    *old, newest = dirs
    assert all((newest / name).is_dir() for name in ("tree", "out", "logs"))
    for run_dir in old:
        assert not any((run_dir / name).exists() for name in PRUNED), run_dir
        assert (run_dir / "logs" / "output.log").is_file()
        assert (run_dir / "run.json").is_file()
    verify = gitopsd(state_dir, "registry", "verify")
    assert verify.stdout.startswith("3 version(s) verified"), verify.stdout
    shown = gitopsd(state_dir, "registry", "show", "blobs@1")
    assert '"run_id"' in shown.stdout


def test_the_default_keeps_three_runs_whole(demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    for n in range(2, 5):
        demo_repo.edit("src/train.py", "random.shuffle(rows)", f"random.shuffle(rows)  # change {n}")
        demo_repo.commit(f"Change {n}")
        reconciler.reconcile_until_settled(timeout_s=60)
    whole = [d for d in run_dirs(state_dir).values() if (d / "tree").is_dir()]
    assert list(run_dirs(state_dir).values())[1:] == whole


def record(state: StateStore, root: Path, run_id: str, model: str, phase: Phase, at: float) -> Path:
    run_dir = root / "runs" / run_id
    for name in (*PRUNED, "logs"):
        (run_dir / name).mkdir(parents=True)
        (run_dir / name / "file").write_bytes(b"x" * 1000)
    run = RunRecord(
        id=run_id, model=model, phase=phase, attempt=1, run_dir=str(run_dir), created_at=at, updated_at=at,
        run_key="k", spec_digest="d", commit_id="c", spec_path="m.yaml", backend="local",
    )  # fmt: skip
    state.create_run(run, message="test")
    return run_dir


def test_active_runs_are_never_pruned_and_keep_counts_per_model(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as state:
        now = time.time()
        running = record(state, tmp_path, "a-running", "a", Phase.RUNNING, now - 100)
        validating = record(state, tmp_path, "a-validating", "a", Phase.VALIDATING, now - 90)
        a_old = record(state, tmp_path, "a-old", "a", Phase.FAILED, now - 50)
        a_new = record(state, tmp_path, "a-new", "a", Phase.REGISTERED, now - 10)
        b_only = record(state, tmp_path, "b-only", "b", Phase.CANCELLED, now - 60)

        freed = prune_model_runs(state, "a", keep=1)
        assert freed == 3000
        assert not (a_old / "tree").exists() and (a_old / "logs" / "file").exists()
        for untouched in (running, validating, a_new, b_only):
            assert (untouched / "tree" / "file").exists(), untouched

        assert prune_model_runs(state, "a", keep=0) == 3000
        assert not (a_new / "out").exists()
        assert (running / "out").exists() and (validating / "out").exists()
        assert (b_only / "out").exists(), "model b was not asked about"


def test_read_only_directories_are_pruned_and_pruning_twice_frees_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    locked = run_dir / "out" / "checkpoints" / "locked"
    locked.mkdir(parents=True)
    (locked / "weights.bin").write_bytes(b"w" * 4096)
    (run_dir / "logs").mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    (run_dir / "out" / "checkpoints").chmod(0)
    (run_dir / "tree").symlink_to(tmp_path)  # a link is removed, never followed
    assert prune_run_dir(run_dir) >= 4096
    assert not (run_dir / "out").exists() and not (run_dir / "tree").exists()
    assert tmp_path.is_dir() and (run_dir / "logs").is_dir()
    assert prune_run_dir(run_dir) == 0


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, emptied with rm -rf (fts, no recursion limit) should a deep tree survive a failing test:
    pytest's own cleanup would hit Python's recursion limit on it in every later session."""
    yield tmp_path
    subprocess.run(["chmod", "-R", "u+rwx", str(tmp_path)], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", str(tmp_path)], check=False)


def test_a_tree_deeper_than_the_recursion_limit_with_links_and_locked_levels_is_removed(deep_tmp: Path) -> None:
    """A training may leave any tree in out/: 5000 levels (past Python's recursion limit), a mode-0 directory,
    links to outside. It all goes, and nothing outside it does."""
    tmp_path = deep_tmp
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    run_dir = tmp_path / "run"
    (run_dir / "out").mkdir(parents=True)
    fd = os.open(run_dir / "out", os.O_RDONLY | os.O_DIRECTORY)
    for level in range(5000):
        if level % 1000 == 0:
            os.symlink(outside, "link", dir_fd=fd)
        os.mkdir("d", dir_fd=fd)
        deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    with os.fdopen(os.open("weights.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as handle:
        handle.write(b"w" * 1000)
    os.mkdir("locked", dir_fd=fd)
    os.chmod("locked", 0, dir_fd=fd)
    os.close(fd)
    assert prune_run_dir(run_dir) >= 1000
    assert not (run_dir / "out").exists()
    assert (outside / "keep.txt").read_text() == "keep"
