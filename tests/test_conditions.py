"""`gitopsd status` shows one condition per model: these tests pin each branch of the summarizer and its wording.

Each test states what a person reading `status` is told in one situation: a current version, a suspended
model, a run in progress (with its latest metrics), an unreachable backend, a stalled model with the reason of
the run that failed, a run about to be submitted.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.model import Condition, ConditionType, Phase, Reason
from gitopsd.reconcile.conditions import ModelFacts, RunFacts, summarize
from gitopsd.reconcile.planner import Wait, Want
from gitopsd.reconcile.troubles import Trouble
from gitopsd.spec.gates import evaluate, parse_gate

KEY = "3f9a1c2b7d4e5f60718293a4b5c6d7e8"
WANT = Want(model="iris", run_key=KEY, spec_digest="spec-1", backend="slurm", retries=2)
ACTIVE = RunFacts(
    id="iris-1a2b3c4d", run_key=KEY, spec_digest="spec-1", phase=Phase.RUNNING, backend="slurm", attempt=2,
    job_id="4242",
)  # fmt: skip
FAILED = replace(ACTIVE, phase=Phase.FAILED, reason="TrainingFailed", message="job 4242 ended Failed: exit code 3")


def test_a_registered_run_key_is_ready_with_its_version() -> None:
    assert summarize(ModelFacts(want=WANT, version=3)) == Condition(
        type=ConditionType.READY, reason=Reason.SUCCEEDED, message="iris@3 is current (run key 3f9a1c2b7d4e)"
    )


def test_a_current_version_wins_over_an_old_failure_and_an_unavailable_backend() -> None:
    facts = ModelFacts(want=WANT, version=3, last=FAILED, unavailable="slurmctld down")
    assert summarize(facts).reason is Reason.SUCCEEDED


def test_a_suspended_model_with_a_version_stays_ready_and_says_it_is_suspended() -> None:
    condition = summarize(ModelFacts(want=replace(WANT, suspend=True), version=3))
    assert condition == Condition(
        type=ConditionType.READY,
        reason=Reason.SUSPENDED,
        message="suspended in Git; iris@3 is current (run key 3f9a1c2b7d4e)",
    )
    assert condition.ready


def test_a_suspended_model_without_a_version_is_stalled_until_suspend_is_removed() -> None:
    facts = ModelFacts(want=replace(WANT, suspend=True), active=ACTIVE, last=FAILED)
    assert summarize(facts) == Condition(
        type=ConditionType.STALLED,
        reason=Reason.SUSPENDED,
        message="suspended in Git: nothing is trained until `suspend` is removed",
    )


def test_a_run_in_progress_shows_phase_backend_job_attempt_and_first_four_metrics() -> None:
    metrics = {"loss": 0.123456, "accuracy": 0.9, "epoch": 7.0, "lr": 0.001, "zeta": 1.0}
    active = replace(ACTIVE, message="submitted to slurm as job 4242", metrics=metrics)
    condition = summarize(ModelFacts(want=WANT, active=active))
    assert condition == Condition(
        type=ConditionType.RECONCILING,
        reason=Reason.PROGRESSING,
        message="run iris-1a2b3c4d Running on slurm (job 4242), attempt 2 of 3: submitted to slurm as job 4242; "
        "accuracy=0.9, epoch=7, loss=0.1235, lr=0.001",
    )
    assert not condition.ready


def test_an_unavailable_backend_is_named_even_while_a_run_is_in_flight() -> None:
    condition = summarize(ModelFacts(want=WANT, active=ACTIVE, unavailable="slurmctld down"))
    assert condition.reason is Reason.BACKEND_UNAVAILABLE
    assert condition.message == (
        "backend slurm is unavailable: slurmctld down; run iris-1a2b3c4d (job 4242) is kept and checked again"
    )


def test_a_model_its_backend_refuses_is_stalled_with_the_backends_reason() -> None:
    want = replace(WANT, blocked="asks for 8 GPUs; the largest node has 4", blocked_reason=Reason.POLICY_DENIED)
    condition = summarize(ModelFacts(want=want))
    assert condition == Condition(
        type=ConditionType.STALLED, reason=Reason.POLICY_DENIED, message="asks for 8 GPUs; the largest node has 4"
    )


def test_a_run_in_progress_without_job_retries_message_or_metrics_says_only_where_it_is() -> None:
    active = replace(ACTIVE, phase=Phase.SUBMITTING, job_id=None)
    condition = summarize(ModelFacts(want=replace(WANT, retries=0), active=active))
    assert condition.message == "run iris-1a2b3c4d Submitting on slurm"


def test_an_unreachable_backend_is_named_with_the_error() -> None:
    condition = summarize(ModelFacts(want=WANT, unavailable="sbatch: command not found", last=FAILED))
    assert condition == Condition(
        type=ConditionType.RECONCILING,
        reason=Reason.BACKEND_UNAVAILABLE,
        message="backend slurm is unavailable: sbatch: command not found",
    )


def test_a_failed_gate_stalls_the_model_with_metric_value_and_threshold() -> None:
    [result] = evaluate([parse_gate("accuracy >= 0.9")], {"accuracy": 0.85})
    last = replace(FAILED, reason="GateFailed", message=f"gate failed: {result.describe()}")
    assert summarize(ModelFacts(want=WANT, last=last)) == Condition(
        type=ConditionType.STALLED,
        reason=Reason.GATE_FAILED,
        message="run iris-1a2b3c4d after 2 attempts: gate failed: accuracy = 0.85, needs >= 0.9; "
        "push a new commit to retry",
    )


@pytest.mark.parametrize("reason", [r for r in Reason if r not in (Reason.SUCCEEDED, Reason.PROGRESSING)])
def test_a_failed_run_stalls_the_model_with_its_own_reason(reason: Reason) -> None:
    condition = summarize(ModelFacts(want=WANT, last=replace(FAILED, attempt=1, reason=str(reason))))
    assert (condition.type, condition.reason) == (ConditionType.STALLED, reason)
    assert condition.message.startswith("run iris-1a2b3c4d after 1 attempt: job 4242 ended Failed: exit code 3")


@pytest.mark.parametrize("recorded", ["", "OutOfMemory", "gate failed"])
def test_a_failure_without_a_known_reason_reads_as_training_failed(recorded: str) -> None:
    condition = summarize(ModelFacts(want=WANT, last=replace(FAILED, reason=recorded)))
    assert (condition.type, condition.reason) == (ConditionType.STALLED, Reason.TRAINING_FAILED)


@pytest.mark.parametrize(
    "facts",
    [
        ModelFacts(want=WANT),
        ModelFacts(want=WANT, active=replace(ACTIVE, run_key="old-key")),
        ModelFacts(want=WANT, last=replace(FAILED, spec_digest="spec-0")),
        ModelFacts(want=WANT, last=replace(FAILED, phase=Phase.CANCELLED, reason="Cancelled")),
    ],
    ids=["nothing-yet", "old-run-still-active", "old-spec-failed", "last-run-cancelled"],
)
def test_a_spec_with_no_run_of_its_own_is_about_to_be_submitted(facts: ModelFacts) -> None:
    assert summarize(facts) == Condition(
        type=ConditionType.RECONCILING,
        reason=Reason.PROGRESSING,
        message="a run for this spec is about to be submitted",
    )


def test_a_multi_line_failure_message_is_shown_on_one_line() -> None:
    last = replace(FAILED, reason="SubmitFailed", message="sbatch: error: Batch job submission failed\nInvalid account")
    condition = summarize(ModelFacts(want=WANT, last=last))
    assert condition == Condition(
        type=ConditionType.STALLED,
        reason=Reason.SUBMIT_FAILED,
        message="run iris-1a2b3c4d after 2 attempts: sbatch: error: Batch job submission failed; Invalid account; "
        "push a new commit to retry",
    )


def test_a_current_version_whose_alias_was_refused_is_stalled_and_says_why() -> None:
    problems = ("alias prod refused: iris@3 fails gate accuracy >= 0.95", "alias canary refused: no such stage")
    assert summarize(ModelFacts(want=WANT, version=3, alias_problems=problems, unavailable="down")) == Condition(
        type=ConditionType.STALLED,
        reason=Reason.ALIAS_REFUSED,
        message="iris@3 is current, but alias prod refused: iris@3 fails gate accuracy >= 0.95; "
        "alias canary refused: no such stage",
    )


def test_alias_problems_of_a_suspended_model_or_without_a_version_do_not_stall_it() -> None:
    problems = ("alias prod refused: no version",)
    suspended = summarize(ModelFacts(want=replace(WANT, suspend=True), version=3, alias_problems=problems))
    assert (suspended.type, suspended.reason) == (ConditionType.READY, Reason.SUSPENDED)
    assert summarize(ModelFacts(want=WANT, alias_problems=problems)) == Condition(
        type=ConditionType.RECONCILING,
        reason=Reason.PROGRESSING,
        message="a run for this spec is about to be submitted",
    )


def test_a_model_waiting_for_its_base_model_is_reconciling_not_stalled() -> None:
    """The base gets a version by itself (its own training): nothing for a person to fix, so not Stalled."""
    want = replace(WANT, blocked="waiting for base model resnet@2: no such registered version yet")
    assert summarize(ModelFacts(want=want, last=FAILED)) == Condition(
        type=ConditionType.RECONCILING,
        reason=Reason.BASE_UNAVAILABLE,
        message="waiting for base model resnet@2: no such registered version yet",
    )


STORE_DOWN = Trouble(
    key="Collect:iris-1a2b3c4d", model="iris", what="storing the artifact of run iris-1a2b3c4d",
    reason=Reason.REGISTRY_FAILED, message="the store is unreachable", attempts=3, first_at=0.0, last_at=60.0,
    next_at=86_400.0 + 3_725.0,
)  # fmt: skip


def test_failed_work_being_retried_is_reconciling_with_attempts_and_the_next_retry_in_utc() -> None:
    condition = summarize(ModelFacts(want=WANT, active=ACTIVE, trouble=STORE_DOWN))
    assert condition == Condition(
        type=ConditionType.RECONCILING,
        reason=Reason.REGISTRY_FAILED,
        message="storing the artifact of run iris-1a2b3c4d failed (3 attempts, next retry at 1970-01-02 01:02:05 "
        "UTC): the store is unreachable",
    )


def test_failed_work_that_needs_a_person_is_stalled_and_says_how_to_retry_after_the_fix() -> None:
    trouble = replace(STORE_DOWN, attempts=1, next_at=None, message="bucket models does not exist")
    condition = summarize(ModelFacts(want=WANT, active=ACTIVE, last=FAILED, trouble=trouble))
    assert condition == Condition(
        type=ConditionType.STALLED,
        reason=Reason.REGISTRY_FAILED,
        message="storing the artifact of run iris-1a2b3c4d failed (1 attempt): bucket models does not exist; fix "
        "it, then reload the daemon (systemctl reload gitopsd) or run gitopsd reconcile to retry",
    )


def test_a_failed_attempt_in_its_backoff_says_which_attempt_failed_why_and_when_the_next_starts() -> None:
    wait = Wait(model="iris", failed=2, retry_at=120.0)
    condition = summarize(ModelFacts(want=WANT, last=replace(FAILED, reason="TimedOut"), waiting=wait))
    assert condition == Condition(
        type=ConditionType.RECONCILING,
        reason=Reason.TIMED_OUT,
        message="attempt 2 of 3 failed, retrying at 1970-01-01 00:02:00 UTC: job 4242 ended Failed: exit code 3",
    )


@pytest.mark.parametrize(
    "last",
    [
        None,  # nothing known about the failed attempt
        replace(FAILED, run_key="other"),  # the last failure was of another spec
        replace(FAILED, reason="NoSuchReason", message=""),  # an unknown reason, no message
    ],
)
def test_a_backoff_without_a_matching_known_failure_reads_as_training_failed_with_no_detail(
    last: RunFacts | None,
) -> None:
    wait = Wait(model="iris", failed=1, retry_at=0.0)
    condition = summarize(ModelFacts(want=WANT, last=last, waiting=wait))
    assert condition == Condition(
        type=ConditionType.RECONCILING,
        reason=Reason.TRAINING_FAILED,
        message="attempt 1 of 3 failed, retrying at 1970-01-01 00:00:00 UTC",
    )


def test_whole_number_metrics_are_shown_as_reported() -> None:
    """Metrics files are JSON: a step counter arrives as an int and is shown whole, not as 1.235e+05."""
    active = replace(ACTIVE, metrics={"step": 123456, "loss": 0.5})
    assert summarize(ModelFacts(want=WANT, active=active)).message == (
        "run iris-1a2b3c4d Running on slurm (job 4242), attempt 2 of 3; loss=0.5, step=123456"
    )


PHASES = st.sampled_from(Phase)
RUNS = st.builds(
    RunFacts,
    id=st.just("r1"),
    run_key=st.sampled_from([KEY, "other"]),
    spec_digest=st.sampled_from(["spec-1", "spec-0"]),
    phase=PHASES,
    backend=st.just("slurm"),
    attempt=st.integers(1, 3),
    reason=st.sampled_from(["", "GateFailed", "Diverged", "nonsense"]),
    message=st.sampled_from(["", "exit code 1"]),
    metrics=st.dictionaries(st.sampled_from(["loss", "acc"]), st.floats(allow_nan=True)),
)


BLOCKED = st.sampled_from([("", Reason.BASE_UNAVAILABLE), ("waiting for base", Reason.BASE_UNAVAILABLE),
                           ("refused at plan time", Reason.POLICY_DENIED)])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    want=st.builds(Want, model=st.just("iris"), run_key=st.just(KEY), spec_digest=st.just("spec-1"),
                   backend=st.just("slurm"), retries=st.integers(0, 2), suspend=st.booleans()),
    blocked=BLOCKED,
    version=st.none() | st.integers(1, 9),
    active=st.none() | RUNS,
    last=st.none() | RUNS,
    unavailable=st.none() | st.just("down"),
    alias_problems=st.sampled_from([(), ("alias prod refused",), ("alias a refused", "alias b refused")]),
)  # fmt: skip
def test_every_model_gets_exactly_one_consistent_condition(
    want: Want,
    blocked: tuple[str, Reason],
    version: int | None,
    active: RunFacts | None,
    last: RunFacts | None,
    unavailable: str | None,
    alias_problems: tuple[str, ...],
) -> None:
    want = replace(want, blocked=blocked[0], blocked_reason=blocked[1])
    facts = ModelFacts(
        want=want, version=version, active=active, last=last, unavailable=unavailable, alias_problems=alias_problems
    )
    condition = summarize(facts)
    refused = version is not None and bool(alias_problems) and not want.suspend
    assert condition.ready == (version is not None and not refused)
    assert (condition.reason is Reason.SUSPENDED) == want.suspend
    assert (condition.reason is Reason.ALIAS_REFUSED) == refused
    assert condition.message
    assert "\n" not in condition.message
    if condition.reason is Reason.BASE_UNAVAILABLE:
        assert condition.type is ConditionType.RECONCILING  # the base gets its version by itself
    if condition.type is ConditionType.STALLED and not want.suspend and not refused:
        if condition.reason is Reason.POLICY_DENIED and want.blocked:
            assert condition.message == want.blocked
        else:
            assert last is not None
            assert last.phase is Phase.FAILED
            assert condition.message.endswith("push a new commit to retry")
