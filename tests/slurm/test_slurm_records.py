"""Parsing what a real Slurm 22.05 said (recorded by tests/slurm/recorded/record.py) and what it means.

Jobs of the recording: 18 completed, 19 `exit 3`, 20 a GPU job, 21 Slurm's own TIMEOUT (--time=1), 22 cancelled
with scancel, 23-25 running / pending on Resources / pending on Priority (then cancelled), 14 and 17 stopped by
the gitopsd wrapper's timeout (exit 124).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from gitopsd_slurm.records import (
    SlurmJob,
    decode_wait_status,
    gpu_count,
    job_from_json,
    jobs_from_json,
    jobs_from_sacct,
    json_errors,
    nodes_from_json,
)
from gitopsd_slurm.states import is_refusal, is_unreachable, job_status, refusal_hint

from gitopsd.model import JobState
from tests.slurm.conftest import recorded


def squeue(name: str = "squeue.json") -> dict[str, SlurmJob]:
    return {job.job_id: job for job in jobs_from_json(json.loads(recorded(name)), source="squeue")}


def test_squeue_and_rest_list_the_same_jobs_the_same_way() -> None:
    cli = squeue()
    rest = {job.job_id: job for job in jobs_from_json(json.loads(recorded("rest_jobs.json")), source="rest")}
    assert cli.keys() == rest.keys()
    assert [replace(job, source="") for job in cli.values()] == [replace(job, source="") for job in rest.values()]


def test_exit_codes_are_decoded_from_the_raw_wait_status() -> None:
    jobs = squeue()
    assert (jobs["19"].state, jobs["19"].exit_code, jobs["19"].signal) == ("FAILED", 3, None)
    assert jobs["14"].exit_code == 124
    assert (jobs["22"].exit_code, jobs["22"].signal) == (None, 15)
    assert decode_wait_status(768) == (3, None)
    assert decode_wait_status(9) == (None, 9)


def test_a_job_that_exits_3_is_failed_with_exit_code_3() -> None:
    status = job_status(squeue()["19"])
    assert (status.state, status.exit_code) == (JobState.FAILED, 3)
    assert status.message == "Slurm job 19 FAILED on localhost with exit code 3"
    assert status.started_at and status.ended_at and status.ended_at >= status.started_at


def test_completed_is_succeeded_with_exit_code_0() -> None:
    status = job_status(squeue()["18"])
    assert (status.state, status.exit_code) == (JobState.SUCCEEDED, 0)


def test_slurm_timeout_is_timeout_with_the_limit_and_a_hint() -> None:
    status = job_status(squeue()["21"])
    assert status.state is JobState.TIMEOUT
    assert status.message == (
        "Slurm job 21 hit its time limit of 1 min on localhost: "
        "raise spec.train.timeout (or the backend's time setting)"
    )


def test_an_outside_scancel_is_cancelled_and_says_so() -> None:
    status = job_status(squeue()["22"])
    assert status.state is JobState.CANCELLED
    assert "cancelled outside gitopsd (by scancel or an administrator)" in status.message
    assert "cancelled by gitopsd" in job_status(squeue()["22"], cancel_note="cancelled by gitopsd").message


def test_pending_jobs_carry_slurms_reason_in_plain_words() -> None:
    jobs = squeue("squeue_pending.json")
    resources, priority = job_status(jobs["24"]), job_status(jobs["25"])
    assert resources.state is priority.state is JobState.PENDING
    assert resources.message == "pending (Resources: waiting for CPUs, memory or GPUs to become free)"
    assert priority.message == "pending (Priority: higher-priority jobs are ahead in the queue)"
    running = job_status(jobs["23"])
    assert (running.state, running.message) == (JobState.RUNNING, "running on localhost (job 23)")
    qos = job_status(replace(jobs["24"], reason="QOSMaxGRESPerUser"))
    assert "QOSMaxGRESPerUser: the QOS caps how many GPUs one user may hold" in qos.message


@pytest.mark.parametrize(
    ("state", "expected", "words"),
    [
        ("OUT_OF_MEMORY", JobState.FAILED, "raise spec.train.resources.memory"),
        ("NODE_FAIL", JobState.LOST, "a node failed: infrastructure, not the training; retried within"),
        ("PREEMPTED", JobState.LOST, "preempted by a higher-priority job; retried within spec.train.retries"),
        ("BOOT_FAIL", JobState.LOST, "a node failed to boot"),
        ("DEADLINE", JobState.TIMEOUT, "could not finish before its deadline"),
        ("COMPLETING", JobState.RUNNING, "running on localhost"),
        ("REQUEUED", JobState.PENDING, "pending"),
        ("SUSPENDED", JobState.RUNNING, "suspended on localhost"),
        ("SOMETHING_NEW", JobState.PENDING, "Slurm state SOMETHING_NEW (not known to gitopsd yet)"),
    ],
)
def test_every_failure_class_maps_to_its_job_state_and_hint(state: str, expected: JobState, words: str) -> None:
    # States this single-node cluster cannot produce on demand: a recorded failed job, with the state replaced.
    status = job_status(replace(squeue()["19"], state=state, reason=""))
    assert status.state is expected
    assert words in status.message


def test_a_job_killed_by_a_signal_fails_with_128_plus_the_signal() -> None:
    status = job_status(replace(squeue()["19"], exit_code=None, signal=9))
    assert (status.state, status.exit_code) == (JobState.FAILED, 137)
    assert "killed by SIGKILL" in status.message


def test_gpus_and_comment_are_read() -> None:
    jobs = squeue()
    assert jobs["20"].gpus == "gres:gpu:1"
    assert (jobs["12"].name, jobs["12"].comment) == ("gitopsd-run-fc149857", "gitopsd-run=run-fc149857")


def test_newer_openapi_shapes_are_understood_too() -> None:
    # v0.0.39+ (Slurm 23.02+) wraps states in lists and numbers in objects; not recorded here, written by hand.
    job = job_from_json(
        {"job_id": 7, "job_state": ["FAILED"], "exit_code": {"status": ["EXITED"], "return_code": {"set": True,
         "number": 3}, "signal": {"id": {"set": False, "number": 0}}}, "start_time": {"set": True, "number": 100},
         "end_time": {"set": True, "number": 160}, "time_limit": {"set": True, "infinite": False, "number": 5}},
        source="rest",
    )  # fmt: skip
    assert (job.state, job.exit_code, job.signal, job.start_time, job.end_time) == ("FAILED", 3, None, 100.0, 160.0)
    assert job.time_limit_min == 5


def test_sacct_from_the_job_completion_file() -> None:
    jobs = {job.job_id: job for job in jobs_from_sacct(recorded("sacct_jobcomp.txt"))}
    assert set(jobs) == {"18", "19", "20", "21", "22"}
    assert (jobs["19"].state, jobs["19"].exit_code) == ("FAILED", 3)
    assert job_status(jobs["19"]).exit_code == 3
    assert job_status(jobs["21"]).state is JobState.TIMEOUT
    assert job_status(jobs["22"]).state is JobState.CANCELLED
    assert jobs["18"].start_time is not None and jobs["18"].nodes == "localhost"


def test_sacct_names_who_cancelled() -> None:
    text = "JobID|JobName|State|ExitCode\n31|gitopsd-x|CANCELLED by 1000|0:15\n31.batch|batch|CANCELLED|0:15\n"
    (job,) = jobs_from_sacct(text)
    assert (job.state, job.cancelled_by, job.signal) == ("CANCELLED", "1000", 15)
    assert "cancelled outside gitopsd (by uid 1000)" in job_status(job).message


def test_nodes_from_sinfo_and_rest() -> None:
    for name in ("sinfo.json", "rest_nodes.json"):
        (node,) = nodes_from_json(json.loads(recorded(name)))
        assert (node.name, node.cpus, node.memory_mb, node.gpus, node.partitions) == (
            "localhost",
            8,
            4096,
            2,
            ("debug",),
        )


@pytest.mark.parametrize(
    ("gres", "count"),
    [("gpu:2", 2), ("gpu:a100:4(S:0-1)", 4), ("gpu:a100:2,gpu:v100:1,shard:8", 3), ("", 0), ("(null)", 0)],
)
def test_gpu_counts_of_gres_strings(gres: str, count: int) -> None:
    assert gpu_count(gres) == count


def test_refusals_and_outages_are_told_apart_by_slurms_words() -> None:
    assert is_refusal(recorded("sbatch_refused.txt"))
    assert not is_unreachable(recorded("sbatch_refused.txt"))
    assert is_unreachable(recorded("sbatch_ctld_down.txt"))
    assert not is_refusal(recorded("sbatch_ctld_down.txt"))
    (refused,) = json_errors(json.loads(recorded("rest_submit_refused.json")))
    assert is_refusal(refused)
    (down,) = json_errors(json.loads(recorded("squeue_ctld_down.json")))
    assert down == "Unspecified error: Failed while looking for jobs"


def test_an_invalid_account_refusal_names_the_association_and_how_to_add_one() -> None:
    words = "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"
    assert is_refusal(words)
    assert refusal_hint(words, user="ana", account=None) == (
        "; user ana needs a Slurm association with an account (`sacctmgr show assoc user=ana` lists theirs; "
        "a Slurm admin adds one: sacctmgr add user ana account=ACCOUNT)"
    )
    assert "association with account ml " in refusal_hint(words.upper(), user="ana", account="ml")
    assert "sacctmgr add user ana account=ml)" in refusal_hint(words, user="ana", account="ml")
    assert refusal_hint(recorded("sbatch_refused.txt"), user="ana", account="ml") == ""  # other refusals: Slurm's
