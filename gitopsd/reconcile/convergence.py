"""Convergence rules: decide from a run's metric history whether it diverged or plateaued. Pure.

A job appends JSON lines to its metrics file; the reconciler hands the history to `judge`. A NaN or a value
past a divergence bound fails the run early (no point burning GPU hours on a blown-up loss); a plateau stops it
early and the run is still validated and registered like one that ended by itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gitopsd.model import Reason


@dataclass(frozen=True, kw_only=True)
class Plateau:
    metric: str
    mode: str = "min"
    patience: int = 5
    min_delta: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Rules:
    finite: tuple[str, ...] = ()
    diverge_metric: str | None = None
    diverge_above: float | None = None
    plateau: Plateau | None = None

    @property
    def empty(self) -> bool:
        return not self.finite and self.diverge_metric is None and self.plateau is None


def judge(rules: Rules, history: Sequence[Mapping[str, float]]) -> tuple[Reason, str] | None:
    """The first rule the history breaks, as (reason, message), or None while training may go on."""
    for index, point in enumerate(history):
        for name in rules.finite:
            value = point.get(name)
            if value is not None and not math.isfinite(value):
                return Reason.DIVERGED, f"{name} became {value} at metrics line {index + 1}"
        if rules.diverge_metric is not None and rules.diverge_above is not None:
            value = point.get(rules.diverge_metric)
            if value is not None and (not math.isfinite(value) or value > rules.diverge_above):
                return (
                    Reason.DIVERGED,
                    f"{rules.diverge_metric} = {value} exceeds {rules.diverge_above} at metrics line {index + 1}",
                )
    if rules.plateau is not None:
        return _plateau(rules.plateau, history)
    return None


def _plateau(rule: Plateau, history: Sequence[Mapping[str, float]]) -> tuple[Reason, str] | None:
    values = [p[rule.metric] for p in history if rule.metric in p and math.isfinite(p[rule.metric])]
    sign = 1.0 if rule.mode == "min" else -1.0
    best: float | None = None
    since_best = 0
    for value in values:
        if best is None or sign * (best - value) > rule.min_delta:
            best, since_best = value, 0
        else:
            since_best += 1
        if since_best >= rule.patience:
            return (
                Reason.PLATEAUED,
                f"{rule.metric} has not improved on {best} for {rule.patience} reports (min_delta {rule.min_delta})",
            )
    return None


def latest(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The last reported value of every metric."""
    merged: dict[str, float] = {}
    for point in history:
        merged.update(point)
    return merged
