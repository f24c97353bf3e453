"""What GPUs this host has, as frozen values: read once through NVML, then placed on, printed and recorded.

`read_inventory()` asks NVML for every GPU (index, UUID, name, memory, utilisation, compute processes, MIG mode)
and, for a GPU in MIG mode, for each of its MIG instances, which are then the devices a training can be given
(addressed by their `MIG-...` UUIDs; the GPU itself is not). A query the device does not support leaves that
value None; a GPU that NVML reports lost (or cannot be asked at all) stays in the inventory with an `error`, so
that `gitopsd gpus` shows it and placement never picks it. `as_json` and `render_table` are what
`gitopsd gpus [--json]` prints.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gitopsd.errors import BackendUnavailable
from gitopsd_nvidia.nvml import NVML_ERROR_NO_PERMISSION, ComputeProcess, Nvml, NvmlFailure


@dataclass(frozen=True, kw_only=True)
class Device:
    """One device CUDA can be given: a whole GPU, or one MIG instance of a GPU in MIG mode.

    Memory in MiB. `processes` is None where NVML cannot list them; `error` says why the device is unusable.
    """

    index: int
    uuid: str
    name: str
    memory_total_mb: float | None
    memory_used_mb: float | None
    utilization_pct: float | None
    processes: tuple[ComputeProcess, ...] | None
    mig_slot: int | None = None
    parent_uuid: str | None = None
    error: str | None = None

    @property
    def is_mig(self) -> bool:
        return self.mig_slot is not None

    @property
    def label(self) -> str:
        """How a human names it: "GPU 0", or "GPU 0 MIG 2" for a MIG instance."""
        return f"GPU {self.index}" if self.mig_slot is None else f"GPU {self.index} MIG {self.mig_slot}"

    @property
    def memory_free_mb(self) -> float | None:
        if self.memory_total_mb is None or self.memory_used_mb is None:
            return None
        return max(0.0, self.memory_total_mb - self.memory_used_mb)


@dataclass(frozen=True, kw_only=True)
class Gpu(Device):
    """A physical GPU. `mig_enabled` is None where the GPU has no MIG support."""

    mig_enabled: bool | None = None
    mig_devices: tuple[Device, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Inventory:
    driver_version: str
    cuda_version: str
    gpus: tuple[Gpu, ...]
    read_at: float

    def devices(self) -> tuple[Device, ...]:
        """Every device a training could be given: MIG instances of GPUs in MIG mode, other GPUs whole."""
        found: list[Device] = []
        for gpu in self.gpus:
            if gpu.mig_enabled and gpu.error is None:
                found.extend(gpu.mig_devices)
            else:
                found.append(gpu)
        return tuple(found)

    def find(self, uuid: str) -> Device | None:
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
            for mig in gpu.mig_devices:
                if mig.uuid == uuid:
                    return mig
        return None


def read_inventory(nvml: Nvml | None = None) -> Inventory:
    """Every GPU of this host, read through NVML now.

    Raises gitopsd.errors.BackendUnavailable ("NVML not available: <why>") when NVML cannot be started.
    """
    nvml = nvml or Nvml()
    nvml.start()
    try:
        driver = nvml.driver_version()
        cuda = nvml.cuda_version()
        count = nvml.gpu_count()
    except NvmlFailure as exc:
        raise BackendUnavailable(f"NVML not available: {exc}") from exc
    gpus = tuple(_read_gpu(nvml, index) for index in range(count))
    return Inventory(driver_version=driver, cuda_version=cuda, gpus=gpus, read_at=time.time())


def _optional(query: Any, handle: Any) -> Any:
    """A query's value, or None when the device does not support it."""
    try:
        return query(handle)
    except NvmlFailure as exc:
        if exc.unsupported or exc.code == NVML_ERROR_NO_PERMISSION:
            return None
        raise


