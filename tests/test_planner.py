"""The planner decides every submission, cancellation and collection: these tests pin what users rely on.

Property tests (hypothesis) drive `plan` with random desired and actual states and check the promises of
DESIGN.md: a deterministic plan; idempotence (apply the plan, plan again: nothing left to do); never two live
runs for one spec; no training for a registered key, a suspended model, an unavailable backend or a spent retry
budget; attempt numbers that count up. Example tests then walk through each scenario a user meets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.model import JobState, JobStatus, Phase, Reason
from gitopsd.reconcile.planner import (
    Action,
    Actual,
    Adopt,
    Cancel,
    Collect,
    Fail,
    Resubmit,
    RunView,
    SetPhase,
    Submit,
    Want,
    plan,
)

Target = tuple[str, str, str]
K = TypeVar("K")
V = TypeVar("V")
MODELS = ("iris", "mnist", "resnet")
KEYS = ("key-1", "key-2")
DIGESTS = ("spec-1", "spec-2")
BACKENDS = ("local", "slurm")
MODEL, KEY, DIGEST, BACKEND = (st.sampled_from(v) for v in (MODELS, KEYS, DIGESTS, BACKENDS))
TARGETS = st.tuples(MODEL, KEY, DIGEST)
PROPERTY = settings(max_examples=300, deadline=None)  # the two main promises: determinism and idempotence
SAFETY = settings(max_examples=200, deadline=None)


# ---- a model of the reconciler applying a plan -------------------------------------------------------------
def simulate(actual: Actual, actions: Sequence[Action], desired: Mapping[str, Want]) -> Actual:
    """What the next pass observes after the reconciler applied `actions` and no job changed state by itself.

    Mirrors `Reconciler._apply` when every backend call succeeds: a submitted, resubmitted or adopted job is
    recorded with its job id in phase Queued and observed PENDING (not observed at all while its backend is
    unavailable); SetPhase moves the phase; Cancel(Plateaued) only sets the stop reason (the job is still
    winding down); Cancel(Cancelled) ends the run; any other Cancel and every Fail end it Failed, one more
    failed attempt for its (model, run key, spec digest); Collect registers its run key. `desired` names the
    backend a new run goes to (a Submit does not carry it).
    """
    runs = dict(actual.runs)
    registered = {model: set(keys) for model, keys in actual.registered.items()}
    failed = Counter(actual.failed_attempts)

    def observed(backend: str) -> JobStatus | None:
        return None if backend in actual.unavailable else JobStatus(state=JobState.PENDING)

    for action in actions:
        if isinstance(action, Submit):
            run_id = f"new-{action.model}-{action.attempt}"
            while run_id in runs:
                run_id += "'"
            backend = desired[action.model].backend
            runs[run_id] = RunView(
                id=run_id, model=action.model, run_key=action.run_key, spec_digest=action.spec_digest,
                backend=backend, phase=Phase.QUEUED, attempt=action.attempt, job_id=f"job-{run_id}",
                job=observed(backend),
            )  # fmt: skip
            continue
        run = runs[getattr(action, "run_id")]  # noqa: B009 - every other action names its run
        target = (run.model, run.run_key, run.spec_digest)
        if isinstance(action, Adopt | Resubmit):
            job_id = action.job_id if isinstance(action, Adopt) else f"job-{run.id}"
            runs[run.id] = replace(run, phase=Phase.QUEUED, job_id=job_id, job=observed(run.backend), found_job_id=None)
        elif isinstance(action, SetPhase):
            runs[run.id] = replace(run, phase=action.phase)
        elif isinstance(action, Cancel) and action.reason is Reason.PLATEAUED:
            runs[run.id] = replace(run, stop_reason=str(Reason.PLATEAUED), verdict=None)
        elif isinstance(action, Cancel | Fail):
            del runs[run.id]
            failed[target] += _spends_an_attempt(action)
        elif isinstance(action, Collect):
            del runs[run.id]
            registered.setdefault(run.model, set()).add(run.run_key)
    return Actual(
        runs=runs,
        registered={model: frozenset(keys) for model, keys in registered.items()},
        failed_attempts=dict(failed),
        unavailable=actual.unavailable,
    )


def _spends_an_attempt(action: Action) -> bool:
    """Whether the reconciler records the action's run as Failed: one more failed attempt for its spec."""
    if isinstance(action, Fail):
        return True
    return isinstance(action, Cancel) and action.reason not in (Reason.CANCELLED, Reason.PLATEAUED)


