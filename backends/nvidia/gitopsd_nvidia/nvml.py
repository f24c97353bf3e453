"""The one module that talks to NVML, through nvidia-ml-py's `pynvml`, and turns its failures into reasons.

NVML is a C library shipped with the NVIDIA driver, so on many hosts it is simply not there: no driver, no GPU,
or the Python binding not installed. `pynvml` is therefore imported lazily, and every way NVML can fail to start
becomes a `BackendUnavailable` whose message says what is missing ("NVML not available: libnvidia-ml.so.1 not
found ..."), so the daemon keeps running its other backends. Once started, each NVML call that fails raises
`NvmlFailure`, which keeps NVML's error code and classifies it (`lost`, `gone`, `unsupported`) so that callers
decide what a failure means (a lost GPU fails its run; an unsupported query is just an empty column) without
knowing pynvml. Nothing else in `gitopsd_nvidia` imports pynvml, which is also what lets the tests fake NVML at
its narrowest boundary: the C-function lookup of the loaded library.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gitopsd.errors import BackendUnavailable

LIBRARY = "libnvidia-ml.so.1"
MIB = 1024 * 1024
MAX_EVENTS_PER_POLL = 1000

# NVML's return codes (nvml.h); stable across driver releases, so classifying needs no pynvml import.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
XID_CRITICAL_ERROR_EVENT = 0x8

_START_REASONS = {
    NVML_ERROR_LIBRARY_NOT_FOUND: f"{LIBRARY} not found (is the NVIDIA driver installed on this host?)",
    NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded (no GPU, or `modprobe nvidia` needed)",
    NVML_ERROR_NO_PERMISSION: "permission denied opening the NVIDIA devices (/dev/nvidia*)",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "the NVML library and the loaded kernel driver differ in version (driver upgraded without a reboot?)"
    ),
}


class NvmlFailure(Exception):
    """One NVML call failed. `str()` is the human reason; `code` is NVML's return code when there is one."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def lost(self) -> bool:
        """The GPU fell off the bus or needs a reset: whatever ran on it is gone."""
        return self.code in (NVML_ERROR_GPU_IS_LOST, NVML_ERROR_RESET_REQUIRED)

    @property
    def gone(self) -> bool:
        """NVML no longer lists the device (removed, or a MIG instance destroyed)."""
        return self.code == NVML_ERROR_NOT_FOUND

    @property
    def unsupported(self) -> bool:
        """This GPU (or MIG instance, or driver) does not offer the query: a missing value, not a fault."""
        return self.code in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND)


@dataclass(frozen=True, kw_only=True)
class ComputeProcess:
    """A process with a CUDA context on a device. `used_memory_mb` is None where NVML cannot tell."""

    pid: int
    used_memory_mb: float | None


def import_pynvml() -> Any:
    """The `pynvml` module of nvidia-ml-py, or BackendUnavailable when the binding is not installed."""
    try:
        import pynvml  # type: ignore[import-untyped]
    except ImportError as exc:
        raise BackendUnavailable(
            f"NVML not available: the Python package nvidia-ml-py is not installed ({exc})"
        ) from exc
    return pynvml