def _read_gpu(nvml: Nvml, index: int) -> Gpu:
    uuid = f"(unknown UUID of GPU {index})"
    name = "(unknown)"
    try:
        handle = nvml.gpu(index)
        uuid = nvml.uuid(handle)
        name = nvml.name(handle)
        memory = _optional(nvml.memory_mb, handle)
        mig_enabled = _optional(nvml.mig_enabled, handle)
        slots = nvml.mig_devices(handle) if mig_enabled else []
        migs = tuple(_read_mig(nvml, index, uuid, slot, mig) for slot, mig in slots)
        return Gpu(
            index=index,
            uuid=uuid,
            name=name,
            memory_total_mb=None if memory is None else memory[0],
            memory_used_mb=None if memory is None else memory[1],
            utilization_pct=_optional(nvml.utilization, handle),
            processes=_optional(nvml.processes, handle),
            mig_enabled=mig_enabled,
            mig_devices=migs,
        )
    except NvmlFailure as exc:
        return Gpu(
            index=index,
            uuid=uuid,
            name=name,
            memory_total_mb=None,
            memory_used_mb=None,
            utilization_pct=None,
            processes=None,
            error=str(exc),
        )


def _read_mig(nvml: Nvml, index: int, parent: str, slot: int, handle: Any) -> Device:
    memory = _optional(nvml.memory_mb, handle)
    return Device(
        index=index,
        uuid=nvml.uuid(handle),
        name=nvml.name(handle),
        memory_total_mb=None if memory is None else memory[0],
        memory_used_mb=None if memory is None else memory[1],
        utilization_pct=_optional(nvml.utilization, handle),
        processes=_optional(nvml.processes, handle),
        mig_slot=slot,
        parent_uuid=parent,
    )


# -- output ----------------------------------------------------------------------------------------------------


def _device_json(device: Device) -> dict[str, Any]:
    return {
        "index": device.index,
        "label": device.label,
        "uuid": device.uuid,
        "name": device.name,
        "memory_total_mb": device.memory_total_mb,
        "memory_used_mb": device.memory_used_mb,
        "utilization_pct": device.utilization_pct,
        "processes": None
        if device.processes is None
        else [{"pid": p.pid, "used_memory_mb": p.used_memory_mb} for p in device.processes],
        "error": device.error,
    }


def as_json(inventory: Inventory, leased: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The inventory as a JSON-ready dict (what `gitopsd gpus --json` prints); `leased` maps a device UUID to
    the run that holds it."""
    leased = leased or {}
    gpus = []
    for gpu in inventory.gpus:
        entry = {**_device_json(gpu), "leased_by": leased.get(gpu.uuid)}
        entry["mig_enabled"] = gpu.mig_enabled
        entry["mig_devices"] = [
            {**_device_json(mig), "leased_by": leased.get(mig.uuid), "mig_slot": mig.mig_slot}
            for mig in gpu.mig_devices
        ]
        gpus.append(entry)
    return {
        "driver_version": inventory.driver_version,
        "cuda_version": inventory.cuda_version,
        "read_at": inventory.read_at,
        "gpus": gpus,
    }


def _cell(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.0f}{unit}"


def _row(device: Device, mig: str, leased: Mapping[str, str]) -> list[str]:
    memory = f"{_cell(device.memory_used_mb)} / {_cell(device.memory_total_mb)} MiB"
    procs = "?" if device.processes is None else (",".join(str(p.pid) for p in device.processes) or "-")
    util = _cell(device.utilization_pct, "%")
    return [device.label, device.uuid, device.name, memory, util, procs, leased.get(device.uuid, "-"), mig]


def render_table(inventory: Inventory, leased: Mapping[str, str] | None = None) -> str:
    """A fixed-width table of every GPU and MIG instance (what `gitopsd gpus` prints); `leased` maps a device
    UUID to the run that holds it."""
    leased = leased or {}
    header = ["DEVICE", "UUID", "NAME", "MEMORY USED", "UTIL", "PROCESSES", "LEASED BY", "MIG"]
    rows = []
    for gpu in inventory.gpus:
        if gpu.error is not None:
            rows.append(
                [gpu.label, gpu.uuid, gpu.name, "-", "-", "-", leased.get(gpu.uuid, "-"), f"ERROR: {gpu.error}"]
            )
            continue
        mig = "n/a" if gpu.mig_enabled is None else ("enabled" if gpu.mig_enabled else "disabled")
        rows.append(_row(gpu, mig, leased))
        rows.extend(_row(instance, "instance", leased) for instance in gpu.mig_devices)
    widths = [max(len(row[col]) for row in [header, *rows]) for col in range(len(header))]
    lines = [f"NVIDIA driver {inventory.driver_version}, CUDA {inventory.cuda_version}, {len(inventory.gpus)} GPU(s)"]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"
