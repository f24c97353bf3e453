"""The pure change report behind `gitopsd plan` (`reconcile/changeplan.py`): why a model trains or not, alias
moves, removed and suspended models, refusals, GPU-hours and totals, on desired models built from spec text."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.cli.plan import _declared
from gitopsd.model import Phase, Reason
from gitopsd.reconcile.changeplan import (
    AliasChange,
    ChangePlan,
    Declared,
    DryRun,
    Entry,
    Facts,
    InFlight,
    Omitted,
    Verdict,
    Why,
    alias_changes,
    build,
    gpu_cost,
    settled,
    totals,
    training_changes,
)
from gitopsd.reconcile.desired import DesiredModel, DesiredState, keys_for
from gitopsd.reconcile.planner import Cancel, Submit, Wait, Want
from gitopsd.reconcile.planreport import render_markdown, render_text, to_json
from gitopsd.reconcile.state import StateStore
from gitopsd.reconcile.summarize import row_of, want_of, with_want
from gitopsd.spec.load import load_model
from gitopsd.spec.schema import RepositorySpec, resolve_train

SHA_A, SHA_B = "a" * 64, "b" * 64
REPO = RepositorySpec.model_validate({"apiVersion": "gitopsd/v1", "kind": "Repository", "backends": {"local": {}}})

SPEC = """\
apiVersion: gitopsd/v1
kind: Model
metadata:
  name: {name}
  labels: {{team: {team}}}
spec:
  suspend: {suspend}
  aliases: {aliases}
  train:
    command: python3 train.py --lr {lr}
    workdir: src
    env: {{SEED: "{seed}"}}
    resources: {{gpus: {gpus}, nodes: {nodes}}}
    retries: {retries}
{timeout}  data:
    - uri: data/d.csv
      sha256: "{sha}"
  outputs:
    artifact: {artifact}
  validate: [{gate}]
