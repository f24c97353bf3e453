"""The nvidia backend on a fake NVML: placement by UUID, queuing for a GPU, leases, lost GPUs, telemetry, lineage.

Jobs are real processes under the local supervisor; only NVML is faked (at pynvml's C-function lookup), and the
fake machine is changed while jobs run to make GPUs busy, lost or gone.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from gitopsd_nvidia.affinity import format_cpus
from gitopsd_nvidia.backend import NvidiaBackend

from gitopsd.backends.local.supervisor import RunFiles, group_members
from gitopsd.backends.protocol import load_backend
from gitopsd.errors import BackendUnavailable, PermanentError
from gitopsd.model import JobState, Resources
from gitopsd.reconcile.metrics import MetricsReader
from tests.backend_contract import cancel_everything, log_text
from tests.nvidia.conftest import WAIT_FOR_GO, GpuJob, go, new_job, poll, ref_of, state_is
from tests.nvidia.fake_nvml import FakeGpu, FakeMachine, FakeNvmlLib, FakeProcess, a100_mig, gpu_uuid, h100, mig_uuid

MakeBackend = Callable[..., NvidiaBackend]
SHOW_GPUS = 'echo "cuda=$CUDA_VISIBLE_DEVICES nvidia=$NVIDIA_VISIBLE_DEVICES"'


def visible_devices(backend: NvidiaBackend, ref: object) -> list[str]:
    text = log_text(backend, ref)  # type: ignore[arg-type]
    line = next(line for line in text.splitlines() if line.startswith("cuda="))
    cuda, nvidia = line.split()
    assert cuda.removeprefix("cuda=") == nvidia.removeprefix("nvidia="), line
    return [uuid for uuid in cuda.removeprefix("cuda=").split(",") if uuid]


def written(path: Path) -> bool:
    """Whether the training has written something to `path`."""
    return path.is_file() and path.stat().st_size > 0


def test_a_job_sees_exactly_its_gpus_by_uuid(backend: NvidiaBackend, make_job: GpuJob) -> None:
    job = make_job(SHOW_GPUS, gpus=2)
    ref = ref_of(job, backend.submit(job))
    assert poll(backend, [ref], state_is(ref, JobState.SUCCEEDED, JobState.FAILED))[job.run_id].exit_code == 0
    assert sorted(visible_devices(backend, ref)) == [gpu_uuid(0), gpu_uuid(1)]


def test_a_job_asking_for_no_gpu_sees_none(backend: NvidiaBackend, make_job: GpuJob) -> None:
    job = make_job(SHOW_GPUS, gpus=0)
    ref = ref_of(job, backend.submit(job))
    poll(backend, [ref], state_is(ref, JobState.SUCCEEDED))
    assert "cuda= nvidia=void" in log_text(backend, ref)
    assert backend.leases.all() == []


def test_a_queued_run_says_why_and_starts_when_a_gpu_frees_up(
    machine: FakeMachine, backend: NvidiaBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [h100(0)]
    first = make_job(WAIT_FOR_GO)
    second = make_job(SHOW_GPUS)
    ref1 = ref_of(first, backend.submit(first))
    ref2 = ref_of(second, backend.submit(second))
    assert ref2.job_id == f"nvidia:{second.run_id}"
    statuses = poll(backend, [ref1, ref2], state_is(ref1, JobState.RUNNING))
    waiting = statuses[second.run_id]
    assert waiting.state is JobState.PENDING
    assert waiting.message.startswith("Waiting for GPU:"), waiting
    assert f"leased by run {first.run_id}" in waiting.message and "GPU 0" in waiting.message
    assert "Waiting for GPU" in log_text(backend, ref2)
    assert [lease.run_id for lease in backend.leases.all()] == [first.run_id]

    go(first)
    done = poll(backend, [ref1, ref2], state_is(ref2, JobState.SUCCEEDED, JobState.FAILED))
    assert done[first.run_id].state is JobState.SUCCEEDED
    assert done[second.run_id].state is JobState.SUCCEEDED
    assert visible_devices(backend, ref2) == [gpu_uuid(0)]
    assert backend.leases.all() == [], "finished runs free their leases"


@pytest.mark.parametrize("shared_by", ["daemon", "setting"])
def test_two_repositories_of_one_host_never_lease_the_same_gpu(
    machine: FakeMachine, fake: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_by: str
) -> None:
    # Two state directories, as the daemon gives two repositories: one lease book between them, either the
    # one in the daemon's shared state directory or one named by the `leases` setting.
    machine.gpus[:] = [h100(0)]
    settings: dict[str, object] = {"grace_s": 0.5}
    if shared_by == "daemon":
        monkeypatch.setenv("GITOPSD_SHARED_STATE_DIR", str(tmp_path / "state"))
    else:
        monkeypatch.delenv("GITOPSD_SHARED_STATE_DIR", raising=False)
        settings["leases"] = str(tmp_path / "host-leases.db")
    team_a = NvidiaBackend(name="gpu", settings=settings, state_dir=tmp_path / "state" / "team-a")
    team_b = NvidiaBackend(name="gpu", settings=settings, state_dir=tmp_path / "state" / "team-b")
    first, second = new_job(tmp_path / "a", WAIT_FOR_GO), new_job(tmp_path / "b", SHOW_GPUS)
    ref1, ref2 = ref_of(first, team_a.submit(first)), ref_of(second, team_b.submit(second))
    try:
        waiting = team_b.status([ref2])[second.run_id]
        assert waiting.state is JobState.PENDING
        assert f"leased by run {first.run_id}" in waiting.message, waiting.message
        go(first)
        poll(team_a, [ref1], state_is(ref1, JobState.SUCCEEDED))
        poll(team_b, [ref2], state_is(ref2, JobState.SUCCEEDED))
        assert visible_devices(team_b, ref2) == [gpu_uuid(0)]
    finally:
        cancel_everything(team_a, tmp_path / "a")
        cancel_everything(team_b, tmp_path / "b")


SHOW_CPUS = 'echo "cpus=$(python3 -c "import os; print(sorted(os.sched_getaffinity(0)))")"'


def shown_cpus(backend: NvidiaBackend, ref: object) -> list[int]:
    line = next(line for line in log_text(backend, ref).splitlines() if line.startswith("cpus="))  # type: ignore[arg-type]
    return [int(cpu) for cpu in line.removeprefix("cpus=").strip("[]").split(",") if cpu.strip()]


@pytest.mark.parametrize(
    ("gpu_cpus", "settings", "bound"),
    [
        ("far", {}, True),
        ("far", {"cpu_binding": False}, False),
        ("all", {}, False),  # one NUMA node holds every CPU we may use: nothing to bind
        ("unsupported", {}, False),  # NVML cannot say: run unbound rather than not at all
    ],
)
def test_a_run_is_bound_to_the_cpus_of_its_gpus_numa_node(
    machine: FakeMachine,
    make_backend: MakeBackend,
    make_job: GpuJob,
    gpu_cpus: str,
    settings: dict[str, object],
    bound: bool,
) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two usable CPUs to tell a GPU's NUMA node from the rest")
    far = allowed[1:]
    gpu = h100(0, cpus=far if gpu_cpus == "far" else None)
    if gpu_cpus == "unsupported":
        gpu.unsupported.append("nvmlDeviceGetCpuAffinity")
    machine.gpus[:] = [gpu]
    backend = make_backend(**settings)
    job = make_job(SHOW_CPUS)
    ref = ref_of(job, backend.submit(job))
    assert poll(backend, [ref], state_is(ref, JobState.SUCCEEDED, JobState.FAILED))[job.run_id].exit_code == 0
    assert shown_cpus(backend, ref) == (far if bound else allowed)
    assert backend.describe(ref)["cpus"] == (far if bound else None), "lineage says where it ran"
    assert ("bound to CPUs" in log_text(backend, ref)) is bound


@pytest.mark.parametrize(("cpus", "text"), [([0], "0"), ([0, 1, 2, 3], "0-3"), ([3, 0, 1, 8, 10, 11], "0-1,3,8,10-11")])
def test_cpu_lists_read_as_linux_writes_them(cpus: list[int], text: str) -> None:
    assert format_cpus(cpus) == text


def test_queued_runs_start_oldest_first(machine: FakeMachine, backend: NvidiaBackend, make_job: GpuJob) -> None:
    machine.gpus[:] = [h100(0)]
    blocker = make_job(WAIT_FOR_GO)
    refs = [ref_of(blocker, backend.submit(blocker))]
    later = [make_job(f"date +%s.%N > $GITOPSD_OUTPUT_DIR/started; echo {n}") for n in range(3)]
    refs += [ref_of(job, backend.submit(job)) for job in later]
    go(blocker)
    poll(backend, refs, lambda s: all(st.state is JobState.SUCCEEDED for st in s.values()))
    starts = [float((job.output_dir / "started").read_text()) for job in later]
    assert starts == sorted(starts)


def test_a_gpu_with_a_foreign_compute_process_is_not_used(
    machine: FakeMachine, backend: NvidiaBackend, make_job: GpuJob
) -> None:
    machine.gpus[0].processes = [FakeProcess(pid=4242, used_mb=30000)]
    machine.gpus[1].processes = [FakeProcess(pid=4343), FakeProcess(pid=4444)]
    job = make_job(SHOW_GPUS)
    ref = ref_of(job, backend.submit(job))
    waiting = backend.status([ref])[job.run_id]
    assert waiting.state is JobState.PENDING
    assert "GPU 0 (GPU-00000000) is busy: 1 foreign compute process (pid 4242)" in waiting.message
    assert "GPU 1 (GPU-00000001) is busy: 2 foreign compute processes (pid 4343, 4444)" in waiting.message

    machine.gpus[1].processes = []  # the other user's training ended
    poll(backend, [ref], state_is(ref, JobState.SUCCEEDED))
    assert visible_devices(backend, ref) == [gpu_uuid(1)]


def test_not_exclusive_shares_with_foreign_processes_given_enough_free_memory(
    machine: FakeMachine, make_backend: MakeBackend, make_job: GpuJob
) -> None:
    machine.gpus[0].processes = [FakeProcess(pid=4242)]
    machine.gpus[0].memory_used_mb = 70000
    machine.gpus[1].processes = [FakeProcess(pid=4343)]
    machine.gpus[1].memory_used_mb = 1000
    backend = make_backend(exclusive=False, min_memory="40Gi")
    job = make_job(SHOW_GPUS)
    ref = ref_of(job, backend.submit(job))
    poll(backend, [ref], state_is(ref, JobState.SUCCEEDED))
    assert visible_devices(backend, ref) == [gpu_uuid(1)]


def test_model_and_min_memory_choose_the_device(
    machine: FakeMachine, make_backend: MakeBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [FakeGpu(uuid=gpu_uuid(0), name="NVIDIA L4", memory_total_mb=23034), h100(1)]
    by_model = make_backend(model="l4")
    job = make_job(SHOW_GPUS)
    ref = ref_of(job, by_model.submit(job))
    poll(by_model, [ref], state_is(ref, JobState.SUCCEEDED))
    assert visible_devices(by_model, ref) == [gpu_uuid(0)]

    by_memory = make_backend(min_memory="40Gi")
    job = make_job(SHOW_GPUS)
    ref = ref_of(job, by_memory.submit(job))
    poll(by_memory, [ref], state_is(ref, JobState.SUCCEEDED))
    assert visible_devices(by_memory, ref) == [gpu_uuid(1)]


def test_mig_instances_are_given_by_their_mig_uuids(
    machine: FakeMachine, backend: NvidiaBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [a100_mig(0)]
    jobs = [make_job(f"{SHOW_GPUS}; {WAIT_FOR_GO}") for _ in range(3)]
    refs = [ref_of(job, backend.submit(job)) for job in jobs]
    statuses = poll(backend, refs, lambda s: sum(st.state is JobState.RUNNING for st in s.values()) == 2)
    assert statuses[jobs[2].run_id].state is JobState.PENDING
    assert "GPU 0 MIG 0 (MIG-00000000) is leased" in statuses[jobs[2].run_id].message
    poll(backend, refs, lambda s: all("cuda=" in log_text(backend, ref) for ref in refs[:2]))
    given = sorted(visible_devices(backend, ref) for ref in refs[:2])
    assert given == [[mig_uuid(0, 0)], [mig_uuid(0, 1)]]
    assert backend.admit(Resources(gpus=2)) is not None, "a process sees one MIG instance: 2 cannot be given"
    for job in jobs:
        go(job)
    poll(backend, refs, lambda s: all(st.state is JobState.SUCCEEDED for st in s.values()))


def test_admit_refuses_what_this_host_can_never_run(make_backend: MakeBackend) -> None:
    backend = make_backend()
    assert backend.admit(Resources(gpus=2)) is None
    assert backend.admit(Resources(gpus=0)) is None
    too_many = backend.admit(Resources(gpus=3))
    assert too_many is not None and "3 GPUs" in too_many and "2x 'NVIDIA H100 80GB HBM3'" in too_many
    nodes = backend.admit(Resources(gpus=1, nodes=2))
    assert nodes is not None and "2 nodes" in nodes
    wrong_model = make_backend(model="B200").admit(Resources(gpus=1))
    assert wrong_model is not None and "no device here is a 'B200'" in wrong_model
    too_big = make_backend(min_memory="100Gi").admit(Resources(gpus=1))
    assert too_big is not None and ">= 102400 MiB" in too_big and "largest device here has 81559 MiB" in too_big


def test_cancel_of_a_queued_run_means_it_never_starts(
    machine: FakeMachine, backend: NvidiaBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [h100(0)]
    running, queued = make_job(WAIT_FOR_GO), make_job("touch $GITOPSD_OUTPUT_DIR/ran")
    ref1, ref2 = ref_of(running, backend.submit(running)), ref_of(queued, backend.submit(queued))
    backend.cancel(ref2)
    assert backend.status([ref2])[queued.run_id].state is JobState.CANCELLED
    backend.cancel(ref1)
    statuses = poll(backend, [ref1, ref2], state_is(ref1, JobState.CANCELLED))
    assert statuses[queued.run_id].state is JobState.CANCELLED
    assert backend.leases.all() == [], "cancel frees the lease"
    assert not (queued.output_dir / "ran").exists()
    again = make_job("true")
    ref3 = ref_of(again, backend.submit(again))
    poll(backend, [ref3], state_is(ref3, JobState.SUCCEEDED))


def test_a_gpu_run_over_its_host_memory_limit_fails_and_frees_its_gpu(
    machine: FakeMachine, make_backend: MakeBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [h100(0)]
    backend = make_backend(memory_poll_s=0.1)
    hog = f"{sys.executable} -c 'import time; held = bytearray(b\"x\") * (300 << 20); time.sleep(60)'"
    job = replace(make_job(hog), resources=Resources(gpus=1, memory_mb=128))
    ref = ref_of(job, backend.submit(job))
    status = poll(backend, [ref], state_is(ref, JobState.FAILED, JobState.SUCCEEDED))[job.run_id]
    assert status.state is JobState.FAILED
    assert "out of memory" in status.message and "over its limit of 128 MiB" in status.message
    assert backend.leases.all() == [], "the GPU is free for the next run"
    assert backend.describe(ref)["peak_memory_mb"] > 128
    too_much = backend.admit(Resources(gpus=1, memory_mb=1 << 40))
    assert too_much is not None and "host memory" in too_much


@pytest.mark.parametrize(
    ("breaks", "expected"),
    [
        (lambda gpu: setattr(gpu, "lost", True), "NVML reports the GPU is lost"),
        (lambda gpu: setattr(gpu, "gone", True), "NVML no longer lists this device"),
    ],
    ids=["gpu-is-lost", "device-gone"],
)
def test_a_gpu_lost_mid_run_fails_the_run_and_stops_it(
    machine: FakeMachine,
    backend: NvidiaBackend,
    make_job: GpuJob,
    breaks: Callable[[FakeGpu], None],
    expected: str,
) -> None:
    machine.gpus[:] = [h100(0)]
    job = make_job("sleep 60")
    ref = ref_of(job, backend.submit(job))
    poll(backend, [ref], state_is(ref, JobState.RUNNING))
    pgid = json.loads(RunFiles(run_dir=job.run_dir).state.read_text())["pid"]
    breaks(machine.gpus[0])
    status = backend.status([ref])[job.run_id]
    assert status.state is JobState.FAILED
    assert status.message.startswith("GPU lost mid-run: GPU 0 'NVIDIA H100 80GB HBM3'"), status.message
    assert expected in status.message and gpu_uuid(0) in status.message
    assert group_members(pgid) == [], "the training's processes are stopped"
    assert backend.leases.all() == []
    assert backend.status([ref])[job.run_id].message == status.message, "the reason stays"
    assert backend.describe(ref)["failure"] == status.message


def test_a_destroyed_mig_instance_fails_only_its_run(
    machine: FakeMachine, backend: NvidiaBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [a100_mig(0)]
    jobs = [make_job(f"{SHOW_GPUS}; sleep 60") for _ in range(2)]
    refs = [ref_of(job, backend.submit(job)) for job in jobs]
    poll(backend, refs, lambda s: all(st.state is JobState.RUNNING for st in s.values()))
    poll(backend, refs, lambda s: all("cuda=" in log_text(backend, ref) for ref in refs))
    victim = next(ref for ref in refs if visible_devices(backend, ref) == [mig_uuid(0, 1)])
    mig = machine.gpus[0].mig
    assert mig is not None
    mig[1].gone = True
    statuses = backend.status(refs)
    assert statuses[victim.run_id].state is JobState.FAILED
    assert "GPU 0 MIG 1" in statuses[victim.run_id].message and mig_uuid(0, 1) in statuses[victim.run_id].message
    assert [st.state for run_id, st in statuses.items() if run_id != victim.run_id] == [JobState.RUNNING]


def test_a_fatal_xid_fails_the_run_and_a_harmless_one_is_only_logged(
    machine: FakeMachine, backend: NvidiaBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [h100(0)]
    job = make_job("sleep 60")
    ref = ref_of(job, backend.submit(job))
    poll(backend, [ref], state_is(ref, JobState.RUNNING))  # registers the GPU for Xid events
    machine.xids.append((gpu_uuid(0), 13))
    assert backend.status([ref])[job.run_id].state is JobState.RUNNING
    assert "Xid 13" in log_text(backend, ref)
    machine.xids.append((gpu_uuid(0), 79))
    status = backend.status([ref])[job.run_id]
    assert status.state is JobState.FAILED
    assert status.message == (
        f"GPU failed mid-run: Xid 79 (GPU has fallen off the bus) on GPU 0 'NVIDIA H100 80GB HBM3' ({gpu_uuid(0)})"
    )


def test_gpu_utilisation_and_memory_are_sampled_into_the_metrics(
    machine: FakeMachine, backend: NvidiaBackend, make_job: GpuJob
) -> None:
    machine.gpus[0].utilization, machine.gpus[0].memory_used_mb = 87, 1234
    machine.gpus[1].utilization, machine.gpus[1].memory_used_mb = 13, 766
    job = make_job(f"""echo '{{"loss": 0.5}}' >> "$GITOPSD_METRICS_FILE"; {WAIT_FOR_GO}""", gpus=2)
    ref = ref_of(job, backend.submit(job))
    poll(backend, [ref], lambda s: written(job.metrics_file) and s[job.run_id].state is JobState.RUNNING)
    backend.status([ref])
    go(job)
    poll(backend, [ref], state_is(ref, JobState.SUCCEEDED))
    points = list(MetricsReader(run_dir=job.run_dir, name=job.metrics_file.name).read(final=True))
    assert points[0] == {"loss": 0.5}
    assert {"gpu_util": 50.0, "gpu_mem_mb": 2000.0} in points


def test_telemetry_never_splits_a_line_the_training_is_writing(backend: NvidiaBackend, make_job: GpuJob) -> None:
    job = make_job(f"""printf '{{"loss": 0.5' >> "$GITOPSD_METRICS_FILE"; {WAIT_FOR_GO}""")
    ref = ref_of(job, backend.submit(job))
    poll(backend, [ref], lambda s: written(job.metrics_file) and s[job.run_id].state is JobState.RUNNING)
    backend.status([ref])
    assert job.metrics_file.read_text() == '{"loss": 0.5'


def test_lineage_names_the_gpus_driver_and_cuda_version(
    machine: FakeMachine, backend: NvidiaBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [a100_mig(0), h100(1)]
    job = make_job("true")
    ref = ref_of(job, backend.submit(job))
    poll(backend, [ref], state_is(ref, JobState.SUCCEEDED))
    facts = backend.describe(ref)
    assert facts["backend"] == "nvidia" and facts["job_id"] == f"nvidia:{job.run_id}"
    assert facts["driver_version"] == "550.54.15" and facts["cuda_version"] == "12.4"
    assert facts["exit_code"] == 0 and facts["host"]
    [gpu] = facts["gpus"]
    assert gpu["uuid"] == mig_uuid(0, 0), "best fit: the 20 GB MIG instance before the 80 GB GPU"
    assert gpu["name"] == "NVIDIA A100-SXM4-40GB MIG 3g.20gb" and gpu["parent_uuid"] == gpu_uuid(0)
    assert facts["cuda_visible_devices"] == mig_uuid(0, 0)


def test_a_restarted_daemon_adopts_the_run_and_its_lease(
    machine: FakeMachine, make_backend: MakeBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [h100(0)]
    before = make_backend()
    job = make_job(WAIT_FOR_GO)
    ref = ref_of(job, before.submit(job))
    poll(before, [ref], state_is(ref, JobState.RUNNING))
    del before  # the daemon is gone; its supervisor and training are not

    after = make_backend()
    assert after.find(job.run_id, job.run_dir) == ref.job_id
    other = make_job("true")
    ref2 = ref_of(other, after.submit(other))
    statuses = after.status([ref, ref2])
    assert statuses[job.run_id].state is JobState.RUNNING
    assert statuses[other.run_id].state is JobState.PENDING, "the adopted run still holds its GPU"
    go(job)
    done = poll(after, [ref, ref2], state_is(ref2, JobState.SUCCEEDED))
    assert done[job.run_id].state is JobState.SUCCEEDED


def test_the_lease_of_a_run_whose_supervisor_died_is_recovered(
    machine: FakeMachine, backend: NvidiaBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [h100(0)]
    doomed = make_job("sleep 60")
    ref1 = ref_of(doomed, backend.submit(doomed))
    poll(backend, [ref1], state_is(ref1, JobState.RUNNING))
    waiting = make_job("true")
    ref2 = ref_of(waiting, backend.submit(waiting))
    assert backend.status([ref2])[waiting.run_id].state is JobState.PENDING
    os.killpg(json.loads(RunFiles(run_dir=doomed.run_dir).state.read_text())["pid"], signal.SIGKILL)
    statuses = poll(backend, [ref2], state_is(ref2, JobState.SUCCEEDED))
    assert statuses[waiting.run_id].exit_code == 0
    assert backend.status([ref1])[doomed.run_id].state is JobState.LOST


def test_a_run_submitted_twice_is_started_once(backend: NvidiaBackend, make_job: GpuJob) -> None:
    job = make_job("echo once")
    first, second = backend.submit(job), backend.submit(job)
    assert first == second
    ref = ref_of(job, first)
    poll(backend, [ref], state_is(ref, JobState.SUCCEEDED))
    assert log_text(backend, ref).count("once\n") == 1


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"min_memory": "lots"}, "setting min_memory: expected a memory size such as 20Gi"),
        ({"exclusive": "yes"}, "setting exclusive: expected true or false, got 'yes'"),
        ({"model": 100}, "setting model: expected part of a GPU name"),
        ({"min_memmory": "20Gi"}, "unknown setting(s) min_memmory (known: model, min_memory"),
        ({"max_parallel": 0}, "setting max_parallel: expected a positive integer, got 0"),
        ({"leases": "leases.db"}, "setting leases: expected an absolute path"),
        ({"cpu_binding": "closest"}, "setting cpu_binding: expected true or false, got 'closest'"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting_and_value(
    tmp_path: Path, settings: dict[str, object], expected: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        NvidiaBackend(name="gpu", settings=settings, state_dir=tmp_path)
    assert "backend 'gpu'" in str(caught.value) and expected in str(caught.value)


def test_the_entry_point_loads_the_nvidia_backend(tmp_path: Path, fake: object) -> None:
    loaded = load_backend("nvidia", name="gpu", settings={"min_memory": "20Gi"}, state_dir=tmp_path)
    assert isinstance(loaded, NvidiaBackend)
    assert loaded.request(Resources(gpus=1)).min_memory_mb == 20480
    loaded.check()


def test_one_status_call_reads_the_inventory_once_however_many_runs_wait(
    machine: FakeMachine, fake: FakeNvmlLib, backend: NvidiaBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [h100(0)]
    blocker = make_job(WAIT_FOR_GO)
    refs = [ref_of(blocker, backend.submit(blocker))]
    refs += [ref_of(job, backend.submit(job)) for job in (make_job("true") for _ in range(10))]
    poll(backend, refs[:1], state_is(refs[0], JobState.RUNNING))
    before = fake.calls["nvmlDeviceGetCount_v2"]
    statuses = backend.status(refs)
    assert fake.calls["nvmlDeviceGetCount_v2"] == before + 1
    assert sum(st.state is JobState.PENDING for st in statuses.values()) == 10
    go(blocker)
    poll(backend, refs, lambda s: all(st.state is JobState.SUCCEEDED for st in s.values()))


def test_nvml_failing_keeps_runs_going_and_queued_runs_say_why(
    machine: FakeMachine, make_backend: MakeBackend, make_job: GpuJob
) -> None:
    machine.gpus[:] = [h100(0)]
    before = make_backend()
    running, queued = make_job(WAIT_FOR_GO), make_job("true")
    ref1, ref2 = ref_of(running, before.submit(running)), ref_of(queued, before.submit(queued))
    poll(before, [ref1], state_is(ref1, JobState.RUNNING))

    machine.init_error = 9  # the daemon restarts while the driver is unloaded
    after = make_backend()
    with pytest.raises(BackendUnavailable, match="NVML not available: the NVIDIA kernel driver is not loaded"):
        after.check()
    statuses = after.status([ref1, ref2])
    assert statuses[running.run_id].state is JobState.RUNNING, "NVML trouble is no proof that the GPU is lost"
    assert statuses[queued.run_id].state is JobState.PENDING
    assert statuses[queued.run_id].message == (
        "Waiting for GPU: NVML not available: the NVIDIA kernel driver is not loaded (no GPU, or `modprobe nvidia`"
        " needed)"
    )
    machine.init_error = None
    go(running)
    poll(after, [ref1, ref2], state_is(ref2, JobState.SUCCEEDED))
