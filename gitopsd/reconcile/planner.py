"""The planner: what must be done to move actual state towards desired state. Pure.

`plan(desired, actual)` looks at what Git wants (one `Want` per model) and what is (runs in flight with their
observed job status, which run keys already have versions, how many attempts failed) and returns an ordered list
of actions. No I/O, no clock (the time is one of the inputs), deterministic order; the reconciler applies the
actions. Applying a plan and planning again yields nothing: every action changes exactly the facts that made the
planner ask for it.

A failed attempt is retried (within `retries`) only after its backoff, `retry_delay(attempt)` seconds after it
ended, with jitter drawn from the run key and attempt so that a plan stays deterministic; until then the plan
holds a `Wait` saying when. An attempt that failed for a permanent reason (its submission was refused: data the
daemon cannot read, a backend that refuses the job; a job whose backend says its environment cannot be set up,
such as a module that does not exist) is not retried for the same spec at all.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from gitopsd.errors import retry_delay
from gitopsd.model import JobState, JobStatus, Phase, Reason

Target = tuple[str, str, str]
"""(model, run key, spec digest): what failed attempts are counted against."""


@dataclass(frozen=True, kw_only=True)
class Want:
    """What the applied commit asks of one model."""

    model: str
    run_key: str
    spec_digest: str
    backend: str
    retries: int = 0
    suspend: bool = False
    blocked: str = ""
    """Why nothing may be submitted for this model now (its base has no version, its backend refuses its
    resources); empty if nothing blocks it."""
    blocked_reason: Reason = Reason.BASE_UNAVAILABLE


@dataclass(frozen=True, kw_only=True)
class RunView:
    """A run that is not finished yet, with what this pass observed of it."""

    id: str
    model: str
    run_key: str
    spec_digest: str
    backend: str
    phase: Phase
    attempt: int
    job_id: str | None = None
    job: JobStatus | None = None
    found_job_id: str | None = None
    stop_reason: str = ""
    verdict: tuple[Reason, str] | None = None


@dataclass(frozen=True, kw_only=True)
class Failure:
    """The latest failed attempt of a (model, run key, spec digest)."""

    ended_at: float
    reason: str = ""

    @property
    def permanent(self) -> bool:
        """Whether retrying the same spec cannot help: its submission was refused for good."""
        return self.reason in (Reason.SUBMIT_FAILED, Reason.ENVIRONMENT_FAILED)


@dataclass(frozen=True, kw_only=True)
class Actual:
    runs: Mapping[str, RunView]
    registered: Mapping[str, Set[str]]
    failed_attempts: Mapping[Target, int]
    unavailable: Mapping[str, str]
    now: float | None = None
    """The time of this pass (seconds since the epoch), against which backoffs are measured; None: no clock, so
    no backoff (a failed attempt is retried at once)."""
    last_failures: Mapping[Target, Failure] = field(default_factory=dict)
    """When, and why, the latest failed attempt of each target ended (missing: no backoff is known)."""


def retry_at(run_key: str, attempt: int, ended_at: float) -> float:
    """When the attempt after failed attempt `attempt` (1 for the first) of `run_key` may start. Pure: the
    jitter is drawn from the run key and the attempt, so every pass (and `status`) computes the same time."""
    return ended_at + retry_delay(attempt, rand=random.Random(f"{run_key}:{attempt}"))


@dataclass(frozen=True, kw_only=True)
class Action:
    """Base of every action; `model` orders the plan."""

    model: str


@dataclass(frozen=True, kw_only=True)
class Submit(Action):
    run_key: str
    spec_digest: str
    attempt: int


@dataclass(frozen=True, kw_only=True)
class Adopt(Action):
    """A run left in Submitting by a crash whose job the backend knows: record its job id."""

    run_id: str
    job_id: str


@dataclass(frozen=True, kw_only=True)
class Resubmit(Action):
    """A run left in Submitting whose job never reached the backend: submit it now, same run id."""

    run_id: str


@dataclass(frozen=True, kw_only=True)
class SetPhase(Action):
    """A run's job moved on (queued -> running). `started_at`: when its backend says it started running."""

    run_id: str
    phase: Phase
    started_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class Cancel(Action):
    """Stop a run's job. A plateau stop is not a failure: the run is collected once the job is gone."""

    run_id: str
    reason: Reason
    message: str


@dataclass(frozen=True, kw_only=True)
class Collect(Action):
    """The job ended well: validate its final metrics and register its artifact."""

    run_id: str


@dataclass(frozen=True, kw_only=True)
class Fail(Action):
    run_id: str
    reason: Reason
    message: str
    exit_code: int | None = None


@dataclass(frozen=True, kw_only=True)
class Wait(Action):
    """Nothing to do yet: attempt `failed` of the wanted spec failed, and attempt `failed + 1` may not start
    before `retry_at` (its backoff). Applying it changes nothing; it keeps the pass from settling."""

    failed: int
    retry_at: float


_FAILURE_REASONS = {
    JobState.FAILED: Reason.TRAINING_FAILED,
    JobState.TIMEOUT: Reason.TIMED_OUT,
    JobState.LOST: Reason.TRAINING_FAILED,
    JobState.CANCELLED: Reason.CANCELLED,
}
_ORDER = {Adopt: 0, Resubmit: 1, SetPhase: 2, Cancel: 3, Fail: 4, Collect: 5, Submit: 6, Wait: 7}