"""


def model(
    name: str = "m", *, tree: str = "t1", team: str = "a", suspend: bool = False, aliases: str = "{}",
    lr: str = "0.5", seed: str = "7", gpus: int = 0, nodes: int = 1, retries: int = 0, timeout: str | None = "1h",
    sha: str = SHA_A, artifact: str = "model.json", gate: str = "accuracy >= 0.9",
) -> DesiredModel:  # fmt: skip
    text = SPEC.format(name=name, team=team, suspend=str(suspend).lower(), aliases=aliases, lr=lr, seed=seed,
                       gpus=gpus, nodes=nodes, retries=retries, sha=sha, artifact=artifact, gate=gate,
                       timeout=f"    timeout: {timeout}\n" if timeout else "")  # fmt: skip
    spec = load_model(text, f"models/{name}.yaml")
    train = resolve_train(spec, REPO)
    run_key, spec_digest = keys_for(spec, train, tree, None)
    return DesiredModel(name=name, path=f"models/{name}.yaml", spec=spec, train=train, code_tree=tree,
                        run_key=run_key, spec_digest=spec_digest)  # fmt: skip


def state(*models: DesiredModel, commit: str = "c" * 40) -> DesiredState:
    return DesiredState(commit=commit, repo=REPO, models={m.name: m for m in models})


def submit(m: DesiredModel, attempt: int = 1) -> Submit:
    return Submit(model=m.name, run_key=m.run_key, spec_digest=m.spec_digest, attempt=attempt)


def one(base: DesiredModel | None, head: DesiredModel, facts: Facts | None = None, dry: DryRun | None = None):  # type: ignore[no-untyped-def]
    plan = build(base=state(base) if base else None, head=state(head), facts=facts or Facts(),
                 dry_run=dry if dry is not None else DryRun(actions=(submit(head),)))  # fmt: skip
    assert len(plan.entries) == 1
    return plan.entries[0]


@pytest.mark.parametrize(
    ("change", "code", "text"),
    [
        ({"tree": "t2"}, Why.CODE_CHANGED, "code tree changed (src)"),
        ({"sha": SHA_B}, Why.DATA_CHANGED, "data digest changed (data/d.csv)"),
        ({"gpus": 2}, Why.RESOURCES_CHANGED, "resources changed (gpus 0 -> 2)"),
        ({"nodes": 2}, Why.RESOURCES_CHANGED, "resources changed (nodes 1 -> 2)"),
        ({"lr": "0.1"}, Why.COMMAND_CHANGED, "command changed"),
        ({"seed": "8"}, Why.ENV_CHANGED, "env changed (SEED)"),
        ({"artifact": "m.pt"}, Why.OUTPUTS_CHANGED, "outputs changed"),
    ],
)
def test_each_changed_input_of_the_training_is_named_and_trains(
    change: dict[str, object], code: Why, text: str
) -> None:
    base, head = model(), model(**change)  # type: ignore[arg-type]
    assert base.run_key != head.run_key
    assert [(b.code, b.text) for b in training_changes(base, head)] == [(code, text)]
    entry = one(base, head)
    assert entry.verdict is Verdict.TRAIN and entry.change == "modified" and entry.attempt == 1
    assert [r.code for r in entry.reasons] == [code]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"team": "b"}, "metadata.labels"),
        ({"aliases": "{prod: 1}"}, "spec.aliases"),
        ({"gate": "accuracy >= 0.95"}, "spec.validate"),
        ({"retries": 2}, "spec.train.retries"),
        ({"timeout": "2h"}, "spec.train.timeout"),
    ],
)
def test_a_change_that_keeps_the_run_key_is_label_only_and_trains_nothing(
    change: dict[str, object], field: str
) -> None:
    base, head = model(), model(**change)  # type: ignore[arg-type]
    assert base.run_key == head.run_key
    entry = one(base, head)  # even where a dry run on a fresh state directory would submit everything
    assert entry.verdict is Verdict.NONE and entry.change == "modified"
    assert [r.code for r in entry.reasons] == [Why.LABEL_ONLY]
    assert entry.reasons[0].text.startswith("label only: nothing trains") and field in entry.reasons[0].text


def test_an_unchanged_model_is_quiet_and_a_new_one_trains() -> None:
    same = one(model(), model())
    assert (same.verdict, same.change, same.interesting) == (Verdict.NONE, "unchanged", False)
    assert same.reasons[0].code is Why.UNCHANGED
    new = one(None, model())
    assert (new.verdict, new.change, new.reasons[0].code) == (Verdict.TRAIN, "added", Why.NEW_MODEL)


def test_what_the_state_directory_knows_stands_for_a_changed_run_key() -> None:
    base, head = model(), model(tree="t2")
    registered = one(base, head, Facts(known=True, versions={("m", head.run_key): 4}), DryRun())
    assert registered.verdict is Verdict.NONE and registered.reasons[-1].text == "already registered as v4"
    run = InFlight(model="m", run_id="r1", run_key=head.run_key, phase=str(Phase.RUNNING))
    flying = one(base, head, Facts(known=True, in_flight=(run,)), DryRun())
    assert flying.verdict is Verdict.NONE and flying.reasons[-1].code is Why.IN_FLIGHT
    spent = one(base, head, Facts(known=True), DryRun())
    assert spent.verdict is Verdict.NONE and spent.reasons[-1].code is Why.RETRIES_EXHAUSTED
    waits = one(base, head, Facts(known=True), DryRun(actions=(Wait(model="m", failed=1, retry_at=10.0),)))
    assert (waits.verdict, waits.attempt, waits.reasons[-1].code) == (Verdict.TRAIN, 2, Why.RETRYING)
    down = one(base, head, Facts(), DryRun(unavailable={"local": "sinfo: connection refused"}))
    assert down.verdict is Verdict.TRAIN and down.reasons[-1].code is Why.BACKEND_UNAVAILABLE


def test_an_unchanged_model_a_known_state_directory_still_trains_is_said_to_train() -> None:
    entry = one(model(), model(), Facts(known=True))
    assert entry.verdict is Verdict.TRAIN and [r.code for r in entry.reasons] == [Why.UNCHANGED, Why.NOT_REGISTERED]


def test_a_refusal_fails_the_plan_and_blocks_only_its_model() -> None:
    big, small = model("big", gpus=8), model("small", gpus=1)
    why = "refused at plan time: gpus 8 is over the operator's cap of 4 for this backend"
    dry = DryRun(actions=(submit(small),), blocked={"big": why}, blocked_reasons={"big": Reason.POLICY_DENIED})
    plan = build(base=None, head=state(big, small), facts=Facts(), dry_run=dry)
    verdicts = {e.model: (e.verdict, e.refused) for e in plan.entries}
    assert verdicts == {"big": (Verdict.REFUSED, why), "small": (Verdict.TRAIN, "")}
    assert plan.exit_code == 1 and plan.totals.refused == 1 and plan.totals.trainings == 1


def test_a_model_waiting_for_its_base_waits_and_does_not_fail_the_plan() -> None:
    head = model()
    dry = DryRun(blocked={"m": "waiting for base model x@prod: no such registered version yet"},
                 blocked_reasons={"m": Reason.BASE_UNAVAILABLE})  # fmt: skip
    plan = build(base=None, head=state(head), facts=Facts(), dry_run=dry)
    assert plan.entries[0].verdict is Verdict.WAIT and plan.exit_code == 0


def test_suspended_and_resumed_models() -> None:
    run = InFlight(model="m", run_id="r1", run_key="k", phase="Running")
    suspended = one(model(), model(suspend=True), Facts(known=True, in_flight=(run,)), DryRun())
    assert suspended.verdict is Verdict.SUSPEND and suspended.continues == ("run r1 (Running)",)
    resumed = one(model(suspend=True), model())
    assert resumed.verdict is Verdict.TRAIN and [r.code for r in resumed.reasons] == [Why.RESUMED]


def test_a_model_that_stays_suspended_is_counted_not_listed_unless_a_run_or_an_alias_moves() -> None:
    stays = one(model(suspend=True), model(suspend=True))
    assert (stays.verdict, stays.change, stays.interesting) == (Verdict.SUSPEND, "unchanged", False)
    assert one(model(), model(suspend=True)).interesting, "suspending it is a change: listed"
    assert one(None, model(suspend=True)).interesting, "a new suspended model is listed"
    run = InFlight(model="m", run_id="r1", run_key="k", phase="Running")
    flying = one(model(suspend=True), model(suspend=True), Facts(known=True, in_flight=(run,)), DryRun())
    assert flying.continues == ("run r1 (Running)",) and flying.interesting, "its run in flight is named"
    pinned = model(suspend=True, aliases="{prod: 1}")
    moved = one(pinned, pinned, Facts(known=True, versions={("m", pinned.run_key): 1}), DryRun())
    assert moved.aliases and moved.interesting, "an alias that moves is listed"


def test_the_reports_count_the_models_that_stay_suspended_and_list_the_change() -> None:
    paused, idle, changed = model("paused", suspend=True), model("idle"), model("changed")
    head = state(paused, idle, model("changed", tree="t2"))
    plan = build(base=state(paused, idle, changed), head=head, facts=Facts(), dry_run=DryRun(actions=(
        submit(head.models["changed"]),)))  # fmt: skip
    text = render_text(plan).splitlines()
    assert [line for line in text if line.startswith("  ")] == [
        "  changed: trains: code tree changed (src)",
        "  (2 unchanged model(s) not shown; 1 of them suspended)",
    ]
    comment = render_markdown(plan)
    assert "paused" not in comment and "| changed |" in comment.replace("**", "")
    assert "2 unchanged model(s) not shown." in comment and " · 1 suspended" in comment


def test_a_removed_model_cancels_its_runs_and_drops_its_aliases() -> None:
    old = model(aliases="{production: 2}")
    cancel = Cancel(model="m", run_id="r9", reason=Reason.CANCELLED, message="model was removed from Git")
    facts = Facts(known=True, versions={("m", old.run_key): 2}, aliases={("m", "production"): 2})
    plan = build(base=state(old), head=state(), facts=facts, dry_run=DryRun(actions=(cancel,)))
    (entry,) = plan.entries
    assert (entry.verdict, entry.change, entry.cancels) == (
        Verdict.REMOVE,
        "removed",
        ("run r9: model was removed from Git",),
    )
    assert [(a.alias, a.from_version, a.to_version) for a in entry.aliases] == [("production", 2, None)]
    assert plan.totals.removed == 1 and plan.totals.cancelled == 1


def test_gpu_hours_are_bounded_by_the_timeout_or_said_to_be_unbounded() -> None:
    assert gpu_cost(model(gpus=2, nodes=2, timeout="30m")) == (4, 2.0)
    assert gpu_cost(model(gpus=0, timeout=None)) == (0, 0.0)
    assert gpu_cost(model(gpus=1, timeout=None)) == (1, None)
    a, b = model("a", gpus=2, timeout=None), model("b", gpus=1, timeout="3h")
    plan = build(base=None, head=state(a, b), facts=Facts(), dry_run=DryRun(actions=(submit(a), submit(b))))
    totals = plan.totals
    assert (totals.gpus, totals.gpu_hours, totals.unbounded) == (3, 3.0, ("a",))


@pytest.mark.parametrize(
    ("base", "head", "current", "numbers", "trains", "expected"),
    [
        ({"p": 1}, {"p": 2}, {"p": 1}, {1, 2}, False, [("p", 1, 2, False, "")]),
        ({}, {"p": "latest"}, {}, {1}, True, [("p", None, None, True, "")]),
        ({}, {"p": 2}, {}, {1}, True, [("p", None, 2, True, "")]),
        ({}, {"p": 7}, {}, {1}, False, [("p", None, 7, False, "no such registered version (latest is m@1)")]),
        ({"p": 1}, {"p": 1}, {"p": 1}, {1}, True, []),
        ({"p": "latest"}, {"p": "latest"}, {"p": 1}, {1}, False, []),
        ({"p": 1}, {}, {"p": 1}, {1}, False, [("p", 1, None, False, "")]),
    ],
)
def test_alias_moves_against_a_known_registry(base, head, current, numbers, trains, expected) -> None:  # type: ignore[no-untyped-def]
    facts = Facts(known=True, aliases={("m", a): v for a, v in current.items()})
    moves = alias_changes(model="m", base=base, head=head, facts=facts, numbers=numbers, trains=trains)
    assert [(a.alias, a.from_version, a.to_version, a.to_new, a.refused) for a in moves] == expected


def test_alias_moves_on_a_fresh_state_directory_compare_the_declarations() -> None:
    moves = alias_changes(
        model="m", base={"p": 1, "s": 2}, head={"p": 2, "s": 2}, facts=Facts(), numbers=(), trains=False
    )
    assert [(a.alias, a.from_version, a.to_target, a.refused) for a in moves] == [("p", 1, "2", "")]


# ---- properties over arbitrary pairs of models -------------------------------------------------------------

VARIANTS = st.fixed_dictionaries(
    {},
    optional={
        "tree": st.sampled_from(["t1", "t2"]), "team": st.sampled_from(["a", "b"]), "suspend": st.booleans(),
        "gpus": st.integers(0, 2), "timeout": st.sampled_from(["1h", None]), "sha": st.sampled_from([SHA_A, SHA_B]),
        "retries": st.integers(0, 1), "aliases": st.sampled_from(["{}", "{prod: 1}", "{prod: latest, next: 4}"]),
    },
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.tuples(st.none() | VARIANTS, st.none() | VARIANTS)),
    known=st.booleans(),
    refuse=st.sets(st.sampled_from(["a", "b", "c"])),
)
def test_report_invariants(pairs: dict[str, tuple[dict | None, dict | None]], known: bool, refuse: set[str]) -> None:  # type: ignore[type-arg]
    base = [model(n, **b) for n, (b, _) in pairs.items() if b is not None]
    head = [model(n, **h) for n, (_, h) in pairs.items() if h is not None]
    blocked = {n: "refused at plan time: over a cap" for n in refuse if any(m.name == n for m in head)}
    actions = tuple(submit(m) for m in head if not m.suspend and m.name not in blocked)
    dry = DryRun(actions=actions, blocked=blocked, blocked_reasons=dict.fromkeys(blocked, Reason.POLICY_DENIED))
    plan = build(base=state(*base), head=state(*head), facts=Facts(known=known), dry_run=dry)
    names = [e.model for e in plan.entries]
    assert names == sorted({m.name for m in base} | {m.name for m in head})
    before = {m.name: m for m in base}
    for entry in plan.entries:
        old = before.get(entry.model)
        new = next((m for m in head if m.name == entry.model), None)
        if new is None:
            assert entry.verdict is Verdict.REMOVE
            continue
        if entry.trains and not known:
            assert old is None or old.run_key != new.run_key or (old.suspend and not new.suspend)
        codes = {r.code for r in entry.reasons}
        if Why.LABEL_ONLY in codes:
            assert old is not None and old.run_key == new.run_key
            assert not entry.trains or (known and Why.NOT_REGISTERED in codes)
        assert (entry.gpu_hours is None) == (entry.gpus > 0 and new.train.timeout_s is None)
        assert entry.verdict is not Verdict.REFUSED or entry.model in blocked
    assert plan.totals.trainings == sum(e.trains for e in plan.entries)
    assert plan.exit_code == (1 if any(e.verdict is Verdict.REFUSED for e in plan.entries) else 0)
    assert replace(plan, problems=()).valid


@settings(max_examples=40, deadline=None)
@given(
    variant=VARIANTS,
    known=st.booleans(),
    registered=st.booleans(),
    flying=st.booleans(),
    dry=st.sampled_from(["submit", "nothing", "blocked", "waiting"]),
)
def test_a_model_kept_as_the_same_object_is_reported_as_an_equal_copy_would_be(
    variant: dict[str, object], known: bool, registered: bool, flying: bool, dry: str
) -> None:
    """The loader hands on the same object for a model whose inputs did not move, and the report skips comparing
    it with itself: what it says must be exactly what comparing two equal, separately loaded models says."""
    same, twin = model(**variant), model(**variant)  # type: ignore[arg-type]
    assert same is not twin and same == twin
    facts = Facts(
        known=known,
        versions={("m", same.run_key): 3} if registered else {},
        in_flight=(InFlight(model="m", run_id="r1", run_key=same.run_key, phase="Running"),) if flying else (),
    )
    dry_run = {
        "submit": DryRun(actions=(submit(same),)),
        "nothing": DryRun(actions=()),
        "blocked": DryRun(actions=(), blocked={"m": "over a cap"}, blocked_reasons={"m": Reason.POLICY_DENIED}),
        "waiting": DryRun(actions=(), blocked={"m": "base m0@1 missing"},
                          blocked_reasons={"m": Reason.BASE_UNAVAILABLE}),
    }[dry]  # fmt: skip
    assert one(same, same, facts, dry_run) == one(twin, same, facts, dry_run)


@settings(max_examples=40, deadline=None)
@given(
    variants=st.dictionaries(st.sampled_from(["a", "b", "c"]), VARIANTS, min_size=1),
    registered=st.sets(st.sampled_from(["a", "b", "c"])),
    pointing=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 2)),
    bound=st.sets(st.sampled_from(["a", "b", "c"])),
    blocked=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(list(Reason)[:6])),
)
def test_a_settled_plan_from_the_recorded_rows_is_the_plan_of_the_commit_against_itself(
    variants: dict[str, dict[str, object]],
    registered: set[str],
    pointing: dict[str, int],
    bound: set[str],
    blocked: dict[str, Reason],
) -> None:
    """What a pass writes of each model to the `models` table (real SQLite) and `settled` reads back tells the
    plan that `build` tells with the commit loaded as base and head: versions, aliases where they point now,
    run keys bound to a base's version, and refusals or waits."""
    models = [model(n, **v) for n, v in variants.items()]  # type: ignore[arg-type]
    keys = {m.name: "bound-" + m.run_key[:8] if m.name in bound else m.run_key for m in models}
    facts = Facts(
        known=True,
        versions={(n, keys[n]): 1 for n in registered if n in keys},
        aliases={(n, "prod"): number for n, number in pointing.items()},
    )
    wants = {m.name: _want(m, keys[m.name], blocked.get(m.name)) for m in models}
    dry = DryRun(
        blocked={n: w.blocked for n, w in wants.items() if w.blocked}, run_keys=keys,
        blocked_reasons={n: w.blocked_reason for n, w in wants.items() if w.blocked},
    )  # fmt: skip
    commit = state(*models)
    with tempfile.TemporaryDirectory() as scratch, StateStore(Path(scratch) / "state.db") as store:
        store.sync_models({m.name: with_want(row_of(m), wants[m.name]) for m in models}, {})
        lines = store.plan_lines()
        noted, quiet, suspended = store.settled_quiet({name for name, _ in facts.aliases})
    recorded = DryRun(
        blocked={line.name: line.blocked for line in lines if line.blocked},
        blocked_reasons={line.name: Reason(line.blocked_reason) for line in lines if line.blocked},
        run_keys={line.name: line.wanted_key for line in lines},
    )  # fmt: skip
    told = settled(commit=commit.commit, models=_declared(lines), facts=facts, dry_run=recorded)
    assert told == build(base=commit, head=commit, facts=facts, dry_run=dry)
    # The brief plan (text, markdown) reads only the rows of note and counts the rest, by the rule of
    # `quiet_when_settled`: SQLite and Python draw the same line, and each omitted line is a quiet one.
    rule = {d.name for d in _declared(lines) if quiet_when_settled(d, facts, recorded)}
    assert {line.name for line in lines} - {line.name for line in noted} == rule
    assert (quiet, suspended) == (len(rule), sum(line.suspend for line in lines if line.name in rule))
    assert not any(e.interesting for e in told.entries if e.model in rule)
    brief = settled(commit=commit.commit, models=_declared(noted), facts=facts, dry_run=recorded,
                    omitted=Omitted(quiet, suspended))  # fmt: skip
    assert brief.totals == told.totals and brief.exit_code == told.exit_code
    assert render_text(brief) == render_text(told) and render_markdown(brief) == render_markdown(told)


