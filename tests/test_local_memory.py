"""`resources.memory` on the local backend: real trainings that allocate real memory, watched by a real supervisor.

The limit is what a user relies on to keep one runaway training from taking the login node down with it: a
training over its limit is stopped and Failed with a reason that names the use, the limit and the remedy; one
under it runs to the end and its peak is recorded; forked workers sharing pages count them once (PSS); a
process that detaches is still counted; and a request the host can never meet is refused before it starts.
"""

from __future__ import annotations

import os
import shlex
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gitopsd.backends.local.backend import LocalBackend
from gitopsd.backends.local.memory import MIB, TreeMemory, descendants, host_memory_mb, over_limit_message
from gitopsd.model import Job, JobRef, JobState, Resources
from gitopsd.units import format_size
from tests.backend_contract import cancel_everything, log_text, new_job, submit, wait_finished

PY = shlex.quote(sys.executable)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    settings = {"max_parallel": 4, "grace_s": 1.0, "memory_poll_s": 0.1}
    local = LocalBackend(name="local", settings=settings, state_dir=tmp_path / "state")
    yield local
    cancel_everything(local, tmp_path)


def python_job(root: Path, script: str, *, memory_mb: int | None) -> Job:
    """A job that runs `script` with the test's Python; `script` may touch `$GITOPSD_OUTPUT_DIR`."""
    job = new_job(root, "", resources=Resources(memory_mb=memory_mb))
    (job.tree_dir / "train.py").write_text(textwrap.dedent(script))
    return replace(job, command=f"{PY} train.py")


ALLOCATE = """
    import os, sys, time
    held = bytearray(b"x") * ({mib} * 1024 * 1024)  # written, so resident, not just reserved
    open(os.path.join(os.environ["GITOPSD_OUTPUT_DIR"], "allocated"), "w").close()
    time.sleep({sleep})
"""


def test_a_training_over_its_memory_limit_is_stopped_and_failed_with_the_remedy(
    backend: LocalBackend, tmp_path: Path
) -> None:
    job = python_job(tmp_path, ALLOCATE.format(mib=300, sleep=60), memory_mb=128)
    ref = submit(backend, job)
    status = wait_finished(backend, ref, timeout=30)
    assert status.state is JobState.FAILED
    assert "out of memory" in status.message
    assert "over its limit of 128 MiB" in status.message
    assert "raise spec.train.resources.memory" in status.message
    facts = backend.describe(ref)
    assert facts["out_of_memory"] is True
    assert facts["peak_memory_mb"] > 128
    assert "out of memory" in log_text(backend, ref)


def test_a_short_training_that_allocates_at_once_is_still_stopped(tmp_path: Path) -> None:
    # With the default poll of one second, the first samples come 50 ms apart and double: a training that
    # allocates at start and lives half a second is seen over its limit.
    default_poll = LocalBackend(name="local", settings={"grace_s": 1.0}, state_dir=tmp_path / "state")
    job = python_job(tmp_path, ALLOCATE.format(mib=300, sleep=0.5), memory_mb=128)
    status = wait_finished(default_poll, submit(default_poll, job), timeout=30)
    assert status.state is JobState.FAILED
    assert "out of memory" in status.message


def test_a_training_under_its_limit_succeeds_and_its_peak_is_recorded(backend: LocalBackend, tmp_path: Path) -> None:
    job = python_job(tmp_path, ALLOCATE.format(mib=100, sleep=1), memory_mb=512)
    status = wait_finished(backend, submit(backend, job), timeout=30)
    assert status.state is JobState.SUCCEEDED, status.message
    facts = backend.describe(JobRef(run_id=job.run_id, job_id="", run_dir=job.run_dir))
    assert facts["out_of_memory"] is False
    assert 100 <= facts["peak_memory_mb"] < 512


