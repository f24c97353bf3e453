"""The inventory through the fake NVML, and every way NVML fails becoming a reason a human can act on.

Also pins the fake to the nvidia-ml-py release it was written against: the fake sits below pynvml's function
lookup, so a new release (new function versions, new structs) must be checked before the fake is trusted again.
"""

from __future__ import annotations

import ctypes.util
import json
import sys
from pathlib import Path

import pytest
from gitopsd_nvidia.backend import NvidiaBackend
from gitopsd_nvidia.inventory import as_json, read_inventory, render_table
from gitopsd_nvidia.nvml import Nvml

from gitopsd.errors import BackendUnavailable
from gitopsd.model import JobState
from tests.cli import invoke
from tests.nvidia.conftest import WAIT_FOR_GO, GpuJob, go, new_job, poll, ref_of, state_is
from tests.nvidia.fake_nvml import (
    PYNVML_VERSION,
    FakeGpu,
    FakeMachine,
    FakeNvmlLib,
    FakeProcess,
    a100_mig,
    gpu_uuid,
    h100,
    installed_version,
    mig_uuid,
    uninstall,
)


def test_the_fake_is_pinned_to_the_installed_nvidia_ml_py() -> None:
    assert installed_version() == PYNVML_VERSION == "13.615.71"
    import pynvml  # type: ignore[import-untyped]

    assert callable(pynvml._nvmlGetFunctionPointer), "the boundary the fake replaces still exists"


def test_several_gpus_busy_ones_mig_and_unsupported_queries(machine: FakeMachine, fake: FakeNvmlLib) -> None:
    machine.gpus[:] = [
        h100(0, utilization=87, memory_used_mb=2048, processes=[FakeProcess(pid=4242, used_mb=2000)]),
        a100_mig(1, profiles=("1g.5gb", "3g.20gb")),
        FakeGpu(
            uuid=gpu_uuid(2), name="NVIDIA L4", memory_total_mb=23034, unsupported=["nvmlDeviceGetUtilizationRates"]
        ),
    ]
    inventory = read_inventory()
    assert (inventory.driver_version, inventory.cuda_version) == ("550.54.15", "12.4")
    busy, mig, l4 = inventory.gpus
    assert (busy.index, busy.uuid, busy.name) == (0, gpu_uuid(0), "NVIDIA H100 80GB HBM3")
    assert (busy.memory_total_mb, busy.memory_used_mb, busy.utilization_pct) == (81559, 2048, 87)
    assert [(p.pid, p.used_memory_mb) for p in busy.processes or ()] == [(4242, 2000)]
    assert busy.mig_enabled is None, "an H100 here has no MIG support"
    assert mig.mig_enabled is True
    assert [(d.label, d.uuid, d.name, d.memory_total_mb) for d in mig.mig_devices] == [
        ("GPU 1 MIG 0", mig_uuid(1, 0), "NVIDIA A100-SXM4-40GB MIG 1g.5gb", 4864),
        ("GPU 1 MIG 1", mig_uuid(1, 1), "NVIDIA A100-SXM4-40GB MIG 3g.20gb", 19968),
    ]
    assert all(d.utilization_pct is None for d in mig.mig_devices), "not supported on MIG instances"
    assert l4.utilization_pct is None and l4.error is None, "not supported is a missing value, not a fault"
    assert [d.uuid for d in inventory.devices()] == [gpu_uuid(0), mig_uuid(1, 0), mig_uuid(1, 1), gpu_uuid(2)]


def test_a_lost_gpu_stays_listed_with_its_error(machine: FakeMachine, fake: FakeNvmlLib) -> None:
    machine.gpus[1].lost = True
    inventory = read_inventory()
    lost = inventory.gpus[1]
    assert lost.error == "GPU 1: GPU is lost"
    assert "ERROR: GPU 1: GPU is lost" in render_table(inventory)
    assert inventory.gpus[0].error is None


def test_a_gone_gpu_is_no_longer_listed(machine: FakeMachine, fake: FakeNvmlLib) -> None:
    machine.gpus[0].gone = True
    assert [gpu.uuid for gpu in read_inventory().gpus] == [gpu_uuid(1)]