def plan(desired: Mapping[str, Want], actual: Actual) -> list[Action]:
    """Every action needed now, ordered by model, then by kind, then by run id."""
    actions: list[Action] = []
    live: dict[str, list[RunView]] = {}
    failed_now: dict[Target, int] = {}
    for_good: set[Target] = set()  # failing in this plan for a reason no retry mends (job.permanent)
    for run in actual.runs.values():
        run_actions, outcome = _plan_run(run, desired.get(run.model), actual)
        actions.extend(run_actions)
        if outcome == "alive":
            live.setdefault(run.model, []).append(run)
        elif outcome == "failed":
            target = (run.model, run.run_key, run.spec_digest)
            failed_now[target] = failed_now.get(target, 0) + 1
            if run.job is not None and run.job.permanent and run.job.state is JobState.FAILED:
                for_good.add(target)
    for name, want in desired.items():
        actions.extend(_plan_model(want, actual, live.get(name, []), failed_now, for_good))
    return sorted(actions, key=lambda a: (a.model, _ORDER[type(a)], getattr(a, "run_id", "")))


def _superseded(run: RunView, want: Want | None) -> str | None:
    if want is None:
        return "model was removed from Git"
    if run.run_key != want.run_key:
        return "spec changed: a newer run key supersedes this run"
    return None


def _plan_run(run: RunView, want: Want | None, actual: Actual) -> tuple[list[Action], str]:
    """Actions for one unfinished run, and what becomes of it: "alive", "failed" or "ended".

    A run being collected stays "alive": until its version exists, it stands for its run key.
    """
    if run.phase is Phase.SUBMITTING:
        if run.found_job_id is not None:
            adopt = Adopt(model=run.model, run_id=run.id, job_id=run.found_job_id)
            why = _superseded(run, want)
            if why:
                return [adopt, Cancel(model=run.model, run_id=run.id, reason=Reason.CANCELLED, message=why)], "ended"
            return [adopt], "alive"
        if run.backend in actual.unavailable or run.job_id is not None:
            return [], "alive"
        why = _superseded(run, want)
        if why:
            return [
                Cancel(model=run.model, run_id=run.id, reason=Reason.CANCELLED, message=f"never submitted: {why}")
            ], "ended"
        return [Resubmit(model=run.model, run_id=run.id)], "alive"
    if run.phase is Phase.VALIDATING:
        return [Collect(model=run.model, run_id=run.id)], "alive"
    job = run.job
    if job is None:
        return [], "alive"
    if job.state.finished:
        action = _finish(run, job)
        return [action], "failed" if isinstance(action, Fail) else "alive"
    if run.stop_reason:
        return [], "alive"
    why = _superseded(run, want)
    if why:
        return [Cancel(model=run.model, run_id=run.id, reason=Reason.CANCELLED, message=why)], "ended"
    if run.verdict is not None:
        reason, message = run.verdict
        cancel = Cancel(model=run.model, run_id=run.id, reason=reason, message=message)
        return [cancel], "alive" if reason is Reason.PLATEAUED else "failed"
    phase = Phase.QUEUED if job.state is JobState.PENDING else Phase.RUNNING
    if phase is not run.phase:
        started = job.started_at if phase is Phase.RUNNING else None
        return [SetPhase(model=run.model, run_id=run.id, phase=phase, started_at=started)], "alive"
    return [], "alive"


def _finish(run: RunView, job: JobStatus) -> Action:
    if job.state is JobState.SUCCEEDED or run.stop_reason == Reason.PLATEAUED:
        return Collect(model=run.model, run_id=run.id)
    reason = _FAILURE_REASONS.get(job.state, Reason.TRAINING_FAILED)
    if job.permanent and job.state is JobState.FAILED:
        reason = Reason.ENVIRONMENT_FAILED
    detail = f"exit code {job.exit_code}" if job.exit_code is not None else str(job.state).lower()
    message = f"job {run.job_id} ended {job.state}: {detail}" + (f" ({job.message})" if job.message else "")
    return Fail(model=run.model, run_id=run.id, reason=reason, message=message, exit_code=job.exit_code)


def _plan_model(
    want: Want,
    actual: Actual,
    live: list[RunView],
    failed_now: Mapping[Target, int],
    for_good: Set[Target] = frozenset(),
) -> list[Action]:
    """Submit a run for the wanted key when nothing registered, running, exhausted, refused for good or backing
    off stands for it."""
    if want.suspend or want.blocked or want.backend in actual.unavailable:
        return []
    if want.run_key in actual.registered.get(want.model, frozenset()):
        return []
    if any(r.run_key == want.run_key for r in live):
        return []
    target = (want.model, want.run_key, want.spec_digest)
    failed = actual.failed_attempts.get(target, 0) + failed_now.get(target, 0)
    if failed > want.retries:
        return []
    last = actual.last_failures.get(target)
    if last is not None and last.permanent and not failed_now.get(target):
        return []
    if target in for_good:
        return []
    ended = actual.now if failed_now.get(target) else last.ended_at if last is not None else None
    if actual.now is not None and ended is not None and failed:  # an attempt failing in this plan ends now
        when = retry_at(want.run_key, failed, ended)
        if actual.now < when:
            return [Wait(model=want.model, failed=failed, retry_at=when)]
    return [Submit(model=want.model, run_key=want.run_key, spec_digest=want.spec_digest, attempt=failed + 1)]
