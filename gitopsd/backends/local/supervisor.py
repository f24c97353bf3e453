"""The detached process that owns one local training, and the files through which the daemon watches it.

`LocalBackend.submit` starts `python -m gitopsd.backends.local.supervisor RUN_DIR/local LOCK_FD` in its own session and
returns at once. The supervisor then does everything that must outlive the daemon: it holds the run's flock
(handed over by the submitter, so a run is never launched twice), waits for a `max_parallel` slot, prepares
the Python environment, runs the command in a clean environment inside its own process group, enforces the
timeout, honours a cancel, and finally writes an exit record. The daemon learns everything from files alone:

    run_dir/local/lock       flock held for as long as the supervisor lives
    run_dir/local/spec.json  what to run (written by the submitter)
    run_dir/local/state.json pid, process start time, phase (written by the supervisor)
    run_dir/local/cancel     present once a cancel was asked for
    run_dir/local/exit.json  how it ended (written atomically, before the lock is released)

With `resources.memory` set, the supervisor also samples the memory of the command's process tree (see
`local_memory`) and stops the group once it goes over the limit.

The command runs confined (see `confine` and `landlock`): just before it is executed, its process gives up its
capabilities and restricts itself to the Landlock ruleset the supervisor built from the run's policy, so it
reads and writes only what the policy grants and gets `EACCES` elsewhere. Only the command is confined: the
supervisor, the virtualenv build (pip needs the network and its cache) and the memory sampler are not. A
kernel without Landlock stops the run before anything starts, unless the operator turned confinement off.
The daemon later reads the output directory with all of its own rights, so a confined run also ends with
every process below the supervisor stopped (it is their subreaper: `setsid` does not get one away) and then
fails if its output holds a symbolic link that leads outside the run, which would have the daemon store
`registry.db` as the model.

Only the standard library and the sibling `memory`, `venv`, `confine` and `landlock` modules are used, so
the supervisor starts in a blink and needs nothing that the daemon's environment might lack.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from gitopsd.backends.local import landlock
from gitopsd.backends.local.confine import (
    PROC,
    ROOT_NOTICE,
    UNCONFINED_NOTICE,
    Access,
    ConfinementError,
    ConfineSettings,
    Policy,
    Probe,
    Rule,
    refusal,
    training_tmpdir,
)
from gitopsd.backends.local.memory import MIB, become_subreaper, descendants, over_limit_message, tree_memory
from gitopsd.backends.local.venv import VenvBuildError, ensure_venv
from gitopsd.backends.protocol import read_run_record
from gitopsd.units import format_size

SLOT_POLL_S = 0.2
FIRST_SAMPLE_S = 0.05
STRAGGLER_GRACE_S = 2.0


@dataclass(frozen=True, kw_only=True)
class RunFiles:
    """The local backend's files of one run, all under `run_dir/local/` except the log."""

    run_dir: Path

    @property
    def local_dir(self) -> Path:
        return self.run_dir / "local"

    @property
    def lock(self) -> Path:
        return self.local_dir / "lock"

    @property
    def spec(self) -> Path:
        return self.local_dir / "spec.json"

    @property
    def state(self) -> Path:
        return self.local_dir / "state.json"

    @property
    def cancel(self) -> Path:
        return self.local_dir / "cancel"

    @property
    def exit(self) -> Path:
        return self.local_dir / "exit.json"

    @property
    def log(self) -> Path:
        return self.run_dir / "logs" / "output.log"


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    """What the submitter asks the supervisor to run; `env` is already the complete, clean environment."""

    run_id: str
    command: str
    workdir: str
    env: dict[str, str]
    timeout_s: int | None
    grace_s: float
    max_parallel: int
    slots_dir: str
    requirements: str | None
    venvs_dir: str
    python: str
    memory_mb: int | None = None
    memory_poll_s: float = 1.0
    cpus: list[int] | None = None  # CPU affinity of the command (the nvidia backend: the CPUs near its GPUs)
    backend: str = "local"  # the backend's name, for messages that name its settings
    confine: bool = True  # False only when the operator turned confinement off (setting `confine: false`)
    policy: dict[str, Any] | None = None  # what the command may read and write (`confine.Policy.to_json`)
    collected: list[str] = field(default_factory=list)  # what the daemon reads after the run (output, metrics)


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON so that readers see either the old file or the complete new one, never a torn one.

    The temporary name is predictable and the run directory the training's to write, so whatever is there is
    removed and the file created afresh (O_EXCL, O_NOFOLLOW): a planted link is never written through.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when the file does not exist (yet).

    The run directory is the training's to write, so this is `read_run_record`: no link followed, no FIFO
    opened for reading, size-capped; anything else raises OSError or ValueError, which callers treat as no record.
    """
    return read_run_record(path)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name), or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def proc_start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (field 22), which tells a pid from its reuse."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def group_members(pgid: int, *, exclude: int | None = None) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`, found by scanning /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == exclude:
            continue
        fields = _proc_stat(int(entry))
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def kill_members(pgid: int, sig: int, *, exclude: int | None = None) -> int:
    """Send `sig` to every live member of the group but `exclude`; return how many were signalled."""
    members = group_members(pgid, exclude=exclude)
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return len(members)


def unsafe_outputs_message(links: list[str]) -> str:
    shown = "; ".join(links[:5]) + (f"; and {len(links) - 5} more" if len(links) > 5 else "")
    return (
        f"the training left symbolic links in its output that lead outside its run ({shown}): the daemon would "
        "read the files they name with its own rights, so the run failed and nothing of it is collected"
    )


def exit_fields(returncode: int) -> tuple[int, int | None]:
    """(exit_code, signal) of a Popen return code; death by signal N reads as exit code 128+N."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


