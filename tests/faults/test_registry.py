"""Faults around the registry, injected into real passes: a store that refuses or is gone, a lost or stale
`registry.db`, a Git remote that goes away. Each case asserts what `gitopsd status` says while the fault lasts,
that nothing is retried in a loop, and that once the fault is removed the next pass converges with no version
lost, duplicated or renumbered."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gitopsd.daemon.triggers import PassReport, Worker
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.registry.recovery import ALIASES_PREFIX
from gitopsd.registry.stores import open_store
from gitopsd.spec.operator import Operator, OperatorRegistry
from tests.conftest import GitRepo, gitopsd
from tests.ports import free_port

MODEL = "models/blobs.yaml"
#: Credentials for an S3 endpoint nobody listens on: the client gets as far as connecting.
TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip


def status(state_dir: Path) -> dict[str, Any]:
    doc = json.loads(gitopsd(state_dir, "status", "--json").stdout)
    assert isinstance(doc, dict)
    return doc


def blobs(state_dir: Path) -> dict[str, object]:
    doc = status(state_dir)
    models = doc["models"]
    assert isinstance(models, list)
    (entry,) = (m for m in models if m["name"] == "blobs")
    assert isinstance(entry, dict)
    return entry


def versions(state_dir: Path) -> list[tuple[str, str]]:
    listed = json.loads(gitopsd(state_dir, "registry", "list", "--json").stdout)
    return [(v["label"], v["artifact"]["sha256"]) for v in listed]


def runs_created(state_dir: Path) -> int:
    """How many trainings were ever started for the demo model."""
    try:
        with sqlite3.connect(f"file:{state_dir / 'state.db'}?mode=ro", uri=True) as conn:
            (count,) = conn.execute("SELECT count(*) FROM runs WHERE model = 'blobs'").fetchone()
    except sqlite3.OperationalError:  # not created yet by the worker's first pass
        return 0
    return int(count)


def later(rec: Reconciler, seconds: float) -> None:
    """Let `seconds` pass for the reconciler's retries (its retry book and outbox), not for the world."""
    clock = rec.troubles.clock
    rec.troubles.clock = rec.outbox.clock = lambda: clock() + seconds


def wait_for_job_end(rec: Reconciler) -> None:
    """Passes until the one run's job has ended and a collection was tried."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rec.reconcile()
        runs = rec.state.active_runs()
        if not runs or runs[0].phase.value == "Validating":
            return
        time.sleep(0.2)
    raise AssertionError("the training did not end")


@pytest.fixture
def broken_store(tmp_path: Path) -> Path:
    """A file store below a regular file: every write fails with ENOTDIR, which only the operator can mend."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    return blocker / "artifacts"


def test_a_store_that_refuses_stalls_the_run_with_the_fix_and_is_not_retried_until_the_operator_reloads(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path, broken_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    reconciler.close()
    operator = Operator(registry=OperatorRegistry(artifacts=broken_store.as_uri()))
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=operator)
    demo_repo.edit("src/train.py", '"epoch": epoch}', '"epoch": epoch, "v": 2}')
    demo_repo.commit("v2")
    with caplog.at_level(logging.INFO, logger="gitopsd"):
        wait_for_job_end(rec)
        for _ in range(3):
            rec.reconcile()
    entry = blobs(state_dir)
    assert (entry["condition"], entry["reason"]) == ("Stalled", "RegistryFailed")
    message = str(entry["message"])
    assert "collecting run" in message and "Not a directory" in message and "1 attempt)" in message
    assert "reload the daemon" in message
    (trouble,) = rec.troubles.all().values()
    assert trouble.attempts == 1, "a permanent failure is not tried again every pass"
    started = time.monotonic()
    assert rec.reconcile_until_settled(timeout_s=600).active == 1
    assert time.monotonic() - started < 60, "waiting cannot mend a permanent failure: --wait returns"
    assert "Traceback" not in caplog.text
    failures = [r for r in caplog.records if "failed" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert rec.state.active_runs()[0].phase.value == "Validating", "the run is kept, not failed"
    rec.close()

    # The operator fixes the store and reloads: the run is collected, no training runs again.
    broken_store.parent.unlink()
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=operator)
    rec.reconcile()
    rec.close()
    entry = blobs(state_dir)
    assert (entry["condition"], entry["latest_version"]) == ("Ready", 2)
    assert [label for label, _ in versions(state_dir)] == ["blobs@1", "blobs@2"]
    assert runs_created(state_dir) == 2, "the run was collected, not trained again"


