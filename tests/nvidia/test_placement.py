"""Placement is pure: the same devices, leases and request always give the same devices, and never a leased one.

The property tests draw random hosts (whole GPUs and MIG instances, busy or not, some broken) and random
streams of requests, leasing what each placement returns, and check that no device is ever given twice, that
every device given fits its request, and that a request waits only when no fitting set of free devices exists.
"""

from __future__ import annotations

from dataclasses import replace

from gitopsd_nvidia.inventory import Device
from gitopsd_nvidia.nvml import ComputeProcess
from gitopsd_nvidia.placement import GpuRequest, admit, place
from hypothesis import given, settings
from hypothesis import strategies as st


def device(
    index: int,
    *,
    name: str = "NVIDIA H100 80GB HBM3",
    total: float = 81559,
    used: float = 0,
    pids: tuple[int, ...] = (),
    mig_slot: int | None = None,
    error: str | None = None,
) -> Device:
    return Device(
        index=index,
        uuid=f"GPU-{index}" if mig_slot is None else f"MIG-{index}-{mig_slot}",
        name=name,
        memory_total_mb=total,
        memory_used_mb=used,
        utilization_pct=0.0,
        processes=tuple(ComputeProcess(pid=pid, used_memory_mb=100.0) for pid in pids),
        mig_slot=mig_slot,
        parent_uuid=None if mig_slot is None else f"GPU-{index}",
        error=error,
    )


def test_best_fit_takes_the_smallest_fitting_device_then_the_lowest_index() -> None:
    devices = [device(0), device(1, name="NVIDIA L4", total=23034), device(2, name="NVIDIA L4", total=23034)]
    chosen = place(GpuRequest(count=1, min_memory_mb=20000), devices, {})
    assert [d.uuid for d in chosen.devices] == ["GPU-1"]
    bigger = place(GpuRequest(count=1, min_memory_mb=30000), devices, {})
    assert [d.uuid for d in bigger.devices] == ["GPU-0"]


def test_a_leased_device_is_never_chosen_and_the_reason_names_its_holder() -> None:
    devices = [device(0), device(1)]
    placement = place(GpuRequest(count=2), devices, {"GPU-1": "run-b"})
    assert not placement.placed
    assert "GPU 1 (GPU-1) is leased by run run-b" in placement.waiting
    assert placement.waiting.startswith("Waiting for GPU: needs 2 GPUs (exclusive), 1 of 2 device(s) free for it")


def test_a_mig_instance_of_a_leased_gpu_is_not_free() -> None:
    placement = place(GpuRequest(count=1), [device(0, mig_slot=0)], {"GPU-0": "run-a"})
    assert not placement.placed and "leased by run run-a" in placement.waiting


def test_broken_devices_are_never_chosen() -> None:
    placement = place(GpuRequest(count=1), [device(0, error="GPU 0: GPU is lost")], {})
    assert not placement.placed and "GPU 0 (GPU-0) is unusable: GPU 0: GPU is lost" in placement.waiting


def test_admit_names_what_the_host_has() -> None:
    devices = [device(0), device(1)]
    assert admit(GpuRequest(count=2), devices) is None
    assert admit(GpuRequest(count=0), []) is None
    assert admit(GpuRequest(count=1), []) == "asks for 1 GPU (exclusive), but NVML sees no GPU on this host"
    assert admit(GpuRequest(count=3), devices) == (
        "asks for 3 GPUs (exclusive); only 2 device(s) here could serve it (this host has 2x 'NVIDIA H100 80GB HBM3')"
    )
    busy = [device(0, pids=(1,)), device(1, pids=(2,))]
    assert admit(GpuRequest(count=2), busy) is None, "busy now is not never"


# -- properties ------------------------------------------------------------------------------------------------

names = st.sampled_from(["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "NVIDIA L4"])


@st.composite
def hosts(draw: st.DrawFn) -> list[Device]:
    found: list[Device] = []
    for index in range(draw(st.integers(min_value=0, max_value=6))):
        name = draw(names)
        total = draw(st.sampled_from([23034.0, 40960.0, 81559.0]))
        pids = tuple(draw(st.lists(st.integers(min_value=100, max_value=999), max_size=2)))
        error = draw(st.sampled_from([None, None, None, "GPU is lost"]))
        if draw(st.booleans()) and error is None:  # MIG mode: its instances are the devices
            for slot in range(draw(st.integers(min_value=1, max_value=3))):
                found.append(device(index, name=f"{name} MIG 1g", total=total / 4, mig_slot=slot))
        else:
            used = draw(st.sampled_from([0.0, total / 2, total - 100]))
            found.append(device(index, name=name, total=total, used=used, pids=pids, error=error))
    return found


requests = st.builds(
    GpuRequest,
    count=st.integers(min_value=0, max_value=4),
    min_memory_mb=st.sampled_from([None, 10000, 30000, 90000]),
    model=st.sampled_from([None, "H100", "a100", "L4", "MIG"]),
    exclusive=st.booleans(),
)


def fits_free(request: GpuRequest, d: Device, leased: dict[str, str]) -> bool:
    """A direct, independent statement of when a device may be given to a request."""
    if d.error or d.uuid in leased or (d.parent_uuid or "") in leased:
        return False
    if request.model and request.model.lower() not in d.name.lower():
        return False
    if request.count > 1 and d.mig_slot is not None:
        return False
    if request.exclusive and d.processes:
        return False
    return request.min_memory_mb is None or (d.memory_free_mb or 0) >= request.min_memory_mb


@settings(max_examples=300, deadline=None)
@given(host=hosts(), stream=st.lists(requests, max_size=8), releases=st.lists(st.integers(0, 7), max_size=3))
def test_no_device_is_ever_given_to_two_runs(host: list[Device], stream: list[GpuRequest], releases: list[int]) -> None:
    leased: dict[str, str] = {}
    for n, request in enumerate(stream):
        if n in releases:  # a run finishes and frees its devices
            holder = f"run-{releases.index(n)}"
            leased = {uuid: run for uuid, run in leased.items() if run != holder}
        before = dict(leased)
        placement = place(request, host, leased)
        assert place(request, host, leased) == placement, "deterministic"
        free = [d for d in host if fits_free(request, d, before)]
        if request.count == 0:
            assert placement.devices == ()
            continue
        if len(free) >= request.count:
            assert len(placement.devices) == request.count
        else:
            assert placement.devices == () and placement.waiting.startswith("Waiting for GPU: ")
        uuids = [d.uuid for d in placement.devices]
        assert len(set(uuids)) == len(uuids)
        for chosen in placement.devices:
            assert fits_free(request, chosen, before), (chosen, before)
            leased[chosen.uuid] = f"run-{n}"
        assert len(leased) == len(before) + len(uuids), "a leased device was handed out again"


@settings(max_examples=300, deadline=None)
@given(host=hosts(), request=requests)
def test_admit_refuses_only_what_an_idle_host_could_not_place(host: list[Device], request: GpuRequest) -> None:
    idle = [replace(d, processes=(), memory_used_mb=0.0) for d in host]  # nothing running anywhere
    refusal = admit(request, host)
    could = place(request, idle, {}).placed or request.count == 0
    assert (refusal is None) == could, refusal
