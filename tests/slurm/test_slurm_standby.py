"""Two namespaced login nodes' daemons on the real Slurm cluster: exactly one Slurm job per training, and when the
active daemon is killed (-9) mid-training the standby takes over, adopts that job and registers one version.
The scenario is tests/test_standby.py's (there on the local backend); here the job belongs to slurmctld, as on
a site, and the run directory is under the backend's `runs_dir`, the run root both nodes and the job share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GitRepo
from tests.slurm.conftest import Cluster
from tests.test_standby import Site, kill_active_mid_training_and_take_over, make_site, needs_namespaces, stop


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return f'"{value}"'


@pytest.fixture
def slurm_site(tmp_path: Path, cluster: Cluster) -> Iterator[Site]:
    shared = cluster.settings("cli", runs_dir=str(tmp_path / "shared-runs"))  # make_site creates it
    settings = "".join(f"{key} = {_toml(value)}\n" for key, value in shared.items())

    def on_slurm(work: GitRepo) -> None:
        work.edit("gitops.yaml", "backend: local", "backend: hpc")

    site = make_site(tmp_path, backends=f'[backends.hpc]\ntype = "slurm"\n[backends.hpc.settings]\n{settings}',
                     gitops=on_slurm, link_runs=False)  # fmt: skip
    yield site
    stop(site)
    for run_id in site.run_dirs():
        for job in cluster.jobs_named(f"gitopsd-{run_id}"):
            cluster.run("scancel", str(job["job_id"]), check=False)


@needs_namespaces
def test_one_slurm_job_per_training_and_the_standby_adopts_it_when_the_active_daemon_dies(
    slurm_site: Site, cluster: Cluster
) -> None:
    run_id = kill_active_mid_training_and_take_over(
        slurm_site, job_seen=lambda run_id: bool(cluster.jobs_named(f"gitopsd-{run_id}"))
    )
    (job,) = cluster.jobs_named(f"gitopsd-{run_id}")
    assert str(job["job_id"]) == slurm_site.nodes["login2"].rows()[0]["job_id"]
