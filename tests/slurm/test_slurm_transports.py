"""The backend over injected runners and HTTP fed with recorded outputs: calls counted, errors classified.

These run without a cluster. A status pass with 200 jobs in flight makes exactly one listing call; jobs that
left the listing are resolved from the run directory first and by ONE accounting call after that; an outage is
`BackendUnavailable`, a refusal is permanent; the REST token is renewed when it is about to expire.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gitopsd_slurm.backend import SlurmBackend
from gitopsd_slurm.cli_transport import parse_sbatch, sacct_argv
from gitopsd_slurm.rest_transport import HttpResponse, TokenSource, jwt_expiry, submit_body
from gitopsd_slurm.runfiles import RunFiles, write_json_atomic
from gitopsd_slurm.script import build_request
from gitopsd_slurm.settings import RestSettings, parse_settings
from gitopsd_slurm.transport import CommandResult

from gitopsd.errors import BackendUnavailable, PermanentError
from gitopsd.model import JobRef, JobState, Resources
from tests.backend_contract import new_job
from tests.slurm.conftest import recorded

Reply = CommandResult | Callable[[Sequence[str]], CommandResult]


@dataclass
class FakeRunner:
    """Answers commands by their name (argv[0], or "scontrol ping"), and remembers every call."""

    replies: dict[str, Reply] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def __call__(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        self.calls.append(tuple(argv))
        key = " ".join(argv[:2]) if argv[0] == "scontrol" else argv[0]
        reply = self.replies[key]
        return reply(argv) if callable(reply) else reply

    def count(self, name: str) -> int:
        return sum(1 for call in self.calls if call[0] == name)


def ok(stdout: str) -> CommandResult:
    return CommandResult(argv=(), returncode=0, stdout=stdout)


def fails(stderr: str, code: int = 1) -> CommandResult:
    return CommandResult(argv=(), returncode=code, stderr=stderr)


def listing_of(count: int, *, state: str = "RUNNING", first_id: int = 1000) -> str:
    """The recorded squeue document with `count` copies of its running job (23), numbered from `first_id`."""
    doc = json.loads(recorded("squeue_pending.json"))
    template = next(job for job in doc["jobs"] if job["job_id"] == 23)
    doc["jobs"] = [{**copy.deepcopy(template), "job_id": first_id + i, "job_state": state} for i in range(count)]
    return json.dumps(doc)


def backend(tmp_path: Path, runner: FakeRunner, **settings: Any) -> SlurmBackend:
    values = {"poll_min_s": 0, "poll_max_s": 0, **settings}
    return SlurmBackend(name="hpc", settings=values, state_dir=tmp_path, runner=runner)


def refs_for(tmp_path: Path, count: int, first_id: int = 1000) -> list[JobRef]:
    return [JobRef(run_id=f"r{i}", job_id=str(first_id + i), run_dir=tmp_path / f"r{i}") for i in range(count)]


def test_a_status_pass_over_200_jobs_makes_one_squeue_call(tmp_path: Path) -> None:
    runner = FakeRunner({"squeue": ok(listing_of(200))})
    refs = refs_for(tmp_path, 200)
    statuses = backend(tmp_path, runner).status(refs)
    assert runner.calls == [("squeue", "--json")]
    assert len(statuses) == 200
    assert {status.state for status in statuses.values()} == {JobState.RUNNING}


def test_listings_are_reused_for_an_adaptive_interval(tmp_path: Path) -> None:
    runner = FakeRunner({"squeue": ok(listing_of(3))})
    now = [0.0]
    slurm = SlurmBackend(name="hpc", settings={"poll_min_s": 1, "poll_max_s": 4}, state_dir=tmp_path, runner=runner,
                         clock=lambda: now[0])  # fmt: skip
    refs = refs_for(tmp_path, 3)

    def listings_at(*times: float) -> int:
        for at in times:
            now[0] = at
            slurm.status(refs)
        return runner.count("squeue")

    assert listings_at(0.0, 0.5, 0.9) == 1, "within poll_min_s the listing is reused"
    assert listings_at(1.0) == 2
    assert listings_at(2.0) == 2, "nothing changed: the interval grew to 1.5 s"
    assert listings_at(2.5, 4.75, 7.0, 10.5) == 5
    assert listings_at(14.0) == 5 and listings_at(14.5) == 6, "never longer than poll_max_s (4 s)"
    runner.replies["squeue"] = ok(listing_of(3, state="COMPLETED"))
    assert listings_at(18.5, 19.0) == 7 and listings_at(19.5) == 8, "a change brings it back to poll_min_s"


def test_a_submit_makes_the_next_status_list_again(tmp_path: Path) -> None:
    runner = FakeRunner({"squeue": ok(listing_of(1)), "sbatch": ok("1001\n")})
    slurm = SlurmBackend(name="hpc", settings={"poll_min_s": 60, "poll_max_s": 60}, state_dir=tmp_path,
                         runner=runner)  # fmt: skip
    slurm.status(refs_for(tmp_path, 1))
    job = new_job(tmp_path, "true")
    ref = JobRef(run_id=job.run_id, job_id=slurm.submit(job), run_dir=job.run_dir)
    runner.replies["squeue"] = ok(listing_of(2))
    assert slurm.status([ref])[ref.run_id].state is JobState.RUNNING
    assert runner.count("squeue") == 2


def test_jobs_gone_from_squeue_are_resolved_from_files_then_by_one_sacct_call(tmp_path: Path) -> None:
    sacct = recorded("sacct_jobcomp.txt")
    runner = FakeRunner({
        "squeue": ok(listing_of(1)),
        "sacct": lambda argv: ok(sacct) if "-c" in argv else fails(recorded("sacct_disabled.txt")),
    })  # fmt: skip
    _, by_exit_record, timed_out, failed, _, unknown = refs = [
        JobRef(run_id="running", job_id="1000", run_dir=tmp_path / "a"),
        JobRef(run_id="exited", job_id="501", run_dir=tmp_path / "b"),
        JobRef(run_id="slow", job_id="502", run_dir=tmp_path / "c"),
        JobRef(run_id="failed", job_id="19", run_dir=tmp_path / "d"),
        JobRef(run_id="cancelled", job_id="22", run_dir=tmp_path / "e"),
        JobRef(run_id="unknown", job_id="77", run_dir=tmp_path / "f"),
    ]
    write_json_atomic(RunFiles(run_dir=by_exit_record.run_dir).exit, {"job_id": "501", "exit_code": 5, "host": "n1"})
    write_json_atomic(RunFiles(run_dir=timed_out.run_dir).exit, {"job_id": "502", "exit_code": 124,
                                                                  "timed_out": True, "timeout_s": 60})  # fmt: skip
    statuses = backend(tmp_path, runner).status(refs)
    assert statuses["running"].state is JobState.RUNNING
    assert (statuses["exited"].state, statuses["exited"].exit_code) == (JobState.FAILED, 5)
    assert "on n1 with exit code 5 (from its exit record)" in statuses["exited"].message
    assert statuses["slow"].state is JobState.TIMEOUT and "timeout of 60 s" in statuses["slow"].message
    assert (statuses["failed"].state, statuses["failed"].exit_code) == (JobState.FAILED, 3)
    assert statuses["cancelled"].state is JobState.CANCELLED
    assert statuses["unknown"].state is JobState.LOST
    assert "no longer known to the controller and left no exit record" in statuses["unknown"].message
    sacct_calls = [call for call in runner.calls if call[0] == "sacct"]
    assert sacct_calls == [tuple(sacct_argv(["19", "22", "77"], jobcomp=False)),
                           tuple(sacct_argv(["19", "22", "77"], jobcomp=True))]  # fmt: skip
    slurm_again = backend(tmp_path, runner)
    slurm_again.status([failed, unknown])
    slurm_again.status([failed, unknown])
    later = [call for call in runner.calls if call[0] == "sacct"][2:]
    # job 19 was remembered from the first pass (final.json); a new backend probes the accounting mode once
    assert later == [tuple(sacct_argv(["77"], jobcomp=jobcomp)) for jobcomp in (False, True, True)]


def test_without_accounting_a_vanished_job_cancelled_by_gitopsd_is_cancelled(tmp_path: Path) -> None:
    runner = FakeRunner({"squeue": ok(listing_of(0)), "sacct": fails(recorded("sacct_disabled.txt"))})
    ref = JobRef(run_id="x", job_id="88", run_dir=tmp_path / "x")
    write_json_atomic(RunFiles(run_dir=ref.run_dir).cancel, {"job_id": "88", "by": "gitopsd"})
    slurm = backend(tmp_path, runner, accounting="none")
    assert slurm.status([ref])["x"].state is JobState.CANCELLED
    assert runner.count("sacct") == 0


def test_a_controller_that_is_down_makes_the_backend_unavailable(tmp_path: Path) -> None:
    runner = FakeRunner({"squeue": ok(recorded("squeue_ctld_down.json")),
                         "scontrol ping": fails(recorded("scontrol_ping_down.txt"))})  # fmt: skip
    slurm = backend(tmp_path, runner, check_interval_s=0)
    with pytest.raises(BackendUnavailable, match=r"backend 'hpc': squeue --json: Unspecified error: Failed while"):
        slurm.status(refs_for(tmp_path, 2))
    with pytest.raises(
        BackendUnavailable, match=r"does not answer `scontrol ping`: Slurmctld\(primary\) at vm is DOWN"
    ):
        slurm.check()
    runner.replies["sbatch"] = fails(recorded("sbatch_ctld_down.txt"))
    with pytest.raises(BackendUnavailable, match=r"Unable to contact slurm controller.*is slurmctld running"):
        slurm.submit(new_job(tmp_path, "true"))


def test_missing_client_tools_make_the_backend_unavailable(tmp_path: Path) -> None:
    runner = FakeRunner({"scontrol ping": fails("scontrol: not found", code=127)})
    with pytest.raises(BackendUnavailable, match="scontrol ping"):
        backend(tmp_path, runner, check_interval_s=0).check()


def test_a_refused_job_is_a_permanent_error_naming_run_and_script(tmp_path: Path) -> None:
    runner = FakeRunner({"sbatch": fails(recorded("sbatch_refused.txt"))})
    job = new_job(tmp_path, "true")
    with pytest.raises(PermanentError) as caught:
        backend(tmp_path, runner).submit(job)
    assert (
        f"Slurm refused the job of run {job.run_id}: sbatch: error: Batch job submission failed: Requested "
        f"node configuration is not available (script {RunFiles(run_dir=job.run_dir).script})" in str(caught.value)
    )


def test_check_pings_at_most_once_per_interval(tmp_path: Path) -> None:
    runner = FakeRunner({"scontrol ping": ok(recorded("scontrol_ping_up.txt"))})
    now = [0.0]
    slurm = SlurmBackend(name="hpc", settings={"check_interval_s": 30}, state_dir=tmp_path, runner=runner,
                         clock=lambda: now[0])  # fmt: skip
    for at in (0.0, 10.0, 29.0, 31.0):
        now[0] = at
        slurm.check()
    assert len(runner.calls) == 2


def test_find_adopts_the_job_carrying_the_run_id_and_records_it(tmp_path: Path) -> None:
    runner = FakeRunner({"squeue": ok(recorded("squeue.json")), "sacct": fails(recorded("sacct_disabled.txt"))})
    slurm = backend(tmp_path, runner)
    run_dir = tmp_path / "run-449eb666"
    assert slurm.find("run-449eb666", run_dir) == "13"
    assert slurm.find("run-nobody-submitted", tmp_path / "other") is None
    calls = len(runner.calls)
    assert slurm.find("run-449eb666", run_dir) == "13"
    assert len(runner.calls) == calls, "the second time, the run directory answers"


def test_admit_uses_the_nodes_once_and_the_limits_of_gitops_yaml(tmp_path: Path) -> None:
    runner = FakeRunner({"sinfo": ok(recorded("sinfo.json"))})
    slurm = backend(tmp_path, runner)
    assert slurm.admit(Resources(gpus=2, cpus=8, memory_mb=4096)) is None
    assert slurm.admit(Resources(gpus=3)) == "asks for 3 GPUs, the largest node of cluster hpc has 2"
    assert slurm.admit(Resources(cpus=16)) == "asks for 16 CPUs per node, the largest node of cluster hpc has 8"
    assert slurm.admit(Resources(memory_mb=8192)) == (
        "asks for 8192 MiB of memory, the largest node of cluster hpc has 4096 MiB"
    )
    assert slurm.admit(Resources(nodes=2)) == "asks for 2 nodes, cluster hpc has 1"
    assert runner.count("sinfo") == 1
    capped = backend(tmp_path, runner, limits={"max_gpus_per_node": 1}, partition="debug")
    assert capped.admit(Resources(gpus=2)) == "asks for 2 GPUs, the largest node of partition debug has 1"
    elsewhere = backend(tmp_path, runner, partition="gpu")
    assert elsewhere.admit(Resources()) == "partition gpu has no nodes (is the partition name right?)"


def test_sbatch_output_parsing() -> None:
    assert parse_sbatch("123\n") == "123"
    assert parse_sbatch("123;cluster-b\n") == "123"
    with pytest.raises(ValueError, match="not a job id"):
        parse_sbatch("Submitted batch job 123\n")


# -- REST ----------------------------------------------------------------------------------------------------


def token(exp: float) -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": exp, "sun": "root"}).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{claims}.sig"


@dataclass
class FakeHttp:
    """Answers by (method, path after the API version); records each request's token."""

    replies: dict[tuple[str, str], list[HttpResponse]]
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def __call__(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeout_s: float
    ) -> HttpResponse:
        path = url.split("/v0.0.38", 1)[1]
        self.seen.append((method, path, headers["X-SLURM-USER-TOKEN"]))
        answers = self.replies[(method, path)]
        return answers.pop(0) if len(answers) > 1 else answers[0]


