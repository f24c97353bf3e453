"""Team policy's pure core (`gitopsd.spec.policy`) and its configuration (`[[policies]]`)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitopsd.daemon.config import load_config
from gitopsd.errors import PermanentError
from gitopsd.spec.policy import (
    RECHECK_S,
    WEEK_S,
    Ask,
    PolicyRule,
    Spent,
    applicable,
    budget_refusals,
    deciding,
    glob_match,
    next_look,
    static_refusal,
    team_of,
    usage,
    used_by_rule,
)

H = 3600.0
NOW = 1_000 * WEEK_S  # any moment far from the epoch


def rules(*rules: PolicyRule) -> tuple[tuple[int, PolicyRule], ...]:
    return applicable(list(rules), None)


def ask(model: str = "m", path: str = "models/m.yaml", **kw: object) -> Ask:
    return Ask(model=model, path=path, backend=str(kw.pop("backend", "local")), **kw)  # type: ignore[arg-type]


VISION = PolicyRule(team="vision", paths=["models/vision/**"], max_gpu_hours_per_week=160)
NLP = PolicyRule(team="nlp", paths=["models/nlp/**"], max_gpu_hours_per_week=100)


# globs ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("models/vision/**", "models/vision/a.yaml", True),
        ("models/vision/**", "models/vision/deep/b.yaml", True),
        ("models/vision/**", "models/visionary/a.yaml", False),
        ("models/vision/**", "models/a.yaml", False),
        ("models/*.yaml", "models/a.yaml", True),
        ("models/*.yaml", "models/vision/a.yaml", False),  # `*` stays within one directory
        ("**/a.yaml", "a.yaml", True),
        ("**/a.yaml", "x/y/a.yaml", True),
        ("models/**/a.yaml", "models/a.yaml", True),
        ("models/**/a.yaml", "models/x/y/a.yaml", True),
        ("models/**/a.yaml", "models/x/y/b.yaml", False),
        ("models/v?.yaml", "models/v1.yaml", True),
        ("models/[ab].yaml", "models/c.yaml", False),
        ("**", "anything/at/all.yaml", True),
        ("Models/*.yaml", "models/a.yaml", False),  # case matters, as in Git
    ],
)
def test_glob_match(pattern: str, path: str, matches: bool) -> None:
    assert glob_match(pattern, path) is matches


segment = st.text(alphabet="abc.-_", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
paths = st.lists(segment, min_size=1, max_size=5).map("/".join)


@given(paths)
def test_a_path_matches_itself_and_every_prefix_with_double_star(path: str) -> None:
    assert glob_match(path, path)
    assert glob_match("**", path)
    parts = path.split("/")
    for i in range(len(parts)):
        assert glob_match("/".join([*parts[:i], "**"]), path)


@given(paths, paths)
def test_single_star_never_crosses_a_directory(a: str, b: str) -> None:
    depth = len(a.split("/"))
    assert glob_match("/".join(["*"] * depth), b) is (len(b.split("/")) == depth)


@pytest.mark.parametrize(
    ("glob", "why"),
    [
        ("", "expected a relative path glob"),
        ("/models/**", "expected a relative path glob"),
        ("models\\a", "expected a relative path glob"),
        ("models/a\x00", "expected a relative path glob"),
        ("models/../x", "no empty, '.' or '..' segment"),
        ("models//a", "no empty, '.' or '..' segment"),
        ("./models/*", "no empty, '.' or '..' segment"),
    ],
)
def test_a_glob_that_no_spec_path_can_have_is_refused(glob: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        PolicyRule(team="t", paths=[glob])


# teams and repositories ----------------------------------------------------------------------------------------
def test_the_first_matching_rule_names_the_team() -> None:
    catch_all = PolicyRule(team="everyone")
    found = rules(VISION, catch_all)
    assert team_of("models/vision/a.yaml", found) == "vision"
    assert team_of("models/b.yaml", found) == "everyone"
    assert team_of("models/b.yaml", rules(VISION)) is None
    assert team_of("models/vision/a.yaml", rules(catch_all, VISION)) == "everyone"


def test_rules_apply_to_the_repositories_they_name_and_cli_use_gets_those_for_every_one() -> None:
    mine = PolicyRule(team="a", repositories=["alpha"])
    every = PolicyRule(team="b")
    assert applicable([mine, every], "alpha") == ((0, mine), (1, every))
    assert applicable([mine, every], "beta") == ((1, every),)
    assert applicable([mine, every], None) == ((1, every),)


# static limits -------------------------------------------------------------------------------------------------
def test_static_limits_name_the_rule_and_the_numbers() -> None:
    rule = PolicyRule.model_validate({"team": "vision", "paths": ["models/vision/**"], "backends": ["slurm", "hpc"],
                                      "partitions": ["gpu", "debug"], "max_gpus": 8, "max_timeout": "48h",
                                      "max_retries": 2})  # fmt: skip
    found = rules(PolicyRule(team="other", paths=["nowhere/**"]), rule)
    at = "models/vision/a.yaml"
    fine = ask(path=at, backend="slurm", partition="gpu", gpus=4, nodes=2, timeout_s=3600, retries=2)
    assert static_refusal(fine, found) is None
    assert static_refusal(ask(path="models/x.yaml", backend="local", gpus=99), found) is None  # not matched
    cases: list[tuple[str, dict[str, Any]]] = [
        ("team vision: backend 'local' is not allowed (allowed: slurm, hpc) (policies[1])", {"backend": "local"}),
        ("team vision: partition 'big' is not allowed (allowed: gpu, debug) (policies[1])", {"partition": "big"}),
        ("team vision: partition 'big' is not allowed (allowed: gpu, debug) (policies[1])", {"partition": "gpu,big"}),
        ("team vision: 16 GPUs (8 x 2 nodes) > 8 allowed per model (policies[1])", {"gpus": 8}),
        ("team vision: 9 GPUs > 8 allowed per model (policies[1])", {"gpus": 9, "nodes": 1}),
        ("team vision: timeout 2d1h > 2d allowed (policies[1])", {"timeout_s": 49 * 3600}),
        ("team vision: no timeout set, and at most 2d is allowed: set spec.train.timeout (policies[1])",
         {"timeout_s": None}),
        ("team vision: 3 retries > 2 allowed (policies[1])", {"retries": 3}),
    ]  # fmt: skip
    for message, change in cases:
        assert static_refusal(replace(fine, **change), found) == message, change


def test_limits_are_inclusive_and_an_empty_allow_list_allows_nothing() -> None:
    rule = PolicyRule(team="t", max_gpus=2, max_timeout=3600, max_retries=1)
    assert static_refusal(ask(gpus=2, timeout_s=3600, retries=1), rules(rule)) is None
    nothing = PolicyRule(team="t", backends=[], partitions=[])
    assert (
        static_refusal(ask(), rules(nothing)) == "team t: backend 'local' is not allowed (allowed: none) (policies[0])"
    )
    only_partitions = PolicyRule(team="t", partitions=[])
    assert static_refusal(ask(partition="gpu"), rules(only_partitions)) == (
        "team t: partition 'gpu' is not allowed (allowed: none) (policies[0])"
    )


def test_a_model_with_no_partition_runs_on_the_operators_default_and_passes() -> None:
    rule = PolicyRule(team="t", partitions=["gpu"])
    assert static_refusal(ask(partition=None), rules(rule)) is None
    assert static_refusal(ask(partition="gpu"), rules(rule)) is None


def test_the_first_matching_rule_decides_alone_like_a_firewall() -> None:
    team = PolicyRule(team="vision", paths=["models/vision/**"], max_gpus=16)
    everyone = PolicyRule(team="all", max_gpus=1, max_retries=0)
    found = rules(team, everyone)
    assert static_refusal(ask(path="models/vision/a.yaml", gpus=12, retries=3), found) is None
    assert static_refusal(ask(path="models/vision/a.yaml", gpus=20), found) == (
        "team vision: 20 GPUs > 16 allowed per model (policies[0])"
    )
    assert static_refusal(ask(path="models/a.yaml", gpus=2), found) == (
        "team all: 2 GPUs > 1 allowed per model (policies[1])"
    )
    assert static_refusal(ask(path="models/a.yaml", gpus=2), rules(team)) is None, "no rule: no policy"


def test_a_budget_counts_the_models_its_rule_decides_for() -> None:
    everyone = PolicyRule(team="all", max_gpu_hours_per_week=10)
    week = [spent("models/vision/a.yaml", 100, 5, 1), spent("models/b.yaml", 2, 5, 1)]
    assert used_by_rule(rules(VISION, everyone), week, now=NOW) == {0: 400.0, 1: 8.0}
    refused = budget_refusals([ask("c", "models/c.yaml", gpus=1, timeout_s=3600)], rules(VISION, everyone), week=week,
                              now=NOW)  # fmt: skip
    assert refused == {}, "vision's 400 GPU-hours are not everyone's"


# budgets -------------------------------------------------------------------------------------------------------
def spent(path: str, gpus: int, start_h: float, end_h: float | None, timeout_h: float | None = None) -> Spent:
    """A run from `start_h` to `end_h` hours before NOW (None: in flight)."""
    return Spent(
        model=path.rsplit("/", 1)[-1].removesuffix(".yaml"), path=path, gpus=gpus, started_at=NOW - start_h * H,
        ended_at=None if end_h is None else NOW - end_h * H,
        timeout_s=None if timeout_h is None else int(timeout_h * H),
    )  # fmt: skip


def test_the_acceptance_message_for_a_team_over_its_week() -> None:
    week = [spent("models/vision/old.yaml", 10, 20, 7)]  # 10 GPUs x 13 h = 130 GPU-hours
    training = ask("big", "models/vision/big.yaml", gpus=8, nodes=1, timeout_s=6 * 3600)  # 48 GPU-hours
    other = ask("small", "models/nlp/small.yaml", gpus=1, timeout_s=3600)
    refused = budget_refusals([training, other], rules(VISION, NLP), week=week, now=NOW)
    assert refused == {
        "big": "team vision: 130.0 GPU-hours used in the last 7 days + 48.0 for this training > 160 allowed per "
        "week (policies[0])"
    }


def test_usage_counts_only_what_lies_in_the_window_and_in_flight_runs_hold_their_timeout() -> None:
    found = rules(VISION)
    half_out = spent("models/vision/a.yaml", 2, 7 * 24 + 10, 7 * 24 - 10)  # 10 of its 20 hours in the window
    gone = spent("models/vision/b.yaml", 100, 9 * 24, 8 * 24)
    flying = spent("models/vision/c.yaml", 4, 2, None, timeout_h=10)  # 2 h so far, may run 8 more
    elsewhere = spent("models/nlp/d.yaml", 50, 5, 1)
    used = used_by_rule(found, [half_out, gone, flying, elsewhere], now=NOW)
    assert used == {0: pytest.approx(2 * 10 + 4 * 10)}
    counted = usage([half_out, gone, flying, elsewhere], found, since=NOW - WEEK_S, until=NOW)
    assert [(u.key, round(u.gpu_hours, 6), u.runs, u.in_flight) for u in counted] == [
        ("-", 200.0, 1, 0),
        ("vision", 28.0, 2, 1),  # in flight: up to now only
    ]
    edge = spent("models/vision/e.yaml", 3, 7 * 24 + 1, 7 * 24)  # ended as the window starts: a run, 0 hours
    two = usage([flying, flying, edge], found, since=NOW - WEEK_S, until=NOW)
    assert [(u.key, round(u.gpu_hours, 6), u.runs, u.in_flight) for u in two] == [("vision", 16.0, 3, 2)]
    by_model = usage([half_out, flying], found, since=NOW - WEEK_S, until=NOW, by="model")
    assert [(u.key, round(u.gpu_hours, 6)) for u in by_model] == [("a", 20.0), ("c", 8.0)]


def test_trainings_are_admitted_in_name_order_and_each_counts_for_the_next() -> None:
    rule = PolicyRule(team="vision", max_gpu_hours_per_week=10)
    a, b, c = (ask(n, f"models/{n}.yaml", gpus=1, timeout_s=4 * 3600) for n in "abc")
    assert budget_refusals([c, b, a], rules(rule), now=NOW) == {
        "c": "team vision: 0.0 GPU-hours used in the last 7 days + 8.0 for other trainings of this change + 4.0 "
        "for this training > 10 allowed per week (policies[0])"
    }


def test_a_per_change_budget_is_inclusive_and_counts_each_admitted_training() -> None:
    rule = PolicyRule(team="t", paths=["models/t/**"], max_gpu_hours_per_change=10)
    found = rules(PolicyRule(team="free", paths=["models/a*"]), rule)
    trainings = [
        ask("a-other", "models/a-other.yaml", gpus=8, timeout_s=10 * 3600),  # another rule's: not counted here
        ask("b", "models/t/b.yaml", gpus=2, timeout_s=3 * 3600),  # 6
        ask("c", "models/t/c.yaml", gpus=0, timeout_s=None),  # no GPUs: 0
        ask("d", "models/t/d.yaml", gpus=1, timeout_s=4 * 3600),  # 6 + 4 = 10: exactly the budget
        ask("e", "models/t/e.yaml", gpus=1, timeout_s=1800),  # 10.5
    ]
    assert budget_refusals(trainings, found, now=NOW) == {
        "e": "team t: 10.0 GPU-hours for other trainings of this change + 0.5 for this training > 10 allowed per "
        "change (policies[1])"
    }
    assert budget_refusals([ask("f", "models/t/f.yaml", gpus=3, timeout_s=4 * 3600)], found, now=NOW) == {
        "f": "team t: 12.0 for this training > 10 allowed per change (policies[1])"
    }
    started = [ask("x", "models/a-x.yaml", gpus=99, timeout_s=3600), ask("y", "models/t/y.yaml", gpus=0)]
    assert budget_refusals(trainings[:4], found, started=started, now=NOW) == {}, "0 GPUs and another rule: 0"


def test_a_weekly_budget_is_inclusive_and_counts_each_admitted_training() -> None:
    rule = PolicyRule(team="t", max_gpu_hours_per_week=8)
    week = [spent("models/old.yaml", 1, 3, 1)]  # 2 GPU-hours
    trainings = [ask("a", gpus=0), ask("b", gpus=1, timeout_s=3 * 3600), ask("c", gpus=3, timeout_s=3600)]
    assert budget_refusals(trainings, rules(rule), week=week, now=NOW) == {}
    late = [*trainings, ask("d", gpus=1, timeout_s=1800)]
    assert budget_refusals(late, rules(rule), week=week, now=NOW) == {
        "d": "team t: 2.0 GPU-hours used in the last 7 days + 6.0 for other trainings of this change + 0.5 for this "
        "training > 8 allowed per week (policies[0])"
    }


def test_small_gpu_hours_are_said_with_two_significant_digits_so_they_never_read_as_the_limit() -> None:
    found = rules(PolicyRule(team="t", max_gpu_hours_per_change=0.25, max_gpu_hours_per_week=0.3))
    assert budget_refusals([ask("a", gpus=2, timeout_s=600)], found, now=NOW) == {
        "a": "team t: 0.33 for this training > 0.25 allowed per change (policies[0])"
    }
    week = [spent("models/m.yaml", 1, 0.5, 0.22)]  # 1 GPU x 0.28 h
    assert budget_refusals([ask("b", gpus=1, timeout_s=90)], found, week=week, now=NOW) == {
        "b": "team t: 0.28 GPU-hours used in the last 7 days + 0.025 for this training > 0.3 allowed per week "
        "(policies[0])"
    }


def test_a_per_change_budget_counts_what_this_change_started_already() -> None:
    rule = PolicyRule(team="t", max_gpu_hours_per_change=10)
    a, b = ask("a", gpus=2, timeout_s=3 * 3600), ask("b", gpus=1, timeout_s=4 * 3600)
    assert budget_refusals([a, b], rules(rule), now=NOW) == {}
    assert budget_refusals([b], rules(rule), started=[a, replace(a, model="z")], now=NOW) == {
        "b": "team t: 12.0 GPU-hours for other trainings of this change + 4.0 for this training > 10 allowed per "
        "change (policies[0])"
    }


def test_no_timeout_under_a_budget_is_refused_but_a_model_without_gpus_is_free() -> None:
    found = rules(PolicyRule(team="x", max_gpu_hours_per_week=1, max_gpu_hours_per_change=2))
    spent_all = [spent("models/m.yaml", 8, 20, 10)]
    trainings = [ask("a", gpus=1), ask("b", gpus=0), ask("c", gpus=0, timeout_s=3600)]
    refused = budget_refusals(trainings, found, week=spent_all, now=NOW)
    assert refused == {
        "a": "team x: no timeout: its GPU-hours (1 GPUs) are unbounded and team x has a budget of 2 per change and "
        "1 per week GPU-hours: set spec.train.timeout (policies[0])"
    }


def test_a_refused_model_does_not_hold_back_the_others() -> None:
    rule = PolicyRule(team="t", max_gpu_hours_per_week=5)
    big, small = ask("a-big", gpus=1, timeout_s=6 * 3600), ask("b-small", gpus=1, timeout_s=4 * 3600)
    assert set(budget_refusals([big, small], rules(rule), now=NOW)) == {"a-big"}


def test_rules_without_a_budget_refuse_nothing_here() -> None:
    assert budget_refusals([ask(gpus=99)], rules(PolicyRule(team="t", max_gpus=1)), now=NOW) == {}


asks = st.builds(
    Ask,
    model=st.sampled_from(["a", "b", "c", "d", "e"]),
    path=st.sampled_from(["models/vision/x.yaml", "models/nlp/y.yaml", "models/z.yaml"]),
    backend=st.just("local"),
    gpus=st.integers(0, 8),
    nodes=st.integers(1, 2),
    timeout_s=st.one_of(st.none(), st.integers(60, 48 * 3600)),
)
budget_rules = st.lists(
    st.builds(
        PolicyRule,
        team=st.sampled_from(["vision", "nlp", "all"]),
        paths=st.sampled_from([None, ["models/vision/**"], ["models/nlp/**"]]),
        max_gpu_hours_per_week=st.one_of(st.none(), st.floats(0, 500)),
        max_gpu_hours_per_change=st.one_of(st.none(), st.floats(0, 500)),
    ),
    max_size=3,
)
runs = st.lists(
    st.builds(
        Spent,
        model=st.just("r"),
        path=st.sampled_from(["models/vision/x.yaml", "models/nlp/y.yaml"]),
        gpus=st.integers(1, 8),
        started_at=st.floats(NOW - 2 * WEEK_S, NOW),
        ended_at=st.one_of(st.none(), st.floats(NOW - WEEK_S, NOW)),
        timeout_s=st.one_of(st.none(), st.integers(60, 48 * 3600)),
    ),
    max_size=6,
)


@given(st.lists(asks, unique_by=lambda a: a.model, max_size=5), budget_rules, runs)
def test_budgets_are_deterministic_and_never_admit_more_than_a_budget(
    trainings: list[Ask], chosen: list[PolicyRule], week: list[Spent]
) -> None:
    found = rules(*chosen)
    refused = budget_refusals(trainings, found, week=week, now=NOW)
    assert refused == budget_refusals(list(reversed(trainings)), found, week=week, now=NOW)
    admitted = [t for t in trainings if t.model not in refused]
    used = used_by_rule(found, week, now=NOW)
    for index, rule in found:
        mine = [t for t in admitted if deciding(t.path, found) == (index, rule)]
        if rule.budgeted:
            assert all(t.gpu_hours is not None for t in mine)
        hours = sum(t.gpu_hours or 0.0 for t in mine)
        if rule.max_gpu_hours_per_change is not None:
            assert hours <= rule.max_gpu_hours_per_change + 1e-6
        if rule.max_gpu_hours_per_week is not None and hours:  # a team over budget still trains without GPUs
            assert used[index] + hours <= rule.max_gpu_hours_per_week + 1e-6
    for name, why in refused.items():
        assert why.startswith("team ") and "(policies[" in why, name


def test_a_refused_model_is_looked_at_again_when_the_first_counted_run_leaves_the_week() -> None:
    leaving = spent("models/m.yaml", 1, 7 * 24 + 1, 7 * 24 - 60 / H)  # ended a minute short of a week ago
    assert next_look([leaving, spent("models/m.yaml", 1, 2, 1)], now=NOW) == pytest.approx(NOW + 60)
    assert next_look([], now=NOW) == NOW + RECHECK_S


@given(runs)
def test_a_refused_model_is_looked_at_again_within_the_recheck_bound(week: list[Spent]) -> None:
    at = next_look(week, now=NOW)
    assert NOW < at <= NOW + RECHECK_S


# configuration -------------------------------------------------------------------------------------------------
def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gitopsd.toml"
    path.write_text('[[repositories]]\nname = "alpha"\nurl = "/srv/alpha.git"\n' + text)
    return path


def test_policies_are_read_in_order_and_filtered_per_repository(tmp_path: Path) -> None:
    loaded = load_config(config(tmp_path, """
