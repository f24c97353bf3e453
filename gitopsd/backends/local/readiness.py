"""Whether the `local` backend can run trainings on this host now, and whether its settings are valid: what the
backend's constructor and `check` refuse, without importing the backend itself (its supervisor, memory sampler
and Python environments, a tenth of a settled `plan`'s time). The backend calls these; so does the quick settled
pass (`reconcile/quickpass.py`), which must find the same reasons a full pass records.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gitopsd.backends.local import landlock
from gitopsd.backends.local.confine import KEYS as CONFINE_KEYS
from gitopsd.backends.local.confine import ConfineSettings, Probe, parse_settings, refusal
from gitopsd.errors import BackendUnavailable, PermanentError

#: The largest value of each numeric setting: far above any real need, finite so no repository asks for more.
_MOST = {"max_parallel": 10_000, "grace_s": 3_600, "memory_poll_s": 3_600}
#: Every setting the backend reads.
KNOWN = ("max_parallel", "grace_s", "memory_poll_s", *CONFINE_KEYS)


def positive(settings: Mapping[str, Any], key: str, default: float, *, backend: str, integer: bool) -> Any:
    """A positive number from the backend's settings, or a PermanentError that names the setting and value."""
    value = settings.get(key, default)
    allowed = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed) or not math.isfinite(value) or value <= 0:
        expected = "a positive integer" if integer else "a positive number of seconds"
        raise PermanentError(f"backend {backend!r} setting {key}: expected {expected}, got {value!r}")
    if value > _MOST[key]:
        raise PermanentError(f"backend {backend!r} setting {key}: expected at most {_MOST[key]}, got {value!r}")
    return value


def check_settings(*, name: str, settings: Mapping[str, Any]) -> None:
    """Refuse (PermanentError) a setting the backend does not know (a typo would otherwise be ignored), a bad
    number or a bad confinement setting, as the backend's constructor does."""
    unknown = sorted(set(settings) - set(KNOWN))
    if unknown:
        raise PermanentError(f"backend {name!r}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(KNOWN)})")
    positive(settings, "max_parallel", 1, backend=name, integer=True)
    positive(settings, "grace_s", 5.0, backend=name, integer=False)
    positive(settings, "memory_poll_s", 1.0, backend=name, integer=False)
    parse_settings(settings, backend=name)


def check_host(name: str, confinement: ConfineSettings, probe: Callable[[], Probe]) -> None:
    """Raise BackendUnavailable, with the reason, when this host cannot run the backend's trainings: no shell, no
    /proc to track them by, or no Landlock to confine them while the settings ask for confinement."""
    if not os.access("/bin/sh", os.X_OK):
        raise BackendUnavailable(f"backend {name!r}: /bin/sh is missing or not executable")
    if not Path("/proc/self/stat").is_file():
        raise BackendUnavailable(f"backend {name!r}: /proc is not mounted; it is needed to track jobs")
    check_confinement(name, confinement, probe)


def check_confinement(name: str, confinement: ConfineSettings, probe: Callable[[], Probe]) -> None:
    """Refuse (BackendUnavailable) to run trainings unconfined on a kernel without (a recent enough) Landlock,
    unless the settings say so."""
    refused = refusal(confinement, probe(), backend=name)
    if refused is not None:
        raise BackendUnavailable(refused)


def unavailable(name: str, settings: Mapping[str, Any], probe: Callable[[], Probe] = landlock.probe) -> str | None:
    """Why a backend `name` with `settings` cannot be used now, worded as building it and calling its `check`
    would raise it; None when it can."""
    try:
        confinement = parse_settings(settings, backend=name)
        check_settings(name=name, settings=settings)
        check_host(name, confinement, probe)
    except Exception as exc:  # as the full pass: a backend's failure is a reason, not a crash
        return str(exc) or type(exc).__name__
    return None