def rest_backend(tmp_path: Path, http: FakeHttp, runner: FakeRunner | None = None, **rest: Any) -> SlurmBackend:
    settings = {"transport": "rest", "rest": {"url": "http://slurm:6820", "user": "ml", **rest}, "poll_min_s": 0}
    return SlurmBackend(name="hpc", settings=settings, state_dir=tmp_path, runner=runner or FakeRunner(), http=http)


def response(status: int, name: str) -> HttpResponse:
    return HttpResponse(status=status, body=recorded(name).encode())


def test_rest_status_pass_is_one_get_jobs(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(token(2e9))
    http = FakeHttp({("GET", "/jobs"): [HttpResponse(status=200, body=listing_of(200).encode())]})
    statuses = rest_backend(tmp_path, http, token_file=str(tmp_path / "token")).status(refs_for(tmp_path, 200))
    assert len(statuses) == 200
    assert [(method, path) for method, path, _ in http.seen] == [("GET", "/jobs")]


def test_rest_renews_a_rejected_scontrol_token_and_retries_once(tmp_path: Path) -> None:
    tokens = iter([token(2e9), token(2e9 + 1)])
    runner = FakeRunner({"scontrol token": lambda argv: ok(f"SLURM_JWT={next(tokens)}\n")})
    http = FakeHttp({("GET", "/jobs"): [response(500, "rest_jobs_bad_token.json"), response(200, "rest_jobs.json")]})
    slurm = rest_backend(tmp_path, http, runner)
    statuses = slurm.status([JobRef(run_id="a", job_id="19", run_dir=tmp_path / "a")])
    assert statuses["a"].exit_code == 3
    assert [seen[2] for seen in http.seen] == [token(2e9), token(2e9 + 1)]
    assert runner.calls[0] == ("scontrol", "token", "username=ml", "lifespan=3600")


def test_rest_reads_a_rotated_token_file_before_the_next_request(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("SLURM_JWT=" + token(1.0) + "\n")
    http = FakeHttp({("GET", "/jobs"): [response(200, "rest_jobs.json")]})
    slurm = rest_backend(tmp_path, http, token_file=str(token_file))
    slurm.status(refs_for(tmp_path, 1))
    token_file.write_text(token(2e9) + "  ")
    slurm.status(refs_for(tmp_path, 1))
    assert [seen[2] for seen in http.seen] == [token(1.0), token(2e9)]


def test_rest_says_both_possible_causes_of_its_http_500(tmp_path: Path) -> None:
    http = FakeHttp({("GET", "/jobs"): [response(500, "rest_jobs_ctld_down.json")]})
    slurm = rest_backend(tmp_path, http, token_env="GITOPSD_TEST_TOKEN")
    with pytest.raises(BackendUnavailable, match=r"setting rest\.token_env: GITOPSD_TEST_TOKEN is not set"):
        slurm.status(refs_for(tmp_path, 1))
    slurm.transport.tokens.environ = {"GITOPSD_TEST_TOKEN": token(2e9)}  # type: ignore[attr-defined]
    with pytest.raises(BackendUnavailable) as caught:
        slurm.status(refs_for(tmp_path, 1))
    assert (
        "HTTP 500: Unspecified error: Failed while looking for jobs (slurmrestd answers this when slurmctld is "
        "down, and also when the JWT for user 'ml' is expired or wrong)" in str(caught.value)
    )
    assert len(http.seen) == 1, "an unchanged token is not sent again"


def test_rest_unreachable_is_unavailable(tmp_path: Path) -> None:
    def refuse(method: str, url: str, **_: Any) -> HttpResponse:
        raise ConnectionRefusedError(111, "Connection refused")

    (tmp_path / "t").write_text(token(2e9))
    slurm = SlurmBackend(name="hpc", settings={"transport": "rest", "rest": {"url": "http://slurm:6820",
                         "token_file": str(tmp_path / "t")}}, state_dir=tmp_path, http=refuse)  # fmt: skip
    with pytest.raises(BackendUnavailable, match=r"slurmrestd at http://slurm:6820 cannot be reached"):
        slurm.status(refs_for(tmp_path, 1))


def test_rest_submit_refused_is_permanent_and_cancel_of_an_unknown_job_is_fine(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(token(2e9))
    http = FakeHttp({("POST", "/job/submit"): [response(500, "rest_submit_refused.json")],
                     ("DELETE", "/job/999999"): [response(500, "rest_cancel_unknown.json")]})  # fmt: skip
    slurm = rest_backend(tmp_path, http, token_file=str(tmp_path / "t"))
    with pytest.raises(PermanentError, match=r"Slurm refused the job of run .*Requested node configuration"):
        slurm.submit(new_job(tmp_path, "true"))
    slurm.cancel(JobRef(run_id="x", job_id="999999", run_dir=tmp_path / "x"))
    http.replies[("POST", "/job/submit")] = [response(200, "rest_submit_ok.json")]
    assert slurm.submit(new_job(tmp_path, "true")) == "26"


def test_rest_submit_body_carries_every_option_as_a_field(tmp_path: Path) -> None:
    job = new_job(tmp_path, "python train.py")
    job = type(job)(**{**job.__dict__, "resources": Resources(cpus=2, memory_mb=512, gpus=1, nodes=1),
                       "timeout_s": 120})  # fmt: skip
    settings = parse_settings("hpc", {"partition": "gpu", "account": "ml", "qos": "q", "constraint": "a100",
                                      "exclusive": True})  # fmt: skip
    body = submit_body(build_request(job, settings, {"PATH": "/bin"}))
    assert body["job"] == {
        "name": f"gitopsd-{job.run_id}", "comment": f"gitopsd-run={job.run_id}",
        "current_working_directory": str(job.workdir), "standard_output": f"{job.log_dir}/slurm-%j.out",
        "environment": body["job"]["environment"], "nodes": [1, 1], "tasks": 1, "cpus_per_task": 2,
        "requeue": False, "partition": "gpu", "account": "ml", "qos": "q", "constraints": "a100", "time_limit": 4,
        "memory_per_node": 512, "gpus": "1", "exclusive": "exclusive",
    }  # fmt: skip
    assert body["script"].startswith("#!/bin/bash\n")


def test_scontrol_tokens_are_renewed_before_they_expire() -> None:
    now = [1000.0]
    runner = FakeRunner({"scontrol token": lambda argv: ok(f"SLURM_JWT={token(now[0] + 3600)}\n")})
    source = TokenSource(backend="hpc", rest=RestSettings(url="http://x", user="ml", token_lifespan_s=3600),
                         runner=runner, timeout_s=5, clock=lambda: now[0])  # fmt: skip
    first = source.get()
    assert runner.calls == [("scontrol", "token", "username=ml", "lifespan=3600")]
    now[0] += 2000
    assert source.get() == first and len(runner.calls) == 1
    now[0] += 1000  # 600 s left, less than a fifth of the lifespan
    assert source.get() != first and len(runner.calls) == 2
    assert jwt_expiry(source.get()) == now[0] + 3600
