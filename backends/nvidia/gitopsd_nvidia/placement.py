"""Choosing GPUs for a run: a pure function of the request, the devices NVML sees, and the current leases.

A request asks for `count` devices, optionally of a `model` (a case-insensitive part of the device name, e.g.
"H100", or "MIG 1g.10gb" for a MIG profile), with at least `min_memory_mb` free, and `exclusive` (default):
no compute process of anyone else on the device. A device is never given while a lease names it (or its
parent GPU), so two runs never share a GPU. A request for more than one device uses whole GPUs only, since a
CUDA process sees at most one MIG instance. Among the devices that fit, the smallest ones are chosen first
(best fit), then the lowest index, which keeps big GPUs free for the runs that need them and makes the choice
deterministic. `admit` answers the other question, asked at plan time: could this host ever satisfy the
request, whatever runs now?

No I/O, no clock: the same inputs always give the same answer, which the property tests rely on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gitopsd_nvidia.inventory import Device


@dataclass(frozen=True, kw_only=True)
class GpuRequest:
    count: int
    min_memory_mb: int | None = None
    model: str | None = None
    exclusive: bool = True

    def describe(self) -> str:
        terms = [f"model {self.model!r}"] if self.model else []
        if self.min_memory_mb is not None:
            terms.append(f">= {self.min_memory_mb} MiB free")
        terms.append("exclusive" if self.exclusive else "shared with other processes allowed")
        return f"{self.count} GPU{'s' if self.count != 1 else ''} ({', '.join(terms)})"


@dataclass(frozen=True, kw_only=True)
class Placement:
    """The devices chosen, or none and why (one line naming each device that was busy)."""

    devices: tuple[Device, ...]
    waiting: str = ""

    @property
    def placed(self) -> bool:
        return bool(self.devices)


def short(device: Device) -> str:
    """ "GPU 0 (GPU-1a2b3c4d)": enough of the UUID to tell devices apart in a one-line message."""
    return f"{device.label} ({device.uuid[:12]})"


def _matches(request: GpuRequest, device: Device) -> str | None:
    """Why `device` can never serve `request` (its kind, size or health), or None."""
    if device.error is not None:
        return f"{short(device)} is unusable: {device.error}"
    if request.model and request.model.lower() not in device.name.lower():
        return f"{short(device)} is {device.name!r}, not {request.model!r}"
    if request.count > 1 and device.is_mig:
        return f"{short(device)} is a MIG instance (a process sees only one)"
    if request.min_memory_mb is not None and (device.memory_total_mb or 0) < request.min_memory_mb:
        return f"{short(device)} has {device.memory_total_mb or 0:.0f} MiB in all, needs {request.min_memory_mb}"
    return None


def _busy(request: GpuRequest, device: Device, leased: Mapping[str, str]) -> str | None:
    """Why `device` cannot serve `request` right now, or None when it is free for it."""
    for uuid in (device.uuid, device.parent_uuid):
        if uuid is not None and uuid in leased:
            return f"{short(device)} is leased by run {leased[uuid]}"
    if request.exclusive and device.processes:
        pids = ", ".join(str(p.pid) for p in device.processes)
        plural = "es" if len(device.processes) != 1 else ""
        return f"{short(device)} is busy: {len(device.processes)} foreign compute process{plural} (pid {pids})"
    free = device.memory_free_mb
    if request.min_memory_mb is not None and (free is None or free < request.min_memory_mb):
        have = "unknown" if free is None else f"{free:.0f}"
        return f"{short(device)} has {have} MiB free, needs {request.min_memory_mb}"
    return None


def admit(request: GpuRequest, devices: Sequence[Device]) -> str | None:
    """None if this host could ever satisfy `request`; else why not, naming what it has."""
    if request.count <= 0:
        return None
    fitting = [device for device in devices if _matches(request, device) is None]
    if len(fitting) >= request.count:
        return None
    have = _summary(devices)
    if not devices:
        return f"asks for {request.describe()}, but NVML sees no GPU on this host"
    if request.model and not any(request.model.lower() in d.name.lower() for d in devices if d.error is None):
        return f"asks for {request.describe()}; no device here is a {request.model!r} (this host has {have})"
    if request.min_memory_mb is not None and not any(
        (d.memory_total_mb or 0) >= request.min_memory_mb for d in devices if d.error is None
    ):
        largest = max((d.memory_total_mb or 0 for d in devices), default=0)
        return f"asks for {request.describe()}; the largest device here has {largest:.0f} MiB (this host has {have})"
    return f"asks for {request.describe()}; only {len(fitting)} device(s) here could serve it (this host has {have})"


def place(request: GpuRequest, devices: Sequence[Device], leased: Mapping[str, str]) -> Placement:
    """Choose `request.count` free devices not in `leased` (UUID -> run id), or say why none can be chosen."""
    if request.count <= 0:
        return Placement(devices=())
    free: list[Device] = []
    reasons: list[str] = []
    for device in devices:
        why = _matches(request, device) or _busy(request, device, leased)
        if why is None:
            free.append(device)
        else:
            reasons.append(why)
    if len(free) >= request.count:
        free.sort(key=lambda d: (d.memory_total_mb or 0, d.index, -1 if d.mig_slot is None else d.mig_slot))
        return Placement(devices=tuple(free[: request.count]))
    found = f"{len(free)} of {len(devices)} device(s) free for it"
    details = "; ".join(reasons) if reasons else "no GPU on this host"
    return Placement(devices=(), waiting=f"Waiting for GPU: needs {request.describe()}, {found}: {details}")


def _summary(devices: Sequence[Device]) -> str:
    """ "2x 'NVIDIA H100 80GB HBM3', 1x 'NVIDIA A100 MIG 1g.5gb'" in order of first appearance."""
    counts: dict[str, int] = {}
    for device in devices:
        counts[device.name] = counts.get(device.name, 0) + 1
    return ", ".join(f"{n}x {name!r}" for name, n in counts.items()) or "no GPU"
