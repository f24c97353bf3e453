"""Fixtures of the nvidia backend tests: a fake NVML machine, a backend on it, and jobs in real run directories."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from gitopsd_nvidia.backend import NvidiaBackend

from gitopsd.model import Job, JobRef, JobState, JobStatus, Resources
from tests.backend_contract import cancel_everything
from tests.backend_contract import new_job as contract_job
from tests.nvidia.fake_nvml import FakeMachine, FakeNvmlLib, h100, install, uninstall

GRACE_S = 1.0
FAST = {"telemetry_interval_s": 0, "grace_s": GRACE_S, "max_parallel": 16}
WAIT_FOR_GO = 'while [ ! -e "$GITOPSD_OUTPUT_DIR/go" ]; do sleep 0.05; done'


class GpuJob(Protocol):
    def __call__(
        self, command: str, *, gpus: int = 1, timeout_s: int | None = None, env: dict[str, str] | None = None
    ) -> Job: ...


def new_job(root: Path, command: str, *, gpus: int = 1, **fields: Any) -> Job:
    return contract_job(root, command, resources=Resources(gpus=gpus), **fields)


def ref_of(job: Job, job_id: str) -> JobRef:
    return JobRef(run_id=job.run_id, job_id=job_id, run_dir=job.run_dir)


def go(job: Job) -> None:
    """Let a job running WAIT_FOR_GO finish."""
    job.output_dir.mkdir(parents=True, exist_ok=True)
    (job.output_dir / "go").touch()


def poll(
    backend: NvidiaBackend, refs: list[JobRef], until: Callable[[dict[str, JobStatus]], bool]
) -> dict[str, JobStatus]:
    """Call `status` (as the reconciler does, once per pass) until `until` holds; fail after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        statuses = backend.status(refs)
        if until(statuses):
            return statuses
        assert time.monotonic() < deadline, f"gave up waiting; last statuses: {statuses}"
        time.sleep(0.05)


def state_is(ref: JobRef, *states: JobState) -> Callable[[dict[str, JobStatus]], bool]:
    return lambda statuses: statuses[ref.run_id].state in states


@pytest.fixture(autouse=True)
def own_lease_book(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's backends lease in their own state directory, whatever the developer's environment says."""
    monkeypatch.delenv("GITOPSD_SHARED_STATE_DIR", raising=False)


@pytest.fixture
def machine() -> FakeMachine:
    return FakeMachine(gpus=[h100(0), h100(1)])


@pytest.fixture
def fake(machine: FakeMachine) -> Iterator[FakeNvmlLib]:
    lib = install(machine)
    yield lib
    uninstall()


@pytest.fixture
def make_backend(tmp_path: Path, fake: FakeNvmlLib) -> Iterator[Callable[..., NvidiaBackend]]:
    made: list[NvidiaBackend] = []

    def make(**settings: Any) -> NvidiaBackend:
        backend = NvidiaBackend(name="gpu", settings={**FAST, **settings}, state_dir=tmp_path / "state")
        made.append(backend)
        return backend

    yield make
    for backend in made:
        cancel_everything(backend, tmp_path)


@pytest.fixture
def backend(make_backend: Callable[..., NvidiaBackend]) -> NvidiaBackend:
    return make_backend()


@pytest.fixture
def make_job(tmp_path: Path) -> GpuJob:
    def make(command: str, *, gpus: int = 1, timeout_s: int | None = None, env: dict[str, str] | None = None) -> Job:
        return new_job(tmp_path, command, gpus=gpus, timeout_s=timeout_s, env=env or {})

    return make
