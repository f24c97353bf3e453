"""The quick settled pass of `gitopsd reconcile --once` (`gitopsd.reconcile.quickpass`): it answers only when
the full pass would answer the same with nothing done, and leaves state.db and registry.db as the full pass does.

Two state directories follow the same real repository (`tests/test_settled.Pair`): in `quick`, each pass first
asks `quick_reconcile` and runs a new `Reconciler` only when it says "not sure", as the command line does; in
`full`, every pass is a new `Reconciler` that never skips. After every pass both must report the same and hold
the same state. Real Git, real SQLite, real trainings on the local backend, real `gitopsd` processes for the
import test.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from gitopsd.errors import BackendUnavailable
from gitopsd.model import Reason
from gitopsd.reconcile import quickpass, settled
from gitopsd.reconcile.observe import Observer
from gitopsd.reconcile.outbox import Outbox
from gitopsd.reconcile.state import StateStore
from gitopsd.reconcile.troubles import RetryBook
from gitopsd.registry.aliases import AliasBook
from gitopsd.registry.versions import Registry
from tests.conftest import GitRepo
from tests.test_settled import MODEL, Pair, shape, snapshot

HEAVY = ("pydantic", "yaml", "pygit2", "sqlite_utils", "importlib.metadata")


def _quick(pair: Pair, **flags: Any) -> str | None:
    pair.new("quick").close()  # bring the quick directory's remote up to the repository's commits
    return quickpass.quick_reconcile(pair.root / "quick", None, None, configured=flags.get("configured", False),
                                     verified=flags.get("verified", False))  # fmt: skip


def _source(state_dir: Path) -> dict[str, Any]:
    with StateStore(state_dir / "state.db") as store:
        row = store.source()
    assert row is not None
    return {k: v for k, v in asdict(row).items() if k not in ("url", "fetched_at", "applied_at")}


def probe(pair: Pair) -> bool:
    """One pass in each directory, as the command line makes it; the results and the state must be equal.
    Returns whether the quick directory's pass was the quick one."""
    commit = _quick(pair)
    if commit is None:
        rec = pair.new("quick")
        try:
            quick = shape(rec.reconcile("cli"))
        finally:
            rec.close()
    else:
        quick = {"commit": commit, "actions": [], "active": 0, "error": "", "unavailable": {}, "blocked": {},
                 "retry_at": None}  # fmt: skip
    rec = pair.new("full")
    try:
        full = shape(rec.reconcile("cli"))
    finally:
        rec.close()
    assert quick == full
    assert snapshot(pair.root / "quick") == snapshot(pair.root / "full")
    assert _source(pair.root / "quick") == _source(pair.root / "full")
    return commit is not None


@pytest.fixture
def pair(demo_repo: GitRepo, tmp_path: Path) -> Pair:
    return Pair(repo=demo_repo, root=tmp_path)  # the quick directory's full pass may use the record, the other not


def _suspended_and_settled(pair: Pair) -> None:
    pair.repo.edit(MODEL, "  train:\n", "  suspend: true\n  train:\n")
    pair.repo.commit("Suspended")
    pair.settle()


def test_the_quick_pass_agrees_with_the_full_pass_through_a_history(pair: Pair) -> None:
    repo = pair.repo
    pair.settle()  # trains blobs, registers version 1
    assert probe(pair) is True
    assert probe(pair) is True  # the quick pass keeps the record valid

    repo.edit(MODEL, "  train:\n", "  aliases: {prod: 1}\n  train:\n")
    repo.commit("An alias")
    assert probe(pair) is False  # a new commit: the full pass moves the alias
    assert [probe(pair) for _ in range(2)][-1] is True

    repo.edit(MODEL, "--epochs 40", "--epochs 41")
    repo.commit("Another training")
    assert probe(pair) is False  # submits
    pair.settle()
    assert probe(pair) is True

    repo.edit(MODEL, "    workdir: src\n", "    workdir: src\n    wrokdir: typo\n")
    repo.commit("An invalid commit")
    for _ in range(2):
        assert probe(pair) is False  # rejected each time, by the full pass


def _event(state_dir: Path) -> None:
    with StateStore(state_dir / "state.db") as store:
        store.event("blobs", "Noted", reason="test", message="by hand")


def _run_in_flight(state_dir: Path) -> None:
    with sqlite3.connect(state_dir / "state.db") as conn:
        conn.execute(
            "INSERT INTO runs (id, model, run_key, spec_digest, commit_id, spec_path, backend, phase, attempt, "
            "run_dir, created_at, updated_at) VALUES ('r1', 'blobs', 'k', 'd', 'c', 'p', 'local', 'Running', 1, "
            "'/nonexistent', 0, 0)"
        )


