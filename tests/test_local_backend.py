"""The local backend: the shared backend contract, plus what only a process-based backend must guarantee.

Everything here runs real supervisor processes, real shells and real flocks in tmp dirs: the clean
environment, killing whole process groups, adoption after the daemon is SIGKILLed, `max_parallel` queuing,
per-requirements virtualenvs, and LOST detection when the supervisor itself dies.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gitopsd.backends.local.backend import LOST_MESSAGE, LocalBackend
from gitopsd.backends.local.supervisor import group_members
from gitopsd.backends.local.venv import venv_key
from gitopsd.backends.protocol import Backend, load_backend
from gitopsd.errors import PermanentError
from gitopsd.model import Job, JobRef, JobState, Resources
from tests.backend_contract import (
    BackendContract,
    MakeJob,
    cancel_everything,
    log_text,
    new_job,
    submit,
    wait_finished,
    wait_for,
)

GRACE_S = 1.0
WAIT_FOR_GO = 'while [ ! -e "$GITOPSD_OUTPUT_DIR/go" ]; do sleep 0.05; done'


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    local = LocalBackend(name="local", settings={"max_parallel": 4, "grace_s": GRACE_S}, state_dir=tmp_path / "state")
    yield local
    cancel_everything(local, tmp_path)


@pytest.fixture
def make_job(tmp_path: Path) -> MakeJob:
    def make(command: str, *, timeout_s: int | None = None, env: dict[str, str] | None = None) -> Job:
        return new_job(tmp_path, command, timeout_s=timeout_s, env=env or {})

    return make


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)
    return path.read_text()


def supervisor_pid(ref: JobRef) -> int:
    state = json.loads((ref.run_dir / "local" / "state.json").read_text())
    return int(state["pid"])


class TestLocalContract(BackendContract):
    """The local backend keeps the contract every backend keeps."""


def test_training_gets_a_clean_environment(
    backend: LocalBackend, make_job: MakeJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITOPSD_TEST_DAEMON_SECRET", "must-not-leak")
    monkeypatch.setenv("PYTHONPATH", "/daemon/only/path")
    dump = f"{shlex.quote(sys.executable)} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    job = make_job(f'{dump} > "$GITOPSD_OUTPUT_DIR/env.json"', env={"DECLARED": "yes"})
    ref = submit(backend, job)
    assert wait_finished(backend, ref).state is JobState.SUCCEEDED
    env = json.loads((job.output_dir / "env.json").read_text())
    expected = {"PATH", "HOME", "LANG", "LC_ALL", "PYTHONUNBUFFERED", "DECLARED"}
    expected |= {"GITOPSD_RUN_ID", "GITOPSD_OUTPUT_DIR", "GITOPSD_METRICS_FILE"}
    expected |= {name for name in ("USER", "LOGNAME") if name in os.environ}
    expected |= {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TMPDIR"}
    shell_own = {"PWD", "OLDPWD", "SHLVL", "_"}
    assert set(env) - shell_own == expected
    assert env["PATH"] == os.environ["PATH"]
    assert env["TMPDIR"] == str(job.run_dir / "tmp"), "a confined training gets a temporary directory it may write"
    assert (env["LANG"], env["LC_ALL"], env["PYTHONUNBUFFERED"]) == ("C.UTF-8", "C.UTF-8", "1")
    assert env["GITOPSD_RUN_ID"] == job.run_id
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1", "resources.cpus"


def test_math_libraries_get_as_many_threads_as_the_training_asked_cpus_unless_it_says_otherwise(
    backend: LocalBackend, tmp_path: Path
) -> None:
    dump = f"{shlex.quote(sys.executable)} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    job = new_job(tmp_path, f'{dump} > "$GITOPSD_OUTPUT_DIR/env.json"', resources=Resources(cpus=2),
                  env={"MKL_NUM_THREADS": "1"})  # fmt: skip
    assert wait_finished(backend, submit(backend, job)).state is JobState.SUCCEEDED
    env = json.loads((job.output_dir / "env.json").read_text())
    assert (env["OMP_NUM_THREADS"], env["OPENBLAS_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("2", "2", "1")
    too_many = backend.admit(Resources(cpus=(os.cpu_count() or 1) + 1))
    assert too_many is not None and f"this host has {os.cpu_count()}" in too_many


def test_cancel_kills_the_whole_process_group_grandchildren_included(backend: LocalBackend, make_job: MakeJob) -> None:
    job = make_job('sleep 60 & echo $! > "$GITOPSD_OUTPUT_DIR/grandchild.pid"; wait')
    ref = submit(backend, job)
    grandchild = int(wait_for_file(job.output_dir / "grandchild.pid"))
    pgid = supervisor_pid(ref)
    assert alive(grandchild)
    backend.cancel(ref)
    assert backend.status([ref])[ref.run_id].state is JobState.CANCELLED
    assert not alive(grandchild)
    assert group_members(pgid) == []


def test_processes_left_behind_by_a_finished_command_are_stopped(backend: LocalBackend, make_job: MakeJob) -> None:
    job = make_job('sleep 60 & echo $! > "$GITOPSD_OUTPUT_DIR/background.pid"')
    ref = submit(backend, job)
    assert wait_finished(backend, ref).state is JobState.SUCCEEDED
    assert not alive(int((job.output_dir / "background.pid").read_text()))


def test_death_by_signal_is_recorded_as_128_plus_the_signal(backend: LocalBackend, make_job: MakeJob) -> None:
    ref = submit(backend, make_job("kill -9 $$"))
    status = wait_finished(backend, ref)
    assert status.state is JobState.FAILED
    assert status.exit_code == 137
    assert "SIGKILL" in status.message


ADOPT_SCRIPT = """
import json, os, signal, sys
from pathlib import Path
from gitopsd.backends.local.backend import LocalBackend
from gitopsd.model import Job
spec = json.loads(sys.argv[1])
state_dir = Path(spec.pop("state_dir"))
paths = {k: Path(v) for k, v in spec.items() if k.endswith(("_dir", "_file", "workdir"))}
job = Job(run_id=spec["run_id"], model="demo", command=spec["command"], **paths)
backend = LocalBackend(name="local", settings={"grace_s": 1.0}, state_dir=state_dir)
print(backend.submit(job), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_fresh_backend_adopts_a_job_whose_submitter_was_sigkilled(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    command = f'echo started >> "$GITOPSD_OUTPUT_DIR/starts"; {WAIT_FOR_GO}; exit 7'
    job = new_job(tmp_path, command)
    fields = ("run_dir", "tree_dir", "workdir", "output_dir", "metrics_file", "log_dir")
    spec = {"run_id": job.run_id, "command": command, "state_dir": str(state_dir)}
    spec.update({name: str(getattr(job, name)) for name in fields})
    child = subprocess.run(
        [sys.executable, "-c", ADOPT_SCRIPT, json.dumps(spec)], capture_output=True, text=True, check=False
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    job_id = child.stdout.strip()

    fresh = LocalBackend(name="local", settings={"grace_s": GRACE_S}, state_dir=state_dir)
    try:
        assert fresh.find(job.run_id, job.run_dir) == job_id
        ref = JobRef(run_id=job.run_id, job_id=job_id, run_dir=job.run_dir)
        wait_for(fresh, ref, [JobState.RUNNING])
        wait_for_file(job.output_dir / "starts")
        assert fresh.submit(job) == job_id  # the daemon retrying its submit must not launch a second training
        (job.output_dir / "go").touch()
        status = wait_finished(fresh, ref)
        assert (status.state, status.exit_code) == (JobState.FAILED, 7)
        assert fresh.submit(job) == job_id
        time.sleep(0.3)
        assert (job.output_dir / "starts").read_text() == "started\n"
        assert fresh.status([ref])[job.run_id].exit_code == 7
    finally:
        cancel_everything(fresh, tmp_path)


def test_submitting_the_same_run_twice_starts_one_training(backend: LocalBackend, make_job: MakeJob) -> None:
    job = make_job(f'echo started >> "$GITOPSD_OUTPUT_DIR/starts"; {WAIT_FOR_GO}')
    first = backend.submit(job)
    assert backend.submit(job) == first
    (job.output_dir / "go").touch()
    ref = JobRef(run_id=job.run_id, job_id=first, run_dir=job.run_dir)
    assert wait_finished(backend, ref).state is JobState.SUCCEEDED
    assert backend.submit(job) == first
    assert (job.output_dir / "starts").read_text() == "started\n"


def test_max_parallel_queues_jobs_until_a_slot_frees(tmp_path: Path, make_job: MakeJob) -> None:
    serial = LocalBackend(name="local", settings={"max_parallel": 1, "grace_s": GRACE_S}, state_dir=tmp_path / "s")
    try:
        first = make_job(WAIT_FOR_GO)
        first_ref = submit(serial, first)
        wait_for(serial, first_ref, [JobState.RUNNING])
        second_ref = submit(serial, make_job("echo second"))
        queued = wait_for(serial, second_ref, [JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED])
        deadline = time.monotonic() + 10
        while queued.message != "waiting for a free slot (max_parallel=1)":
            assert queued.state is JobState.PENDING, queued
            assert time.monotonic() < deadline, queued
            time.sleep(0.05)
            queued = serial.status([second_ref])[second_ref.run_id]
        time.sleep(0.5)
        statuses = serial.status([first_ref, second_ref])
        assert statuses[first.run_id].state is JobState.RUNNING
        assert statuses[second_ref.run_id].state is JobState.PENDING
        (first.output_dir / "go").touch()
        done_first, done_second = wait_finished(serial, first_ref), wait_finished(serial, second_ref)
        assert done_first.state is done_second.state is JobState.SUCCEEDED
        assert done_first.ended_at is not None
        assert done_second.started_at is not None
        assert done_second.started_at >= done_first.ended_at
    finally:
        cancel_everything(serial, tmp_path)


def test_a_job_cancelled_while_waiting_for_a_slot_never_starts(tmp_path: Path, make_job: MakeJob) -> None:
    serial = LocalBackend(name="local", settings={"max_parallel": 1, "grace_s": GRACE_S}, state_dir=tmp_path / "s")
    try:
        first_ref = submit(serial, make_job(WAIT_FOR_GO))
        wait_for(serial, first_ref, [JobState.RUNNING])
        queued_job = make_job('touch "$GITOPSD_OUTPUT_DIR/started"')
        queued = submit(serial, queued_job)
        wait_for(serial, queued, [JobState.PENDING])
        serial.cancel(queued)
        status = serial.status([queued])[queued.run_id]
        assert status.state is JobState.CANCELLED
        assert status.started_at is None
        assert not (queued_job.output_dir / "started").exists()
        assert serial.status([first_ref])[first_ref.run_id].state is JobState.RUNNING
    finally:
        cancel_everything(serial, tmp_path)


def test_supervisor_killed_means_lost_and_cancel_cleans_up(backend: LocalBackend, make_job: MakeJob) -> None:
    job = make_job('sleep 60 & echo $! > "$GITOPSD_OUTPUT_DIR/training.pid"; wait')
    ref = submit(backend, job)
    training = int(wait_for_file(job.output_dir / "training.pid"))
    os.kill(supervisor_pid(ref), signal.SIGKILL)
    lost = wait_for(backend, ref, [JobState.LOST], timeout=10)
    assert lost.message == LOST_MESSAGE
    assert backend.find(job.run_id, job.run_dir) == ref.job_id
    assert alive(training)  # the orphaned training is not silently killed by status...
    backend.cancel(ref)  # ...but cancel stops it and records the outcome
    assert not alive(training)
    assert backend.status([ref])[ref.run_id].state is JobState.CANCELLED


def test_a_run_directory_never_submitted_to_is_lost(backend: LocalBackend, tmp_path: Path) -> None:
    ref = JobRef(run_id="run-unknown", job_id="elsewhere:1", run_dir=tmp_path / "nowhere")
    status = backend.status([ref])[ref.run_id]
    assert status.state is JobState.LOST
    assert str(ref.run_dir) in status.message


def test_the_entry_point_loads_a_usable_local_backend(tmp_path: Path) -> None:
    loaded = load_backend("local", name="here", settings={}, state_dir=tmp_path)
    assert isinstance(loaded, LocalBackend)
    assert isinstance(loaded, Backend)
    assert loaded.max_parallel == (os.cpu_count() or 1)
    loaded.check()


@pytest.mark.parametrize("value", [0, -2, "4", 1.5, True])
def test_a_bad_max_parallel_is_refused_with_the_setting_named(tmp_path: Path, value: object) -> None:
    with pytest.raises(PermanentError, match=r"'gpu-box' setting max_parallel: expected a positive integer"):
        LocalBackend(name="gpu-box", settings={"max_parallel": value}, state_dir=tmp_path)


def test_a_missing_workdir_is_refused_at_submit(backend: LocalBackend, tmp_path: Path) -> None:
    job = new_job(tmp_path, "true")
    broken = replace(job, workdir=job.tree_dir / "no-such-dir")
    with pytest.raises(PermanentError, match=r"workdir .*no-such-dir does not exist"):
        backend.submit(broken)
    assert backend.find(job.run_id, job.run_dir) is None


# -- Python isolation: built once per module, since a virtualenv takes seconds to create ----------------------

PRINT_PREFIX = "python -c \"import os, sys; print(sys.prefix); print(os.environ['VIRTUAL_ENV'])\""


@dataclass(frozen=True, kw_only=True)
class VenvRuns:
    backend: LocalBackend
    state_dir: Path
    first: Job
    twin: Job
    second: Job
    broken: Job
    marker_after_first: str


def _with_requirements(root: Path, text: str, command: str) -> Job:
    job = new_job(root, command)
    requirements = job.tree_dir / "requirements.txt"
    requirements.write_text(text)
    return replace(job, python_requirements=requirements)


@pytest.fixture(scope="module")
def venv_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VenvRuns]:
    root = tmp_path_factory.mktemp("venvs")
    state_dir = root / "state"
    local = LocalBackend(name="local", settings={"max_parallel": 3, "grace_s": GRACE_S}, state_dir=state_dir)
    command = f'{PRINT_PREFIX} > "$GITOPSD_OUTPUT_DIR/prefix"'
    first = _with_requirements(root, "# no third-party packages needed\n", command)
    twin = _with_requirements(root, "# no third-party packages needed\n", command)
    broken = _with_requirements(root, "this is not a requirement!!\n", command)
    try:
        refs = [submit(local, job) for job in (first, twin, broken)]  # all three start at once
        for ref in refs:
            wait_finished(local, ref, timeout=120)
        key = venv_key((first.python_requirements or Path()).read_bytes())
        marker = (state_dir / "local" / "venvs" / key / "gitopsd-venv.json").read_text()
        second = _with_requirements(root, "# no third-party packages needed\n", command)
        wait_finished(local, submit(local, second), timeout=120)
        yield VenvRuns(
            backend=local,
            state_dir=state_dir,
            first=first,
            twin=twin,
            second=second,
            broken=broken,
            marker_after_first=marker,
        )
    finally:
        cancel_everything(local, root)


def _ref(job: Job) -> JobRef:
    return JobRef(run_id=job.run_id, job_id="", run_dir=job.run_dir)


@pytest.mark.slow
def test_requirements_run_the_job_in_a_venv_keyed_by_their_content(venv_runs: VenvRuns) -> None:
    job = venv_runs.first
    assert venv_runs.backend.status([_ref(job)])[job.run_id].state is JobState.SUCCEEDED
    key = venv_key((job.python_requirements or Path()).read_bytes())
    venv = venv_runs.state_dir / "local" / "venvs" / key
    prefix, virtual_env = (job.output_dir / "prefix").read_text().split()
    assert Path(prefix).resolve() == venv.resolve()
    assert Path(virtual_env) == venv
    assert Path(sys.prefix).resolve() != venv.resolve()
    described = venv_runs.backend.describe(_ref(job))
    assert described["venv"] == str(venv)
    assert described["python"] == json.loads(venv_runs.marker_after_first)["python_version"]


@pytest.mark.slow
def test_a_second_job_with_the_same_requirements_reuses_the_venv(venv_runs: VenvRuns) -> None:
    first, second = venv_runs.first, venv_runs.second
    assert venv_runs.backend.status([_ref(second)])[second.run_id].state is JobState.SUCCEEDED
    assert (second.output_dir / "prefix").read_text() == (first.output_dir / "prefix").read_text()
    built_by_first_or_twin = log_text(venv_runs.backend, _ref(first)) + log_text(
        venv_runs.backend, _ref(venv_runs.twin)
    )
    assert "] building the Python environment" in built_by_first_or_twin
    assert "] building the Python environment" not in log_text(venv_runs.backend, _ref(second))
    key = venv_key((first.python_requirements or Path()).read_bytes())
    marker = venv_runs.state_dir / "local" / "venvs" / key / "gitopsd-venv.json"
    assert marker.read_text() == venv_runs.marker_after_first


@pytest.mark.slow
def test_two_runs_starting_together_with_the_same_requirements_build_once(venv_runs: VenvRuns) -> None:
    first, twin = venv_runs.first, venv_runs.twin
    assert venv_runs.backend.status([_ref(twin)])[twin.run_id].state is JobState.SUCCEEDED
    logs = [log_text(venv_runs.backend, _ref(job)) for job in (first, twin)]
    assert sum(log.count("] building the Python environment") for log in logs) == 1
    assert (twin.output_dir / "prefix").read_text() == (first.output_dir / "prefix").read_text()
    key = venv_key((first.python_requirements or Path()).read_bytes())
    assert len(list((venv_runs.state_dir / "local" / "venvs" / ".builds").glob(f"{key}-*"))) == 1


@pytest.mark.slow
def test_a_failed_venv_build_fails_the_run_with_a_clear_message(venv_runs: VenvRuns) -> None:
    job = venv_runs.broken
    status = venv_runs.backend.status([_ref(job)])[job.run_id]
    assert status.state is JobState.FAILED
    assert "pip install -r" in status.message
    assert str(job.python_requirements) in status.message
    assert "Invalid requirement" in log_text(venv_runs.backend, _ref(job))
    key = venv_key((job.python_requirements or Path()).read_bytes())
    assert not (venv_runs.state_dir / "local" / "venvs" / key).exists()
    assert not (job.output_dir / "prefix").exists()
