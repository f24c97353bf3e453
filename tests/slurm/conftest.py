"""Fixtures for the Slurm backend's tests: the real cluster (or a clear skip), jobs in tmp dirs, and backends.

Tests that need Slurm ask for the `cluster` fixture. It finds the cluster that tools/slurm/up.sh started (from
the environment that `make test` sources, else from its env.sh) and checks that the controller answers. When it
does not, the test fails under CI (CI=true) and is skipped elsewhere, saying how to start one.

That cluster's nodes see the machine's filesystem except its private directory (GITOPSD_SLURM_PRIVATE), as
compute nodes see a shared filesystem but not the login node's disk. So here every test's `tmp_path` (run
directories, marks a job writes) lies under the shared root (GITOPSD_SLURM_SHARED), every `state_dir` under the
private directory, and the backends' settings carry a `runs_dir` under the shared root: a test that needed the
state directory on a node would fail. Against a cluster without those (an older up.sh) both are pytest's own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gitopsd_slurm.backend import SlurmBackend
from gitopsd_slurm.runfiles import RunFiles, read_json

from gitopsd.model import JobRef

RECORDED = Path(__file__).resolve().parent / "recorded"
DEFAULT_DIR = Path(os.environ.get("GITOPSD_SLURM_DIR", "/tmp/gitopsd-slurm"))
NOT_RUNNING = (
    "Slurm not running: start it with tools/slurm/up.sh (as root; it installs Slurm 22.05 from Debian), then "
    "`set -a; . /tmp/gitopsd-slurm/env.sh; set +a` (make test does both)"
)


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


@dataclass(frozen=True, kw_only=True)
class Cluster:
    """The running test cluster: where its config is, its REST URL, and a way to run Slurm commands."""

    dir: Path
    slurm_conf: str
    rest_url: str
    nodes: tuple[str, ...] = ()  # node1..nodeN of a namespaced cluster
    private: Path | None = None  # what no node sees (GITOPSD_SLURM_PRIVATE)
    runs_dir: Path | None = None  # this session's run root, under the one every node sees (GITOPSD_SLURM_SHARED)

    @property
    def namespaced(self) -> bool:
        """Whether the nodes are namespaced (own hostnames; the private directory hidden from them)."""
        return bool(self.nodes) and self.private is not None and self.runs_dir is not None

    @property
    def node_names(self) -> tuple[str, ...]:
        """The names jobs may run on (the single node of an older up.sh is `localhost`)."""
        return self.nodes or ("localhost",)

    def hostname_on(self, node: str) -> str:
        """What `hostname` says in a job on `node`: the node's name on a namespaced cluster, else this host's."""
        return node if self.namespaced else os.uname().nodename

    def settings(self, transport: str, **extra: Any) -> dict[str, Any]:
        """Backend settings for this cluster: fresh listings on every status call (tests poll fast), and run
        directories under the shared run root."""
        settings: dict[str, Any] = {"transport": transport, "slurm_conf": self.slurm_conf, "poll_min_s": 0,
                                    "poll_max_s": 0, "check_interval_s": 0, "grace_s": 2}  # fmt: skip
        if self.runs_dir is not None:
            settings["runs_dir"] = str(self.runs_dir)
        if transport == "rest":
            settings["rest"] = {"url": self.rest_url}
        settings.update(extra)
        return settings

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SLURM_CONF": self.slurm_conf}
        env.pop("SLURM_JWT", None)
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=check, timeout=60)

    def jobs_named(self, name: str) -> list[dict[str, Any]]:
        """Every job the controller holds with this name (squeue --json ignores its own filters)."""
        jobs: list[dict[str, Any]] = json.loads(self.run("squeue", "--json").stdout)["jobs"]
        return [job for job in jobs if job["name"] == name]

    def wait_accounted(self, job_id: str, timeout_s: float = 30.0) -> None:
        """Wait until slurmdbd has the job's end, where the cluster keeps accounting: slurmctld sends it there in
        the background, long before a finished job leaves squeue (MinJobAge), but not always before a test that
        hides it from squeue at once asks. Without slurmdbd there is nothing to wait for (the job-completion
        file is written as the job ends)."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = self.run("sacct", "-X", "-n", "-P", "-j", job_id, "-o", "End", check=False)
            if done.returncode != 0 or done.stdout.strip() not in ("", "Unknown"):
                return
            assert time.monotonic() < deadline, f"slurmdbd has no end of job {job_id} after {timeout_s} s"
            time.sleep(0.2)


ENV_KEYS = ("SLURM_CONF", "SLURMRESTD_URL", "GITOPSD_SLURM_DIR", "GITOPSD_SLURM_SHARED", "GITOPSD_SLURM_PRIVATE",
            "GITOPSD_SLURM_NODE_NAMES")  # fmt: skip


def _cluster_env() -> dict[str, str]:
    """The cluster's environment: this process's, completed from the env.sh of its directory."""
    env = {key: os.environ[key] for key in ENV_KEYS if key in os.environ}
    if "GITOPSD_SLURM_DIR" in env:
        directory = Path(env["GITOPSD_SLURM_DIR"])
    else:
        directory = Path(env["SLURM_CONF"]).parent if "SLURM_CONF" in env else DEFAULT_DIR
    env_file = directory / "env.sh"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env.setdefault(key.strip(), value.strip())
    return env


