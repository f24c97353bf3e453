"""Attacks on the operator's configuration from a repository: a gitops.yaml that points a backend at a host of its
choosing with the daemon's credentials, reads a file through `slurm_conf`, or takes another repository's store.

Each runs through `gitopsd validate` and `gitopsd plan` (the pull-request gates) and a real reconcile, with the
operator's canary credentials in the environment and a listener standing in for the attacker's host.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gitopsd.cli.scaffold import init_demo
from gitopsd.reconcile.statusview import read_status
from tests.conftest import GIT_ENV, GitRepo, gitopsd
from tests.security.conftest import Canary

#: The operator offers a Slurm cluster reached over REST with its own JWT, and lets repositories pick a partition.
OPERATOR_TOML = """
[backends.local]
type = "local"

[backends.hpc]
type = "slurm"
settings = { transport = "rest", rest = { url = "http://127.0.0.1:9", token_env = "OPERATOR_SLURM_JWT" } }
allow = { partition = ["debug", "gpu"] }
"""


def hostile_backends(canary: Canary) -> dict[str, str]:
    """gitops.yaml fragments that would send a credential or a file to the attacker, or read a file."""
    rest = "  hpc:\n    settings:\n      rest: "
    return {
        "rest-url-with-git-token": rest + f"{{url: '{canary.url}', token_env: GITOPSD_GIT_TOKEN}}\n",
        "token-file": rest + f"{{url: '{canary.url}', token_file: '{canary.file}'}}\n",
        "new-backend": f"  evil:\n    type: slurm\n    settings:\n      rest: {{url: '{canary.url}'}}\n",
        "slurm-conf": f"  hpc:\n    settings:\n      slurm_conf: '{canary.file}'\n",
    }


def make_hostile(repo: GitRepo, backends: str) -> None:
    name = backends.split(":", 1)[0].strip()
    text = repo.read("gitops.yaml").replace("  backend: local\n", f"  backend: {name}\n")
    repo.write("gitops.yaml", text.replace("registry:\n", f"backends:\n{backends}registry:\n", 1))
    repo.edit("models/blobs.yaml", "  train:\n", f"  train:\n    backend: {name}\n")
    repo.commit("Train on our own cluster")


@pytest.mark.parametrize("attack", ["rest-url-with-git-token", "token-file", "new-backend", "slurm-conf"])
def test_a_repository_cannot_point_a_backend_anywhere_or_read_a_file(
    demo_repo: GitRepo, state_dir: Path, canary: Canary, attack: str
) -> None:
    operator_file = state_dir.parent / "operator.toml"
    operator_file.write_text(OPERATOR_TOML)
    make_hostile(demo_repo, hostile_backends(canary)[attack])
    config = ("--config", str(operator_file))

    validate = gitopsd(state_dir, *config, "validate", str(demo_repo.path), check=False)
    plan = gitopsd(state_dir, *config, "plan", "--repo", str(demo_repo.path), check=False)
    reconcile = gitopsd(state_dir, *config, "reconcile", "--repo", str(demo_repo.path), check=False)
    status = gitopsd(state_dir, "status", "--json", check=False)

    assert validate.returncode == 1 and plan.returncode == 1
    expected = "is not offered by the operator's configuration" if attack == "new-backend" else "belongs in"
    assert expected in validate.stderr and "gitops.yaml:" in validate.stderr
    assert expected in plan.stderr
    repository = json.loads(status.stdout)["repository"]
    assert repository["applied_commit"] is None and expected in repository["error"]
    canary.assert_untouched()
    canary.assert_not_in(validate.stdout, validate.stderr, plan.stdout, plan.stderr, reconcile.stdout,
                         reconcile.stderr, status.stdout)  # fmt: skip
    assert not (state_dir / "runs").exists() or not any((state_dir / "runs").iterdir()), "nothing was started"


def test_a_repository_cannot_choose_its_artifact_store(demo_repo: GitRepo, state_dir: Path, canary: Canary) -> None:
    theirs = canary.file.parent / "team-a-store"
    demo_repo.edit("gitops.yaml", "registry:\n", f"registry:\n  artifacts: 'file://{theirs}'\n")
    demo_repo.commit("Share team A's store")
    validate = gitopsd(state_dir, "validate", str(demo_repo.path), check=False)
    assert validate.returncode == 1
    assert (
        "gitops.yaml:" in validate.stderr and "'artifacts' belongs in the operator's configuration" in validate.stderr
    )
    gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), check=False)
    assert not theirs.exists(), "nothing was written into another repository's store"


def test_the_daemon_serves_a_healthy_repository_beside_a_hostile_one(tmp_path: Path, canary: Canary) -> None:
    repos = {}
    for name in ("healthy", "hostile"):
        repos[name] = GitRepo(tmp_path / name)
        init_demo(repos[name].path)
    make_hostile(repos["hostile"], hostile_backends(canary)["rest-url-with-git-token"])
    config = tmp_path / "gitopsd.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[http]\nlisten = "127.0.0.1:0"\n'
        + "".join(f'[[repositories]]\nname = "{n}"\nurl = "{r.path}"\npoll_interval = "1h"\n' for n, r in repos.items())
        + OPERATOR_TOML
    )
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "gitopsd", "run", "--config", str(config)],
                                  env={**os.environ, **GIT_ENV}, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            healthy = _model(tmp_path / "state" / "healthy")
            hostile = _status(tmp_path / "state" / "hostile")
            error = (hostile.get("repository") or {}).get("error") or ""
            if healthy.get("latest_version") == 1 and "belongs in" in error:
                break
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() < deadline, (healthy, hostile, log.read_text()[-3000:])
            time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    canary.assert_untouched()
    canary.assert_not_in(log.read_text())


def _status(state_dir: Path) -> dict[str, Any]:
    """The status document, or {} while the daemon is still creating the state database."""
    try:
        return read_status(state_dir) if (state_dir / "state.db").exists() else {}
    except sqlite3.OperationalError:
        return {}


def _model(state_dir: Path) -> dict[str, Any]:
    return next((m for m in _status(state_dir).get("models") or [] if m["name"] == "blobs"), {})
