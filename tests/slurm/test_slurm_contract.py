"""The backend contract every backend keeps, against the real Slurm cluster, through both transports."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitopsd_slurm.backend import SlurmBackend

from gitopsd.model import Job
from tests.backend_contract import BackendContract, MakeJob, new_job


@pytest.fixture
def backend(slurm_backend: SlurmBackend) -> SlurmBackend:
    return slurm_backend


@pytest.fixture
def make_job(tmp_path: Path) -> MakeJob:
    def make(command: str, *, timeout_s: int | None = None, env: dict[str, str] | None = None) -> Job:
        return new_job(tmp_path, command, timeout_s=timeout_s, env=env or {})

    return make


class TestSlurmContract(BackendContract):
    """Parametrized by the `transport` fixture: every test runs through sbatch/squeue and through slurmrestd."""

    finish_timeout_s = 60.0
    long_sleep_s = 120