# ---- strategies ----------------------------------------------------------------------------------------------
@st.composite
def wants(draw: st.DrawFn) -> dict[str, Want]:
    names = draw(st.lists(MODEL, unique=True))
    return {
        name: Want(
            model=name,
            run_key=draw(KEY),
            spec_digest=draw(DIGEST),
            backend=draw(BACKEND),
            retries=draw(st.integers(0, 2)),
            suspend=draw(st.booleans()),
        )
        for name in names
    }


JOBS = st.builds(
    JobStatus,
    state=st.sampled_from(JobState),
    exit_code=st.none() | st.integers(0, 255),
    message=st.sampled_from(("", "out of memory")),
)
MAYBE_JOB = st.none() | JOBS
PHASES = st.sampled_from(Phase)
ATTEMPTS = st.integers(1, 3)
STOP_REASONS = st.sampled_from(("", str(Reason.PLATEAUED)))
# Any reason but Cancelled, which `judge` never gives: the planner would count it as a failed attempt while the
# reconciler records the run Cancelled, so attempt numbers would not add up.
ANY_VERDICT = st.none() | st.tuples(st.sampled_from([r for r in Reason if r is not Reason.CANCELLED]), st.just("x"))
UNAVAILABLE = st.dictionaries(BACKEND, st.just("connection refused"))
REGISTERED = st.dictionaries(MODEL, st.frozensets(KEY))
FAILED = st.dictionaries(TARGETS, st.integers(1, 3))


def any_run(draw: st.DrawFn, run_id: str, target: Target, *, judged: bool) -> RunView:
    """Any combination of fields, even ones `Reconciler._observe` never reports (a terminal phase, a job id on a
    Submitting run, a job status for an unavailable backend...): the planner must cope with all of them.

    With `judged`, a verdict comes only where the reconciler computes one: on the observed, unfinished job of
    a run past Submitting, with a job id and no stop reason. Properties that apply the plan need this, because
    `simulate` keeps a verdict the plan did not act on (a Submitting run is resubmitted or adopted whatever its
    verdict, and the verdict would then cancel it one pass later).
    """
    model, key, digest = target
    phase = draw(PHASES)
    job_id = f"job-{run_id}" if draw(st.booleans()) else None
    job = draw(MAYBE_JOB)
    stop_reason = draw(STOP_REASONS)
    verdict = draw(ANY_VERDICT)
    computed = phase is not Phase.SUBMITTING and job_id is not None and not stop_reason
    if judged and (job is None or job.state.finished or not computed):
        verdict = None
    return RunView(
        id=run_id,
        model=model,
        run_key=key,
        spec_digest=digest,
        backend=draw(BACKEND),
        phase=phase,
        attempt=draw(ATTEMPTS),
        job_id=job_id,
        job=job,
        found_job_id=f"found-{run_id}" if draw(st.booleans()) else None,
        stop_reason=stop_reason,
        verdict=verdict,
    )


@st.composite
def actuals(draw: st.DrawFn, *, judged: bool = False, one_run_per_target: bool = False) -> Actual:
    targets = draw(st.lists(TARGETS, max_size=5, unique=one_run_per_target))
    return Actual(
        runs={f"run-{i}": any_run(draw, f"run-{i}", target, judged=judged) for i, target in enumerate(targets)},
        registered=draw(REGISTERED),
        failed_attempts=draw(FAILED),
        unavailable=draw(UNAVAILABLE),
    )


