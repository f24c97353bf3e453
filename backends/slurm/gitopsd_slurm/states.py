"""What Slurm's words mean for gitopsd: job states, pending reasons, and errors that refuse a job.

Slurm has two dozen job states; the reconciler knows seven (`JobState`). The mapping is the backend's failure
policy: a user failure (FAILED with its real exit code, OUT_OF_MEMORY) stops, TIMEOUT and DEADLINE say which
limit to raise, infrastructure failures (NODE_FAIL, PREEMPTED, BOOT_FAIL) are LOST, which the planner counts as
a failed attempt and retries within the run's retry budget. A PENDING job carries Slurm's reason, explained,
so `gitopsd status` says why a training is not running yet.
"""

from __future__ import annotations

import signal as signals

from gitopsd.model import JobState, JobStatus
from gitopsd_slurm.records import SlurmJob

WAITING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"})
ACTIVE = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "SUSPENDED", "STOPPED"})
FINAL = {
    "COMPLETED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
    "NODE_FAIL": JobState.LOST,
    "PREEMPTED": JobState.LOST,
    "BOOT_FAIL": JobState.LOST,
}

PENDING_REASONS = {
    "Priority": "higher-priority jobs are ahead in the queue",
    "Resources": "waiting for CPUs, memory or GPUs to become free",
    "Dependency": "waiting for a job it depends on",
    "BeginTime": "its start time has not come yet",
    "JobHeldUser": "held by its user (scontrol release to start it)",
    "JobHeldAdmin": "held by an administrator",
    "ReqNodeNotAvail": "a node it needs is down, drained or reserved",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "PartitionNodeLimit": "it asks for more nodes than its partition allows",
    "PartitionTimeLimit": "its time limit is above the partition's limit",
    "NodeDown": "a node it needs is down",
    "Reservation": "waiting for its reservation",
    "Licenses": "waiting for licenses",
    "QOSMaxGRESPerUser": "the QOS caps how many GPUs one user may hold at once; it starts when yours finish",
    "QOSMaxJobsPerUserLimit": "the QOS caps how many jobs one user may run at once",
    "QOSMaxCpuPerUserLimit": "the QOS caps how many CPUs one user may hold at once",
    "QOSGrpGRES": "the QOS's GPUs are all in use",
    "AssocGrpGRES": "your account's GPU allowance is in use",
    "AssocMaxJobsLimit": "your account may run no more jobs at once",
    "AssocGrpCPULimit": "your account's CPU allowance is in use",
    "launch failed requeued held": "Slurm could not launch it and held it (scontrol release after fixing the cause)",
}

HINTS = {
    "TIMEOUT": "raise spec.train.timeout (or the backend's time setting)",
    "DEADLINE": "it could not finish before its deadline; raise the deadline or shorten the training",
    "OUT_OF_MEMORY": "raise spec.train.resources.memory",
    "NODE_FAIL": "a node failed: infrastructure, not the training; retried within spec.train.retries",
    "PREEMPTED": "preempted by a higher-priority job; retried within spec.train.retries",
    "BOOT_FAIL": "a node failed to boot; retried within spec.train.retries",
}

# Submission errors that the same request will always get: the job is refused, not the cluster down.
REFUSALS = (
    "Requested node configuration is not available",
    "Invalid partition name",
    "Invalid account",
    "Invalid qos",
    "Invalid generic resource",
    "Invalid feature specification",
    "Invalid node name",
    "Memory specification can not be satisfied",
    "Requested time limit is invalid",
    "Job violates accounting/QOS policy",
    "Node count specification invalid",
    "More processors requested than permitted",
    "Invalid job array specification",
    "User's group not permitted to use this partition",
    "Access/permission denied",
    "Batch job submission failed: Invalid",
)
# Words of a controller (or slurmrestd) that cannot be reached right now.
UNREACHABLE = (
    "Unable to contact slurm controller",
    "Connection refused",
    "Socket timed out",
    "Zero Bytes were transmitted",
    "Communication connection failure",
    "Slurm backup controller in standby mode",
    "Transport endpoint is not connected",
)