def test_an_unreachable_store_is_retried_with_backoff_and_status_shows_the_attempt_and_next_retry(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    reconciler.reconcile_until_settled(timeout_s=60)
    reconciler.close()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the S3 service is down
    operator = Operator(registry=OperatorRegistry(artifacts="s3://models/blobs", endpoint_url=dead))
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=operator)
    demo_repo.edit("src/train.py", '"epoch": epoch}', '"epoch": epoch, "v": 2}')
    demo_repo.commit("v2")
    wait_for_job_end(rec)
    for _ in range(3):
        rec.reconcile()
    (trouble,) = rec.troubles.all().values()
    assert trouble.attempts == 1 and trouble.next_at is not None, "not retried before its backoff is over"
    entry = blobs(state_dir)
    assert (entry["condition"], entry["reason"]) == ("Reconciling", "RegistryFailed")
    assert "(1 attempt, next retry at " in str(entry["message"])
    later(rec, 3600)
    rec.reconcile()
    (trouble,) = rec.troubles.all().values()
    assert trouble.attempts == 2, "retried once its backoff was over"
    assert "(2 attempts, next retry at " in str(blobs(state_dir)["message"])
    rec.close()


def test_with_a_store_that_cannot_be_asked_a_fresh_registry_gives_no_number_and_says_why(
    demo_repo: GitRepo, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    dead = f"http://127.0.0.1:{free_port()}"
    operator = Operator(registry=OperatorRegistry(artifacts="s3://models/blobs", endpoint_url=dead))
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=operator)
    result = rec.reconcile()
    rec.close()
    assert result.actions == () and "no version number is given until it can" in result.error
    assert runs_created(state_dir) == 0