def quiet_when_settled(declared: Declared, facts: Facts, dry_run: DryRun) -> bool:
    """The rule `StateStore.settled_quiet` applies in SQL, in Python: the line a settled plan gives `declared` is
    quiet when nothing blocks the model and it has no alias, declared or held in the registry (a settled state
    directory has no run in flight)."""
    return not (declared.aliases or declared.name in dry_run.blocked or declared.name in facts.aliases_of)


def _want(m: DesiredModel, run_key: str, why: Reason | None) -> Want:
    """What a pass wants of `m`: its run key (bound to a base's version), and why it may submit nothing."""
    blocked = f"{why} of {m.name}" if why else ""
    return replace(want_of(m), run_key=run_key, blocked=blocked, blocked_reason=why or Reason.BASE_UNAVAILABLE)


_ENTRIES = st.lists(
    st.builds(
        Entry,
        model=st.text(min_size=1, max_size=4),
        path=st.just("models/m.yaml"),
        verdict=st.sampled_from(Verdict),
        change=st.sampled_from(["added", "modified", "removed", "unchanged"]),
        reasons=st.just(()),
        gpus=st.integers(0, 8),
        gpu_hours=st.none() | st.floats(0, 1e4),
        cancels=st.lists(st.just("run r: why"), max_size=2).map(tuple),
        aliases=st.lists(st.builds(AliasChange, alias=st.just("prod"), from_version=st.none(),
                                   from_target=st.none(), to_version=st.just(1), to_target=st.none()),
                         max_size=2).map(tuple),
    ),
    max_size=30,
)  # fmt: skip


