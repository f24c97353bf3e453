"""The planner's backoff between attempts: a failed training is retried within `retries`, never before
`retry_delay(attempt)` seconds after it failed, and the plan says when; a refused submission is not retried.

The planner stays pure: the clock and the failure times are inputs, the jitter is drawn from the run key and
attempt, so the same inputs give the same plan (and `status` the same time) on every pass.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.cli.main import _explain
from gitopsd.errors import RETRY_BASE_S, RETRY_CAP_S
from gitopsd.model import ConditionType, JobState, JobStatus, Phase, Reason
from gitopsd.reconcile.conditions import ModelFacts, RunFacts, summarize
from gitopsd.reconcile.planner import Actual, Fail, Failure, RunView, Submit, Wait, Want, plan, retry_at
from gitopsd.units import format_time

T0 = 1_800_000_000.0
TARGET = ("iris", "key-1", "spec-1")
WANT = Want(model="iris", run_key="key-1", spec_digest="spec-1", backend="local", retries=5)


def _after(failed: int, *, at: float = T0, now: float, reason: str = str(Reason.TRAINING_FAILED)) -> Actual:
    """`failed` attempts have failed, the latest at `at`; it is `now`."""
    return Actual(
        runs={}, registered={}, failed_attempts={TARGET: failed}, unavailable={}, now=now,
        last_failures={TARGET: Failure(ended_at=at, reason=reason)},
    )  # fmt: skip


def _ended_run(attempt: int) -> RunView:
    return RunView(
        id=f"run-{attempt}", model="iris", run_key="key-1", spec_digest="spec-1", backend="local",
        phase=Phase.RUNNING, attempt=attempt, job_id="42", job=JobStatus(state=JobState.FAILED, exit_code=1),
    )  # fmt: skip


@pytest.mark.parametrize("failed", [1, 2, 3, 5])
def test_a_failed_attempt_waits_out_its_backoff_then_is_retried(failed: int) -> None:
    when = retry_at("key-1", failed, T0)
    assert plan({"iris": WANT}, _after(failed, now=T0)) == [Wait(model="iris", failed=failed, retry_at=when)]
    assert plan({"iris": WANT}, _after(failed, now=when - 0.001)) == [Wait(model="iris", failed=failed, retry_at=when)]
    assert plan({"iris": WANT}, _after(failed, now=when)) == [
        Submit(model="iris", run_key="key-1", spec_digest="spec-1", attempt=failed + 1)
    ]


@given(attempt=st.integers(1, 200), key=st.text(min_size=1, max_size=20))
def test_the_backoff_doubles_from_the_base_to_the_cap_with_jitter_and_is_the_same_every_time(
    attempt: int, key: str
) -> None:
    step = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** min(attempt - 1, 64))
    delay = retry_at(key, attempt, T0) - T0
    assert step / 2 <= delay <= step
    assert retry_at(key, attempt, T0) == retry_at(key, attempt, T0), "deterministic: no hidden randomness"


def test_jitter_spreads_the_retries_of_different_keys() -> None:
    assert len({retry_at(f"key-{i}", 3, T0) for i in range(20)}) > 1


def test_the_pass_in_which_a_training_fails_fails_it_and_waits_instead_of_resubmitting_at_once() -> None:
    actual = Actual(runs={"run-1": _ended_run(1)}, registered={}, failed_attempts={}, unavailable={}, now=T0)
    actions = plan({"iris": WANT}, actual)
    assert [type(a) for a in actions] == [Fail, Wait]
    assert actions[1] == Wait(model="iris", failed=1, retry_at=retry_at("key-1", 1, T0))


def test_a_permanently_refused_submission_is_not_retried_for_the_same_spec() -> None:
    refused = _after(1, now=T0 + 10 * RETRY_CAP_S, reason=str(Reason.SUBMIT_FAILED))
    assert plan({"iris": WANT}, refused) == []
    changed = replace(WANT, spec_digest="spec-2")  # e.g. a fixed sha256 or another timeout: a new round
    assert plan({"iris": changed}, refused) == [Submit(model="iris", run_key="key-1", spec_digest="spec-2", attempt=1)]


def test_no_wait_once_the_retry_budget_is_spent() -> None:
    assert plan({"iris": WANT}, _after(WANT.retries + 1, now=T0)) == []


def test_without_a_clock_or_a_failure_time_a_failed_attempt_is_retried_at_once() -> None:
    no_clock = replace(_after(1, now=T0), now=None)
    no_time = replace(_after(1, now=T0), last_failures={})
    for actual in (no_clock, no_time):
        assert plan({"iris": WANT}, actual) == [Submit(model="iris", run_key="key-1", spec_digest="spec-1", attempt=2)]


@settings(max_examples=100, deadline=None)
@given(retries=st.integers(1, 100), poll=st.floats(0.01, 5))
def test_a_command_that_always_fails_at_once_is_tried_a_bounded_number_of_times(retries: int, poll: float) -> None:
    """A pass every `poll` seconds for an hour, each attempt failing the moment it starts: attempts follow the
    backoff schedule (the issue saw 15 attempts in 20 s with `retries: 1000000000`)."""
    want = replace(WANT, retries=retries)
    failed, last, now, starts = 0, None, T0, []
    while now < T0 + 3600 and failed <= retries:
        failures: dict[tuple[str, str, str], Failure] = {TARGET: Failure(ended_at=last)} if last is not None else {}
        actual = Actual(runs={}, registered={}, failed_attempts={TARGET: failed} if failed else {}, unavailable={},
                        now=now, last_failures=failures)  # fmt: skip
        for action in plan({"iris": want}, actual):
            if isinstance(action, Submit):
                starts.append(now)
                failed, last = failed + 1, now
            elif isinstance(action, Wait):  # nothing happens until the next pass at or after the retry time
                now += poll * max(1, (action.retry_at - now) // poll)
        now += poll
    for n, (before, after) in enumerate(itertools.pairwise(starts), start=1):
        assert after - before >= min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (n - 1)) / 2
    assert sum(1 for start in starts if start < T0 + 20) <= 4, "at once, then after 2.5-5 s, 5-10 s, 10-20 s"
    assert len(starts) <= 18, "an hour holds at most 18 attempts: the waits grow to 5 to 10 minutes"


def test_status_and_plan_say_which_attempt_failed_and_when_the_next_starts() -> None:
    wait = Wait(model="iris", failed=3, retry_at=T0)
    shown = format_time(T0)
    last = RunFacts(
        id="run-3", run_key="key-1", spec_digest="spec-1", phase=Phase.FAILED, backend="local", attempt=3,
        reason=str(Reason.TRAINING_FAILED), message="job 42 ended Failed: exit code 1",
    )  # fmt: skip
    condition = summarize(ModelFacts(want=WANT, last=last, waiting=wait))
    assert condition.type is ConditionType.RECONCILING and condition.reason is Reason.TRAINING_FAILED
    assert condition.message == f"attempt 3 of 6 failed, retrying at {shown}: job 42 ended Failed: exit code 1"
    assert _explain(wait, None) == f"= wait: attempt 3 of iris failed, retrying at {shown}"


def test_a_training_failing_now_after_an_earlier_refused_submission_is_retried_after_its_own_backoff() -> None:
    # The latest recorded failure (a refused submit) is older than the attempt failing in this very plan (e.g.
    # the operator fixed the backend and reloaded): the new failure decides, and it is a transient one.
    earlier = Failure(ended_at=T0 - 3600, reason=str(Reason.SUBMIT_FAILED))
    actual = Actual(
        runs={"run-2": _ended_run(2)}, registered={}, failed_attempts={TARGET: 1}, unavailable={}, now=T0,
        last_failures={TARGET: earlier},
    )  # fmt: skip
    actions = plan({"iris": WANT}, actual)
    assert [type(a) for a in actions] == [Fail, Wait]
    assert actions[1] == Wait(model="iris", failed=2, retry_at=retry_at("key-1", 2, T0))
