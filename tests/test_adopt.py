"""Taking over a repository from another daemon: its running training is adopted, never started twice, and its
versions are known, so numbering goes on. Two real reconcilers with their own state directories share one run
root and one artifact store, as two login nodes do; the local backend runs the trainings (one host here)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitopsd.errors import LeaseLost
from gitopsd.model import Phase
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.spec.operator import Operator, OperatorRegistry
from tests.conftest import GitRepo

MODEL = "models/blobs.yaml"
SLOW = '''"""The demo's training, started only once the test creates $GITOPSD_OUTPUT_DIR/go."""
import os, runpy, sys, time
from pathlib import Path
go = Path(os.environ["GITOPSD_OUTPUT_DIR"]) / "go"
while not go.exists():
    time.sleep(0.05)
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
'''


class Site:
    """Two login nodes' state directories, their shared run root and artifact store."""

    def __init__(self, tmp_path: Path, repo: GitRepo) -> None:
        self.repo = repo
        self.runs = tmp_path / "shared-runs"
        self.runs.mkdir()
        self.operator = Operator(registry=OperatorRegistry(artifacts=f"file://{tmp_path / 'store'}"))
        self.dirs = {name: tmp_path / name for name in ("login1", "login2")}
        for state_dir in self.dirs.values():
            state_dir.mkdir()
            (state_dir / "runs").symlink_to(self.runs)  # the shared run root, until Slurm's runs_dir names it
        self.opened: list[Reconciler] = []

    def daemon(self, name: str, fence: object = None) -> Reconciler:
        rec = Reconciler(state_dir=self.dirs[name], url=str(self.repo.path), operator=self.operator,
                         fence=fence or (lambda: None))  # type: ignore[arg-type]  # fmt: skip
        self.opened.append(rec)
        return rec

    def run_dirs(self) -> list[str]:
        return sorted(p.name for p in self.runs.iterdir())

    def rows(self, name: str) -> list[tuple[str, str]]:
        with sqlite3.connect(self.dirs[name] / "state.db") as conn:
            return [(r[0], r[1]) for r in conn.execute("SELECT id, phase FROM runs ORDER BY rowid")]


@pytest.fixture
def site(tmp_path: Path, demo_repo: GitRepo) -> Iterator[Site]:
    made = Site(tmp_path, demo_repo)
    yield made
    for rec in made.opened:
        rec.close()


def go_slow(repo: GitRepo) -> None:
    repo.write("src/slow.py", SLOW)
    repo.edit(MODEL, "command: python3 train.py", "command: python3 slow.py")
    repo.commit("Train slowly")


def test_taking_over_adopts_the_running_training_and_registers_it_once(site: Site) -> None:
    login1 = site.daemon("login1")
    login1.reconcile_until_settled(timeout_s=60)
    assert login1.registry.latest("blobs") is not None
    go_slow(site.repo)
    login1.reconcile()
    ((run_id, phase),) = [row for row in site.rows("login1") if row[1] != "Registered"]
    assert phase in (Phase.QUEUED, Phase.RUNNING)
    login1.close()  # login1 is gone; its training goes on

    login2 = site.daemon("login2")
    assert login2.take_over() == (1, 0), "blobs@1, registered by login1, is imported from the store"
    result = login2.reconcile()
    assert not any(type(a).__name__ == "Submit" for a in result.actions), result.actions
    assert [row[0] for row in site.rows("login2")] == [run_id]
    assert len(site.run_dirs()) == 2, "no second training was started"
    events = [e["kind"] for e in login2.state.events("blobs")]
    assert "Adopted" in events, events

    (site.runs / run_id / "out" / "go").touch()
    login2.reconcile_until_settled(timeout_s=60)
    version = login2.registry.latest("blobs")
    assert version is not None and (version.number, version.run_id) == (2, run_id)
    assert site.rows("login2") == [(run_id, "Registered")]
    assert len(site.run_dirs()) == 2
    records = [(name, number) for name, number, _ in login2.applier.store().records()]
    environments = [r for r in records if r[0].startswith("ENVIRONMENT.")]
    assert [r for r in records if r not in environments] == [("blobs", 1), ("blobs", 2)]
    assert len(environments) == 1, "both versions were trained in one environment, stored once"
    assert login2.reconcile().actions == ()


def test_a_daemon_that_does_not_hold_the_lease_submits_nothing(site: Site) -> None:
    def lost() -> None:
        raise LeaseLost("repository demo: this daemon is standing by: login1 is active")

    standby = site.daemon("login2", fence=lost)
    with pytest.raises(LeaseLost):
        standby.reconcile()
    assert site.run_dirs() == [] and site.rows("login2") == []


def test_a_daemon_that_loses_the_lease_while_a_run_is_collected_registers_nothing(site: Site) -> None:
    held = {"lease": True}

    def fence() -> None:
        if not held["lease"]:
            raise LeaseLost("lost")

    login1 = site.daemon("login1", fence=fence)
    login1.reconcile()
    deadline = time.monotonic() + 60
    while not any((site.runs / run / "local" / "exit.json").exists() for run in site.run_dirs()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    held["lease"] = False
    with pytest.raises(LeaseLost):
        login1.reconcile_until_settled(timeout_s=30)
    assert login1.registry.latest("blobs") is None
    assert list(login1.applier.store().records()) == []


def test_a_run_that_registered_before_the_take_over_is_not_registered_again(site: Site) -> None:
    login1 = site.daemon("login1")
    login1.reconcile_until_settled(timeout_s=60)
    ((run_id, _),) = site.rows("login1")
    login2 = site.daemon("login2")
    login2.take_over()
    login2.reconcile_until_settled(timeout_s=60)
    version = login2.registry.latest("blobs")
    assert version is not None and (version.number, version.run_id) == (1, run_id)
    assert site.rows("login2") == [(run_id, "Registered")]
    assert len(site.run_dirs()) == 1


def test_the_run_json_names_the_repository_and_the_run(site: Site) -> None:
    login1 = site.daemon("login1")
    login1.reconcile()
    (run_id,) = site.run_dirs()
    written = json.loads((site.runs / run_id / "run.json").read_text())
    assert (written["run_id"], written["attempt"], written["repository_id"]) == (run_id, 1, login1.repository_id)
    assert written["daemon_host"] == os.uname().nodename