def links_leaving(directories: Iterable[str], root: Path) -> list[str]:
    """`path -> target` of every symbolic link under `directories` whose target lies outside `root`."""
    inside = os.path.realpath(root)
    found = []
    for directory in directories:
        for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
            for name in (*dirnames, *filenames):
                path = os.path.join(dirpath, name)
                target = os.path.realpath(path)
                if os.path.islink(path) and not (target == inside or target.startswith(inside + os.sep)):
                    found.append(f"{path} -> {os.readlink(path)}")
    return sorted(found)


def _signal_name(signum: int) -> str:
    return {sig.value: sig.name for sig in signal.Signals}.get(signum, f"signal {signum}")


class Signals:
    """SIGTERM/SIGINT become a flag, and every signal (a child exiting too) wakes `sleep` at once."""

    def __init__(self) -> None:
        self.terminate_requested = False
        self._own_terms = 0
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)

    def _on_term(self, _signum: int, _frame: FrameType | None) -> None:
        if self._own_terms > 0:
            self._own_terms -= 1
        else:
            self.terminate_requested = True

    def expect_own_term(self) -> None:
        """The next SIGTERM is one we send to our own process group: do not take it as a request to stop."""
        self._own_terms += 1

    def sleep(self, timeout: float | None) -> None:
        """Sleep until `timeout` passes or any handled signal (a child exiting, SIGTERM) arrives."""
        select.select([self._wake_r], [], [], timeout)
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass


