"""Two `gitopsd run` on two login nodes, one repository: one is active, the other stands by, and when the active
one is killed (-9) in the middle of a training the standby takes over, adopts the job and registers one version.

Each daemon runs under `unshare --uts --mount` with its own host name (login1, login2) and its own local state
directory mounted at the configuration's `state_dir`, so both read the very same configuration file, as on a
site that deploys one to every login node. They share the lease directory, the artifact store and the run root
(the runs directory of each state directory leads to one shared directory, as Slurm's `runs_dir` will). The
Slurm variant of this test is tests/slurm/test_slurm_standby.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gitopsd.reconcile.statusview import read_lease
from tests.conftest import GIT_ENV, GitRepo
from tests.ports import free_port
from tests.test_adopt import SLOW
from tests.test_daemon import demo_remote

MODEL = "models/blobs.yaml"
needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare (namespaced login nodes)"
)


@dataclass
class Node:
    """One login node: a daemon in its own UTS and mount namespace, with its own local state directory."""

    name: str
    state: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def repo_state(self) -> Path:
        return self.state / "demo"

    def lease(self) -> dict[str, Any]:
        return read_lease(self.repo_state) or {}

    def rows(self) -> list[dict[str, Any]]:
        db = self.repo_state / "state.db"
        if not db.exists():
            return []
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY rowid")]

    def versions(self) -> list[tuple[str, int, str]]:
        db = self.repo_state / "registry.db"
        if not db.exists():
            return []
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return [(r[0], r[1], r[2]) for r in conn.execute("SELECT model, number, run_id FROM versions")]

    def status(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gitopsd", "--state-dir", str(self.repo_state), "status"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip


@dataclass
class Site:
    tmp: Path
    config: Path
    mount: Path
    shared_runs: Path
    work: GitRepo
    nodes: dict[str, Node] = field(default_factory=dict)

    def start(self, name: str) -> Node:
        node = self.nodes[name]
        script = (f'hostname {name} && mount --bind "$1" "$2" && exec "$0" -m gitopsd run --config "$3" '
                  f'--listen 127.0.0.1:{free_port()}')  # fmt: skip
        argv = ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable,
                str(node.state), str(self.mount), str(self.config)]  # fmt: skip
        with node.log.open("ab") as out:
            node.process = subprocess.Popen(argv, env={**os.environ, **GIT_ENV}, stdout=out, stderr=subprocess.STDOUT)
        return node

    def run_dirs(self) -> list[str]:
        return sorted(p.name for p in self.shared_runs.iterdir())


def wait_for(what: str, check: Callable[[], Any], site: Site, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        for node in site.nodes.values():
            if node.process is not None and node.process.poll() not in (None, -signal.SIGKILL):
                raise AssertionError(f"{node.name} exited: {node.log.read_text()[-3000:]}")
        time.sleep(0.2)
    logs = "\n".join(f"--- {n.name}\n{n.log.read_text()[-3000:]}" for n in site.nodes.values())
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def make_site(
    tmp_path: Path, *, backends: str = "", gitops: Callable[[GitRepo], None] | None = None, link_runs: bool = True
) -> Site:
    """The demo repository (its training waits for `out/go`), pushed; the configuration both nodes read.
    `link_runs`: each state directory's `runs` leads to the shared run root (else a backend's `runs_dir` is it)."""
    work, bare = demo_remote(tmp_path)
    work.write("src/slow.py", SLOW)
    work.edit(MODEL, "command: python3 train.py", "command: python3 slow.py")
    if gitops is not None:
        gitops(work)
    work.commit("Train slowly, on the site's backend")
    work.git("push", "-q", "origin", "HEAD:main")
    shared = tmp_path / "shared-runs"
    shared.mkdir()
    mount = tmp_path / "state"  # the configuration's state_dir: each node mounts its own local one here
    (mount / "demo").mkdir(parents=True)
    if link_runs:
        (mount / "demo" / "runs").symlink_to(shared)  # what a job outside both namespaces sees of a run's path
    (tmp_path / "leases").mkdir()
    config = tmp_path / "gitopsd.toml"
    config.write_text(
        f'state_dir = "{mount}"\nlog_format = "json"\n'
        f'[[repositories]]\nname = "demo"\nurl = "{bare}"\nbranch = "main"\npoll_interval = "1h"\n'
        f'[registry]\nartifacts = "file://{tmp_path / "store"}"\n'
        f'[standby]\nlease_dir = "{tmp_path / "leases"}"\nttl = "4s"\nrenew = "1s"\nmax_clock_skew = "1s"\n' + backends
    )
    site = Site(tmp=tmp_path, config=config, mount=mount, shared_runs=shared, work=work)
    for name in ("login1", "login2"):
        state = tmp_path / f"{name}-state"
        (state / "demo").mkdir(parents=True)
        if link_runs:
            (state / "demo" / "runs").symlink_to(shared)
        site.nodes[name] = Node(name=name, state=state, log=tmp_path / f"{name}.log")
    return site


def stop(site: Site) -> None:
    for node in site.nodes.values():
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(20)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


def kill_active_mid_training_and_take_over(site: Site, *, job_seen: Callable[[str], bool]) -> str:
    """The acceptance scenario; returns the run id. `job_seen(run_id)` says the backend runs its job."""
    login1 = site.start("login1")
    wait_for("login1 active", lambda: login1.lease().get("role") == "active", site)
    login2 = site.start("login2")
    wait_for("login2 standing by", lambda: login2.lease().get("active_host") == "login1", site)
    run_id = wait_for("login1's run", lambda: [r["id"] for r in login1.rows() if r["job_id"]], site)[0]
    wait_for("its job", lambda: job_seen(run_id), site)
    shown = login2.status()
    assert shown.returncode == 0, shown.stderr
    assert "standby: login1 is active (lease generation 1, renewed" in shown.stdout, shown.stdout
    assert login2.rows() == [] and site.run_dirs() == [run_id], "the standby started nothing"

    assert login1.process is not None
    login1.process.kill()  # kill -9, in the middle of the training
    login1.process.wait()
    wait_for("login2 active", lambda: login2.lease().get("role") == "active", site)
    adopted = wait_for("the adopted run", lambda: [r for r in login2.rows() if r["id"] == run_id and r["job_id"]], site)
    assert adopted[0]["job_id"] == login1.rows()[0]["job_id"], "the same job, adopted"
    (site.shared_runs / run_id / "out" / "go").touch()
    wait_for("one version", login2.versions, site)
    assert login2.versions() == [("blobs", 1, run_id)]
    assert [r["id"] for r in login2.rows()] == [run_id] and site.run_dirs() == [run_id], "one job per training"
    shown = login2.status()
    assert "active: this daemon on login2 holds the lease (generation 2" in shown.stdout, shown.stdout
    log = login2.log.read_text()
    # Why it took over: the lease stood still for longer than ttl + skew, or (when the standby's first read of the
    # last renewal came late, as on a loaded machine) the lease's own expiry passed first; either says the holder.
    assert re.search(r"is now active, lease generation 2: the lease of .+? (was not renewed for|expired) \d+ s", log)
    return str(run_id)


@pytest.fixture
def local_site(tmp_path: Path) -> Iterator[Site]:
    site = make_site(tmp_path)
    yield site
    stop(site)


@needs_namespaces
def test_two_login_nodes_one_training_and_the_standby_takes_over_a_killed_active_one(local_site: Site) -> None:
    kill_active_mid_training_and_take_over(
        local_site, job_seen=lambda run_id: (local_site.shared_runs / run_id / "local" / "state.json").exists()
    )


@needs_namespaces
def test_a_paused_active_daemon_wakes_up_as_standby_and_starts_nothing(local_site: Site) -> None:
    site = local_site
    login1 = site.start("login1")
    wait_for("login1 active", lambda: login1.lease().get("role") == "active", site)
    login2 = site.start("login2")
    wait_for("login2 standing by", lambda: login2.lease().get("active_host") == "login1", site)
    first = wait_for("login1's run", lambda: [r["id"] for r in login1.rows() if r["job_id"]], site)[0]
    assert login1.process is not None
    login1.process.send_signal(signal.SIGSTOP)  # swapped out, stopped by a debugger: not dead
    try:
        wait_for("login2 active", lambda: login2.lease().get("role") == "active", site)
        site.work.edit(MODEL, "--epochs 40", "--epochs 30")
        site.work.commit("Fewer epochs")
        site.work.git("push", "-q", "origin", "HEAD:main")
        second = wait_for("login2's new run", lambda: [r["id"] for r in login2.rows() if r["id"] != first], site)[0]
    finally:
        login1.process.send_signal(signal.SIGCONT)
    wait_for("login1 standing by", lambda: login1.lease().get("active_host") == "login2", site)
    (site.shared_runs / second / "out" / "go").touch()
    wait_for("login2's version", login2.versions, site)
    assert [r["id"] for r in login1.rows()] == [first], "the woken daemon started nothing"
    assert site.run_dirs() == sorted([first, second])
    assert "stopped acting and stands by" in login1.log.read_text()
