"""The contract every backend keeps, as one reusable test class.

The reconciler relies on these behaviours whatever runs the training: exit codes and logs come back, the job
sees its run id and output paths, `find` recovers a submitted job after a crash, one `status` call answers for
many jobs, and cancel and timeout end in their own states. A backend's test module subclasses
`BackendContract` (whose name lacks the Test prefix, so it is not collected on its own) and provides two
fixtures:

- `backend`: the Backend under test;
- `make_job`: `make_job(command, *, timeout_s=None, env=None) -> Job`, which prepares a fresh run directory
  with an exported tree and returns a Job for it (not yet submitted).

Class attributes let slow backends (a real Slurm queue) stretch the waits without changing the assertions.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from gitopsd.backends.protocol import Backend
from gitopsd.model import Job, JobRef, JobState, JobStatus


class MakeJob(Protocol):
    def __call__(self, command: str, *, timeout_s: int | None = None, env: dict[str, str] | None = None) -> Job: ...


def new_job(root: Path, command: str, **fields: Any) -> Job:
    """A Job with a fresh run directory and an exported (empty) tree under `root`, as the reconciler makes it."""
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    run_dir = root / "runs" / run_id
    (run_dir / "tree").mkdir(parents=True)
    return Job(
        run_id=run_id,
        model="demo",
        command=command,
        run_dir=run_dir,
        tree_dir=run_dir / "tree",
        workdir=run_dir / "tree",
        output_dir=run_dir / "out",
        metrics_file=run_dir / "out" / "metrics.jsonl",
        log_dir=run_dir / "logs",
        **fields,
    )


def cancel_everything(backend: Backend, root: Path) -> None:
    """Teardown for host-process backends (their cancel needs only the run directory): no test leaves a
    supervisor or training behind, even when it fails half-way."""
    runs = root / "runs"
    for run_dir in runs.iterdir() if runs.is_dir() else []:
        backend.cancel(JobRef(run_id=run_dir.name, job_id="", run_dir=run_dir))


def wait_for(backend: Backend, ref: JobRef, states: Iterable[JobState], *, timeout: float = 30.0) -> JobStatus:
    """Poll `status` until the job is in one of `states`; fail with the last status seen after `timeout`."""
    wanted = frozenset(states)
    deadline = time.monotonic() + timeout
    while True:
        status = backend.status([ref])[ref.run_id]
        if status.state in wanted:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {ref.run_id} still {status} after {timeout} s, expected {sorted(wanted)}")
        time.sleep(0.05)


def wait_finished(backend: Backend, ref: JobRef, timeout: float = 30.0) -> JobStatus:
    """Poll `status` until the job is finished and return its final status."""
    return wait_for(backend, ref, [state for state in JobState if state.finished], timeout=timeout)


def submit(backend: Backend, job: Job) -> JobRef:
    return JobRef(run_id=job.run_id, job_id=backend.submit(job), run_dir=job.run_dir)


def log_text(backend: Backend, ref: JobRef) -> str:
    return "".join(path.read_text(encoding="utf-8", errors="replace") for path in backend.logs(ref))


class BackendContract:
    """Behaviours every backend must show. Subclass it in a `test_*` module and provide the two fixtures."""

    finish_timeout_s: float = 30.0
    long_sleep_s: int = 60

    def test_success_exits_zero_and_output_reaches_the_logs(self, backend: Backend, make_job: MakeJob) -> None:
        ref = submit(backend, make_job("echo contract-says-hello"))
        status = wait_finished(backend, ref, self.finish_timeout_s)
        assert status.state is JobState.SUCCEEDED, status
        assert status.exit_code == 0
        assert "contract-says-hello" in log_text(backend, ref)

    def test_nonzero_exit_is_failed_with_that_exit_code(self, backend: Backend, make_job: MakeJob) -> None:
        ref = submit(backend, make_job("echo about to fail; exit 3"))
        status = wait_finished(backend, ref, self.finish_timeout_s)
        assert status.state is JobState.FAILED, status
        assert status.exit_code == 3

    def test_job_sees_its_run_id_output_paths_and_declared_env(self, backend: Backend, make_job: MakeJob) -> None:
        job = make_job(
            'echo "run=$GITOPSD_RUN_ID out=$GITOPSD_OUTPUT_DIR metrics=$GITOPSD_METRICS_FILE greet=$GREETING"',
            env={"GREETING": "hello world"},
        )
        ref = submit(backend, job)
        assert wait_finished(backend, ref, self.finish_timeout_s).state is JobState.SUCCEEDED
        expected = f"run={job.run_id} out={job.output_dir} metrics={job.metrics_file} greet=hello world"
        assert expected in log_text(backend, ref)

    def test_metrics_file_written_by_the_job_is_visible_afterwards(self, backend: Backend, make_job: MakeJob) -> None:
        job = make_job("""printf '{"loss": 0.25, "accuracy": 0.9}' > "$GITOPSD_METRICS_FILE" """)
        ref = submit(backend, job)
        assert wait_finished(backend, ref, self.finish_timeout_s).state is JobState.SUCCEEDED
        assert json.loads(job.metrics_file.read_text(encoding="utf-8")) == {"loss": 0.25, "accuracy": 0.9}

    def test_find_returns_the_job_id_of_a_submitted_run(self, backend: Backend, make_job: MakeJob) -> None:
        job = make_job("true")
        job_id = backend.submit(job)
        assert backend.find(job.run_id, job.run_dir) == job_id
        wait_finished(backend, JobRef(run_id=job.run_id, job_id=job_id, run_dir=job.run_dir), self.finish_timeout_s)
        assert backend.find(job.run_id, job.run_dir) == job_id

    def test_find_returns_none_for_a_run_never_submitted(self, backend: Backend, make_job: MakeJob) -> None:
        job = make_job("true")
        assert backend.find(job.run_id, job.run_dir) is None

    def test_status_answers_for_twenty_jobs_in_one_call(self, backend: Backend, make_job: MakeJob) -> None:
        jobs = [make_job(f"exit {index % 3}") for index in range(20)]
        refs = [submit(backend, job) for job in jobs]
        first = backend.status(refs)
        assert set(first) == {job.run_id for job in jobs}
        assert all(isinstance(status, JobStatus) for status in first.values())
        deadline = time.monotonic() + self.finish_timeout_s * 2
        statuses = first
        while not all(status.state.finished for status in statuses.values()):
            assert time.monotonic() < deadline, f"not all finished: {statuses}"
            time.sleep(0.1)
            statuses = backend.status(refs)
        for index, job in enumerate(jobs):
            status = statuses[job.run_id]
            assert status.exit_code == index % 3, (job.run_id, status)
            assert status.state is (JobState.SUCCEEDED if index % 3 == 0 else JobState.FAILED)

    def test_cancel_stops_a_running_job(self, backend: Backend, make_job: MakeJob) -> None:
        ref = submit(backend, make_job(f"sleep {self.long_sleep_s}"))
        wait_for(backend, ref, [JobState.RUNNING], timeout=self.finish_timeout_s)
        backend.cancel(ref)
        status = wait_finished(backend, ref, self.finish_timeout_s)
        assert status.state is JobState.CANCELLED, status

    def test_cancel_of_a_finished_job_changes_nothing(self, backend: Backend, make_job: MakeJob) -> None:
        ref = submit(backend, make_job("exit 0"))
        before = wait_finished(backend, ref, self.finish_timeout_s)
        backend.cancel(ref)
        after = backend.status([ref])[ref.run_id]
        assert after.state is JobState.SUCCEEDED
        assert after.exit_code == before.exit_code == 0

    def test_timeout_ends_the_job_as_timeout(self, backend: Backend, make_job: MakeJob) -> None:
        ref = submit(backend, make_job(f"sleep {self.long_sleep_s}", timeout_s=1))
        status = wait_finished(backend, ref, self.finish_timeout_s)
        assert status.state is JobState.TIMEOUT, status

    def test_describe_names_the_host_that_ran_the_job(self, backend: Backend, make_job: MakeJob) -> None:
        ref = submit(backend, make_job("true"))
        wait_finished(backend, ref, self.finish_timeout_s)
        host = backend.describe(ref)["host"]
        assert isinstance(host, str)
        assert host
