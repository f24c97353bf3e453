"""The backend protocol, and how backends are found.

A backend turns a `Job` into a running training and reports on it. It is batch-first: `status` answers for
every in-flight job of this backend in one call, so a pass costs one query however many runs are in flight.
Backends are plugins found through the `gitopsd.backends` entry-point group; the built-in `local` backend
registers the same way as `slurm` or `nvidia`. A plugin imports only this module, `gitopsd.model` and
`gitopsd.errors`.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gitopsd.errors import BackendUnavailable
from gitopsd.model import Job, JobRef, JobStatus, Resources

ENTRY_POINT_GROUP = "gitopsd.backends"
#: The state directory every repository of one daemon shares (the daemon exports it); backends keep what must
#: be host-wide there, such as the nvidia backend's GPU leases. Unset for a one-off CLI reconcile.
SHARED_STATE_ENV = "GITOPSD_SHARED_STATE_DIR"


#: The operator setting (in `[backends.NAME] settings`) that puts a backend's run directories somewhere other than
#: the state directory: on a filesystem the compute nodes share. A backend that accepts it exposes the path as its
#: `runs_dir` attribute (see `Backend`). It is a host path, so no repository may ever set it (`gitopsd.spec`).
RUNS_DIR_SETTING = "runs_dir"


RECORD_LIMIT = 1 << 20
"""Largest backend record (`run_dir/<backend>/*.json`) read; a record is a few hundred bytes."""


def read_run_record(path: Path) -> dict[str, Any] | None:
    """A backend's JSON record in a run directory (`run_dir/NAME/FILE.json`), read as hostile input.

    The training can write its run directory, so the record's folder and the record are opened with
    O_NOFOLLOW (never a link) and O_NONBLOCK (a FIFO must not hang a status call), only a regular file up to
    `RECORD_LIMIT` bytes is read, and JSON nested too deep for the parser is an error, not a crash. Returns
    None when the record does not exist; raises ValueError (or OSError) when it is not a JSON object that could
    be ours.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        folder = os.open(path.parent, flags | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        fd = os.open(path.name, flags, dir_fd=folder)
    except FileNotFoundError:
        return None
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file")
        raw = handle.read(RECORD_LIMIT + 1)
    if len(raw) > RECORD_LIMIT:
        raise ValueError(f"{path}: over {RECORD_LIMIT} bytes; not a record this backend wrote")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValueError(f"{path}: nested too deep to be a record this backend wrote") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def thread_env(resources: Resources) -> dict[str, str]:
    """What every backend exports so that math libraries (OpenMP, MKL, OpenBLAS; PyTorch and NumPy through
    them) start `resources.cpus` threads rather than one per core of a shared host. A model's own `env` wins."""
    count = str(resources.cpus)
    return {"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, "OPENBLAS_NUM_THREADS": count}


def runs_dir_of(backend: object) -> Path | None:
    """Where `backend` wants its runs' directories (`runs_dir/RUN_ID`), or None for the state directory's `runs`."""
    runs_dir = getattr(backend, "runs_dir", None)
    return Path(runs_dir) if runs_dir is not None else None


def runs_dir_problem(backend: str, path: Path) -> str | None:
    """Why run directories cannot be created under `path` by this process, or None when they can.

    Checked for real (a directory is made and removed), since `access()` says yes to root on a root-squashed NFS
    export. The answer is one line naming the backend, the setting and the fix.
    """
    where = f"backend {backend!r} setting {RUNS_DIR_SETTING} ({path})"
    fix = f"or change [backends.{backend}] settings.{RUNS_DIR_SETTING} in the operator's configuration"
    user = f"the daemon's user (uid {os.geteuid()})"
    if not path.is_absolute():
        return f"{where}: expected an absolute path; {fix}"
    try:
        if not path.exists():
            return f"{where} does not exist: create it on the filesystem the compute nodes share, {fix}"
        if not path.is_dir():
            return f"{where} is not a directory: {fix}"
        os.rmdir(tempfile.mkdtemp(prefix=".gitopsd-probe-", dir=path))
    except OSError as exc:
        return (
            f"{where} is not writable by {user}: {exc.strerror or exc}; make it writable (and list it in the "
            f"systemd unit's ReadWritePaths=), {fix}"
        )
    return None


@runtime_checkable
class Backend(Protocol):
    """What every backend implements. Constructed as `Factory(name=..., settings=..., state_dir=...)`.

    Optional attribute `runs_dir: Path | None`: where this backend's run directories go (`runs_dir/RUN_ID`),
    typically set from the operator setting `RUNS_DIR_SETTING` when the jobs run on other hosts (compute nodes)
    that see a shared filesystem but not the daemon's state directory. Without it (or None) run directories live
    in the state directory (`STATE_DIR/runs/RUN_ID`). Read through `runs_dir_of`.
    """

    name: str

    def check(self) -> None:
        """Raise `BackendUnavailable` with a human reason when the backend cannot be used right now."""

    def admit(self, resources: Resources) -> str | None:
        """None if this backend could ever run a job asking for `resources`; else why not (checked at plan time,
        e.g. "asks for 8 GPUs, the largest node has 4"). Must be cheap: no job is submitted."""

    def submit(self, job: Job) -> str:
        """Start the job and return its backend job id. The run id must be findable by `find` afterwards."""

    def status(self, refs: Sequence[JobRef]) -> dict[str, JobStatus]:
        """Report on every given job in one batched call, keyed by run id."""

    def cancel(self, ref: JobRef) -> None:
        """Stop the job (and all its processes). Cancelling a finished job is not an error."""

    def find(self, run_id: str, run_dir: Path) -> str | None:
        """Return the job id of a job carrying this run id, if one was ever submitted (crash adoption)."""

    def logs(self, ref: JobRef) -> list[Path]:
        """Files holding the job's output, most useful first."""

    def describe(self, ref: JobRef) -> dict[str, Any]:
        """Lineage facts about the job: host, nodes, devices, exit code, anything an auditor wants."""


def can_checkpoint(backend: Backend) -> bool:
    """Whether `backend` runs a `Job` with `checkpoint` as chained segments (a plugin says so with a class
    attribute `checkpoints = True`); a backend that cannot is refused such a job at plan time."""
    return getattr(backend, "checkpoints", False) is True


class BackendFactory(Protocol):
    """Builds a backend. It may also have `check_settings(*, name, settings) -> None`, raising PermanentError
    naming the backend, setting and value, so that bad settings are refused when a commit is loaded (see
    `check_settings` below) rather than when a job is submitted."""

    def __call__(self, *, name: str, settings: Mapping[str, Any], state_dir: Path) -> Backend: ...


def _entry_points() -> Sequence[Any]:
    """The installed plugins' entry points; importlib.metadata (~25 ms) is imported only when they are looked up,
    not by every module that imports the protocol."""
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def available_types() -> dict[str, str]:
    """Installed backend types and the object each entry point names."""
    return {ep.name: ep.value for ep in _entry_points()}


def check_settings(type_: str, *, name: str, settings: Mapping[str, Any]) -> None:
    """Let the plugin registered under `type_` refuse `settings` (PermanentError) without building a backend.

    Nothing happens for a type that is not installed here (using it reports that) or a plugin without a check.
    """
    matches = [ep for ep in _entry_points() if ep.name == type_]
    if not matches:
        return
    try:
        factory = matches[0].load()
    except ImportError:
        return
    check = getattr(factory, "check_settings", None)
    if callable(check):
        check(name=name, settings=settings)


def load_backend(type_: str, *, name: str, settings: Mapping[str, Any], state_dir: Path) -> Backend:
    """Instantiate the backend plugin registered under `type_`."""
    matches = [ep for ep in _entry_points() if ep.name == type_]
    if not matches:
        known = ", ".join(sorted(available_types())) or "none"
        raise BackendUnavailable(f"backend type {type_!r} is not installed (installed: {known})")
    try:
        factory: BackendFactory = matches[0].load()
    except ImportError as exc:
        raise BackendUnavailable(f"backend type {type_!r} cannot be loaded: {exc}") from exc
    return factory(name=name, settings=settings, state_dir=state_dir)