def test_an_alias_move_while_the_store_is_down_waits_in_the_outbox_and_reaches_the_store_later(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    artifacts = state_dir / "artifacts"
    records = artifacts / "records"
    hidden = state_dir / "records-away"
    records.rename(hidden)
    records.write_text("")  # the store's record folder is gone: every record write fails
    demo_repo.edit(MODEL, "spec:\n  train:", "spec:\n  aliases:\n    production: 1\n  train:")
    demo_repo.commit("Promote blobs@1")
    reconciler.reconcile()
    assert reconciler.aliases.current() == {("blobs", "production"): 1}, "the registry has the move at once"
    doc = status(state_dir)
    (pending,) = doc["pending"]
    assert pending["count"] == 1 and pending["attempts"] == 1 and pending["next_retry_at"]
    shown = gitopsd(state_dir, "status").stdout
    assert "1 alias journal(s) waiting for the artifact store (1 failed attempt(s), next retry at" in shown
    reconciler.reconcile()
    assert reconciler.outbox.entries()[0].attempts == 1, "not retried before its backoff is over"

    records.unlink()
    hidden.rename(records)
    later(reconciler, 3600)
    reconciler.reconcile()
    assert reconciler.outbox.entries() == []
    assert status(state_dir)["pending"] == []
    store = open_store(artifacts.as_uri(), artifacts)
    journal = store.get_record(ALIASES_PREFIX + "blobs", 1)
    assert journal is not None and json.loads(journal)["alias"] == "production"
    assert "1 version(s) verified" in gitopsd(state_dir, "registry", "verify").stdout

    # A journal that never reached the store is what `registry rebuild` would lose: verify says so.
    (entry,) = (records / f"{ALIASES_PREFIX}blobs").iterdir()
    entry.unlink()
    refused = gitopsd(state_dir, "registry", "verify", check=False)
    assert refused.returncode == 1
    assert "alias journal of blobs" in refused.stderr and "move 1 of 1 (production -> 1) is missing" in refused.stderr


def test_a_lost_registry_is_rebuilt_from_the_store_before_any_number_is_given(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    before = versions(state_dir)
    reconciler.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state_dir / 'registry.db'}{suffix}").unlink(missing_ok=True)

    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    rec.reconcile_until_settled(timeout_s=60)
    rec.close()
    assert versions(state_dir) == before, "nothing retrained, nothing renumbered"
    assert runs_created(state_dir) == 1
    assert "1 version(s) verified" in gitopsd(state_dir, "registry", "verify").stdout


def test_a_stale_registry_never_reuses_a_number_the_store_holds(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    reconciler.close()
    old_copy = state_dir.parent / "registry-backup.db"
    shutil.copy(state_dir / "registry.db", old_copy)  # WAL checkpointed at close: a whole copy of blobs@1

    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    demo_repo.edit("src/train.py", '"epoch": epoch}', '"epoch": epoch, "v": 2}')
    demo_repo.commit("v2")
    rec.reconcile_until_settled(timeout_s=60)
    rec.close()
    second = dict(versions(state_dir))["blobs@2"]

    for suffix in ("-wal", "-shm"):
        Path(f"{state_dir / 'registry.db'}{suffix}").unlink(missing_ok=True)
    shutil.copy(old_copy, state_dir / "registry.db")  # restored from yesterday's backup
    demo_repo.edit("src/train.py", '"v": 2}', '"v": 3}')
    demo_repo.commit("v3")
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    wait_for_job_end(rec)
    rec.reconcile()
    rec.close()
    entry = blobs(state_dir)
    assert (entry["condition"], entry["reason"]) == ("Stalled", "RegistryFailed")
    assert "already holds the record of blobs@2" in str(entry["message"])
    assert "gitopsd registry rebuild" in str(entry["message"])
    assert [label for label, _ in versions(state_dir)] == ["blobs@1"], "nothing was registered"
    store = open_store((state_dir / "artifacts").as_uri(), state_dir / "artifacts")
    record = store.get_record("blobs", 2)
    assert record is not None and json.loads(record)["artifact"]["sha256"] == second, "blobs@2 kept in the store"

    # The fix the message names: rebuild, then reload. The waiting run becomes blobs@3.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state_dir / 'registry.db'}{suffix}").unlink(missing_ok=True)
    gitopsd(state_dir, "registry", "rebuild")
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    rec.reconcile()
    rec.close()
    labels = [label for label, _ in versions(state_dir)]
    assert labels == ["blobs@1", "blobs@2", "blobs@3"]
    assert dict(versions(state_dir))["blobs@2"] == second
    assert "3 version(s) verified" in gitopsd(state_dir, "registry", "verify").stdout


def test_an_audit_tag_push_that_fails_while_the_remote_is_gone_is_retried_from_the_outbox(
    demo_repo: GitRepo, state_dir: Path
) -> None:
    assert "push: true" in demo_repo.read("gitops.yaml")
    remote = demo_repo.path.parent / "remote.git"
    demo_repo.git("init", "-q", "--bare", str(remote))
    demo_repo.git("push", "-q", str(remote), "HEAD:refs/heads/main")
    rec = Reconciler(state_dir=state_dir, url=str(remote), branch="main")
    rec.reconcile()
    away = remote.parent / "remote-away.git"
    remote.rename(away)  # the remote goes away while the run trains
    rec.reconcile_until_settled(timeout_s=60)
    assert [v.label for v in rec.registry.list()] == ["blobs@1"]
    (entry,) = rec.outbox.entries()
    assert (entry.kind, entry.attempts) == ("audit-tags", 1)
    assert "audit tag push(es) waiting for the Git remote" in gitopsd(state_dir, "status").stdout

    away.rename(remote)
    later(rec, 3600)
    rec.reconcile()
    assert rec.outbox.entries() == []
    rec.close()
    assert "models/blobs/v1" in GitRepo(remote).git("tag", "--list")


def test_a_reload_retries_what_stalled_in_the_daemons_worker(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path, broken_store: Path
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    reconciler.close()
    demo_repo.edit("src/train.py", '"epoch": epoch}', '"epoch": epoch, "v": 2}')
    demo_repo.commit("v2")
    operator = Operator(registry=OperatorRegistry(artifacts=broken_store.as_uri()))
    passes: list[PassReport] = []
    worker = Worker("demo", lambda: Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=operator),
                    on_pass=passes.append)  # fmt: skip
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while blobs(state_dir)["condition"] != "Stalled":
            assert time.monotonic() < deadline, blobs(state_dir)
            worker.request("poll")
            time.sleep(0.3)
        broken_store.parent.unlink()  # the operator fixes the store, then reloads the daemon
        worker.retry_stalled()
        while blobs(state_dir)["latest_version"] != 2:
            assert time.monotonic() < deadline, blobs(state_dir)
            time.sleep(0.3)
    finally:
        assert worker.stop(30)
    assert any(report.trigger == "reload" for report in passes)
    assert runs_created(state_dir) == 2, "collected, not trained again"


def test_a_worker_that_cannot_start_says_why_and_tries_again(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    first.reconcile()  # this state directory now tracks the demo repository
    first.close()
    other = tmp_path / "other"
    other.mkdir()
    worker = Worker("other", lambda: Reconciler(state_dir=state_dir, url=str(other)), on_pass=lambda _: None,
                    beat_s=0.05)  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="gitopsd"):
        worker.start()
        deadline = time.monotonic() + 30
        while "cannot start reconciling" not in caplog.text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert worker.thread.is_alive(), "the worker waits to try again instead of ending"
        assert worker.stop(10)
    assert "already tracks" in caplog.text and "Traceback" not in caplog.text


def test_a_daemon_worker_passes_again_when_a_retrys_backoff_ends_without_waiting_for_a_poll(
    demo_repo: GitRepo, state_dir: Path
) -> None:
    demo_repo.edit(MODEL, "command: python3 train.py --epochs 40 --lr 0.5", "command: exit 3")
    demo_repo.edit("gitops.yaml", "retries: 0", "retries: 1")
    demo_repo.commit("A command that fails, retried once")
    worker = Worker("demo", lambda: Reconciler(state_dir=state_dir, url=str(demo_repo.path)), on_pass=lambda _: None)
    worker.start()  # one start-up pass, then no poll, push or trigger: only the worker's own schedule
    try:
        deadline = time.monotonic() + 60
        while runs_created(state_dir) < 2:
            assert time.monotonic() < deadline, "the second attempt never started"
            time.sleep(0.2)
    finally:
        assert worker.stop(30)


def test_a_pass_sweeps_the_uploads_a_killed_writer_left_in_the_store(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    tmp = state_dir / "artifacts" / "tmp"
    left = tmp / ".put-killed.part"  # what a gitopsd killed in the middle of storing an artifact leaves
    left.write_bytes(b"half an artifact")
    fresh = tmp / ".put-writing.part"  # a put going on now is left alone
    fresh.write_bytes(b"being written")
    day_ago = time.time() - 25 * 3600
    os.utime(left, (day_ago, day_ago))
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    rec.reconcile()
    rec.close()
    assert not left.exists() and fresh.exists()
    assert "unfinished upload" not in gitopsd(state_dir, "registry", "verify").stdout
