"""Convergence rules stop a training early: a blown-up loss fails it, a plateau ends it and it is still registered.

`judge` sees the metric history a job wrote so far; these tests pin when it says Diverged or Plateaued, which
line it blames, and that it lets a healthy training go on.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.model import Reason
from gitopsd.reconcile.convergence import Plateau, Rules, judge, latest

NAN, INF = float("nan"), float("inf")
FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@pytest.mark.parametrize(("value", "shown"), [(NAN, "nan"), (INF, "inf"), (-INF, "-inf")])
def test_a_non_finite_value_of_a_finite_metric_is_divergence_at_its_line(value: float, shown: str) -> None:
    history = [{"loss": 2.0}, {"acc": 0.5}, {"loss": value, "acc": 0.6}]
    assert judge(Rules(finite=("acc", "loss")), history) == (
        Reason.DIVERGED,
        f"loss became {shown} at metrics line 3",
    )


def test_nan_in_a_metric_no_rule_names_is_not_divergence() -> None:
    assert judge(Rules(finite=("loss",)), [{"loss": 1.0, "grad_norm": NAN}]) is None


def test_a_value_above_the_bound_is_divergence_but_the_bound_itself_is_not() -> None:
    rules = Rules(diverge_metric="loss", diverge_above=10.0)
    assert judge(rules, [{"loss": 3.0}, {"loss": 10.0}]) is None
    assert judge(rules, [{"loss": 3.0}, {"loss": 10.0}, {"loss": 12.5}]) == (
        Reason.DIVERGED,
        "loss = 12.5 exceeds 10.0 at metrics line 3",
    )


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_a_non_finite_value_of_the_bounded_metric_is_divergence_too(value: float) -> None:
    verdict = judge(Rules(diverge_metric="loss", diverge_above=10.0), [{"loss": value}])
    assert verdict is not None
    assert verdict[0] is Reason.DIVERGED
    assert verdict[1].endswith("at metrics line 1")


def test_a_bound_without_a_metric_or_a_metric_without_a_bound_checks_nothing() -> None:
    history = [{"loss": 1e9}]
    assert judge(Rules(diverge_metric="loss"), history) is None
    assert judge(Rules(diverge_above=1.0), history) is None


def test_the_earliest_broken_line_is_blamed_whichever_rule_it_breaks() -> None:
    rules = Rules(finite=("acc",), diverge_metric="loss", diverge_above=5.0)
    verdict = judge(rules, [{"loss": 1.0, "acc": 0.1}, {"loss": 9.0}, {"acc": NAN}])
    assert verdict == (Reason.DIVERGED, "loss = 9.0 exceeds 5.0 at metrics line 2")


_NAMES = st.sampled_from(["loss", "acc", "lr", "grad"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_NAMES, unique=True),
       st.lists(st.dictionaries(_NAMES, st.sampled_from([0.5, 1.0, NAN, INF, -INF])), max_size=6))  # fmt: skip
def test_the_first_line_with_a_non_finite_watched_metric_is_blamed_on_the_first_such_rule(
    finite: list[str], history: list[dict[str, float]]
) -> None:
    """By its definition: the first line where a metric the rules list is not finite, the first such metric in
    the rules' order (whatever else the line holds, and however many metrics the rules list)."""
    expected = None
    for number, point in enumerate(history, start=1):
        broken = [n for n in finite if n in point and not math.isfinite(point[n])]
        if broken:
            expected = (Reason.DIVERGED, f"{broken[0]} became {point[broken[0]]} at metrics line {number}")
            break
    assert judge(Rules(finite=tuple(finite)), history) == expected


def test_divergence_is_reported_even_after_a_plateau() -> None:
    rules = Rules(finite=("loss",), plateau=Plateau(metric="loss", patience=2))
    verdict = judge(rules, [{"loss": 1.0}, {"loss": 1.0}, {"loss": 1.0}, {"loss": NAN}])
    assert verdict is not None
    assert verdict[0] is Reason.DIVERGED


def test_a_min_plateau_waits_patience_reports_after_the_best_value() -> None:
    rule = Plateau(metric="loss", patience=2)
    history = [{"loss": 1.0}, {"loss": 0.8}, {"loss": 0.9}]
    assert judge(Rules(plateau=rule), history) is None
    assert judge(Rules(plateau=rule), [*history, {"loss": 0.85}]) == (
        Reason.PLATEAUED,
        "loss has not improved on 0.8 for 2 reports (min_delta 0.0)",
    )
    assert judge(Rules(plateau=rule), [*history, {"loss": 0.7}, {"loss": 0.75}]) is None


def test_a_max_plateau_counts_higher_as_better() -> None:
    rule = Plateau(metric="acc", mode="max", patience=2)
    assert judge(Rules(plateau=rule), [{"acc": 0.5}, {"acc": 0.6}, {"acc": 0.7}]) is None
    assert judge(Rules(plateau=rule), [{"acc": 0.7}, {"acc": 0.6}, {"acc": 0.65}]) == (
        Reason.PLATEAUED,
        "acc has not improved on 0.7 for 2 reports (min_delta 0.0)",
    )


def test_improvements_no_larger_than_min_delta_do_not_count() -> None:
    rule = Plateau(metric="loss", patience=3, min_delta=0.1)
    small_steps = [{"loss": 1.0}, {"loss": 0.95}, {"loss": 0.92}, {"loss": 0.91}]
    assert judge(Rules(plateau=rule), small_steps) == (
        Reason.PLATEAUED,
        "loss has not improved on 1.0 for 3 reports (min_delta 0.1)",
    )
    big_step = [{"loss": 1.0}, {"loss": 0.95}, {"loss": 0.85}, {"loss": 0.84}, {"loss": 0.83}]
    assert judge(Rules(plateau=rule), big_step) is None


