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
    Failure,
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
            suspend=draw(st.sampled_from((False, False, True))),  # a suspended model plans nothing
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
# Submitting twice as often: a crash can leave a run there with or without a job id or a found job.
PHASES = st.sampled_from([*Phase, Phase.SUBMITTING])
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
def actuals(
    draw: st.DrawFn, *, judged: bool = False, one_run_per_target: bool = False, wanted: Sequence[Target] = ()
) -> Actual:
    """Any actual state; with `wanted`, half the runs belong to those targets (see `states`)."""
    targets_ = (st.sampled_from(wanted) | TARGETS) if wanted else TARGETS
    targets = draw(st.lists(targets_, max_size=5, unique=one_run_per_target))
    return Actual(
        runs={f"run-{i}": any_run(draw, f"run-{i}", target, judged=judged) for i, target in enumerate(targets)},
        registered=draw(REGISTERED),
        failed_attempts=draw(FAILED),
        unavailable=draw(UNAVAILABLE),
    )


@st.composite
def states(
    draw: st.DrawFn, *, judged: bool = False, one_run_per_target: bool = False
) -> tuple[dict[str, Want], Actual]:
    """Desired and actual state drawn together, so that runs meet the Wants they stand for.

    Drawn apart, a run rarely has the wanted (model, run key, spec digest), and the cases where the planner must
    hold back are rare: a Submitting run with a job id, two runs of one spec failing in the same pass, a run
    being collected while retries are left (mutation testing found each of them unpinned).
    """
    desired = draw(wants())
    wanted = [_target(want) for want in desired.values()]
    return desired, draw(actuals(judged=judged, one_run_per_target=one_run_per_target, wanted=wanted))


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
@given(state=states(judged=True))
def test_applying_a_plan_leaves_nothing_to_do(state: tuple[dict[str, Want], Actual]) -> None:
    """Idempotence: plan, apply (`simulate`), plan again -> an empty plan.

    It holds when the apply changes only what the actions say: every job keeps the status it had (a job just
    submitted, resubmitted or adopted is PENDING), every action succeeds, metrics do not move (a verdict stays
    until acted on). Runs may be in any phase with any job state, job id, found job or stop reason; the only
    restrictions are on verdicts (`judged`, and never Cancelled: see `ANY_VERDICT`).
    """
    desired, actual = state
    first = plan(desired, actual)
    assert plan(desired, simulate(actual, first, desired)) == []


@SAFETY
@given(state=states(one_run_per_target=True))
def test_never_two_live_runs_for_one_spec_after_applying_a_plan(state: tuple[dict[str, Want], Actual]) -> None:
    """Starting from at most one unfinished run per (model, run key, spec digest), a plan never adds a second."""
    desired, actual = state
    after = simulate(actual, plan(desired, actual), desired)
    live = Counter(_target(run) for run in after.runs.values())
    assert all(count == 1 for count in live.values()), live


@SAFETY
@given(state=states())
def test_submits_respect_versions_suspend_backends_and_retry_budget(state: tuple[dict[str, Want], Actual]) -> None:
    desired, actual = state
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
@given(state=states(judged=True))
def test_every_eligible_model_has_a_run_or_a_version_after_applying_a_plan(
    state: tuple[dict[str, Want], Actual],
) -> None:
    """Nothing is forgotten: an unsuspended model on a reachable backend with retries left is being trained."""
    desired, actual = state
    after = simulate(actual, plan(desired, actual), desired)
    for want in desired.values():
        spent = after.failed_attempts.get(_target(want), 0) > want.retries
        if want.suspend or want.backend in actual.unavailable or spent:
            continue
        registered = want.run_key in after.registered.get(want.model, frozenset())
        # A run of the same key stands for the model even if only retries, timeout or gates changed since.
        assert registered or any((r.model, r.run_key) == (want.model, want.run_key) for r in after.runs.values())


@settings(max_examples=500, deadline=None)  # the duplicate-job promise; each case needs a run and a Want to meet
@given(state=states())
def test_a_key_is_submitted_again_only_when_every_run_of_it_ends_in_this_plan(
    state: tuple[dict[str, Want], Actual],
) -> None:
    """No duplicate job: a run of the wanted key that this plan does not fail (Submitting with a job id, on an
    unreachable backend, being collected, stopping on a plateau...) still stands for the key."""
    desired, actual = state
    actions = plan(desired, actual)
    ended = {a.run_id for a in actions if isinstance(a, Fail | Cancel) and a.reason is not Reason.PLATEAUED}
    for submit in (a for a in actions if isinstance(a, Submit)):
        for run in actual.runs.values():
            if (run.model, run.run_key) == (submit.model, submit.run_key):
                assert run.id in ended, (run, actions)


ENDINGS = st.sampled_from(
    [JobState.FAILED, JobState.TIMEOUT, JobState.LOST, JobState.CANCELLED, Reason.DIVERGED, Reason.TIMED_OUT]
)


