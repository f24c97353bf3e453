"""Checkpointed, chained trainings: one run, several Slurm jobs (segments), resumed from a checkpoint.

A model with `spec.train.checkpoint` is submitted as segment 1, a job that Slurm signals (`--signal=B:SIG@before`)
before its time limit; the wrapper records that the signal came (`signalled.json`) and passes it on to the
training, which saves into `$GITOPSD_CHECKPOINT_DIR` (`RUN_DIR/checkpoint`, the same for every segment) and
exits. A segment that ended after its signal, whatever its exit code, or killed at its time limit after it, or
preempted, is followed by the next segment, which resumes from that checkpoint; a segment that ended without the
signal is the run's outcome, as for any job. The reconciler sees one run and one job id (the first segment's):
this backend maps the run to its current segment through `RUN_DIR/slurm/segments.json`, and `describe` lists
every segment (job, nodes, starts, times) in the version's lineage. A job requeued by Slurm (`scontrol requeue`,
preemption in requeue mode) restarts with the same id: it stays one segment, with one `start.JOB.N.json` record
per start written by its wrapper.

Crash safety (gitopsd may die at any instant, and never submits a segment twice):

1. When segment N is seen ended with its signal, the backend writes `segments.json` with N's outcome and an
   entry for N+1 without a job id (the intent), atomically, before anything else.
2. It then looks for a job of N+1 already in Slurm: a job of this run (name `gitopsd-RUN`, comment
   `gitopsd-run=RUN gitopsd-segment=N+1`) in the job listing, else in accounting by name, else a start record its
   wrapper wrote, always one not yet in the book and newer than N's job. Found: adopted.
3. Only if none is found it submits N+1, whose comment carries the run id and segment number.
4. It records N+1's job id in `segments.json`.

A crash between 1 and 4 leaves the intent; the next status call goes through 2 again, so the job submitted
before the crash is adopted, never submitted twice. The request each segment is submitted with is the first
segment's, never read back from the run directory (which the training writes) but kept beside it: in
`RUNS_DIR/.gitopsd/requests/RUN.json` on the shared run root when the backend has one, so that a standby daemon
on another login node that takes the run over chains it too, else in `STATE_DIR/slurm/requests/RUN.json`. (A
Slurm training runs as the daemon's user and could rewrite the shared copy; it gains nothing by it that it does
not already have: it can submit jobs as that user itself.) Only the comment differs.

This module is the pure part: the book's records, reading them as hostile input, and the decision on a
segment that ended. `gitopsd_slurm.backend` does the I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gitopsd.model import Checkpoint, JobState, JobStatus
from gitopsd_slurm.records import SlurmJob
from gitopsd_slurm.script import JobRequest, SubmitOptions, run_id_of, segment_of

MAX_RECORDED = 1000
"""Most segments a book may hold (the spec allows at most this many)."""


@dataclass(frozen=True, kw_only=True)
class Segment:
    """One job of a chained run. `job_id` None: decided, not yet known to be submitted (see step 1 above)."""

    segment: int
    job_id: str | None
    submitted_at: float | None = None
    outcome: Mapping[str, Any] | None = None
    """What the job ended as, kept once it has: state, exit code, signalled, host, nodes, times."""


@dataclass(frozen=True, kw_only=True)
class Book:
    run_id: str
    segments: tuple[Segment, ...]

    @property
    def current(self) -> Segment:
        return self.segments[-1]

    def job_ids(self) -> set[str]:
        return {s.job_id for s in self.segments if s.job_id}

    def with_current(self, segment: Segment) -> Book:
        return Book(run_id=self.run_id, segments=(*self.segments[:-1], segment))

    def record(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "segments": [asdict(s) for s in self.segments]}


def first_book(run_id: str, job_id: str, submitted_at: float | None = None) -> Book:
    return Book(run_id=run_id, segments=(Segment(segment=1, job_id=job_id, submitted_at=submitted_at),))


def read_book(data: Mapping[str, Any] | None, run_id: str, first_job_id: str) -> Book:
    """The book in `segments.json`, checked like hostile input; one segment (the reconciler's job) when it is
    missing, not about this run and job, or not well-formed."""
    fallback = first_book(run_id, first_job_id)
    if data is None or data.get("run_id") != run_id or not isinstance(data.get("segments"), list):
        return fallback
    rows = data["segments"]
    if not 0 < len(rows) <= MAX_RECORDED:
        return fallback
    segments: list[Segment] = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or row.get("segment") != number:
            return fallback
        job_id, at, outcome = row.get("job_id"), row.get("submitted_at"), row.get("outcome")
        if job_id is not None and not (isinstance(job_id, str) and job_id.isdigit() and len(job_id) <= 20):
            return fallback
        if (job_id is None and number != len(rows)) or (outcome is not None and not isinstance(outcome, dict)):
            return fallback
        submitted = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None
        segments.append(Segment(segment=number, job_id=job_id, submitted_at=submitted, outcome=outcome))
    if segments[0].job_id != first_job_id:
        return fallback
    return Book(run_id=run_id, segments=tuple(segments))


class Next(enum.Enum):
    RUNNING = "running"
    CONTINUE = "continue"
    EXHAUSTED = "exhausted"
    DONE = "done"


#: Ends after the signal that mean "checkpointed, go on": the training's own exit (any code), the time limit,
#: preemption or a node failure. A cancel (by gitopsd or a person) is never continued.
_GO_ON = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.TIMEOUT, JobState.LOST})


def decide(status: JobStatus, *, signalled: bool, segment: int, max_segments: int) -> Next:
    """What follows a segment: still running; the next segment; out of segments; or the run's outcome."""
    if not status.state.finished:
        return Next.RUNNING
    if not signalled or status.state not in _GO_ON:
        return Next.DONE
    return Next.CONTINUE if segment < max_segments else Next.EXHAUSTED


def exhausted_status(status: JobStatus, *, segment: int, max_segments: int) -> JobStatus:
    message = (
        f"the training was not finished after {segment} of at most {max_segments} segments (each ended by its "
        "checkpoint signal): raise spec.train.checkpoint.max_segments, or the time limit of each segment "
        "(spec.train.timeout)"
    )
    return JobStatus(state=JobState.TIMEOUT, message=message, started_at=status.started_at, ended_at=status.ended_at)


def segment_note(segment: int, max_segments: int, restarts: int = 0) -> str:
    again = f", restarted {restarts} time{'s' if restarts != 1 else ''} by Slurm" if restarts else ""
    return f"segment {segment} of at most {max_segments}{again}"


def with_note(status: JobStatus, note: str, started_at: float | None = None) -> JobStatus:
    """`status` with the segment named first in its message (what `gitopsd status` shows) and the run's start."""
    message = f"{note}: {status.message}" if status.message else note
    return JobStatus(state=status.state, exit_code=status.exit_code, message=message,
                     started_at=started_at or status.started_at, ended_at=status.ended_at)  # fmt: skip


def adoptable(jobs: Sequence[SlurmJob], book: Book, segment: int) -> str | None:
    """The job of segment `segment` among `jobs` (a listing, or accounting by name), if it was submitted: a job
    of this run that the book does not hold yet, newer than the book's last job, and not marked as another
    segment."""
    known = book.job_ids()
    last = max((int(j) for j in known), default=0)
    found = [
        job
        for job in jobs
        if run_id_of(job.name, job.comment) == book.run_id
        and job.job_id.isdigit()
        and job.job_id not in known
        and int(job.job_id) > last
        and (not job.comment or segment_of(job.comment) == segment)
    ]
    return min(found, key=lambda job: int(job.job_id)).job_id if found else None


@dataclass(frozen=True, kw_only=True)
class Kept:
    """The first segment's request and the run's checkpoint settings, as this backend keeps them."""

    request: JobRequest
    checkpoint: Checkpoint
    extra: Mapping[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        r = self.request
        return {"run_id": r.run_id, "options": asdict(r.options), "script": r.script, "script_path": r.script_path,
                "environment": dict(r.environment), "checkpoint": asdict(self.checkpoint)}  # fmt: skip


def read_kept(data: Mapping[str, Any] | None, run_id: str) -> Kept | None:
    """The kept request of `run_id`, or None when there is none (or it is not one this backend wrote)."""
    if data is None or data.get("run_id") != run_id:
        return None
    try:
        request = JobRequest(
            run_id=run_id,
            options=SubmitOptions(**data["options"]),
            script=str(data["script"]),
            script_path=str(data["script_path"]),
            environment={str(k): str(v) for k, v in dict(data["environment"]).items()},
        )
        checkpoint = Checkpoint(**data["checkpoint"])
    except (KeyError, TypeError, ValueError):
        return None
    return Kept(request=request, checkpoint=checkpoint)
