"""The nvidia backend's settings from gitops.yaml, checked once, with errors that name the setting and value.

    backends:
      gpu:
        type: nvidia
        settings: {model: H100, min_memory: 40Gi, exclusive: true, telemetry_interval_s: 5, max_parallel: 8}

`model`, `min_memory` and `exclusive` shape every GPU request of the models that use this backend (the number
of GPUs comes from each model's `resources.gpus`); a model that needs other GPU options uses another nvidia
backend declared with them. `cpu_binding` (default true) binds a run to the CPUs of its GPUs' NUMA node.
`leases` is the lease file to share with other gitopsd instances on this host (see `leases.lease_file`).
`max_parallel`, `grace_s`, `memory_poll_s` and the confinement settings (`confine`, `confine_read`,
`confine_write`, `confine_deny`, `confine_network`) go to the local process supervision underneath.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gitopsd.backends.local.confine import KEYS as CONFINE_KEYS
from gitopsd.errors import PermanentError
from gitopsd.units import parse_memory

LOCAL_KEYS = ("max_parallel", "grace_s", "memory_poll_s", *CONFINE_KEYS)
KNOWN = ("model", "min_memory", "exclusive", "telemetry_interval_s", "leases", "cpu_binding", *LOCAL_KEYS)
DEFAULT_TELEMETRY_INTERVAL_S = 5.0
MAX_TELEMETRY_INTERVAL_S = 3600


@dataclass(frozen=True, kw_only=True)
class NvidiaSettings:
    model: str | None
    min_memory_mb: int | None
    exclusive: bool
    telemetry_interval_s: float
    leases: str | None
    cpu_binding: bool
    local: Mapping[str, Any]


def _fail(backend: str, key: str, value: Any, expected: str) -> PermanentError:
    return PermanentError(f"backend {backend!r} setting {key}: expected {expected}, got {value!r}")


def memory_mb(value: Any, *, backend: str, key: str) -> int:
    """MiB from "20Gi", "80GB", "512Mi" or a plain number (MiB), as spec files write sizes (`parse_memory`)."""
    try:
        mib = parse_memory(value)
    except ValueError:
        mib = 0
    if mib <= 0:
        raise _fail(backend, key, value, "a memory size such as 20Gi, 80GB or 512Mi (a plain number is MiB)")
    return mib


def parse_settings(settings: Mapping[str, Any], *, backend: str) -> NvidiaSettings:
    unknown = sorted(set(settings) - set(KNOWN))
    if unknown:
        raise PermanentError(
            f"backend {backend!r}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(KNOWN)})"
        )
    model = settings.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise _fail(backend, "model", model, "part of a GPU name, e.g. H100 or A100-SXM4-80GB")
    exclusive = settings.get("exclusive", True)
    if not isinstance(exclusive, bool):
        raise _fail(backend, "exclusive", exclusive, "true or false")
    interval = settings.get("telemetry_interval_s", DEFAULT_TELEMETRY_INTERVAL_S)
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not math.isfinite(interval)
        or not 0 <= interval <= MAX_TELEMETRY_INTERVAL_S
    ):
        raise _fail(
            backend, "telemetry_interval_s", interval, f"a number of seconds from 0 to {MAX_TELEMETRY_INTERVAL_S}"
        )
    cpu_binding = settings.get("cpu_binding", True)
    if not isinstance(cpu_binding, bool):
        raise _fail(backend, "cpu_binding", cpu_binding, "true or false")
    leases = settings.get("leases")
    if leases is not None and (not isinstance(leases, str) or not leases.startswith("/")):
        raise _fail(
            backend, "leases", leases, "an absolute path to the lease file shared by every gitopsd on this host"
        )
    raw_memory = settings.get("min_memory")
    return NvidiaSettings(
        model=model.strip() if isinstance(model, str) else None,
        min_memory_mb=None if raw_memory is None else memory_mb(raw_memory, backend=backend, key="min_memory"),
        exclusive=exclusive,
        telemetry_interval_s=float(interval),
        leases=leases,
        cpu_binding=cpu_binding,
        local={key: settings[key] for key in LOCAL_KEYS if key in settings},
    )