def _target(item: Want | RunView | Submit) -> Target:
    return (item.model, item.run_key, item.spec_digest)


# ---- properties ----------------------------------------------------------------------------------------------
@PROPERTY
@given(data=st.data(), desired=wants(), actual=actuals())
def test_the_plan_depends_on_the_states_only_not_on_their_insertion_order(
    data: st.DataObject, desired: dict[str, Want], actual: Actual
) -> None:
    first = plan(desired, actual)
    assert plan(desired, actual) == first

    def shuffled(mapping: Mapping[K, V]) -> dict[K, V]:
        return dict(data.draw(st.permutations(list(mapping.items()))))

    shuffled_actual = Actual(
        runs=shuffled(actual.runs),
        registered=shuffled(actual.registered),
        failed_attempts=shuffled(actual.failed_attempts),
        unavailable=shuffled(actual.unavailable),
    )
    assert plan(shuffled(desired), shuffled_actual) == first


@PROPERTY
@given(desired=wants(), actual=actuals(judged=True))
def test_applying_a_plan_leaves_nothing_to_do(desired: dict[str, Want], actual: Actual) -> None:
    """Idempotence: plan, apply (`simulate`), plan again -> an empty plan.

    It holds when the apply changes only what the actions say: every job keeps the status it had (a job just
    submitted, resubmitted or adopted is PENDING), every action succeeds, metrics do not move (a verdict stays
    until acted on). Runs may be in any phase with any job state, job id, found job or stop reason; the only
    restrictions are on verdicts (`judged`, and never Cancelled: see `ANY_VERDICT`).
    """
    first = plan(desired, actual)
    assert plan(desired, simulate(actual, first, desired)) == []


@SAFETY
@given(desired=wants(), actual=actuals(one_run_per_target=True))
def test_never_two_live_runs_for_one_spec_after_applying_a_plan(desired: dict[str, Want], actual: Actual) -> None:
    """Starting from at most one unfinished run per (model, run key, spec digest), a plan never adds a second."""
    after = simulate(actual, plan(desired, actual), desired)
    live = Counter(_target(run) for run in after.runs.values())
    assert all(count == 1 for count in live.values()), live


@SAFETY
@given(desired=wants(), actual=actuals())
def test_submits_respect_versions_suspend_backends_and_retry_budget(desired: dict[str, Want], actual: Actual) -> None:
    actions = plan(desired, actual)
    submits = [a for a in actions if isinstance(a, Submit)]
    assert len({s.model for s in submits}) == len(submits), "at most one Submit per model"
    for submit in submits:
        want = desired[submit.model]
        assert _target(submit) == _target(want)
        assert not want.suspend
        assert want.backend not in actual.unavailable
        assert want.run_key not in actual.registered.get(want.model, frozenset())
        failing_now = sum(
            1
            for a in actions
            if isinstance(a, Fail | Cancel)
            and _spends_an_attempt(a)
            and _target(actual.runs[a.run_id]) == _target(want)
        )
        assert submit.attempt == actual.failed_attempts.get(_target(want), 0) + failing_now + 1
        assert submit.attempt <= want.retries + 1
    for want in desired.values():
        if actual.failed_attempts.get(_target(want), 0) > want.retries:
            assert want.model not in {s.model for s in submits}


@SAFETY
@given(desired=wants(), actual=actuals(judged=True))
def test_every_eligible_model_has_a_run_or_a_version_after_applying_a_plan(
    desired: dict[str, Want], actual: Actual
) -> None:
    """Nothing is forgotten: an unsuspended model on a reachable backend with retries left is being trained."""
    after = simulate(actual, plan(desired, actual), desired)
    for want in desired.values():
        spent = after.failed_attempts.get(_target(want), 0) > want.retries
        if want.suspend or want.backend in actual.unavailable or spent:
            continue
        registered = want.run_key in after.registered.get(want.model, frozenset())
        # A run of the same key stands for the model even if only retries, timeout or gates changed since.
        assert registered or any((r.model, r.run_key) == (want.model, want.run_key) for r in after.runs.values())


