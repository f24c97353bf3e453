"""The daemon's faults with real components: a corrupt state database, a state directory without one while
the daemon runs, a repository removed under a running daemon, a commit that is rejected on every pass."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from gitopsd.reconcile.reconciler import Reconciler
from tests.conftest import GitRepo, gitopsd
from tests.test_daemon import RunningDaemon, daemon  # noqa: F401


def test_status_of_a_corrupt_state_database_is_one_line_naming_the_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)  # a header, then garbage
    for args in (["status"], ["status", "--json"], ["--verbose", "status"]):
        done = gitopsd(state_dir, *args, check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and str(state_dir / "state.db") in lines[0], done.stderr


def test_status_without_a_state_database_exits_3_and_says_why(tmp_path: Path) -> None:
    done = gitopsd(tmp_path / "state", "status", check=False)
    assert done.returncode == 3 and "nothing reconciled yet in" in done.stdout


def test_a_state_database_still_being_created_is_no_state_yet_not_a_damaged_one(
    tmp_path: Path, demo_repo: GitRepo
) -> None:
    """A daemon or command that creates state.db makes the file before its schema commits (a standby starting
    while `gitopsd status` looks at it): status and plan read that as nothing reconciled yet."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    creating = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    creating.execute("PRAGMA journal_mode=WAL")
    creating.execute("BEGIN IMMEDIATE")  # the first migration, not committed yet
    creating.execute("CREATE TABLE sources (id INTEGER PRIMARY KEY)")
    for args in (["status"], ["status", "--json"]):
        done = gitopsd(state_dir, *args, check=False)
        assert done.returncode == 3 and "nothing reconciled yet in" in done.stdout + done.stderr, done.stderr
    planned = gitopsd(state_dir, "plan", "--repo", str(demo_repo.path), check=False)
    assert planned.returncode == 0 and "blobs" in planned.stdout, planned.stderr
    creating.execute("ROLLBACK")
    creating.close()


def test_status_while_the_daemon_runs_says_what_the_daemon_has_done(daemon: RunningDaemon) -> None:  # noqa: F811
    # The daemon's own state_dir holds one state directory per repository, and no state.db of its own.
    top = gitopsd(daemon.state_dir, "status", check=False)
    assert top.returncode == 3, top
    assert f"{daemon.state_dir} is the state_dir of a gitopsd daemon (running)" in top.stdout
    assert "(demo)" in top.stdout and "--config" in top.stdout
    # A repository directory the daemon has not (yet) written.
    pending = gitopsd(daemon.state_dir / "other", "status", check=False)
    assert pending.returncode == 3
    assert f"the daemon (pid {daemon.process.pid}) serving {daemon.state_dir}" in pending.stdout
    assert "nothing reconciled" not in pending.stdout
    assert gitopsd(daemon.state_dir / "demo", "status").returncode == 0


def test_a_second_daemon_on_the_same_state_dir_is_refused_in_one_line(daemon: RunningDaemon) -> None:  # noqa: F811
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "gitopsd", "run", "--config", str(daemon.config), "--listen",
                           "127.0.0.1:0"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: state_dir {daemon.state_dir} is already served by gitopsd run (pid {daemon.process.pid}): stop it "
        "first, or give this daemon another state_dir"
    ]
    assert daemon.get("/healthz") == (200, "ok\n")


def test_a_removed_repository_is_named_clearly_and_logged_once(daemon: RunningDaemon) -> None:  # noqa: F811
    bare = Path(daemon.source()["url"])
    gone = bare.rename(bare.with_name("removed.git"))  # at once: a pass the watcher starts meanwhile must not
    shutil.rmtree(gone)  # find a repository half deleted ("branch 'main' not found"), a second message
    auth = {"Authorization": f"Bearer {daemon.token}"}
    for _ in range(3):
        before = daemon.passes("manual")
        assert daemon.post("/api/v1/trigger", b"", auth)[0] == 202
        deadline = time.monotonic() + 10
        while daemon.passes("manual") <= before:
            assert time.monotonic() < deadline, "no pass"
            time.sleep(0.05)
    error = daemon.source()["error"]
    assert error == (f"repository {bare} does not exist (or is not a git repository): create it, or fix the "
                     "repository's url")  # fmt: skip
    warnings = [line for line in daemon.log_lines() if "source unavailable" in line["message"]]
    assert len(warnings) == 1, warnings
    assert "unsupported URL protocol" not in daemon.log.read_text()


@pytest.mark.parametrize("form", ["file://", ""])
def test_a_local_path_that_is_not_a_repository_gets_the_same_message(tmp_path: Path, form: str) -> None:
    (tmp_path / "plain").mkdir()
    for path in (tmp_path / "plain", tmp_path / "absent"):
        done = gitopsd(tmp_path / f"state-{path.name}", "reconcile", "--repo", f"{form}{path}", check=False)
        assert done.returncode == 1
        assert f"repository {path} does not exist (or is not a git repository)" in done.stderr, done.stderr


def test_a_rejected_commit_is_logged_once_not_on_every_pass(
    reconciler: Reconciler, demo_repo: GitRepo, caplog: pytest.LogCaptureFixture
) -> None:
    reconciler.reconcile()
    demo_repo.write("models/broken.yaml", "this: is: not: a spec\n")
    bad = demo_repo.commit("a broken spec")
    with caplog.at_level(logging.ERROR, logger="gitopsd"):
        for _ in range(3):
            result = reconciler.reconcile()
            assert result.error and bad[:12] in result.error
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1, [r.getMessage() for r in rejected]