[[policies]]
team = "vision"
repositories = ["alpha"]
paths = ["models/vision/**"]
max_gpu_hours_per_week = 160
max_timeout = "48h"

[[policies]]
team = "everyone"
max_gpus = 8
"""))  # fmt: skip
    operator = loaded.operator_for(loaded.repositories[0])
    assert [(i, r.team) for i, r in operator.policies] == [(0, "vision"), (1, "everyone")]
    assert operator.policies[0][1].max_timeout == 48 * 3600
    assert [(i, r.team) for i, r in loaded.operator().policies] == [(1, "everyone")]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[[policies]]\nteam = "t"\npaths = ["../x"]\n', "policies[0].paths[0]: '../x': no empty"),
        ('[[policies]]\nteam = "t"\n[[policies]]\nteam = "u"\nrepositories = ["beta"]\n',
         "policies[1].repositories[0]: 'beta' is not declared in [[repositories]] (declared: alpha)"),
        ('[[policies]]\nteam = "t"\nbackends = ["local", "slurm"]\n',
         "policies[0].backends[1]: 'slurm' is not declared in [backends] (declared: local)"),
        ('[[policies]]\nteam = "t"\nmax_gpu_hours_per_week = -1\n', "policies[0].max_gpu_hours_per_week: Input"),
        ('[[policies]]\nteam = "t"\nmax_timeout = "forever"\n', "policies[0].max_timeout:"),
        ('[[policies]]\nteam = "t"\nmax_gpu = 1\n', "policies[0].max_gpu: unknown key (did you mean 'max_gpus'?)"),
        ('[[policies]]\npaths = ["models/**"]\n', "policies[0].team: Field required"),
    ],
)  # fmt: skip
def test_bad_policy_configuration_is_named_by_its_toml_path(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(PermanentError) as caught:
        load_config(config(tmp_path, text))
    assert error in str(caught.value)


def test_the_week_of_other_repositories_adds_to_this_one_for_the_rules_they_share() -> None:
    """A rule that covers several repositories budgets them together: what the others used (`elsewhere`, by rule
    index) adds to this repository's week; an index without a weekly budget has nothing to add to."""
    weekly = PolicyRule(team="t", paths=["models/t/**"], max_gpu_hours_per_week=10)
    per_change = PolicyRule(team="u", paths=["models/u/**"], max_gpu_hours_per_change=100)
    found = rules(weekly, per_change)
    week = [spent("models/t/old.yaml", 1, 6, 1)]  # 5 GPU-hours here
    training = ask("new", "models/t/new.yaml", gpus=1, timeout_s=2 * 3600)  # 2 GPU-hours
    assert budget_refusals([training], found, week=week, now=NOW) == {}, "5 + 2 <= 10"
    assert budget_refusals([training], found, week=week, elsewhere={0: 4.0, 1: 50.0}, now=NOW) == {
        "new": "team t: 9.0 GPU-hours used in the last 7 days + 2.0 for this training > 10 allowed per week "
        "(policies[0])"
    }, "5 here + 4 elsewhere + 2 > 10; rule 1 has no weekly budget to add 50 to"


def test_an_hour_or_more_is_said_with_one_decimal() -> None:
    found = rules(PolicyRule(team="t", max_gpu_hours_per_change=0.5))
    assert budget_refusals([ask("a", gpus=1, timeout_s=3600)], found, now=NOW) == {
        "a": "team t: 1.0 for this training > 0.5 allowed per change (policies[0])"
    }