class Nvml:
    """A started NVML session and the handful of queries gitopsd needs, each failing as `NvmlFailure`.

    `start()` is cheap after the first success and may be called before every use. Device handles are opaque
    values that are only ever passed back to this object.
    """

    def __init__(self, loader: Callable[[], Any] = import_pynvml) -> None:
        self._loader = loader
        self._lib: Any = None
        self._events: Any = None
        self._watched: set[str] = set()

    # -- session ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Initialise NVML once; raise BackendUnavailable("NVML not available: <why>") when it cannot be."""
        if self._lib is not None:
            return
        lib = self._loader()
        try:
            lib.nvmlInit()
        except lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            why = _START_REASONS.get(code, f"nvmlInit failed: {exc}") if isinstance(code, int) else str(exc)
            raise BackendUnavailable(f"NVML not available: {why}") from exc
        except OSError as exc:  # a library that exists but cannot be loaded (wrong architecture, ...)
            raise BackendUnavailable(f"NVML not available: cannot load {LIBRARY}: {exc}") from exc
        self._lib = lib

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            raise NvmlFailure(f"{what}: {exc}", code=code if isinstance(code, int) else None) from exc

    @property
    def lib(self) -> Any:
        if self._lib is None:
            self.start()
        return self._lib

    # -- system ----------------------------------------------------------------------------------------------

    def driver_version(self) -> str:
        return str(self._call("driver version", self.lib.nvmlSystemGetDriverVersion))

    def cuda_version(self) -> str:
        """The CUDA version the driver supports, as "12.4"."""
        raw = int(self._call("CUDA driver version", self.lib.nvmlSystemGetCudaDriverVersion))
        return f"{raw // 1000}.{raw % 1000 // 10}"

    def gpu_count(self) -> int:
        return int(self._call("GPU count", self.lib.nvmlDeviceGetCount))

    # -- devices ---------------------------------------------------------------------------------------------

    def gpu(self, index: int) -> Any:
        return self._call(f"GPU {index}", self.lib.nvmlDeviceGetHandleByIndex, index)

    def find(self, uuid: str) -> Any:
        """The handle of a GPU or MIG instance by UUID; NvmlFailure (`gone` or `lost`) when it is not usable."""
        return self._call(uuid, self.lib.nvmlDeviceGetHandleByUUID, uuid)

    def uuid(self, handle: Any) -> str:
        return str(self._call("UUID", self.lib.nvmlDeviceGetUUID, handle))

    def name(self, handle: Any) -> str:
        return str(self._call("name", self.lib.nvmlDeviceGetName, handle))

    def memory_mb(self, handle: Any) -> tuple[float, float]:
        """(total, used) memory in MiB."""
        info = self._call("memory", self.lib.nvmlDeviceGetMemoryInfo, handle)
        return info.total / MIB, info.used / MIB

    def utilization(self, handle: Any) -> float:
        """Percent of the last sample period in which a kernel ran (not supported on MIG instances)."""
        return float(self._call("utilization", self.lib.nvmlDeviceGetUtilizationRates, handle).gpu)

    def processes(self, handle: Any) -> tuple[ComputeProcess, ...]:
        found = self._call("compute processes", self.lib.nvmlDeviceGetComputeRunningProcesses, handle)
        return tuple(
            ComputeProcess(
                pid=int(proc.pid),
                used_memory_mb=None if proc.usedGpuMemory is None else proc.usedGpuMemory / MIB,
            )
            for proc in found
        )

    def cpu_affinity(self, handle: Any) -> frozenset[int]:
        """The CPUs close to a GPU (its NUMA node), from NVML's affinity bitmask of 64-bit words."""
        words = -(-(os.cpu_count() or 1) // 64)
        mask = self._call("CPU affinity", self.lib.nvmlDeviceGetCpuAffinity, handle, words)
        return frozenset(64 * i + bit for i, word in enumerate(mask) for bit in range(64) if int(word) >> bit & 1)

    def mig_enabled(self, handle: Any) -> bool:
        current, _pending = self._call("MIG mode", self.lib.nvmlDeviceGetMigMode, handle)
        return bool(current == self.lib.NVML_DEVICE_MIG_ENABLE)

    def mig_devices(self, handle: Any) -> list[tuple[int, Any]]:
        """(slot, handle) of every MIG instance of a GPU in MIG mode; empty slots are skipped."""
        slots = int(self._call("MIG device count", self.lib.nvmlDeviceGetMaxMigDeviceCount, handle))
        found = []
        for slot in range(slots):
            try:
                mig = self._call(f"MIG slot {slot}", self.lib.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
            except NvmlFailure as exc:
                if not exc.gone:
                    raise
                continue
            found.append((slot, mig))
        return found

    # -- Xid events ------------------------------------------------------------------------------------------

    def xid_events(self, gpu_uuids: Iterable[str]) -> list[tuple[str, int]]:
        """(GPU UUID, Xid) of the critical Xid errors NVML reported since the last call, for the given GPUs.

        GPUs are registered on first sight and stay registered. A GPU that cannot report events (not supported,
        or already lost) is skipped: losing it is still seen through its queries failing.
        """
        lib = self.lib
        if self._events is None:
            try:
                self._events = self._call("event set", lib.nvmlEventSetCreate)
            except NvmlFailure:
                return []
        for uuid in sorted(set(gpu_uuids) - self._watched):
            self._watched.add(uuid)
            try:
                handle = self.find(uuid)
                self._call(
                    "register events", lib.nvmlDeviceRegisterEvents, handle, XID_CRITICAL_ERROR_EVENT, self._events
                )
            except NvmlFailure:
                continue
        events: list[tuple[str, int]] = []
        for _ in range(MAX_EVENTS_PER_POLL):
            try:
                data = self._call("event wait", lib.nvmlEventSetWait, self._events, 0)
            except NvmlFailure:
                break  # NVML_ERROR_TIMEOUT: nothing (more) to report
            if not int(data.eventType) & XID_CRITICAL_ERROR_EVENT:
                continue
            try:
                uuid = self.uuid(data.device)
            except NvmlFailure:
                continue
            events.append((uuid, int(data.eventData)))
        return events
