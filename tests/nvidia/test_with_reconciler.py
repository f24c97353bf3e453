"""The nvidia backend as the reconciler meets it: found by entry point, placed, registered with GPU lineage, and,
on a host without NVML (this CI host), reported unavailable for its models while the other backends go on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.spec.operator import Operator, OperatorBackend
from tests.conftest import GitRepo, gitopsd
from tests.nvidia.fake_nvml import FakeMachine, FakeNvmlLib, FakeProcess, gpu_uuid, h100, uninstall

#: The operator offers the host's GPUs next to the local backend.
OPERATOR = Operator(
    backends={
        "local": OperatorBackend(type="local"),
        "gpu": OperatorBackend(type="nvidia", settings={"model": "H100", "telemetry_interval_s": 0}),
    }
)


def on_gpu_backend(repo: GitRepo, name: str) -> None:
    """A copy of the demo model that trains on the operator's nvidia backend with one GPU."""
    spec = (
        repo.read("models/blobs.yaml")
        .replace("name: blobs", f"name: {name}")
        .replace("  train:\n", "  train:\n    backend: gpu\n    resources:\n      gpus: 1\n")
    )
    repo.write(f"models/{name}.yaml", spec)
    repo.commit("A model on the host's GPUs")


def model_status(state_dir: Path, name: str) -> dict[str, Any]:
    doc = json.loads(gitopsd(state_dir, "status", "--json").stdout)
    found: dict[str, Any] = next(m for m in doc["models"] if m["name"] == name)
    return found


def test_the_demo_trains_on_a_gpu_and_lineage_names_it(
    demo_repo: GitRepo, state_dir: Path, machine: FakeMachine, fake: FakeNvmlLib
) -> None:
    machine.gpus[:] = [h100(0, utilization=55, memory_used_mb=900)]
    on_gpu_backend(demo_repo, "blobs-gpu")
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=OPERATOR)
    try:
        rec.reconcile_until_settled(timeout_s=120)
    finally:
        rec.close()
    status = model_status(state_dir, "blobs-gpu")
    assert status["ready"] is True, status
    version = json.loads(gitopsd(state_dir, "registry", "show", "blobs-gpu@1").stdout)
    job = version["lineage"]["job"]
    assert job["backend"] == "nvidia" and version["lineage"]["job_id"] == f"nvidia:{version['lineage']['run_id']}"
    assert [(g["name"], g["uuid"]) for g in job["gpus"]] == [("NVIDIA H100 80GB HBM3", gpu_uuid(0))]
    assert job["driver_version"] == "550.54.15" and job["cuda_version"] == "12.4"


def test_without_nvml_models_on_nvidia_are_unavailable_and_the_others_train(
    demo_repo: GitRepo, state_dir: Path
) -> None:
    uninstall()  # the real NVML lookup of this host
    on_gpu_backend(demo_repo, "blobs-gpu")
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=OPERATOR)
    try:
        rec.reconcile_until_settled(timeout_s=120)
    finally:
        rec.close()
    gpu = model_status(state_dir, "blobs-gpu")
    if "libnvidia-ml.so.1 not found" not in gpu["message"] and gpu["ready"]:
        pytest.skip("this host has a working NVIDIA driver")
    assert model_status(state_dir, "blobs")["ready"] is True
    assert gpu["reason"] == "BackendUnavailable"
    assert gpu["message"].startswith("backend gpu is unavailable: NVML not available: libnvidia-ml.so.1 not found")
    assert gpu["run"] is None


def test_status_says_why_a_run_waits_for_a_gpu_and_it_trains_once_one_is_free(
    demo_repo: GitRepo, state_dir: Path, machine: FakeMachine, fake: FakeNvmlLib
) -> None:
    machine.gpus[:] = [h100(0, processes=[FakeProcess(pid=4242, used_mb=60000)], memory_used_mb=60000)]
    on_gpu_backend(demo_repo, "blobs-gpu")
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=OPERATOR)
    try:
        rec.reconcile()
        rec.reconcile()
        waiting = model_status(state_dir, "blobs-gpu")
        assert waiting["ready"] is False
        assert "Waiting for GPU" in waiting["run"]["message"], waiting
        assert "GPU 0 (GPU-00000000) is busy: 1 foreign compute process (pid 4242)" in waiting["run"]["message"]
        machine.gpus[0].processes, machine.gpus[0].memory_used_mb = [], 0
        rec.reconcile_until_settled(timeout_s=120)
    finally:
        rec.close()
    assert model_status(state_dir, "blobs-gpu")["latest_version"] == 1
