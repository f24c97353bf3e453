"""The summarizer: one condition per model saying whether it is what Git asks for, and if not, why. Pure.

Like Flux's summarize step, this runs once at the end of a pass over facts the pass gathered, and it is the only
place that decides Ready / Reconciling / Stalled and the reason code. The message is one line a person can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gitopsd.model import Condition, ConditionType, Phase, Reason
from gitopsd.reconcile.planner import Wait, Want
from gitopsd.reconcile.troubles import Trouble
from gitopsd.units import format_time


@dataclass(frozen=True, kw_only=True)
class RunFacts:
    """What the summarizer needs to know about one run."""

    id: str
    run_key: str
    spec_digest: str
    phase: Phase
    backend: str
    attempt: int = 1
    job_id: str | None = None
    reason: str = ""
    message: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ModelFacts:
    want: Want
    version: int | None = None
    active: RunFacts | None = None
    last: RunFacts | None = None
    unavailable: str | None = None
    alias_problems: tuple[str, ...] = ()
    trouble: Trouble | None = None  # the model's failed work, from the retry book
    waiting: Wait | None = None
    """The planner's backoff before the model's next attempt, if it is waiting for one."""


def summarize(facts: ModelFacts) -> Condition:
    """The model's condition; its message is always one line, whatever the backend said."""
    condition = _summarize(facts)
    if "\n" not in condition.message:
        return condition
    lines = [line.strip() for line in condition.message.splitlines() if line.strip()]
    return Condition(type=condition.type, reason=condition.reason, message="; ".join(lines))


def _summarize(facts: ModelFacts) -> Condition:
    want = facts.want
    if facts.version is not None and facts.alias_problems and not want.suspend:
        return Condition(
            type=ConditionType.STALLED,
            reason=Reason.ALIAS_REFUSED,
            message=f"{want.model}@{facts.version} is current, but " + "; ".join(facts.alias_problems),
        )
    if facts.version is not None:
        ready = Condition(
            type=ConditionType.READY,
            reason=Reason.SUCCEEDED,
            message=f"{want.model}@{facts.version} is current (run key {want.run_key[:12]})",
        )
        if want.suspend:
            return Condition(
                type=ConditionType.READY,
                reason=Reason.SUSPENDED,
                message=f"suspended in Git; {ready.message}",
            )
        return ready
    if want.suspend:
        return Condition(
            type=ConditionType.STALLED,
            reason=Reason.SUSPENDED,
            message="suspended in Git: nothing is trained until `suspend` is removed",
        )
    active = facts.active
    if facts.unavailable is not None:
        waiting = f"; run {active.id} (job {active.job_id}) is kept and checked again" if active else ""
        return Condition(
            type=ConditionType.RECONCILING,
            reason=Reason.BACKEND_UNAVAILABLE,
            message=f"backend {want.backend} is unavailable: {facts.unavailable}{waiting}",
        )
    if facts.trouble is not None:
        return _troubled(facts.trouble)
    if active is not None and active.run_key == want.run_key:
        return Condition(
            type=ConditionType.RECONCILING, reason=Reason.PROGRESSING, message=_progress(active, want.retries)
        )
    if want.blocked:
        stalled = want.blocked_reason is not Reason.BASE_UNAVAILABLE
        return Condition(
            type=ConditionType.STALLED if stalled else ConditionType.RECONCILING,
            reason=want.blocked_reason,
            message=want.blocked,
        )
    last = facts.last
    failed = (
        last is not None
        and (last.run_key, last.spec_digest) == (want.run_key, want.spec_digest)
        and last.phase is Phase.FAILED
    )
    if facts.waiting is not None:
        return _waiting(facts.waiting, want, last if failed else None)
    if last is not None and failed:
        reason = Reason(last.reason) if last.reason in Reason._value2member_map_ else Reason.TRAINING_FAILED
        tries = f"after {last.attempt} attempt{'s' if last.attempt != 1 else ''}"
        return Condition(
            type=ConditionType.STALLED,
            reason=reason,
            message=f"run {last.id} {tries}: {last.message}; push a new commit to retry",
        )
    return Condition(
        type=ConditionType.RECONCILING,
        reason=Reason.PROGRESSING,
        message="a run for this spec is about to be submitted",
    )


def _troubled(trouble: Trouble) -> Condition:
    """Failed work: Reconciling while its retries go on, Stalled when a person must fix something."""
    tries = f"{trouble.attempts} attempt{'s' if trouble.attempts != 1 else ''}"
    if trouble.next_at is None:
        return Condition(
            type=ConditionType.STALLED,
            reason=trouble.reason,
            message=f"{trouble.what} failed ({tries}): {trouble.message}; fix it, then reload the daemon "
            "(systemctl reload gitopsd) or run gitopsd reconcile to retry",
        )
    at = format_time(trouble.next_at)
    return Condition(
        type=ConditionType.RECONCILING,
        reason=trouble.reason,
        message=f"{trouble.what} failed ({tries}, next retry at {at}): {trouble.message}",
    )


def _waiting(wait: Wait, want: Want, last: RunFacts | None) -> Condition:
    """Reconciling while a failed attempt's backoff runs: which attempt failed, why, and when the next starts."""
    known = last is not None and last.reason in Reason._value2member_map_
    reason = Reason(last.reason) if last is not None and known else Reason.TRAINING_FAILED
    when = format_time(wait.retry_at)
    detail = f": {last.message}" if last is not None and last.message else ""
    message = f"attempt {wait.failed} of {want.retries + 1} failed, retrying at {when}{detail}"
    return Condition(type=ConditionType.RECONCILING, reason=reason, message=message)


def _progress(run: RunFacts, retries: int) -> str:
    job = f" (job {run.job_id})" if run.job_id else ""
    attempt = f", attempt {run.attempt} of {retries + 1}" if retries else ""
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(run.metrics.items())[:4])
    metrics = f"; {shown}" if shown else ""
    detail = f": {run.message}" if run.message else ""
    return f"run {run.id} {run.phase} on {run.backend}{job}{attempt}{detail}{metrics}"


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