def is_refusal(message: str) -> bool:
    return any(words.lower() in message.lower() for words in REFUSALS)


def refusal_hint(message: str, *, user: str, account: str | None) -> str:
    """What Slurm's words leave out: "Invalid account" is also what a user without an association gets where the
    cluster enforces associations (AccountingStorageEnforce=associations), so say so and how to fix it."""
    if "invalid account" not in message.lower():
        return ""
    which = f"account {account}" if account else "an account"
    return (
        f"; user {user} needs a Slurm association with {which} (`sacctmgr show assoc user={user}` lists theirs; "
        f"a Slurm admin adds one: sacctmgr add user {user} account={account or 'ACCOUNT'})"
    )


def is_unreachable(message: str) -> bool:
    return any(words.lower() in message.lower() for words in UNREACHABLE)


def pending_message(job: SlurmJob) -> str:
    """Why a job waits, in Slurm's word and in plain words: "pending (Resources: waiting for ...)"."""
    reason = job.reason if job.reason and job.reason != "None" else ""
    if not reason:
        return f"pending in partition {job.partition}" if job.partition else "pending"
    meaning = PENDING_REASONS.get(reason) or job.description
    return f"pending ({reason}: {meaning})" if meaning else f"pending ({reason})"


def signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def job_status(job: SlurmJob, *, cancel_note: str = "") -> JobStatus:
    """The reconciler's view of one Slurm job. `cancel_note` says why gitopsd cancelled it, if it did."""
    where = f" on {job.nodes}" if job.nodes and job.nodes != "(null)" else ""
    if job.state in WAITING or not job.state:
        return JobStatus(state=JobState.PENDING, message=pending_message(job))
    if job.state in ACTIVE:
        word = "suspended" if job.state in ("SUSPENDED", "STOPPED") else "running"
        return JobStatus(state=JobState.RUNNING, message=f"{word}{where} (job {job.job_id})", started_at=job.start_time)
    state = FINAL.get(job.state)
    if state is None:  # a state this version does not know: never fail a run on a guess
        return JobStatus(state=JobState.PENDING, message=f"Slurm state {job.state} (not known to gitopsd yet)")
    exit_code = job.exit_code
    if job.signal and state in (JobState.FAILED, JobState.SUCCEEDED):
        exit_code = 128 + job.signal
        state = JobState.FAILED
    message = _final_message(job, state, where, cancel_note)
    if state is JobState.SUCCEEDED:
        exit_code = 0
    elif state is not JobState.FAILED:
        exit_code = None  # Slurm reports 0 or the killing signal here, not an exit of the training
    return JobStatus(
        state=state,
        exit_code=exit_code,
        message=message,
        started_at=job.start_time,
        ended_at=job.end_time,
    )


def _final_message(job: SlurmJob, state: JobState, where: str, cancel_note: str) -> str:
    label = f"Slurm job {job.job_id} {job.state}{where}"
    if state is JobState.SUCCEEDED:
        return label
    if state is JobState.CANCELLED:
        if cancel_note:
            return f"{label}: {cancel_note}"
        who = f"by uid {job.cancelled_by}" if job.cancelled_by else "by scancel or an administrator"
        return f"{label}: cancelled outside gitopsd ({who})"
    if job.state == "TIMEOUT":
        limit = f" of {job.time_limit_min} min" if job.time_limit_min else ""
        return f"Slurm job {job.job_id} hit its time limit{limit}{where}: {HINTS['TIMEOUT']}"
    if job.state in HINTS:
        return f"{label}: {HINTS[job.state]}"
    if job.signal:
        return f"{label}: killed by {signal_name(job.signal)}"
    return f"{label} with exit code {job.exit_code}" if job.exit_code is not None else label