@SAFETY
@given(retries=st.integers(0, 4), before=st.integers(0, 4), endings=st.lists(ENDINGS, min_size=1, max_size=4))
def test_every_run_that_fails_in_a_pass_spends_one_attempt(
    retries: int, before: int, endings: list[JobState | Reason]
) -> None:
    """Runs of one spec failing in the same pass (a job that ended badly, a verdict that cancels it) each count."""
    runs = [
        replace(RUNNING, id=f"run-{i}", attempt=before + i + 1, verdict=(ending, "x"))
        if isinstance(ending, Reason)
        else _ended(ending, None, id=f"run-{i}", attempt=before + i + 1)
        for i, ending in enumerate(endings)
    ]
    failed = {("iris", "key-1", "spec-1"): before} if before else None
    actions = plan({"iris": replace(WANT, retries=retries)}, _actual(*runs, failed=failed))
    spent = before + len(endings)
    assert len(actions) == len(endings) + (spent <= retries)
    if spent <= retries:
        assert actions[-1] == Submit(model="iris", run_key="key-1", spec_digest="spec-1", attempt=spent + 1)


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


def test_a_job_seen_running_carries_when_its_backend_says_it_started() -> None:
    """So that its GPU-hours count from its start, not from the pass that first saw it running."""
    queued = replace(RUNNING, phase=Phase.QUEUED, job=JobStatus(state=JobState.RUNNING, started_at=1000.5))
    assert plan({"iris": WANT}, _actual(queued)) == [
        SetPhase(model="iris", run_id="run-1", phase=Phase.RUNNING, started_at=1000.5)
    ]
    back = replace(RUNNING, job=JobStatus(state=JobState.PENDING, started_at=1000.5))  # requeued: no start
    assert plan({"iris": WANT}, _actual(back)) == [SetPhase(model="iris", run_id="run-1", phase=Phase.QUEUED)]


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


# ---- safety properties found by mutation testing (docs/mutation-testing.md) ---------------------------------
def test_a_submitting_run_with_a_job_id_stands_for_its_run_key() -> None:
    """Its job exists (the id was recorded, the phase not yet moved): a second Submit would train it twice."""
    recorded = replace(SUBMITTING, job_id="4242")
    assert plan({"iris": WANT}, _actual(recorded)) == []
    assert plan({"iris": replace(WANT, retries=2)}, _actual(recorded, failed={("iris", "key-1", "spec-1"): 1})) == []


def test_a_submitting_run_on_an_unreachable_backend_stands_for_its_run_key() -> None:
    """Its job may exist; the model's backend changing (and being reachable) does not make it safe to submit."""
    actual = _actual(SUBMITTING, unavailable={"slurm": "slurmctld down"})
    assert plan({"iris": replace(WANT, backend="local")}, actual) == []


def test_two_failures_of_one_spec_in_one_pass_spend_two_attempts() -> None:
    """`retries: 1` allows two attempts in all: two runs failing in the same pass leave nothing to retry."""
    first = _ended(JobState.FAILED, 1)
    second = _ended(JobState.TIMEOUT, None, id="run-2", attempt=2)
    actions = plan({"iris": replace(WANT, retries=1)}, _actual(first, second))
    assert [(type(a), getattr(a, "run_id", "")) for a in actions] == [(Fail, "run-1"), (Fail, "run-2")]
    actions = plan({"iris": replace(WANT, retries=2)}, _actual(first, second))
    assert actions[-1] == Submit(model="iris", run_key="key-1", spec_digest="spec-1", attempt=3)


@pytest.mark.parametrize(
    "run",
    [
        _ended(JobState.SUCCEEDED, 0),
        replace(RUNNING, stop_reason="Plateaued", job=JobStatus(state=JobState.CANCELLED)),
        replace(RUNNING, phase=Phase.VALIDATING, job=None),
    ],
    ids=["succeeded", "plateau-stopped", "validating"],
)
def test_a_run_being_collected_is_neither_a_failure_nor_replaced(run: RunView) -> None:
    """Until its version exists it stands for its run key, even with retries left: no second training."""
    assert plan({"iris": replace(WANT, retries=1)}, _actual(run)) == [Collect(model="iris", run_id="run-1")]


def test_a_job_whose_environment_cannot_be_set_up_fails_for_good_whatever_retries_say() -> None:
    status = JobStatus(state=JobState.FAILED, exit_code=1, message="module x/1 cannot be loaded", permanent=True)
    want = replace(WANT, retries=3)
    [fail] = plan({"iris": want}, _actual(replace(RUNNING, job=status)))
    assert isinstance(fail, Fail) and fail.reason is Reason.ENVIRONMENT_FAILED
    target = ("iris", "key-1", "spec-1")
    later = Actual(runs={}, registered={}, failed_attempts={target: 1}, unavailable={}, now=1e9,
                   last_failures={target: Failure(ended_at=1.0, reason=str(Reason.ENVIRONMENT_FAILED))})  # fmt: skip
    assert plan({"iris": want}, later) == [], "not retried: the module does not appear by waiting"
    transient = replace(later, last_failures={target: Failure(ended_at=1.0, reason=str(Reason.TRAINING_FAILED))})
    assert plan({"iris": want}, transient) == [Submit(model="iris", run_key="key-1", spec_digest="spec-1", attempt=2)]