def _session_dir(env_key: str) -> Iterator[Path | None]:
    """A directory for this test session under the cluster's `env_key` directory (None when it has none),
    removed at the end of the session."""
    root = _cluster_env().get(env_key, "")
    if not root or not Path(root).is_dir():
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="pytest-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_root() -> Iterator[Path | None]:
    """This session's directory under the run root every node sees, or None."""
    yield from _session_dir("GITOPSD_SLURM_SHARED")


@pytest.fixture(scope="session")
def private_root() -> Iterator[Path | None]:
    """This session's directory under the one no node sees, or None."""
    yield from _session_dir("GITOPSD_SLURM_PRIVATE")


def _test_dir(request: pytest.FixtureRequest, root: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=re.sub(r"\W", "_", request.node.name)[:30] + "-", dir=root))


@pytest.fixture
def tmp_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             shared_root: Path | None) -> Path:  # fmt: skip
    """Where the nodes see it: the test's own directory under the shared run root (else pytest's tmp_path)."""
    if shared_root is None:
        return tmp_path_factory.mktemp(re.sub(r"\W", "_", request.node.name)[:30], numbered=True)
    return _test_dir(request, shared_root)


@pytest.fixture
def state_dir(request: pytest.FixtureRequest, tmp_path: Path, private_root: Path | None) -> Path:
    """Where no node sees it, as on a login node's own disk: under the private directory (else in tmp_path)."""
    if private_root is None:
        return tmp_path / "state"
    return _test_dir(request, private_root) / "state"


@pytest.fixture(scope="session")
def cluster(shared_root: Path | None, private_root: Path | None) -> Cluster:
    env = _cluster_env()
    conf = env.get("SLURM_CONF", "")
    up = False
    if conf and Path(conf).is_file():
        try:
            ping = subprocess.run(["scontrol", "ping"], env={**os.environ, "SLURM_CONF": conf}, capture_output=True,
                                  text=True, timeout=20, check=False)  # fmt: skip
            up = "is UP" in ping.stdout
        except (OSError, subprocess.TimeoutExpired):
            up = False
    if not up:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(NOT_RUNNING)
        pytest.skip(NOT_RUNNING)
    runs_dir = None
    if shared_root is not None:
        runs_dir = shared_root / "runs"
        runs_dir.mkdir(exist_ok=True)
    nodes = tuple(name for name in env.get("GITOPSD_SLURM_NODE_NAMES", "").split(",") if name)
    return Cluster(
        dir=Path(env.get("GITOPSD_SLURM_DIR", str(Path(conf).parent))),
        slurm_conf=conf,
        rest_url=env.get("SLURMRESTD_URL", "http://127.0.0.1:6820"),
        nodes=nodes,
        private=Path(env["GITOPSD_SLURM_PRIVATE"]) if private_root is not None else None,
        runs_dir=runs_dir,
    )


NO_ACCOUNTING = (
    "the test cluster keeps no accounting with enforced associations: start it with GITOPSD_SLURM_ACCOUNTING=1 "
    "tools/slurm/up.sh (the default: slurmdbd on a private MariaDB; {why})"
)


@pytest.fixture(scope="session")
def accounting(cluster: Cluster) -> Cluster:
    """The cluster, where it keeps accounting (slurmdbd) and enforces associations as real clusters do, root's
    included; else the test is skipped, saying how to turn accounting on (a failure under CI, which turns it on)."""
    config = cluster.run("scontrol", "show", "config", check=False).stdout
    enforced = re.search(r"^AccountingStorageEnforce\s*=\s*(\S*)", config, re.MULTILINE)
    root = cluster.run("sacctmgr", "-n", "-P", "show", "assoc", "user=root", "format=account", check=False)
    why = None
    if root.returncode != 0 or not root.stdout.strip():
        why = "sacctmgr finds no association of root: " + " ".join((root.stderr or root.stdout).split())[:200]
    elif enforced is None or "associations" not in enforced.group(1):
        why = f"AccountingStorageEnforce={enforced.group(1) if enforced else ''}"
    if why is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(NO_ACCOUNTING.format(why=why))
        pytest.skip(NO_ACCOUNTING.format(why=why))
    return cluster


def cancel_everything(backend: SlurmBackend, root: Path) -> None:
    """Teardown: no test leaves a job queued or running, even when it fails half-way."""
    runs = root / "runs"
    for run_dir in runs.iterdir() if runs.is_dir() else []:
        submitted = read_json(RunFiles(run_dir=run_dir).submitted)
        if submitted is not None:
            backend.cancel(JobRef(run_id=run_dir.name, job_id=str(submitted["job_id"]), run_dir=run_dir))


@pytest.fixture(params=["cli", "rest"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def slurm_backend(cluster: Cluster, transport: str, tmp_path: Path, state_dir: Path) -> Iterator[SlurmBackend]:
    backend = SlurmBackend(name="hpc", settings=cluster.settings(transport), state_dir=state_dir)
    yield backend
    cancel_everything(backend, tmp_path)