class Supervisor:
    """Runs one job to its end and records how it ended. One instance per supervisor process."""

    def __init__(
        self,
        *,
        files: RunFiles,
        spec: LaunchSpec,
        log: BinaryIO,
        signals: Signals,
        probe: Callable[[], Probe] = landlock.probe,
    ) -> None:
        self.files = files
        self.probe = probe
        self.signals = signals
        self.spec = spec
        self.log = log
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.job_id = f"{self.host}:{self.pid}"
        self.state: dict[str, Any] = {
            "job_id": self.job_id,
            "host": self.host,
            "pid": self.pid,
            "proc_start": proc_start_ticks(self.pid),
            "created_at": time.time(),
            "started_at": None,
            "phase": "starting",
            "max_parallel": spec.max_parallel,
            "python": None,
            "venv": None,
            "confined": None,
            "landlock_abi": None,
        }
        self.stopped_on_request = False
        self.command_max_rss = 0  # bytes: the largest RSS any process of the command reached (from wait4)
        self.sampled_peak = 0  # bytes: the largest RSS sum of the command's tree seen by the memory limit
        self.samples = 0  # memory samples taken so far; they start close together (see _next_wake)

    def say(self, message: str) -> None:
        self.log.write(f"[gitopsd local] {message}\n".encode())
        self.log.flush()

    def set_state(self, **changes: Any) -> None:
        self.state.update(changes)
        write_json_atomic(self.files.state, self.state)

    def stop_requested(self) -> bool:
        return self.signals.terminate_requested or self.files.cancel.exists()

    def run(self) -> dict[str, Any]:
        """Run the job and return the exit record (the caller writes it)."""
        record: dict[str, Any] = {"exit_code": None, "signal": None, "timed_out": False, "message": ""}
        try:
            self.set_state()
            record.update(self._run())
        except (VenvBuildError, ConfinementError) as exc:
            record["message"] = str(exc)
            self.say(str(exc))
        except Exception as exc:
            record["message"] = f"local supervisor error: {type(exc).__name__}: {exc}"
            self.say(record["message"])
        # A command that exited 0 by itself finished before any stop reached it: its result stands.
        ran_to_end = record["exit_code"] == 0 and not self.stopped_on_request
        cancelled = self.files.cancel.exists() and not ran_to_end
        if cancelled:
            record["message"] = "cancelled on request"
        elif self.signals.terminate_requested and not ran_to_end:
            record["message"] = "the local supervisor was sent SIGTERM (host shutdown?); the command was stopped"
        return {
            **record,
            "cancelled": cancelled,
            "job_id": self.job_id,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.state["started_at"],
            "ended_at": time.time(),
            "python": self.state["python"],
            "venv": self.state["venv"],
            "max_parallel": self.spec.max_parallel,
            "confined": self.state["confined"],
            "landlock_abi": self.state["landlock_abi"],
        }

    def _run(self) -> dict[str, Any]:
        if self.stop_requested():
            return {}
        slot = self._acquire_slot()
        if slot is None:
            return {}
        try:
            self.set_state(phase="running", started_at=time.time())
            env = dict(self.spec.env)
            venv_dir: str | None = None
            if self.spec.requirements:
                venv = ensure_venv(
                    Path(self.spec.requirements),
                    venvs_dir=Path(self.spec.venvs_dir),
                    python=self.spec.python,
                    env=env,
                    log=self.log,
                    should_stop=self.stop_requested,
                )
                self.set_state(python=venv.python_version, venv=str(venv.path))
                venv_dir = os.path.realpath(venv.path)
                env["VIRTUAL_ENV"] = str(venv.path)
                env["PATH"] = os.pathsep.join(p for p in (str(venv.bin_dir), env.get("PATH", "")) if p)
            if self.stop_requested():
                return {}
            return self._run_command(env, venv_dir)
        finally:
            os.close(slot)

    def _acquire_slot(self) -> int | None:
        """Hold one of the `max_parallel` slot locks; None when stopped while waiting."""
        slots_dir = Path(self.spec.slots_dir)
        slots_dir.mkdir(parents=True, exist_ok=True)
        announced = False
        while True:
            for index in range(self.spec.max_parallel):
                fd = os.open(slots_dir / f"slot-{index}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                return fd
            if not announced:
                announced = True
                self.set_state(phase="waiting")
                self.say(f"waiting for a free slot (max_parallel={self.spec.max_parallel})")
            if self.stop_requested():
                return None
            self.signals.sleep(SLOT_POLL_S)

    def _run_command(self, env: dict[str, str], venv_dir: str | None) -> dict[str, Any]:
        proc = self._start_command(env, venv_dir)
        deadline = time.monotonic() + self.spec.timeout_s if self.spec.timeout_s is not None else None
        timed_out = False
        out_of_memory: str | None = None
        while self._reap(proc, block=False) is None:
            if self.stop_requested():
                self.stopped_on_request = True
                self.say("stop requested: terminating the process group")
                self._terminate_group(proc)
                break
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                self.say(f"timeout of {self.spec.timeout_s} s exceeded: terminating the process group")
                self._terminate_group(proc)
                break
            out_of_memory = self._over_memory_limit()
            if out_of_memory is not None:
                self.say(out_of_memory)
                self._terminate_group(proc)
                break
            self.signals.sleep(self._next_wake(deadline))
        returncode = self._reap(proc, block=True)
        assert returncode is not None
        self._reap_stragglers()
        record = self._exit_record(returncode, timed_out=timed_out, out_of_memory=out_of_memory)
        if self.state["confined"]:
            self._stop_descendants()
            leaving = links_leaving(self.spec.collected, self.files.run_dir)
            if leaving:
                record.update(unsafe_outputs=True, message=unsafe_outputs_message(leaving))
                self.say(record["message"])
        return record

    def _confinement(self, env: dict[str, str], venv_dir: str | None) -> int | None:
        """Build the command's Landlock ruleset and return its descriptor; None when the operator turned
        confinement off. Sets the command's TMPDIR to one it may write. Raises ConfinementError when the
        kernel cannot confine it: the command is then never started."""
        if not self.spec.confine:
            self.set_state(confined=False, landlock_abi=None)
            self.say(UNCONFINED_NOTICE)
            return None
        if self.spec.policy is None:
            raise ConfinementError(f"run {self.spec.run_id}: no confinement policy was handed to the supervisor")
        policy = Policy.from_json(self.spec.policy)
        if venv_dir is not None:
            policy = policy.with_read(venv_dir)
        probe = self.probe()
        refused = refusal(ConfineSettings(network=policy.deny_tcp), probe, backend=self.spec.backend)
        if refused is not None:
            raise ConfinementError(refused)
        os.makedirs(policy.tmp_dir, exist_ok=True)
        env["TMPDIR"] = training_tmpdir(policy, env.get("TMPDIR"))
        ruleset, skipped = landlock.build_ruleset(policy, probe.abi)
        self.set_state(confined=True, landlock_abi=probe.abi)
        self.say(f"confined by Landlock (ABI {probe.abi}): {policy.summary()}")
        if Rule(path=PROC, access=Access.READ) in policy.rules:
            self.say(ROOT_NOTICE)
        if skipped:
            self.say(f"not granted, because they are gone or moved since the run was submitted: {', '.join(skipped)}")
        return ruleset

    def _start_command(self, env: dict[str, str], venv_dir: str | None) -> subprocess.Popen[bytes]:
        ruleset = self._confinement(env, venv_dir)
        try:
            return self._popen(env, None if ruleset is None else landlock.restrictor(ruleset))
        except subprocess.SubprocessError as exc:  # raised in the child by the restrictor, before exec
            raise ConfinementError(f"the command could not be confined, so it was not run: {exc}") from exc
        finally:
            if ruleset is not None:
                os.close(ruleset)

    def _popen(self, env: dict[str, str], restrict: Callable[[], None] | None) -> subprocess.Popen[bytes]:
        if (self.spec.memory_mb is not None or restrict is not None) and not become_subreaper():
            self.say("cannot become a child subreaper: processes that detach escape the memory limit")
        if self.spec.cpus:
            try:
                os.sched_setaffinity(0, self.spec.cpus)  # the command inherits it
            except OSError as exc:
                self.say(f"cannot bind to CPUs {self.spec.cpus}: {exc}; running unbound")
        self.log.flush()
        return subprocess.Popen(
            ["/bin/sh", "-c", self.spec.command],
            cwd=self.spec.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            close_fds=True,
            preexec_fn=restrict,  # noqa: PLW1509 -- the supervisor has a single thread
        )

    def _over_memory_limit(self) -> str | None:
        """Why the command must stop for its memory, or None; samples only when there is a limit."""
        limit_mb = self.spec.memory_mb
        if limit_mb is None:
            return None
        used = tree_memory(self.pid)
        self.samples += 1
        self.sampled_peak = max(self.sampled_peak, used.bytes)
        if used.bytes > limit_mb * MIB:  # RSS over: confirm with PSS, which counts shared pages once
            used = tree_memory(self.pid, proportional=True)
        return over_limit_message(used, limit_mb) if used.bytes > limit_mb * MIB else None

    def _exit_record(self, returncode: int, *, timed_out: bool, out_of_memory: str | None) -> dict[str, Any]:
        exit_code, signum = exit_fields(returncode)
        if timed_out:
            message = f"timed out after {self.spec.timeout_s} s; the process group was terminated"
        elif out_of_memory is not None:
            message = out_of_memory
        elif signum is not None:
            message = f"command killed by {_signal_name(signum)} (exit code {exit_code})"
        else:
            message = f"command exited with code {exit_code}"
        if exit_code != 0 and not timed_out and out_of_memory is None:
            self.say(message)
        peak = max(self.sampled_peak, self.command_max_rss)
        limit_mb = self.spec.memory_mb
        if limit_mb is not None and out_of_memory is None:
            limit = format_size(limit_mb * MIB)
            if peak > limit_mb * MIB:
                self.say(
                    f"peak resident memory {format_size(peak)} is above its limit of {limit}, but no sample of the "
                    "training (PSS, while it ran) was: it was not stopped"
                )
            else:
                self.say(f"peak memory {format_size(peak)} of its limit {limit}")
        return {
            "exit_code": exit_code,
            "signal": signum,
            "timed_out": timed_out,
            "message": message,
            "out_of_memory": out_of_memory is not None,
            "peak_memory_mb": round(peak / MIB),
        }

    def _reap(self, proc: subprocess.Popen[bytes], *, block: bool) -> int | None:
        """The command's return code once it has exited, else None. Reaped with wait4 rather than Popen's
        waitpid, to learn the largest RSS that the command or any descendant it waited for ever reached."""
        if proc.returncode is None:
            pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                return None
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.command_max_rss = usage.ru_maxrss * 1024  # kilobytes on Linux
        return proc.returncode

    def _next_wake(self, deadline: float | None) -> float | None:
        """Seconds until the supervisor must look again: the timeout, or the next memory sample. Samples start
        50 ms apart and double up to `memory_poll_s`, so a short training that allocates at once is seen too."""
        waits = [max(0.0, deadline - time.monotonic())] if deadline is not None else []
        if self.spec.memory_mb is not None:
            waits.append(min(self.spec.memory_poll_s, FIRST_SAMPLE_S * 2 ** min(max(self.samples - 1, 0), 16)))
        return min(waits) if waits else None

    def _terminate_group(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the whole group (not this process), then SIGKILL whatever outlives the grace period."""
        self.signals.expect_own_term()
        os.killpg(self.pid, signal.SIGTERM)
        self._wait_group_gone(proc, self.spec.grace_s)

    def _stop_descendants(self) -> None:
        """Kill what is left below this subreaper (processes that left the command's process group), so that
        nothing of the training can change its output once it has been checked."""
        for _ in range(200):
            left = descendants(self.pid)
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            time.sleep(0.01)
        self.say(f"processes {descendants(self.pid)} of the training outlived SIGKILL")

    def _reap_stragglers(self) -> None:
        """Processes the command left behind in the group die with it (they may hold GPUs or files)."""
        if kill_members(self.pid, signal.SIGTERM, exclude=self.pid):
            self._wait_group_gone(None, min(self.spec.grace_s, STRAGGLER_GRACE_S))

    def _wait_group_gone(self, proc: subprocess.Popen[bytes] | None, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if proc is not None:
                self._reap(proc, block=False)
            if not group_members(self.pid, exclude=self.pid):
                return
            self.signals.sleep(0.05)
        self.say(f"process group still alive {grace_s:g} s after SIGTERM: sending SIGKILL")
        for _ in range(100):
            if not kill_members(self.pid, signal.SIGKILL, exclude=self.pid):
                return
            if proc is not None:
                self._reap(proc, block=False)
            time.sleep(0.01)


def main(argv: list[str]) -> int:
    """Entry point: `python -m gitopsd.backends.local.supervisor RUN_DIR/local LOCK_FD`."""
    signals = Signals()  # first of all, so an early SIGTERM is remembered rather than fatal
    if len(argv) != 3:
        sys.stderr.write("usage: python -m gitopsd.backends.local.supervisor RUN_DIR/local LOCK_FD\n")
        return 2
    files = RunFiles(run_dir=Path(argv[1]).parent)
    lock_fd = int(argv[2])
    os.set_inheritable(lock_fd, False)
    data = read_json(files.spec)
    if data is None:
        sys.stderr.write(f"gitopsd local supervisor: {files.spec} does not exist\n")
        return 2
    spec = LaunchSpec(**data)
    with open(files.log, "ab") as log:
        record = Supervisor(files=files, spec=spec, log=log, signals=signals).run()
        write_json_atomic(files.exit, record)
    os.close(lock_fd)  # only now may observers see the run as finished
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
