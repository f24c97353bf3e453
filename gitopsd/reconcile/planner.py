"""The planner: what must be done to move actual state towards desired state. Pure.

`plan(desired, actual)` looks at what Git wants (one `Want` per model) and what is (runs in flight with their
observed job status, which run keys already have versions, how many attempts failed) and returns an ordered list
of actions. No I/O, no clock, deterministic order; the reconciler applies the actions. Applying a plan and
planning again yields nothing: every action changes exactly the facts that made the planner ask for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from gitopsd.model import JobState, JobStatus, Phase, Reason


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
class Actual:
    runs: Mapping[str, RunView]
    registered: Mapping[str, Set[str]]
    failed_attempts: Mapping[tuple[str, str, str], int]
    unavailable: Mapping[str, str]


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
    run_id: str
    phase: Phase


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


_FAILURE_REASONS = {
    JobState.FAILED: Reason.TRAINING_FAILED,
    JobState.TIMEOUT: Reason.TIMED_OUT,
    JobState.LOST: Reason.TRAINING_FAILED,
    JobState.CANCELLED: Reason.CANCELLED,
}
_ORDER = {Adopt: 0, Resubmit: 1, SetPhase: 2, Cancel: 3, Fail: 4, Collect: 5, Submit: 6}


def plan(desired: Mapping[str, Want], actual: Actual) -> list[Action]:
    """Every action needed now, ordered by model, then by kind, then by run id."""
    actions: list[Action] = []
    live: dict[str, list[RunView]] = {}
    failed_now: dict[tuple[str, str, str], int] = {}
    for run in actual.runs.values():
        run_actions, outcome = _plan_run(run, desired.get(run.model), actual)
        actions.extend(run_actions)
        if outcome == "alive":
            live.setdefault(run.model, []).append(run)
        elif outcome == "failed":
            target = (run.model, run.run_key, run.spec_digest)
            failed_now[target] = failed_now.get(target, 0) + 1
    for name, want in desired.items():
        actions.extend(_plan_model(want, actual, live.get(name, []), failed_now))
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
        return [SetPhase(model=run.model, run_id=run.id, phase=phase)], "alive"
    return [], "alive"


def _finish(run: RunView, job: JobStatus) -> Action:
    if job.state is JobState.SUCCEEDED or run.stop_reason == Reason.PLATEAUED:
        return Collect(model=run.model, run_id=run.id)
    reason = _FAILURE_REASONS.get(job.state, Reason.TRAINING_FAILED)
    detail = f"exit code {job.exit_code}" if job.exit_code is not None else str(job.state).lower()
    message = f"job {run.job_id} ended {job.state}: {detail}" + (f" ({job.message})" if job.message else "")
    return Fail(model=run.model, run_id=run.id, reason=reason, message=message, exit_code=job.exit_code)


def _plan_model(
    want: Want, actual: Actual, live: list[RunView], failed_now: Mapping[tuple[str, str, str], int]
) -> list[Action]:
    """Submit a run for the wanted key when nothing registered, running or exhausted stands for it."""
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
    return [Submit(model=want.model, run_key=want.run_key, spec_digest=want.spec_digest, attempt=failed + 1)]