@settings(max_examples=50, deadline=None)
@given(retries=st.integers(0, 4), state=st.sampled_from([JobState.FAILED, JobState.TIMEOUT, JobState.LOST]))
def test_attempt_numbers_count_up_until_the_retry_budget_is_spent(retries: int, state: JobState) -> None:
    desired = {"iris": Want(model="iris", run_key="key-1", spec_digest="spec-1", backend="local", retries=retries)}
    actual = Actual(runs={}, registered={}, failed_attempts={}, unavailable={})
    attempts = []
    for _ in range(retries + 3):
        actions = plan(desired, actual)
        attempts += [a.attempt for a in actions if isinstance(a, Submit)]
        actual = simulate(actual, actions, desired)
        runs = {rid: replace(run, job=JobStatus(state=state, exit_code=1)) for rid, run in actual.runs.items()}
        actual = replace(actual, runs=runs)
    assert attempts == list(range(1, retries + 2))
    assert actual.failed_attempts == {("iris", "key-1", "spec-1"): retries + 1}
    assert actual.runs == {}


# ---- scenarios -----------------------------------------------------------------------------------------------
WANT = Want(model="iris", run_key="key-1", spec_digest="spec-1", backend="slurm")
RUNNING = RunView(
    id="run-1", model="iris", run_key="key-1", spec_digest="spec-1", backend="slurm", phase=Phase.RUNNING,
    attempt=1, job_id="4242", job=JobStatus(state=JobState.RUNNING),
)  # fmt: skip
SUBMITTING = replace(RUNNING, phase=Phase.SUBMITTING, job_id=None, job=None)


def _actual(
    *runs: RunView,
    registered: Mapping[str, frozenset[str]] | None = None,
    failed: Mapping[Target, int] | None = None,
    unavailable: Mapping[str, str] | None = None,
) -> Actual:
    return Actual(
        runs={run.id: run for run in runs},
        registered=registered or {},
        failed_attempts=failed or {},
        unavailable=unavailable or {},
    )


def _ended(state: JobState, exit_code: int | None = None, **over: object) -> RunView:
    return replace(RUNNING, job=JobStatus(state=state, exit_code=exit_code), **over)  # type: ignore[arg-type]


def test_a_new_model_gets_its_first_attempt() -> None:
    assert plan({"iris": WANT}, _actual()) == [Submit(model="iris", run_key="key-1", spec_digest="spec-1", attempt=1)]


def test_a_run_key_with_a_version_is_never_trained_again() -> None:
    assert plan({"iris": WANT}, _actual(registered={"iris": frozenset({"key-1"})})) == []
    other_model = _actual(registered={"mnist": frozenset({"key-1"})})
    assert plan({"iris": WANT}, other_model) == [Submit(model="iris", run_key="key-1", spec_digest="spec-1", attempt=1)]


def test_a_running_run_for_the_wanted_spec_is_left_alone() -> None:
    assert plan({"iris": WANT}, _actual(RUNNING)) == []


def test_changing_only_gates_or_retries_keeps_the_running_training() -> None:
    """Same run key, new spec digest: the training in flight is the same training; it is not thrown away."""
    assert plan({"iris": replace(WANT, spec_digest="spec-2", retries=3)}, _actual(RUNNING)) == []


def test_a_spec_change_cancels_the_old_run_and_submits_the_new_one_in_one_plan() -> None:
    new = replace(WANT, run_key="key-2", spec_digest="spec-2")
    assert plan({"iris": new}, _actual(RUNNING)) == [
        Cancel(
            model="iris", run_id="run-1", reason=Reason.CANCELLED,
            message="spec changed: a newer run key supersedes this run",
        ),
        Submit(model="iris", run_key="key-2", spec_digest="spec-2", attempt=1),
    ]  # fmt: skip