def _permanent_trouble(state_dir: Path) -> None:
    """A trouble that waits for the operator, in a record that describes it (a new Reconciler forgives it, so
    only the quick path's own check can refuse)."""
    with StateStore(state_dir / "state.db") as store:
        RetryBook(store.conn, lambda: 0.0).failed("k", model="blobs", what="register", reason=Reason.REGISTRY_FAILED,
                                                 exc=BackendUnavailable("down for good"))  # fmt: skip
        store.conn.execute("UPDATE troubles SET next_at = NULL")
        row = store.source()
        assert row is not None
        with Registry(state_dir / "registry.db") as registry:
            fingerprint = settled.fingerprint(
                row, state=store, troubles=RetryBook(store.conn, time.time), outbox=Outbox(store.conn, time.time),
                registry=registry, aliases=AliasBook(registry.conn), setup=settled.DEFAULT_SETUP,
            )  # fmt: skip
    key = (state_dir / "speccache.key").read_bytes()
    record = settled.read(state_dir, key, settled.code_generation())
    assert record is not None
    assert settled.write(state_dir, key, settled.code_generation(), replace(record, fingerprint=fingerprint))


def _registry_lost(state_dir: Path) -> None:
    for path in state_dir.glob("registry.db*"):
        path.unlink()


def _other_code(state_dir: Path) -> None:
    key = (state_dir / "speccache.key").read_bytes()
    record = settled.read(state_dir, key, settled.code_generation())
    assert record is not None
    assert settled.write(state_dir, key, settled.code_generation() + "; other", record)


def _record_garbled(state_dir: Path) -> None:
    (state_dir / settled.RECORD_FILE).write_text("{not json")


def _mirror_behind(state_dir: Path) -> None:
    remote = state_dir.parent / "quick.git"
    subprocess.run(["git", "--git-dir", str(remote), "branch", "other", "HEAD"], check=True)


@pytest.mark.parametrize(
    "tamper",
    [_event, _run_in_flight, _permanent_trouble, _registry_lost, _other_code, _record_garbled],
    ids=["event", "run-in-flight", "permanent-trouble", "registry-lost", "other-code", "garbled"],
)
def test_a_change_the_record_does_not_describe_takes_the_full_pass(pair: Pair, tamper: Any) -> None:
    pair.settle()  # trains blobs, registers version 1 in the registry and its store
    assert _quick(pair) is not None
    tamper(pair.root / "quick")
    assert quickpass.quick_reconcile(pair.root / "quick", None, None, configured=False, verified=False) is None


def test_a_remote_branch_the_mirror_lacks_takes_the_full_pass_which_fetches_it(pair: Pair) -> None:
    _suspended_and_settled(pair)
    assert _quick(pair) is not None
    _mirror_behind(pair.root / "quick")
    assert quickpass.quick_reconcile(pair.root / "quick", None, None, configured=False, verified=False) is None
    rec = pair.new("quick")
    rec.reconcile("cli")
    rec.close()
    assert quickpass.quick_reconcile(pair.root / "quick", None, None, configured=False, verified=False) is not None


def test_a_configuration_a_signature_policy_or_another_repository_takes_the_full_pass(pair: Pair) -> None:
    _suspended_and_settled(pair)
    state_dir = pair.root / "quick"
    assert _quick(pair) is not None
    assert _quick(pair, configured=True) is None
    assert _quick(pair, verified=True) is None
    assert quickpass.quick_reconcile(state_dir, str(pair.repo.path), None, configured=False, verified=False) is None
    assert quickpass.quick_reconcile(state_dir, None, "no-such-branch", configured=False, verified=False) is None
    assert quickpass.quick_reconcile(state_dir, None, "-x", configured=False, verified=False) is None
    assert quickpass.quick_reconcile(pair.root / "nowhere", None, None, configured=False, verified=False) is None


@pytest.mark.parametrize(
    "needed",
    [
        {"local": ("local", {})},
        {"local": ("local", {"max_parallel": 2}), "other": ("local", {"grace_s": 1})},
        {"local": ("local", {"max_parallel": -1})},
        {"local": ("local", {"max_parallel": "many"}), "b": ("local", {})},
    ],
)
def test_the_local_backend_check_is_the_observers(needed: dict[str, Any], tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as store:
        _, expected = Observer(store, tmp_path).check(needed)
    assert quickpass.local_unavailable(needed, tmp_path) == expected


def test_another_backend_type_is_left_to_the_full_pass(tmp_path: Path) -> None:
    assert quickpass.local_unavailable({"gpu": ("slurm", {})}, tmp_path) is None


def test_the_command_line_answers_a_settled_pass_without_heavy_imports(pair: Pair, tmp_path: Path) -> None:
    _suspended_and_settled(pair)
    pair.new("quick").close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPSD_")}
    env |= {"GITOPSD_STATE_DIR": str(pair.root / "quick"), "XDG_CONFIG_HOME": str(tmp_path / "config")}

    def run(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "gitopsd", *args, "reconcile", "--once"],
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        lines = done.stderr.splitlines()
        return done, {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}

    done, modules = run()
    assert done.returncode == 0, done.stderr[-2000:]
    commit = pair.repo.git("rev-parse", "HEAD")
    assert done.stdout == f"commit {commit[:12]}: 0 action(s), 0 run(s) in flight\n"
    assert sorted(m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY) == []
    assert "gitopsd.reconcile.reconciler" not in modules

    config = tmp_path / "operator.toml"  # with an operator configuration, the full pass: the detector works
    config.write_text("")
    done, modules = run("--config", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == f"commit {commit[:12]}: 0 action(s), 0 run(s) in flight\n"
    assert "gitopsd.reconcile.reconciler" in modules and "pygit2" in modules