def test_a_max_plateau_counts_only_rises_larger_than_min_delta() -> None:
    rule = Plateau(metric="acc", mode="max", patience=2, min_delta=0.1)
    small_rises = [{"acc": 0.5}, {"acc": 0.56}, {"acc": 0.59}]
    assert judge(Rules(plateau=rule), small_rises) == (
        Reason.PLATEAUED,
        "acc has not improved on 0.5 for 2 reports (min_delta 0.1)",
    )
    assert judge(Rules(plateau=rule), [{"acc": 0.5}, {"acc": 0.65}, {"acc": 0.7}]) is None
    falls = [{"acc": 0.5}, {"acc": 0.2}, {"acc": 0.1}]
    assert judge(Rules(plateau=rule), falls) == (
        Reason.PLATEAUED,
        "acc has not improved on 0.5 for 2 reports (min_delta 0.1)",
    )


def test_a_plateau_ignores_lines_without_the_metric_and_non_finite_values() -> None:
    rule = Plateau(metric="loss", patience=2)
    history = [{"loss": 1.0}, {"acc": 0.1}, {"loss": NAN}, {"acc": 0.2}, {"loss": 1.0}]
    assert judge(Rules(plateau=rule), history) is None
    assert judge(Rules(plateau=rule), [*history, {"loss": INF}, {"loss": 1.5}]) is not None


def test_empty_rules_and_empty_history_let_training_go_on() -> None:
    assert Rules().empty
    assert not Rules(finite=("loss",)).empty
    assert not Rules(diverge_metric="loss", diverge_above=1.0).empty
    assert not Rules(plateau=Plateau(metric="loss")).empty
    full = Rules(finite=("loss",), diverge_metric="loss", diverge_above=1.0, plateau=Plateau(metric="loss"))
    assert judge(full, []) is None
    assert judge(Rules(), [{"loss": NAN}, {"loss": 1e30}]) is None


@settings(max_examples=200, deadline=None)
@given(
    start=FINITE,
    steps=st.lists(st.floats(min_value=1e-3, max_value=100.0), max_size=40),
    patience=st.integers(1, 5),
    mode=st.sampled_from(["min", "max"]),
    min_delta=st.sampled_from([0.0, 1e-4, 5e-4]),
)
def test_a_strictly_improving_series_never_plateaus(
    start: float, steps: list[float], patience: int, mode: str, min_delta: float
) -> None:
    """Every step improves by at least 1e-3, more than min_delta, so the best value is always the last one."""
    sign = -1.0 if mode == "min" else 1.0
    values = [start]
    for step in steps:
        values.append(values[-1] + sign * step)
    history = [{"loss": v} for v in values]
    assert (
        judge(Rules(plateau=Plateau(metric="loss", mode=mode, patience=patience, min_delta=min_delta)), history) is None
    )


@settings(max_examples=200, deadline=None)
@given(value=FINITE, patience=st.integers(1, 30), mode=st.sampled_from(["min", "max"]), min_delta=st.floats(0, 1))
def test_a_constant_series_plateaus_exactly_after_patience_reports(
    value: float, patience: int, mode: str, min_delta: float
) -> None:
    """The first report sets the best value; `patience` more reports without improvement stop the run."""
    rules = Rules(plateau=Plateau(metric="loss", mode=mode, patience=patience, min_delta=min_delta))
    assert judge(rules, [{"loss": value}] * patience) is None
    verdict = judge(rules, [{"loss": value}] * (patience + 1))
    assert verdict is not None
    assert verdict[0] is Reason.PLATEAUED
    assert f"for {patience} reports" in verdict[1]


@settings(max_examples=200, deadline=None)
@given(
    start=FINITE,
    fractions=st.lists(st.floats(min_value=-1.0, max_value=0.9), min_size=1, max_size=30),
    patience=st.integers(1, 5),
    mode=st.sampled_from(["min", "max"]),
    min_delta=st.floats(min_value=0.01, max_value=10.0),
)
def test_changes_within_min_delta_never_reset_patience(
    start: float, fractions: list[float], patience: int, mode: str, min_delta: float
) -> None:
    """Every later value is at most 0.9 x min_delta better than the first (or worse): the first stays the best,
    and the run plateaus on the `patience`-th report after it, in either mode."""
    better = -1.0 if mode == "min" else 1.0
    history = [{"loss": start}] + [{"loss": start + better * f * min_delta} for f in fractions]
    rules = Rules(plateau=Plateau(metric="loss", mode=mode, patience=patience, min_delta=min_delta))
    verdict = judge(rules, history)
    if len(fractions) < patience:
        assert verdict is None
    else:
        assert verdict == (
            Reason.PLATEAUED,
            f"loss has not improved on {start} for {patience} reports (min_delta {min_delta})",
        )


def test_latest_keeps_the_last_value_of_every_metric() -> None:
    merged = latest([{"loss": 2.0, "acc": 0.1}, {"loss": 1.0}, {"epoch": 3.0, "loss": NAN}])
    assert merged.keys() == {"loss", "acc", "epoch"}
    assert (merged["acc"], merged["epoch"]) == (0.1, 3.0)
    assert math.isnan(merged["loss"])
    assert latest([]) == {}
