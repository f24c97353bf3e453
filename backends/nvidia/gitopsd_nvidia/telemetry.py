"""Watching the GPUs of a running training: utilisation and memory into its metrics, and a lost GPU noticed.

On each `status` call the backend asks NVML, for every device a running job holds (by UUID), for its memory
and utilisation. The result is one JSON line, `{"gpu_util": 87.0, "gpu_mem_mb": 1234.0}` (mean utilisation of
the job's devices where NVML reports it, which it does not for MIG instances; memory used, summed), appended to
the job's metrics file, which the reconciler already reads and keeps as the run's latest metrics. A line is
only appended after a complete line the training wrote itself (the file ends in a newline), so a sample never
splits a line the training is writing and never creates the file under a training that rewrites it.

The same queries tell when a device has failed: NVML says the GPU is lost, or no longer knows the UUID, or
reported a critical Xid that means the GPU needs a reset. Then the run is failed with that reason.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitopsd_nvidia.nvml import Nvml, NvmlFailure

# Xids after which a CUDA context on the GPU cannot go on (NVIDIA's Xid catalogue); others are only logged.
FATAL_XIDS = {
    48: "double-bit ECC error",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
}


@dataclass(frozen=True, kw_only=True)
class Observation:
    """What one look at a job's devices found: a reason it must fail, and/or a metrics sample."""

    failure: str | None = None
    sample: dict[str, float] | None = None


def describe_device(device: Mapping[str, Any]) -> str:
    return f"{device.get('label')} {device.get('name')!r} ({device.get('uuid')})"


def observe(nvml: Nvml, devices: Sequence[Mapping[str, Any]]) -> Observation:
    """Sample the job's devices (placement records with uuid/label/name); fail it if one of them is lost."""
    utils: list[float] = []
    memory = 0.0
    seen = 0
    for device in devices:
        uuid = str(device["uuid"])
        try:
            handle = nvml.find(uuid)
            _total, used = nvml.memory_mb(handle)
        except NvmlFailure as exc:
            if exc.lost:
                why = "NVML reports the GPU is lost (fallen off the bus or needs a reset)"
            elif exc.gone:
                why = "NVML no longer lists this device (removed, or its MIG instance destroyed)"
            else:
                continue  # NVML trouble (not this device's fault): no sample this time
            return Observation(failure=f"GPU lost mid-run: {describe_device(device)}: {why} [{exc}]")
        seen += 1
        memory += used
        with contextlib.suppress(NvmlFailure):  # not supported on MIG instances; memory still says something
            utils.append(nvml.utilization(handle))
    if not seen:
        return Observation()
    sample = {"gpu_mem_mb": round(memory, 1)}
    if utils:
        sample["gpu_util"] = round(sum(utils) / len(utils), 1)
    return Observation(sample=sample)


def xid_failure(xid: int, device: Mapping[str, Any]) -> str | None:
    """The failure message of a fatal Xid on one of the job's GPUs, or None for an Xid it can survive."""
    meaning = FATAL_XIDS.get(xid)
    if meaning is None:
        return None
    return f"GPU failed mid-run: Xid {xid} ({meaning}) on {describe_device(device)}"


def append_sample(metrics_file: Path, sample: Mapping[str, float]) -> bool:
    """Append the sample as one JSON line if the training's last line is complete; return whether it was."""
    try:
        fd = os.open(metrics_file, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    except OSError:
        return False  # the training has not written any metrics yet
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) != b"\n":
            return False
        os.write(fd, (json.dumps(dict(sample), sort_keys=True) + "\n").encode())
        return True
    finally:
        os.close(fd)
