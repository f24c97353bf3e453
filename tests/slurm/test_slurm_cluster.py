"""What only a real cluster can show: batched status at scale, outside cancels, pending reasons, GPUs, a clean
environment, adoption after the submitter is SIGKILLed, and jobs that have left squeue.

Every test runs through both transports where both apply (the `transport` fixture).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from gitopsd_slurm.backend import SlurmBackend
from gitopsd_slurm.rest_transport import HttpResponse, urllib_http
from gitopsd_slurm.transport import CommandResult, SubprocessRunner

from gitopsd.model import JobState, Resources
from tests.backend_contract import log_text, new_job, submit, wait_finished, wait_for
from tests.slurm.conftest import Cluster, cancel_everything


@dataclass
class Counting:
    """Real commands and real HTTP, counted; `hide` removes job ids from the job listings (as MinJobAge would)."""

    slurm_conf: str
    hide: set[str] = field(default_factory=set)
    commands: list[tuple[str, ...]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def runner(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        self.commands.append(tuple(argv))
        result = SubprocessRunner(env={"SLURM_CONF": self.slurm_conf})(argv, timeout_s=timeout_s)
        if argv[0] == "squeue" and self.hide:
            doc = json.loads(result.stdout)
            doc["jobs"] = [job for job in doc["jobs"] if str(job["job_id"]) not in self.hide]
            result = replace(result, stdout=json.dumps(doc))
        return result

    def http(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeout_s: float
    ) -> HttpResponse:
        path = url.split("/v0.0.38", 1)[-1]
        self.requests.append((method, path))
        answer = urllib_http(method, url, headers=headers, body=body, timeout_s=timeout_s)
        if (method, path) == ("GET", "/jobs") and self.hide and answer.status == 200:
            doc = json.loads(answer.body)
            doc["jobs"] = [job for job in doc["jobs"] if str(job["job_id"]) not in self.hide]
            answer = replace(answer, body=json.dumps(doc).encode())
        return answer

    def count(self, name: str) -> int:
        return sum(1 for argv in self.commands if argv[0] == name)


@pytest.fixture
def counted(cluster: Cluster, transport: str, tmp_path: Path) -> Iterator[tuple[SlurmBackend, Counting]]:
    counting = Counting(slurm_conf=cluster.slurm_conf)
    backend = SlurmBackend(name="hpc", settings=cluster.settings(transport), state_dir=tmp_path / "state",
                           runner=counting.runner, http=counting.http)  # fmt: skip
    yield backend, counting
    cancel_everything(backend, tmp_path)


def test_two_hundred_runs_in_flight_cost_one_listing_per_status_pass(
    counted: tuple[SlurmBackend, Counting], cluster: Cluster, tmp_path: Path, transport: str
) -> None:
    backend, counting = counted
    refs = [submit(backend, new_job(tmp_path, "sleep 300")) for _ in range(200)]
    try:
        counting.commands.clear()
        counting.requests.clear()
        statuses = backend.status(refs)
        assert set(statuses) == {ref.run_id for ref in refs}
        assert {status.state for status in statuses.values()} <= {JobState.PENDING, JobState.RUNNING}
        if transport == "cli":
            assert [argv[:2] for argv in counting.commands] == [("squeue", "--json")]
        else:
            assert counting.requests == [("GET", "/jobs")]
            assert [argv[:2] for argv in counting.commands] in ([], [("scontrol", "token")])
        pending = [status.message for status in statuses.values() if status.state is JobState.PENDING]
        assert pending and all(message.startswith("pending") for message in pending), pending[:3]
        assert any(message.startswith(("pending (Priority", "pending (Resources")) for message in pending)
    finally:
        cluster.run("scancel", *[ref.job_id for ref in refs], check=False)


def test_an_outside_scancel_is_cancelled_with_the_reason(
    slurm_backend: SlurmBackend, cluster: Cluster, tmp_path: Path
) -> None:
    ref = submit(slurm_backend, new_job(tmp_path, "sleep 300"))
    wait_for(slurm_backend, ref, [JobState.RUNNING])
    cluster.run("scancel", ref.job_id)
    status = wait_finished(slurm_backend, ref)
    assert status.state is JobState.CANCELLED
    assert f"Slurm job {ref.job_id} CANCELLED" in status.message
    assert "cancelled outside gitopsd (by scancel or an administrator)" in status.message


def test_cancel_by_gitopsd_says_so(slurm_backend: SlurmBackend, tmp_path: Path) -> None:
    ref = submit(slurm_backend, new_job(tmp_path, "sleep 300"))
    slurm_backend.cancel(ref)
    status = wait_finished(slurm_backend, ref)
    assert (status.state, status.message.endswith("cancelled by gitopsd")) == (JobState.CANCELLED, True)


def test_a_job_waiting_for_resources_says_so(slurm_backend: SlurmBackend, tmp_path: Path, cluster: Cluster) -> None:
    whole_node = Resources(cpus=8)
    firsts = [submit(slurm_backend, replace(new_job(tmp_path, "sleep 300"), resources=whole_node))
              for _ in cluster.node_names]  # fmt: skip
    for first in firsts:  # every node is full
        wait_for(slurm_backend, first, [JobState.RUNNING])
    second = submit(slurm_backend, replace(new_job(tmp_path, "true"), resources=whole_node))
    deadline = time.monotonic() + 20
    status = wait_for(slurm_backend, second, [JobState.PENDING])
    while status.message == "pending in partition debug" and time.monotonic() < deadline:  # not yet looked at
        time.sleep(0.2)
        status = slurm_backend.status([second])[second.run_id]
    assert status.state is JobState.PENDING
    assert status.message in (
        "pending (Resources: waiting for CPUs, memory or GPUs to become free)",
        "pending (Priority: higher-priority jobs are ahead in the queue)",
    )
    for first in firsts:
        slurm_backend.cancel(first)
    assert wait_finished(slurm_backend, second).state is JobState.SUCCEEDED


def test_a_gpu_job_gets_its_gpu_and_lineage_names_it(
    slurm_backend: SlurmBackend, tmp_path: Path, cluster: Cluster
) -> None:
    job = replace(new_job(tmp_path, 'echo "gpus=$CUDA_VISIBLE_DEVICES"'), resources=Resources(gpus=1, cpus=2))
    ref = submit(slurm_backend, job)
    assert wait_finished(slurm_backend, ref).state is JobState.SUCCEEDED
    assert "gpus=0" in log_text(slurm_backend, ref)
    facts = slurm_backend.describe(ref)
    assert facts["gpus"] == "gres:gpu:1"
    assert (facts["job_id"], facts["cluster"], facts["partition"]) == (ref.job_id, "hpc", "debug")
    assert facts["nodes"] in cluster.node_names
    assert (facts["exit_code"], facts["state"], facts["transport"]) == (0, "COMPLETED", slurm_backend.transport.name)
    assert facts["host"] == cluster.hostname_on(facts["nodes"])
    assert facts["elapsed_s"] is not None and facts["elapsed_s"] >= 0


def test_the_daemons_environment_does_not_reach_the_job(
    slurm_backend: SlurmBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITOPSD_TEST_DAEMON_SECRET", "must-not-leak")
    monkeypatch.setenv("SLURMRESTD_TOKEN", "must-not-leak-either")
    monkeypatch.setenv("SLURM_JWT", "would-break-the-cli")
    dump = f"{sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    job = replace(new_job(tmp_path, f'{dump} > "$GITOPSD_OUTPUT_DIR/env.json"'), env={"DECLARED": "yes"})
    job = replace(job, resources=replace(job.resources, cpus=1), env={**job.env, "MKL_NUM_THREADS": "4"})
    ref = submit(slurm_backend, job)
    assert wait_finished(slurm_backend, ref).state is JobState.SUCCEEDED
    env = json.loads((job.output_dir / "env.json").read_text())
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("1", "4"), "resources.cpus, unless env says"
    assert "must-not-leak" not in json.dumps(env)
    assert "SLURM_JWT" not in env
    assert (env["DECLARED"], env["GITOPSD_RUN_ID"], env["PYTHONUNBUFFERED"]) == ("yes", job.run_id, "1")
    assert env["SLURM_JOB_ID"] == ref.job_id


ADOPT_SCRIPT = """
import json, os, signal, sys
from pathlib import Path
from gitopsd.model import Job
from gitopsd_slurm.backend import SlurmBackend
spec = json.loads(sys.argv[1])
paths = {k: Path(v) for k, v in spec["paths"].items()}
job = Job(run_id=spec["run_id"], model="demo", command="sleep 300", **paths)
backend = SlurmBackend(name="hpc", settings=spec["settings"], state_dir=Path(spec["state_dir"]))
real_submit = backend.transport.submit
def submit_then_die(request):
    job_id = real_submit(request)       # sbatch (or POST /job/submit) has returned ...
    print(job_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the daemon dies before anything records the job id
backend.transport.submit = submit_then_die
backend.submit(job)
"""


def test_a_job_whose_submitter_was_sigkilled_is_adopted_never_submitted_twice(
    cluster: Cluster, transport: str, tmp_path: Path
) -> None:
    settings = cluster.settings(transport)
    job = new_job(tmp_path, "sleep 300")
    fields = ("run_dir", "tree_dir", "workdir", "output_dir", "metrics_file", "log_dir")
    spec = {"run_id": job.run_id, "settings": settings, "state_dir": str(tmp_path / "state"),
            "paths": {name: str(getattr(job, name)) for name in fields}}  # fmt: skip
    child = subprocess.run([sys.executable, "-c", ADOPT_SCRIPT, json.dumps(spec)], capture_output=True, text=True,
                           check=False, timeout=60)  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    job_id = child.stdout.strip()
    assert not (job.run_dir / "slurm" / "submitted.json").exists(), "nothing recorded the job id"

    fresh = SlurmBackend(name="hpc", settings=settings, state_dir=tmp_path / "state")
    try:
        assert fresh.find(job.run_id, job.run_dir) == job_id
        assert fresh.submit(job) == job_id, "a retried submit adopts the job instead of starting another"
        assert [str(j["job_id"]) for j in cluster.jobs_named(f"gitopsd-{job.run_id}")] == [job_id]
    finally:
        cancel_everything(fresh, tmp_path)


def test_a_retried_submit_after_sbatch_died_unanswered_adopts_by_name(
    slurm_backend: SlurmBackend, cluster: Cluster, tmp_path: Path
) -> None:
    job = new_job(tmp_path, "sleep 300")
    first = slurm_backend.submit(job)
    (job.run_dir / "slurm" / "submitted.json").unlink()  # as if the daemon died right after sbatch answered
    assert slurm_backend.submit(job) == first
    assert len(cluster.jobs_named(f"gitopsd-{job.run_id}")) == 1


def test_finished_jobs_that_left_squeue_are_resolved_from_the_run_directory(
    counted: tuple[SlurmBackend, Counting], cluster: Cluster, tmp_path: Path
) -> None:
    backend, counting = counted
    fail = submit(backend, new_job(tmp_path, "exit 4"))
    succeed = submit(backend, new_job(tmp_path, "true"))
    for ref in (fail, succeed):  # wait without status(): no final.json is kept, only the job's own exit.json
        wait_for(SlurmBackend(name="peek", settings=cluster.settings("cli"), state_dir=tmp_path / "peek"),
                 ref, [JobState.FAILED, JobState.SUCCEEDED])  # fmt: skip
        (ref.run_dir / "slurm" / "final.json").unlink(missing_ok=True)
    counting.hide |= {fail.job_id, succeed.job_id}
    counting.commands.clear()
    statuses = backend.status([fail, succeed])
    assert (statuses[fail.run_id].state, statuses[fail.run_id].exit_code) == (JobState.FAILED, 4)
    assert statuses[succeed.run_id].state is JobState.SUCCEEDED
    assert "(from its exit record)" in statuses[fail.run_id].message
    assert counting.count("sacct") == 0, "the exit records answered; accounting was not needed"
    assert backend.describe(fail)["exit_code"] == 4


def test_an_outside_cancel_that_left_squeue_is_found_in_accounting_or_reported_lost(
    cluster: Cluster, tmp_path: Path
) -> None:
    counting = Counting(slurm_conf=cluster.slurm_conf)
    backend = SlurmBackend(name="hpc", settings=cluster.settings("cli"), state_dir=tmp_path, runner=counting.runner)
    ref = submit(backend, new_job(tmp_path, "sleep 300"))
    wait_for(backend, ref, [JobState.RUNNING])
    cluster.run("scancel", ref.job_id)
    peek = SlurmBackend(name="peek", settings=cluster.settings("cli"), state_dir=tmp_path / "peek")
    wait_for(peek, ref, [JobState.CANCELLED])
    cluster.wait_accounted(ref.job_id)  # where slurmdbd keeps accounting: as it is long before the job leaves squeue
    (ref.run_dir / "slurm" / "final.json").unlink(missing_ok=True)
    counting.hide.add(ref.job_id)
    status = backend.status([ref])[ref.run_id]
    assert status.state is JobState.CANCELLED, status  # from slurmdbd, else `sacct -c`: the job-completion log
    assert counting.count("sacct") >= 1
    (ref.run_dir / "slurm" / "final.json").unlink()  # what that pass remembered, forgotten again
    blind = SlurmBackend(name="hpc", settings=cluster.settings("cli", accounting="none"), state_dir=tmp_path,
                         runner=counting.runner)  # fmt: skip
    lost = blind.status([ref])[ref.run_id]
    assert lost.state is JobState.LOST
    assert f"Slurm job {ref.job_id} is no longer known to the controller" in lost.message


def test_admit_refuses_what_no_node_of_the_real_cluster_has(slurm_backend: SlurmBackend, cluster: Cluster) -> None:
    count = len(cluster.node_names)
    assert slurm_backend.admit(Resources(gpus=2, cpus=8)) is None
    assert slurm_backend.admit(Resources(gpus=2 * count, nodes=count)) is None
    assert slurm_backend.admit(Resources(gpus=8)) == "asks for 8 GPUs, the largest node of cluster hpc has 2"
    assert slurm_backend.admit(Resources(nodes=count + 1)) == f"asks for {count + 1} nodes, cluster hpc has {count}"


def test_check_passes_and_settings_reach_the_job(cluster: Cluster, transport: str, tmp_path: Path) -> None:
    backend = SlurmBackend(name="hpc", settings=cluster.settings(transport, partition="debug", time="5"),
                           state_dir=tmp_path)  # fmt: skip
    backend.check()
    ref = submit(backend, new_job(tmp_path, "true"))
    try:
        assert wait_finished(backend, ref).state is JobState.SUCCEEDED
        (job,) = cluster.jobs_named(f"gitopsd-{ref.run_id}")
        assert (job["partition"], job["time_limit"], job["comment"]) == ("debug", 5, f"gitopsd-run={ref.run_id}")
    finally:
        cancel_everything(backend, tmp_path)
