"""A fake NVML at nvidia-ml-py's narrowest boundary: the C functions `pynvml` looks up in its loaded library.

Every pynvml call resolves its C function through `pynvml._nvmlGetFunctionPointer(name)`, which returns
`getattr(pynvml.nvmlLib, name)`, and `pynvml.nvmlInit` only loads libnvidia-ml.so.1 while `pynvml.nvmlLib` is
None. `install(machine)` puts a `FakeNvmlLib` there: an object whose attributes are Python functions with the C
signatures. They receive exactly what pynvml passes the real library (ctypes `byref` pointers, string buffers,
struct arrays, opaque device handles) and answer with NVML return codes, writing their results through those
pointers. Everything above this line is the real pynvml: argument marshalling, the ctypes structs, the two-call
protocol of the process list, `NVMLError` subclasses and their messages. The fake is written against the
nvidia-ml-py release in `PYNVML_VERSION` (the version gitopsd-nvidia pins) and refuses to install on another.

A `FakeMachine` describes the host: GPUs (name, UUID, memory, utilisation, foreign compute processes), MIG
instances of GPUs in MIG mode, GPUs that are lost (GPU_IS_LOST) or gone (no longer enumerated), queries a GPU
does not support, a failing `nvmlInit`, and pending Xid events. Tests change the machine while a backend runs.
It round-trips through JSON so that other processes (the concurrency tests) can install the same machine.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pynvml  # type: ignore[import-untyped]

PYNVML_VERSION = "13.615.71"
MIB = 1024 * 1024

SUCCESS = 0
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NOT_FOUND = 6
INSUFFICIENT_SIZE = 7
TIMEOUT = 10
GPU_IS_LOST = 15


@dataclass
class FakeProcess:
    pid: int
    used_mb: int = 1024


@dataclass
class FakeMig:
    """A MIG instance; its NVML name is "<GPU name> MIG <profile>"."""

    uuid: str
    profile: str
    memory_total_mb: int
    memory_used_mb: int = 0
    processes: list[FakeProcess] = field(default_factory=list)
    gone: bool = False


@dataclass
class FakeGpu:
    uuid: str
    name: str
    memory_total_mb: int
    memory_used_mb: int = 0
    utilization: int = 0
    processes: list[FakeProcess] = field(default_factory=list)
    mig: list[FakeMig] | None = None  # None: this GPU has no MIG support
    mig_enabled: bool = False
    lost: bool = False  # NVML_ERROR_GPU_IS_LOST from every query (fallen off the bus)
    gone: bool = False  # no longer enumerated; its UUID is NOT_FOUND
    unsupported: list[str] = field(default_factory=list)  # C function names answering NOT_SUPPORTED
    cpus: list[int] | None = None  # CPUs of its NUMA node; None: every CPU (one socket)


@dataclass
class FakeMachine:
    gpus: list[FakeGpu]
    driver_version: str = "550.54.15"
    cuda_version: int = 12040
    init_error: int | None = None
    missing: list[str] = field(default_factory=list)  # C functions this (older) library does not export
    xids: list[tuple[str, int]] = field(default_factory=list)  # (GPU UUID, Xid) not yet delivered

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FakeMachine:
        data = json.loads(text)
        gpus = []
        for raw in data.pop("gpus"):
            procs = [FakeProcess(**p) for p in raw.pop("processes")]
            migs = raw.pop("mig")
            mig = None
            if migs is not None:
                mig = [FakeMig(**{**m, "processes": [FakeProcess(**p) for p in m["processes"]]}) for m in migs]
            gpus.append(FakeGpu(**raw, processes=procs, mig=mig))
        xids = [(uuid, xid) for uuid, xid in data.pop("xids")]
        return cls(gpus=gpus, xids=xids, **data)


def gpu_uuid(n: int) -> str:
    return f"GPU-{n:08x}-1111-2222-3333-{n:012x}"


def mig_uuid(n: int, slot: int) -> str:
    return f"MIG-{n:08x}-4444-5555-6666-{slot:012x}"


def h100(n: int, **changes: Any) -> FakeGpu:
    return FakeGpu(uuid=gpu_uuid(n), name="NVIDIA H100 80GB HBM3", memory_total_mb=81559, **changes)


def a100_mig(n: int, profiles: tuple[str, ...] = ("3g.20gb", "3g.20gb")) -> FakeGpu:
    """An A100 40GB in MIG mode with one instance per profile."""
    sizes = {"1g.5gb": 4864, "2g.10gb": 9856, "3g.20gb": 19968, "7g.40gb": 40192}
    migs = [FakeMig(uuid=mig_uuid(n, s), profile=p, memory_total_mb=sizes[p]) for s, p in enumerate(profiles)]
    return FakeGpu(uuid=gpu_uuid(n), name="NVIDIA A100-SXM4-40GB", memory_total_mb=40960, mig=migs, mig_enabled=True)


# -- the C boundary --------------------------------------------------------------------------------------------


def _target(arg: Any) -> Any:
    """What a `byref(x)` argument points at."""
    return arg._obj


def _write_pointer(pointer: Any, value: int) -> None:
    """Store `value` in an opaque-handle variable (a ctypes POINTER instance), as the C library would."""
    ctypes.memmove(ctypes.addressof(pointer), ctypes.byref(ctypes.c_void_p(value)), ctypes.sizeof(ctypes.c_void_p))


def _token(handle: Any) -> int:
    value: int | None = ctypes.cast(handle, ctypes.c_void_p).value
    return value or 0


class FakeNvmlLib:
    """Stands in for the loaded libnvidia-ml.so.1; see the module docstring. `calls` counts calls by name."""

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine
        self.calls: dict[str, int] = {}
        self.initialised = 0
        self._event_sets: dict[int, set[str]] = {}
        self._functions: dict[str, Callable[..., Any]] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        implementation = getattr(type(self), f"_c_{name}", None)
        if implementation is None or name in self.machine.missing:
            raise AttributeError(name)  # pynvml turns this into NVML_ERROR_FUNCTION_NOT_FOUND
        if name not in self._functions:

            def function(*args: Any) -> Any:  # a plain function: pynvml may set `.restype` on it
                self.calls[name] = self.calls.get(name, 0) + 1
                return implementation(self, *args)

            self._functions[name] = function
        return self._functions[name]

    # handles: GPU at list position p -> (p + 1) << 8; its MIG slot s -> ((p + 1) << 8) | (s + 1)

    def _visible(self) -> list[FakeGpu]:
        return [gpu for gpu in self.machine.gpus if not gpu.gone]

    def _resolve(self, handle: Any) -> tuple[FakeGpu, FakeMig | None] | int:
        token = _token(handle)
        position, slot = (token >> 8) - 1, (token & 0xFF) - 1
        if not 0 <= position < len(self.machine.gpus):
            return INVALID_ARGUMENT
        gpu = self.machine.gpus[position]
        if gpu.lost:
            return GPU_IS_LOST
        if gpu.gone:
            return NOT_FOUND
        if slot < 0:
            return gpu, None
        if gpu.mig is None or slot >= len(gpu.mig) or gpu.mig[slot].gone or not gpu.mig_enabled:
            return NOT_FOUND
        return gpu, gpu.mig[slot]

    def _device(self, handle: Any, function: str) -> tuple[FakeGpu, FakeMig | None] | int:
        found = self._resolve(handle)
        if isinstance(found, int):
            return found
        if function in found[0].unsupported:
            return NOT_SUPPORTED
        return found

    def _handle_of(self, gpu: FakeGpu, slot: int | None = None) -> int:
        position = self.machine.gpus.index(gpu) + 1
        return position << 8 | (0 if slot is None else slot + 1)

    # -- system ----------------------------------------------------------------------------------------------

    def _c_nvmlInitWithFlags(self, flags: int) -> int:
        if self.machine.init_error is not None:
            return self.machine.init_error
        self.initialised += 1
        return SUCCESS

    def _c_nvmlShutdown(self) -> int:
        self.initialised = max(0, self.initialised - 1)
        return SUCCESS

    def _c_nvmlErrorString(self, result: int) -> bytes:
        return f"fake NVML error {result}".encode()

    def _c_nvmlSystemGetDriverVersion(self, buffer: Any, size: Any) -> int:
        buffer.value = self.machine.driver_version.encode()
        return SUCCESS

    def _c_nvmlSystemGetCudaDriverVersion(self, version: Any) -> int:
        _target(version).value = self.machine.cuda_version
        return SUCCESS

    def _c_nvmlDeviceGetCount_v2(self, count: Any) -> int:
        _target(count).value = len(self._visible())
        return SUCCESS

    # -- handles ---------------------------------------------------------------------------------------------

    def _c_nvmlDeviceGetHandleByIndex_v2(self, index: Any, handle: Any) -> int:
        visible = self._visible()
        if not 0 <= index.value < len(visible):
            return INVALID_ARGUMENT
        gpu = visible[index.value]
        if gpu.lost:
            return GPU_IS_LOST
        _write_pointer(_target(handle), self._handle_of(gpu))
        return SUCCESS

    def _c_nvmlDeviceGetHandleByUUID(self, uuid: Any, handle: Any) -> int:
        wanted = uuid.value.decode()
        for gpu in self.machine.gpus:
            if gpu.uuid == wanted:
                if gpu.gone:
                    return NOT_FOUND
                if gpu.lost:
                    return GPU_IS_LOST
                _write_pointer(_target(handle), self._handle_of(gpu))
                return SUCCESS
            for slot, mig in enumerate(gpu.mig or []):
                if mig.uuid == wanted:
                    if gpu.gone or mig.gone or not gpu.mig_enabled:
                        return NOT_FOUND
                    if gpu.lost:
                        return GPU_IS_LOST
                    _write_pointer(_target(handle), self._handle_of(gpu, slot))
                    return SUCCESS
        return NOT_FOUND

    def _c_nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, mig_handle: Any) -> int:
        found = self._device(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if isinstance(found, int):
            return found
        gpu, _ = found
        slot = index.value
        if not gpu.mig_enabled or gpu.mig is None or slot >= len(gpu.mig) or gpu.mig[slot].gone:
            return NOT_FOUND
        _write_pointer(_target(mig_handle), self._handle_of(gpu, slot))
        return SUCCESS

    # -- device queries --------------------------------------------------------------------------------------

    def _c_nvmlDeviceGetUUID(self, handle: Any, buffer: Any, size: Any) -> int:
        found = self._device(handle, "nvmlDeviceGetUUID")
        if isinstance(found, int):
            return found
        gpu, mig = found
        buffer.value = (mig.uuid if mig else gpu.uuid).encode()
        return SUCCESS

    def _c_nvmlDeviceGetName(self, handle: Any, buffer: Any, size: Any) -> int:
        found = self._device(handle, "nvmlDeviceGetName")
        if isinstance(found, int):
            return found
        gpu, mig = found
        buffer.value = (f"{gpu.name} MIG {mig.profile}" if mig else gpu.name).encode()
        return SUCCESS

    def _c_nvmlDeviceGetIndex(self, handle: Any, index: Any) -> int:
        found = self._device(handle, "nvmlDeviceGetIndex")
        if isinstance(found, int):
            return found
        _target(index).value = self._visible().index(found[0])
        return SUCCESS

    def _c_nvmlDeviceGetMemoryInfo(self, handle: Any, memory: Any) -> int:
        found = self._device(handle, "nvmlDeviceGetMemoryInfo")
        if isinstance(found, int):
            return found
        gpu, mig = found
        total, used = (mig.memory_total_mb, mig.memory_used_mb) if mig else (gpu.memory_total_mb, gpu.memory_used_mb)
        info = _target(memory)
        info.total, info.used, info.free = total * MIB, used * MIB, (total - used) * MIB
        return SUCCESS

    def _c_nvmlDeviceGetUtilizationRates(self, handle: Any, utilization: Any) -> int:
        found = self._device(handle, "nvmlDeviceGetUtilizationRates")
        if isinstance(found, int):
            return found
        gpu, mig = found
        if mig is not None:
            return NOT_SUPPORTED  # as on real MIG instances
        rates = _target(utilization)
        rates.gpu, rates.memory = gpu.utilization, gpu.utilization // 2
        return SUCCESS

    def _c_nvmlDeviceGetCpuAffinity(self, handle: Any, words: int, mask: Any) -> int:
        found = self._device(handle, "nvmlDeviceGetCpuAffinity")
        if isinstance(found, int):
            return found
        gpu, mig = found
        if mig is not None:
            return NOT_SUPPORTED  # asked of the parent GPU, which owns the PCIe link
        cpus = range(os.cpu_count() or 1) if gpu.cpus is None else gpu.cpus
        array = _target(mask)
        for cpu in cpus:
            if cpu < 64 * words:
                array[cpu // 64] |= 1 << (cpu % 64)
        return SUCCESS

    def _c_nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any, count: Any, infos: Any) -> int:
        found = self._device(handle, "nvmlDeviceGetComputeRunningProcesses_v3")
        if isinstance(found, int):
            return found
        gpu, mig = found
        processes = mig.processes if mig else gpu.processes
        if mig is None and gpu.mig_enabled and gpu.mig:
            processes = [p for m in gpu.mig for p in m.processes]
        room = _target(count)
        if infos is None or room.value < len(processes):
            room.value = len(processes)
            return SUCCESS if not processes else INSUFFICIENT_SIZE
        for i, proc in enumerate(processes):
            infos[i].pid, infos[i].usedGpuMemory = proc.pid, proc.used_mb * MIB
            infos[i].gpuInstanceId = infos[i].computeInstanceId = 0xFFFFFFFF
        room.value = len(processes)
        return SUCCESS

    def _c_nvmlDeviceGetMigMode(self, handle: Any, current: Any, pending: Any) -> int:
        found = self._device(handle, "nvmlDeviceGetMigMode")
        if isinstance(found, int):
            return found
        gpu, mig = found
        if gpu.mig is None or mig is not None:
            return NOT_SUPPORTED
        _target(current).value = _target(pending).value = int(gpu.mig_enabled)
        return SUCCESS

    def _c_nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, count: Any) -> int:
        found = self._device(handle, "nvmlDeviceGetMaxMigDeviceCount")
        if isinstance(found, int):
            return found
        if found[0].mig is None:
            return NOT_SUPPORTED
        _target(count).value = 7
        return SUCCESS

    # -- events ----------------------------------------------------------------------------------------------

    def _c_nvmlEventSetCreate(self, event_set: Any) -> int:
        token = 0xE000 + len(self._event_sets) + 1
        self._event_sets[token] = set()
        _write_pointer(_target(event_set), token)
        return SUCCESS

    def _c_nvmlDeviceRegisterEvents(self, handle: Any, types: Any, event_set: Any) -> int:
        found = self._device(handle, "nvmlDeviceRegisterEvents")
        if isinstance(found, int):
            return found
        if not types.value & pynvml.nvmlEventTypeXidCriticalError:
            return NOT_SUPPORTED
        self._event_sets[_token(event_set)].add(found[0].uuid)
        return SUCCESS

    def _c_nvmlEventSetWait_v2(self, event_set: Any, data: Any, timeout_ms: Any) -> int:
        registered = self._event_sets.get(_token(event_set), set())
        for position, (uuid, xid) in enumerate(self.machine.xids):
            if uuid in registered:
                del self.machine.xids[position]
                gpu = next(g for g in self.machine.gpus if g.uuid == uuid)
                event = _target(data)
                event.device = ctypes.cast(ctypes.c_void_p(self._handle_of(gpu)), pynvml.c_nvmlDevice_t)
                event.eventType, event.eventData = pynvml.nvmlEventTypeXidCriticalError, xid
                return SUCCESS
        return TIMEOUT

    def _c_nvmlEventSetFree(self, event_set: Any) -> int:
        self._event_sets.pop(_token(event_set), None)
        return SUCCESS


def installed_version() -> str:
    return importlib.metadata.version("nvidia-ml-py")


def install(machine: FakeMachine) -> FakeNvmlLib:
    """Make pynvml talk to `machine` instead of libnvidia-ml.so.1 (until `uninstall`)."""
    if installed_version() != PYNVML_VERSION:
        raise RuntimeError(
            f"the fake NVML is written for nvidia-ml-py {PYNVML_VERSION}, but {installed_version()} is installed: "
            "check pynvml's function lookup (_nvmlGetFunctionPointer) and the fake's C signatures, then update both"
        )
    lib = FakeNvmlLib(machine)
    with pynvml.libLoadLock:
        pynvml.nvmlLib = lib
        pynvml._nvmlGetFunctionPointer_cache.clear()
    return lib


def uninstall() -> None:
    """Back to the real library lookup (which fails on a host without the NVIDIA driver)."""
    with pynvml.libLoadLock:
        pynvml.nvmlLib = None
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlLib_refcount = 0
