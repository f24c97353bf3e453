"""Fixtures for the Slurm backend's tests: the real cluster (or a clear skip), jobs in tmp dirs, and backends.

Tests that need Slurm ask for the `cluster` fixture. It finds the cluster that tools/slurm/up.sh started (from
the environment that `make test` sources, else from its env.sh) and checks that the controller answers. When it
does not, the test fails under CI (CI=true) and is skipped elsewhere, saying how to start one.
"""

from __future__ import annotations

import json
import os
import subprocess
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

    def settings(self, transport: str, **extra: Any) -> dict[str, Any]:
        """Backend settings for this cluster: fresh listings on every status call (tests poll fast)."""
        settings: dict[str, Any] = {"transport": transport, "slurm_conf": self.slurm_conf, "poll_min_s": 0,
                                    "poll_max_s": 0, "check_interval_s": 0, "grace_s": 2}  # fmt: skip
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


def _cluster_env() -> dict[str, str]:
    env = {key: os.environ[key] for key in ("SLURM_CONF", "SLURMRESTD_URL", "GITOPSD_SLURM_DIR") if key in os.environ}
    env_file = Path(env.get("GITOPSD_SLURM_DIR", DEFAULT_DIR)) / "env.sh"
    if "SLURM_CONF" not in env and env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env.setdefault(key.strip(), value.strip())
    return env


@pytest.fixture(scope="session")
def cluster() -> Cluster:
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
    return Cluster(
        dir=Path(env.get("GITOPSD_SLURM_DIR", str(DEFAULT_DIR))),
        slurm_conf=conf,
        rest_url=env.get("SLURMRESTD_URL", "http://127.0.0.1:6820"),
    )


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
def slurm_backend(cluster: Cluster, transport: str, tmp_path: Path) -> Iterator[SlurmBackend]:
    backend = SlurmBackend(name="hpc", settings=cluster.settings(transport), state_dir=tmp_path / "state")
    yield backend
    cancel_everything(backend, tmp_path)
