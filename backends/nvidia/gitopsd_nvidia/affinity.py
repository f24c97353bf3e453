"""Which CPUs a GPU run is bound to: those of its GPUs' NUMA node, like Slurm's `--gpu-bind=closest`.

On a server with two sockets, a training whose data loader runs on the far socket moves every batch across
the inter-socket link. NVML reports, per GPU, the CPUs close to it (`nvmlDeviceGetCpuAffinity`); a MIG
instance shares its GPU's PCIe link, so its parent GPU is asked. The run is bound to those CPUs that this
process may use itself. Where that is all of them (one socket) or NVML cannot tell, the run is not bound.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from gitopsd_nvidia.nvml import Nvml, NvmlFailure


def cpus_near(nvml: Nvml, devices: Sequence[Mapping[str, Any]]) -> list[int] | None:
    """The allowed CPUs close to `devices` (placement records: `uuid`, `parent_uuid`), or None: no binding."""
    if not devices:
        return None
    allowed = os.sched_getaffinity(0)
    near: set[int] = set()
    try:
        for uuid in sorted({device.get("parent_uuid") or device["uuid"] for device in devices}):
            near |= nvml.cpu_affinity(nvml.find(uuid))
    except NvmlFailure:
        return None
    chosen = near & allowed
    return sorted(chosen) if chosen and chosen != allowed else None


def format_cpus(cpus: Sequence[int]) -> str:
    """CPU numbers as a Linux CPU list: [0, 1, 2, 3, 8] -> "0-3,8"."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