def test_a_model_removed_from_git_has_its_run_cancelled_and_nothing_submitted() -> None:
    assert plan({}, _actual(RUNNING)) == [
        Cancel(model="iris", run_id="run-1", reason=Reason.CANCELLED, message="model was removed from Git")
    ]


def test_a_submitting_run_whose_job_is_found_is_adopted_not_submitted_again() -> None:
    found = replace(SUBMITTING, found_job_id="4242")
    assert plan({"iris": WANT}, _actual(found)) == [Adopt(model="iris", run_id="run-1", job_id="4242")]


def test_a_submitting_run_whose_job_never_arrived_is_resubmitted_under_the_same_run_id() -> None:
    assert plan({"iris": WANT}, _actual(SUBMITTING)) == [Resubmit(model="iris", run_id="run-1")]


def test_a_submitting_run_is_not_resubmitted_while_its_backend_cannot_be_asked() -> None:
    assert plan({"iris": WANT}, _actual(SUBMITTING, unavailable={"slurm": "slurmctld down"})) == []


def test_a_submitting_run_of_a_removed_model_is_cancelled_when_no_job_exists() -> None:
    assert plan({}, _actual(SUBMITTING)) == [
        Cancel(
            model="iris", run_id="run-1", reason=Reason.CANCELLED,
            message="never submitted: model was removed from Git",
        )
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("desired", "why"),
    [
        ({}, "model was removed from Git"),
        ({"iris": replace(WANT, run_key="key-2")}, "spec changed: a newer run key supersedes this run"),
    ],
)
def test_a_superseded_run_found_after_a_crash_is_adopted_and_cancelled_in_one_plan(
    desired: dict[str, Want], why: str
) -> None:
    """Its job id must be recorded first, or the Cancel could not reach the job."""
    actual = _actual(replace(SUBMITTING, found_job_id="4242"))
    actions = plan(desired, actual)
    assert actions[:2] == [
        Adopt(model="iris", run_id="run-1", job_id="4242"),
        Cancel(model="iris", run_id="run-1", reason=Reason.CANCELLED, message=why),
    ]
    assert actions[2:] == ([Submit(model="iris", run_key="key-2", spec_digest="spec-1", attempt=1)] if desired else [])
    assert plan(desired, simulate(actual, actions, desired)) == []


def test_a_failed_job_fails_the_run_with_its_exit_code_and_retries_as_attempt_two() -> None:
    actions = plan({"iris": replace(WANT, retries=1)}, _actual(_ended(JobState.FAILED, 3)))
    assert actions == [
        Fail(
            model="iris", run_id="run-1", reason=Reason.TRAINING_FAILED,
            message="job 4242 ended Failed: exit code 3", exit_code=3,
        ),
        Submit(model="iris", run_key="key-1", spec_digest="spec-1", attempt=2),
    ]  # fmt: skip


def test_no_retry_once_the_budget_is_spent() -> None:
    actual = _actual(_ended(JobState.FAILED, 3, attempt=2), failed={("iris", "key-1", "spec-1"): 1})
    actions = plan({"iris": replace(WANT, retries=1)}, actual)
    assert [type(a) for a in actions] == [Fail]
    assert plan({"iris": replace(WANT, retries=1)}, _actual(failed={("iris", "key-1", "spec-1"): 2})) == []


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (JobState.FAILED, Reason.TRAINING_FAILED),
        (JobState.TIMEOUT, Reason.TIMED_OUT),
        (JobState.LOST, Reason.TRAINING_FAILED),
        (JobState.CANCELLED, Reason.CANCELLED),
    ],
)
def test_each_way_a_job_ends_badly_has_its_reason(state: JobState, reason: Reason) -> None:
    run = replace(RUNNING, job=JobStatus(state=state, message="slurm said so"))
    [fail] = plan({"iris": WANT}, _actual(run))
    assert isinstance(fail, Fail)
    assert (fail.reason, fail.exit_code) == (reason, None)
    assert fail.message == f"job 4242 ended {state}: {str(state).lower()} (slurm said so)"