def test_catching_sigterm_and_exiting_zero_does_not_turn_an_out_of_memory_into_success(
    backend: LocalBackend, tmp_path: Path
) -> None:
    script = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        held = bytearray(b"x") * (300 * 1024 * 1024)
        time.sleep(60)
    """
    status = wait_finished(backend, submit(backend, python_job(tmp_path, script, memory_mb=128)), timeout=30)
    assert status.state is JobState.FAILED
    assert "out of memory" in status.message


def test_pages_shared_with_forked_workers_count_once(backend: LocalBackend, tmp_path: Path) -> None:
    # 150 MiB written before forking three workers: four processes with 150 MiB resident each (600 MiB of
    # RSS), but one copy in memory. Under a 400 MiB limit this must run to the end.
    script = """
        import os, time
        held = bytearray(b"x") * (150 * 1024 * 1024)
        workers = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                time.sleep(2)
                os._exit(0)
            workers.append(pid)
        for pid in workers:
            os.waitpid(pid, 0)
    """
    status = wait_finished(backend, submit(backend, python_job(tmp_path, script, memory_mb=400)), timeout=30)
    assert status.state is JobState.SUCCEEDED, status.message


def test_a_process_that_detaches_from_the_training_is_still_counted(backend: LocalBackend, tmp_path: Path) -> None:
    # A double fork with setsid leaves the process group and its parent; the supervisor, a child subreaper,
    # still finds it in its tree.
    script = """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                held = bytearray(b"x") * (300 * 1024 * 1024)
                time.sleep(30)
            os._exit(0)
        time.sleep(30)
    """
    status = wait_finished(backend, submit(backend, python_job(tmp_path, script, memory_mb=128)), timeout=30)
    assert status.state is JobState.FAILED
    assert "out of memory" in status.message


def test_a_short_training_without_a_limit_still_has_its_peak_recorded(backend: LocalBackend, tmp_path: Path) -> None:
    # Too short for any sample, and no limit to sample for: the peak comes from the kernel's accounting of
    # the command's processes (wait4), grandchildren included.
    job = python_job(tmp_path, ALLOCATE.format(mib=80, sleep=0), memory_mb=None)
    job = replace(job, command=f"/bin/sh -c {shlex.quote(job.command)}")
    assert wait_finished(backend, submit(backend, job)).state is JobState.SUCCEEDED
    facts = backend.describe(JobRef(run_id=job.run_id, job_id="", run_dir=job.run_dir))
    assert 80 <= facts["peak_memory_mb"] < 200
    assert facts["out_of_memory"] is False


def test_more_memory_than_the_host_has_is_refused_at_plan_time(backend: LocalBackend) -> None:
    total = host_memory_mb()
    assert total is not None
    reason = backend.admit(Resources(memory_mb=total + 1024))
    assert reason is not None
    assert "host memory" in reason
    assert format_size(total * MIB) in reason
    assert backend.admit(Resources(memory_mb=min(1024, total))) is None
    assert backend.admit(Resources()) is None


def test_a_bad_memory_poll_setting_is_refused_with_its_name(tmp_path: Path) -> None:
    from gitopsd.errors import PermanentError

    with pytest.raises(PermanentError, match="memory_poll_s"):
        LocalBackend(name="local", settings={"memory_poll_s": 0}, state_dir=tmp_path)


def test_the_tree_of_this_process_holds_its_children() -> None:
    import subprocess

    with subprocess.Popen(["sleep", "5"]) as child:
        try:
            assert child.pid in descendants(os.getpid())
        finally:
            child.kill()


@pytest.mark.parametrize(
    ("used_bytes", "processes", "expected"),
    [
        (300 * MIB, 1, "used 300 MiB of host memory (PSS of 1 process), over its limit of 128 MiB"),
        (int(2.5 * 1024 * MIB), 4, "used 2.5 GiB of host memory (PSS of 4 processes), over its limit of 128 MiB"),
    ],
)
def test_the_out_of_memory_reason_names_use_limit_and_remedy(used_bytes: int, processes: int, expected: str) -> None:
    message = over_limit_message(TreeMemory(bytes=used_bytes, processes=processes, measure="PSS"), 128)
    assert expected in message
    assert message.endswith("(raise spec.train.resources.memory)")