@given(entries=_ENTRIES)
def test_the_totals_sum_the_trainings_and_count_the_rest(entries: list[Entry]) -> None:
    """Counted in one pass (ten thousand entries); the sums as they are defined, entry by entry."""
    found = totals(entries)
    training = [e for e in entries if e.verdict is Verdict.TRAIN]
    assert found.models == len(entries)
    assert found.trainings == len(training)
    assert found.gpus == sum(e.gpus for e in training)
    assert found.gpu_hours == sum(e.gpu_hours or 0.0 for e in training)
    assert found.unbounded == tuple(e.model for e in training if e.gpu_hours is None)
    for count, verdict in ((found.refused, Verdict.REFUSED), (found.waiting, Verdict.WAIT),
                           (found.removed, Verdict.REMOVE), (found.suspended, Verdict.SUSPEND)):  # fmt: skip
        assert count == sum(e.verdict is verdict for e in entries)
    assert found.cancelled == sum(len(e.cancels) for e in entries)
    assert found.alias_moves == sum(len(e.aliases) for e in entries)
    plan = ChangePlan(base_commit=None, head_commit=None, base_label="", head_label="", entries=tuple(entries))
    assert plan.exit_code == (1 if found.refused else 0)


def test_a_brief_plan_is_never_rendered_as_json() -> None:
    """JSON lists every model: a plan that only counts its quiet ones would drop them silently, so it refuses."""
    brief = ChangePlan(base_commit="a" * 40, head_commit="a" * 40, base_label="b", head_label="h",
                       omitted=Omitted(models=3, suspended=1))  # fmt: skip
    assert "(3 unchanged model(s) not shown; 1 of them suspended)" in render_text(brief)
    assert (brief.totals.models, brief.totals.suspended) == (3, 1)
    with pytest.raises(ValueError, match="JSON lists every model"):
        to_json(brief)