def test_a_diverged_run_is_cancelled_as_a_failure_and_retried() -> None:
    run = replace(RUNNING, verdict=(Reason.DIVERGED, "loss became nan at metrics line 7"))
    assert plan({"iris": replace(WANT, retries=1)}, _actual(run)) == [
        Cancel(model="iris", run_id="run-1", reason=Reason.DIVERGED, message="loss became nan at metrics line 7"),
        Submit(model="iris", run_key="key-1", spec_digest="spec-1", attempt=2),
    ]


def test_a_plateaued_run_is_stopped_then_collected_once_its_job_is_gone() -> None:
    run = replace(RUNNING, verdict=(Reason.PLATEAUED, "loss has not improved"))
    assert plan({"iris": replace(WANT, retries=2)}, _actual(run)) == [
        Cancel(model="iris", run_id="run-1", reason=Reason.PLATEAUED, message="loss has not improved")
    ]
    stopping = replace(RUNNING, stop_reason="Plateaued")
    assert plan({"iris": WANT}, _actual(stopping)) == []
    stopped = replace(stopping, job=JobStatus(state=JobState.CANCELLED))
    assert plan({"iris": WANT}, _actual(stopped)) == [Collect(model="iris", run_id="run-1")]


def test_a_succeeded_job_and_a_validating_run_are_collected() -> None:
    assert plan({"iris": WANT}, _actual(_ended(JobState.SUCCEEDED, 0))) == [Collect(model="iris", run_id="run-1")]
    validating = replace(RUNNING, phase=Phase.VALIDATING, job=None)
    assert plan({"iris": WANT}, _actual(validating)) == [Collect(model="iris", run_id="run-1")]


def test_the_phase_follows_the_job() -> None:
    queued = replace(RUNNING, phase=Phase.QUEUED)
    assert plan({"iris": WANT}, _actual(queued)) == [SetPhase(model="iris", run_id="run-1", phase=Phase.RUNNING)]


def test_nothing_is_submitted_to_an_unavailable_backend_or_for_a_suspended_model() -> None:
    assert plan({"iris": WANT}, _actual(unavailable={"slurm": "sbatch: command not found"})) == []
    assert plan({"iris": replace(WANT, suspend=True)}, _actual()) == []


def test_the_plan_is_ordered_by_model_then_by_kind_then_by_run() -> None:
    desired = {
        "resnet": replace(WANT, model="resnet"),
        "mnist": replace(WANT, model="mnist", run_key="key-2", retries=1),
        "iris": replace(WANT, run_key="key-2"),
    }
    actual = _actual(
        replace(RUNNING, id="run-9", model="mnist", run_key="key-2", job=JobStatus(state=JobState.FAILED)),
        replace(RUNNING, id="run-2", phase=Phase.QUEUED),
        replace(RUNNING, id="run-1", phase=Phase.VALIDATING, job=None),
        replace(SUBMITTING, id="run-3", model="resnet", found_job_id="77"),
        replace(RUNNING, id="run-0", model="alexnet"),
    )
    assert [(a.model, type(a).__name__, getattr(a, "run_id", "")) for a in plan(desired, actual)] == [
        ("alexnet", "Cancel", "run-0"),
        ("iris", "Cancel", "run-2"),
        ("iris", "Collect", "run-1"),
        ("iris", "Submit", ""),
        ("mnist", "Fail", "run-9"),
        ("mnist", "Submit", ""),
        ("resnet", "Adopt", "run-3"),
    ]
