"""The backend contract (tests/backend_contract.py), kept by the nvidia backend on a fake NVML with four GPUs.

Every contract job asks for one GPU, so the twenty jobs of the batched-status test queue for the four GPUs and
start as earlier ones finish: the contract holds with placement, leases and the queue in the path.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from gitopsd_nvidia.backend import NvidiaBackend

from gitopsd.model import Job
from tests.backend_contract import BackendContract, MakeJob
from tests.nvidia.conftest import GpuJob
from tests.nvidia.fake_nvml import FakeMachine, h100


@pytest.fixture
def machine() -> FakeMachine:
    return FakeMachine(gpus=[h100(n) for n in range(4)])


@pytest.fixture
def contract_job(make_job: GpuJob) -> MakeJob:
    def make(command: str, *, timeout_s: int | None = None, env: dict[str, str] | None = None) -> Job:
        return make_job(command, gpus=1, timeout_s=timeout_s, env=env)

    return make


class TestNvidiaBackendKeepsTheContract(BackendContract):
    """The nvidia backend keeps the contract every backend keeps."""

    @pytest.fixture
    def make_job(self, contract_job: MakeJob) -> MakeJob:
        return contract_job

    @pytest.fixture
    def backend(self, make_backend: Callable[..., NvidiaBackend]) -> NvidiaBackend:
        return make_backend()
