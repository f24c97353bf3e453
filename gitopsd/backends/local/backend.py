"""The built-in `local` backend: trainings run as processes on the daemon's own host.

It is a plugin like any third-party backend (registered as entry point `local` in group `gitopsd.backends`)
and imports only the backend protocol, the shared model and errors, and its own `local_*` modules. Each
submitted job gets a detached supervisor process (`gitopsd.backends.local.supervisor`) that survives the daemon being
killed; this class only starts supervisors and reads the files they keep in `run_dir/local/`, so `status` of
any number of jobs costs a few file checks and no subprocess. Crash safety rests on one flock per run: the
submitter takes it before spawning and hands it to the supervisor, so while a run's lock is held or its exit
record exists, no second process is ever started for it.

Every training runs confined by Landlock to its run directory, the system and its Python (see `confine`); a
host whose kernel cannot confine it makes the backend unavailable, with the reason, rather than run it free.

Settings: `max_parallel` (how many trainings of this backend run at once, default: the number of CPUs),
`grace_s` (seconds between SIGTERM and SIGKILL on cancel, timeout or memory limit, default 5),
`memory_poll_s` (how often a training with `resources.memory` has its memory sampled, default 1), and the
confinement settings `confine` (default true), `confine_read`, `confine_write`, `confine_deny` (lists of
absolute paths, default none) and `confine_network` (also refuse TCP bind and connect, default false).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gitopsd.backends.local import landlock
from gitopsd.backends.local.confine import Policy, Probe, RunPaths, build_policy, parse_settings
from gitopsd.backends.local.hostfacts import RealFs, host_facts
from gitopsd.backends.local.memory import MIB, host_memory_mb
from gitopsd.backends.local.pyenv import python_environment
from gitopsd.backends.local.readiness import check_confinement, check_host, check_settings, positive
from gitopsd.backends.local.supervisor import (
    LaunchSpec,
    RunFiles,
    group_members,
    proc_start_ticks,
    read_json,
    write_json_atomic,
)
from gitopsd.backends.local.venv import KEY_HEX
from gitopsd.backends.protocol import thread_env
from gitopsd.errors import PermanentError, TransientError
from gitopsd.model import Job, JobRef, JobState, JobStatus, Resources
from gitopsd.units import format_size

LOST_MESSAGE = "supervisor vanished without an exit record (killed or host rebooted)"
STARTUP_WAIT_S = 5.0
CANCEL_MARGIN_S = 5.0
POLL_S = 0.02
_EXIT_FACTS = [
    "host",
    "pid",
    "exit_code",
    "signal",
    "started_at",
    "ended_at",
    "timed_out",
    "cancelled",
    "out_of_memory",
    "peak_memory_mb",
    "confined",
    "landlock_abi",
]
_PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder that holds the gitopsd package


def lock_held(lock: Path) -> bool:
    """Whether a live process holds the run's flock. Probes with a shared lock, never creates the file.

    The run directory is the training's to write: a link or a FIFO put in the lock's place is not followed or
    waited on, and is not a held lock (the supervisor's lock is on the file it opened, whatever the name is now).
    """
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also drops the probe's own shared lock
    return False


def clean_env(job: Job) -> dict[str, str]:
    """A training's complete environment: the job's own variables, gitopsd's, and the minimum to function."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({key: os.environ[key] for key in ("USER", "LOGNAME", "TMPDIR") if key in os.environ})
    env.update(thread_env(job.resources))
    env.update(job.env)
    env.update(
        GITOPSD_RUN_ID=job.run_id,
        GITOPSD_OUTPUT_DIR=str(job.output_dir),
        GITOPSD_METRICS_FILE=str(job.metrics_file),
    )
    return env


class LocalBackend:
    """Runs jobs as supervised process groups on this host. See the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        settings: Mapping[str, Any],
        state_dir: Path,
        probe: Callable[[], Probe] = landlock.probe,
        protect: Sequence[Path] = (),
    ) -> None:
        """`probe` asks the kernel for Landlock; `protect`: more paths no training may reach (backends built on
        this one name their own state there)."""
        self.name = name
        self.state_dir = Path(state_dir)
        self.confinement = parse_settings(settings, backend=name)
        self.probe = probe
        self.protect = (self.state_dir, *protect)
        self.max_parallel: int = positive(settings, "max_parallel", os.cpu_count() or 1, backend=name, integer=True)
        self.grace_s: float = float(positive(settings, "grace_s", 5.0, backend=name, integer=False))
        self.memory_poll_s = float(positive(settings, "memory_poll_s", 1.0, backend=name, integer=False))
        self.host = socket.gethostname()
        self._children: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def check_settings(*, name: str, settings: Mapping[str, Any]) -> None:
        """Refuse bad settings when the commit that declares them is loaded, without building a backend."""
        check_settings(name=name, settings=settings)

    # -- protocol -------------------------------------------------------------------------------------------

    def check(self) -> None:
        check_host(self.name, self.confinement, self.probe)

    def admit(self, resources: Resources) -> str | None:
        """Refuse what this host can never give: more CPUs or memory than it has. GPUs are the nvidia backend's.
        A launcher or environment modules need a Slurm backend: here the command runs once, as it is."""
        if resources.launcher != "none":
            return (
                f"spec.train.launcher {resources.launcher!r} needs a Slurm backend: backend {self.name!r} runs the "
                "command once, on this host (use launcher: none)"
            )
        if resources.modules:
            return (
                f"spec.train.modules needs a Slurm backend: backend {self.name!r} does not load environment modules "
                f"(asks for {', '.join(resources.modules)})"
            )
        cores = os.cpu_count()
        if cores is not None and resources.cpus > cores:
            return f"asks for {resources.cpus} CPUs; this host has {cores}"
        if resources.memory_mb is not None:
            total_mb = host_memory_mb()
            if total_mb is not None and resources.memory_mb > total_mb:
                return (
                    f"asks for {format_size(resources.memory_mb * MIB)} of host memory; "
                    f"this host has {format_size(total_mb * MIB)}"
                )
        return None

    def submit(self, job: Job, *, cpus: Sequence[int] | None = None) -> str:
        """Start the job's supervisor. `cpus`, for backends built on this one: the CPUs to bind the job to."""
        files = RunFiles(run_dir=job.run_dir)
        existing = self._recorded_job_id(files)
        if existing is not None:
            return existing
        if not job.workdir.is_dir():
            raise PermanentError(f"run {job.run_id}: workdir {job.workdir} does not exist or is not a directory")
        check_confinement(self.name, self.confinement, self.probe)
        policy = self._policy(job, files) if self.confinement.enabled else None  # its errors come first
        self._reap()
        files.local_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(files.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            existing = self._take_lock(lock_fd, files)
            if existing is not None:
                return existing
            return self._spawn(job, files, lock_fd, cpus, policy)
        finally:
            os.close(lock_fd)  # the supervisor holds its own copy; the lock lives as long as it does

    def status(self, refs: Sequence[JobRef]) -> dict[str, JobStatus]:
        self._reap()
        return {ref.run_id: self._status_of(RunFiles(run_dir=ref.run_dir)) for ref in refs}

    def cancel(self, ref: JobRef) -> None:
        files = RunFiles(run_dir=ref.run_dir)
        if files.exit.exists() or not files.local_dir.is_dir():
            return
        if lock_held(files.lock):
            files.cancel.touch()  # the supervisor checks it before starting anything
            state = self._wait_for_state(files)
            if state is not None and self._supervisor_alive(state):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(state["pid"]), signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s + CANCEL_MARGIN_S
            while time.monotonic() < deadline and lock_held(files.lock) and not files.exit.exists():
                time.sleep(POLL_S)
        state = self._read(files.state)
        if state is None:
            return  # nothing was ever started
        if files.exit.exists():
            self._stop_group(state, [(None, 2.0), (signal.SIGKILL, 2.0)])  # the supervisor is on its way out
            return
        # The supervisor is gone (or hung): stop what is left of its group and record the cancel ourselves.
        files.cancel.touch()
        self._stop_group(state, [(signal.SIGTERM, self.grace_s), (signal.SIGKILL, 2.0)])
        write_json_atomic(
            files.exit,
            {
                **state,
                "exit_code": None,
                "signal": None,
                "timed_out": False,
                "cancelled": True,
                "ended_at": time.time(),
                "message": "cancelled on request; the supervisor did not record it, so the daemon did",
            },
        )

    def find(self, run_id: str, run_dir: Path) -> str | None:
        files = RunFiles(run_dir=run_dir)
        spec = self._read(files.spec)
        if spec is not None and spec.get("run_id") != run_id:
            return None
        existing = self._recorded_job_id(files)
        if existing is None and lock_held(files.lock):
            state = self._wait_for_state(files)
            existing = None if state is None else str(state["job_id"])
        return existing or self._recorded_job_id(files)

    def logs(self, ref: JobRef) -> list[Path]:
        log = RunFiles(run_dir=ref.run_dir).log
        return [log] if log.is_file() else []

    def describe(self, ref: JobRef) -> dict[str, Any]:
        files = RunFiles(run_dir=ref.run_dir)
        record = self._read(files.exit) or self._read(files.state) or {}
        facts: dict[str, Any] = {"backend": "local", "name": self.name, "job_id": record.get("job_id") or ref.job_id}
        facts.update({key: record.get(key) for key in _EXIT_FACTS})
        venv = self._own_venv(record.get("venv"))
        facts.update(python=record.get("python"), venv=venv, max_parallel=record.get("max_parallel"))
        environment = python_environment(venv, self.state_dir / "local" / "environments")
        facts["python"] = facts["python"] or environment.get("python")
        facts["packages"] = environment.get("packages", {})
        return facts

    def _own_venv(self, venv: object) -> str | None:
        """The venv a record names, if it is one this backend builds (`state_dir/local/venvs/<key>`).

        Records live in the run directory, which the training can write: a venv path pointing anywhere else
        would have `describe` run an interpreter of the training's choosing in the daemon.
        """
        if not isinstance(venv, str):
            return None
        path = Path(venv)
        own = path.parent == self.state_dir / "local" / "venvs" and len(path.name) == KEY_HEX
        return venv if own and all(c in "0123456789abcdef" for c in path.name) else None

    # -- submit --------------------------------------------------------------------------------------------

    def _take_lock(self, lock_fd: int, files: RunFiles) -> str | None:
        """Take the run's lock; or return the job id of the supervisor that holds it (no second launch)."""
        deadline = time.monotonic() + STARTUP_WAIT_S
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass  # a live supervisor, a submitter about to spawn one, or a status probe
            existing = self._recorded_job_id(files)
            if existing is not None:
                return existing
            if time.monotonic() > deadline:
                raise TransientError(
                    f"{files.lock} is held by another process, but no supervisor state appeared in "
                    f"{STARTUP_WAIT_S:g} s; try again later"
                )
            time.sleep(POLL_S)
        return self._recorded_job_id(files)  # it may have finished between our first look and the lock

    def _policy(self, job: Job, files: RunFiles) -> Policy:
        """What the job's training may read and write (see `confine`), from the facts of the run and host."""
        real = os.path.realpath
        run = RunPaths(
            run_dir=real(job.run_dir),
            tree_dir=real(job.tree_dir),
            output_dir=real(job.output_dir),
            metrics_dir=real(job.metrics_file.parent),
            log_file=real(files.log),
            tmp_dir=real(job.run_dir / "tmp"),
            inputs=tuple(real(path) for path in job.inputs),
        )
        facts = host_facts(protected=self.protect)
        return build_policy(self.confinement, run, facts, RealFs(), backend=self.name)

    def _spawn(self, job: Job, files: RunFiles, lock_fd: int, cpus: Sequence[int] | None, policy: Policy | None) -> str:
        for directory in (job.output_dir, job.log_dir, job.metrics_file.parent):
            directory.mkdir(parents=True, exist_ok=True)
        spec = LaunchSpec(
            run_id=job.run_id,
            command=job.command,
            workdir=str(job.workdir),
            env=clean_env(job),
            timeout_s=job.timeout_s,
            grace_s=self.grace_s,
            max_parallel=self.max_parallel,
            slots_dir=str(self.state_dir / "local" / "slots"),
            requirements=None if job.python_requirements is None else str(job.python_requirements),
            venvs_dir=str(self.state_dir / "local" / "venvs"),
            python=sys.executable,
            memory_mb=job.resources.memory_mb,
            memory_poll_s=self.memory_poll_s,
            cpus=sorted(cpus) if cpus else None,
            backend=self.name,
            confine=self.confinement.enabled,
            policy=None if policy is None else policy.to_json(),
            collected=sorted({str(job.output_dir), str(job.metrics_file.parent)}),
        )
        write_json_atomic(files.spec, asdict(spec))
        supervisor_env = dict(os.environ)
        supervisor_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        try:
            with open(files.log, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "gitopsd.backends.local.supervisor", str(files.local_dir), str(lock_fd)],
                    cwd=files.local_dir,
                    env=supervisor_env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(lock_fd,),
                    start_new_session=True,
                )
        except OSError as exc:
            raise TransientError(f"run {job.run_id}: cannot start the local supervisor: {exc}") from exc
        self._children.append(proc)
        return f"{self.host}:{proc.pid}"

    def _reap(self) -> None:
        """Collect supervisors of ours that have exited, so that a long-lived daemon leaves no zombies."""
        self._children = [proc for proc in self._children if proc.poll() is None]

    # -- observing -----------------------------------------------------------------------------------------

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            return read_json(path)
        except (OSError, ValueError):
            return None

    def _recorded_job_id(self, files: RunFiles) -> str | None:
        for path in (files.exit, files.state):
            record = self._read(path)
            if record is not None and record.get("job_id"):
                return str(record["job_id"])
        return None

    def _wait_for_state(self, files: RunFiles) -> dict[str, Any] | None:
        """The supervisor's state; waits briefly while the lock is held and the supervisor is starting."""
        deadline = time.monotonic() + STARTUP_WAIT_S
        while (state := self._read(files.state)) is None:
            if time.monotonic() > deadline or not lock_held(files.lock):
                return self._read(files.state)
            time.sleep(POLL_S)
        return state

    def _status_of(self, files: RunFiles) -> JobStatus:
        record = self._read(files.exit)
        if record is None and not files.local_dir.is_dir():
            return JobStatus(state=JobState.LOST, message=f"no local job was ever submitted in {files.run_dir}")
        if record is None and lock_held(files.lock):
            state = self._read(files.state) or {}
            if state.get("phase") == "waiting":
                message = f"waiting for a free slot (max_parallel={state.get('max_parallel')})"
                return JobStatus(state=JobState.PENDING, message=message)
            if state.get("phase") == "running":
                message = f"running on {state.get('host')} (supervisor pid {state.get('pid')})"
                return JobStatus(state=JobState.RUNNING, message=message, started_at=state.get("started_at"))
            return JobStatus(state=JobState.PENDING, message="the local supervisor is starting")
        record = record or self._read(files.exit)  # it may have ended between the two looks
        if record is None:
            state = self._read(files.state) or {}
            return JobStatus(state=JobState.LOST, message=LOST_MESSAGE, started_at=state.get("started_at"))
        if record.get("cancelled"):
            job_state = JobState.CANCELLED
        elif record.get("out_of_memory") or record.get("unsafe_outputs"):
            job_state = JobState.FAILED  # even if the training exited 0
        elif record.get("timed_out"):
            job_state = JobState.TIMEOUT
        elif record.get("exit_code") == 0:
            job_state = JobState.SUCCEEDED
        else:
            job_state = JobState.FAILED
        return JobStatus(
            state=job_state,
            exit_code=record.get("exit_code"),
            message=str(record.get("message", "")),
            started_at=record.get("started_at"),
            ended_at=record.get("ended_at"),
        )

    # -- stopping ------------------------------------------------------------------------------------------

    def _supervisor_alive(self, state: Mapping[str, Any]) -> bool:
        """Whether the pid in `state` is still that supervisor (same start time), not a reused pid."""
        return state.get("host") == self.host and proc_start_ticks(int(state["pid"])) == state.get("proc_start")

    def _stop_group(self, state: Mapping[str, Any], steps: Sequence[tuple[int | None, float]]) -> None:
        """Until none is left, send each signal (None: just wait) to the processes still in the supervisor's
        group that started after it, and give them the step's seconds to go."""
        if state.get("host") != self.host:
            return
        pgid, born = int(state["pid"]), int(state.get("proc_start") or 0)

        def members() -> list[int]:
            return [pid for pid in group_members(pgid) if (proc_start_ticks(pid) or 0) >= born]

        for sig, wait_s in steps:
            if sig is not None:
                for pid in members():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while members() and time.monotonic() < deadline:
                time.sleep(POLL_S)
            if not members():
                return