def test_json_and_table_show_every_device(machine: FakeMachine, fake: FakeNvmlLib) -> None:
    machine.gpus[:] = [h100(0, processes=[FakeProcess(pid=4242)]), a100_mig(1)]
    inventory = read_inventory()
    doc = json.loads(json.dumps(as_json(inventory)))
    assert doc["driver_version"] == "550.54.15" and doc["cuda_version"] == "12.4"
    assert [g["uuid"] for g in doc["gpus"]] == [gpu_uuid(0), gpu_uuid(1)]
    assert doc["gpus"][0]["processes"] == [{"pid": 4242, "used_memory_mb": 1024.0}]
    assert [m["uuid"] for m in doc["gpus"][1]["mig_devices"]] == [mig_uuid(1, 0), mig_uuid(1, 1)]
    lines = render_table(inventory).splitlines()
    assert lines[0] == "NVIDIA driver 550.54.15, CUDA 12.4, 2 GPU(s)"
    assert lines[1].split() == ["DEVICE", "UUID", "NAME", "MEMORY", "USED", "UTIL", "PROCESSES", "LEASED", "BY", "MIG"]
    assert gpu_uuid(0) in lines[2] and "4242" in lines[2]
    assert "enabled" in lines[3] and mig_uuid(1, 1) in lines[5] and "instance" in lines[5]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (9, "NVML not available: the NVIDIA kernel driver is not loaded"),
        (4, "NVML not available: permission denied opening the NVIDIA devices"),
        (18, "NVML not available: the NVML library and the loaded kernel driver differ in version"),
        (999, "NVML not available: nvmlInit failed: Unknown Error"),
    ],
)
def test_nvml_start_failures_become_reasons(machine: FakeMachine, fake: FakeNvmlLib, code: int, reason: str) -> None:
    machine.init_error = code
    with pytest.raises(BackendUnavailable) as caught:
        read_inventory()
    assert str(caught.value).startswith(reason), caught.value


def test_without_the_nvidia_library_the_reason_names_it() -> None:
    uninstall()  # the real lookup
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this host has the NVIDIA driver's NVML library")
    with pytest.raises(BackendUnavailable) as caught:
        Nvml().start()
    assert str(caught.value) == (
        "NVML not available: libnvidia-ml.so.1 not found (is the NVIDIA driver installed on this host?)"
    )


def test_without_nvidia_ml_py_the_reason_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now fails as if not installed
    with pytest.raises(BackendUnavailable, match=r"^NVML not available: the Python package nvidia-ml-py is not"):
        Nvml().start()


def test_a_function_missing_from_an_older_driver_is_a_missing_value(machine: FakeMachine, fake: FakeNvmlLib) -> None:
    machine.missing = ["nvmlDeviceGetMigMode"]  # a driver from before MIG
    inventory = read_inventory()
    assert [gpu.mig_enabled for gpu in inventory.gpus] == [None, None]
    assert [gpu.error for gpu in inventory.gpus] == [None, None]


def test_gitopsd_gpus_names_the_run_that_holds_each_device(
    machine: FakeMachine, backend: NvidiaBackend, make_job: GpuJob, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    machine.gpus[:] = [h100(0), h100(1)]
    job = make_job(WAIT_FOR_GO)
    ref = ref_of(job, backend.submit(job))
    [lease] = backend.leases.all()
    shown = invoke(capsys, ["--state-dir", str(tmp_path / "state"), "gpus"])
    assert shown.exit_code == 0, shown.output
    rows = {uuid: line for line in shown.output.splitlines() for uuid in (gpu_uuid(0), gpu_uuid(1)) if uuid in line}
    assert job.run_id in rows[lease.uuid]
    assert job.run_id not in "".join(row for uuid, row in rows.items() if uuid != lease.uuid)
    doc = json.loads(invoke(capsys, ["--state-dir", str(tmp_path / "state"), "gpus", "--json"]).output)
    assert {g["uuid"]: g["leased_by"] for g in doc["gpus"]} == {
        gpu_uuid(0): job.run_id if lease.uuid == gpu_uuid(0) else None,
        gpu_uuid(1): job.run_id if lease.uuid == gpu_uuid(1) else None,
    }
    go(job)
    poll(backend, [ref], state_is(ref, JobState.SUCCEEDED))
    freed = invoke(capsys, ["--state-dir", str(tmp_path / "state"), "gpus"]).output
    assert job.run_id not in freed


def test_gitopsd_gpus_without_any_lease_book_shows_none(
    machine: FakeMachine, fake: FakeNvmlLib, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = invoke(capsys, ["--state-dir", str(tmp_path / "nowhere"), "gpus"])
    assert shown.exit_code == 0, shown.output
    assert "LEASED BY" in shown.output and not (tmp_path / "nowhere").exists()


def test_gitopsd_gpus_with_a_daemon_config_reads_the_daemons_lease_book(
    machine: FakeMachine,
    fake: FakeNvmlLib,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon_state = tmp_path / "daemon"
    monkeypatch.setenv("GITOPSD_SHARED_STATE_DIR", str(daemon_state))  # as `gitopsd run` exports it
    backend = NvidiaBackend(name="gpu", settings={"grace_s": 0.5}, state_dir=daemon_state / "team-a")
    job = new_job(tmp_path, WAIT_FOR_GO)
    ref = ref_of(job, backend.submit(job))
    monkeypatch.delenv("GITOPSD_SHARED_STATE_DIR")  # a user's shell, later
    config = tmp_path / "gitopsd.toml"
    config.write_text(f'state_dir = "{daemon_state}"\n[[repositories]]\nname = "team-a"\nurl = "/srv/git/a.git"\n')
    try:
        shown = invoke(capsys, ["--state-dir", str(tmp_path / "mine"), "gpus", "--config", str(config)])
        assert shown.exit_code == 0, shown.output
        assert job.run_id in shown.output
    finally:
        go(job)
        poll(backend, [ref], state_is(ref, JobState.SUCCEEDED))
