"""Convergence rules: decide from a run's metric history whether it diverged or plateaued. Pure.

A job appends JSON lines to its metrics file; the reconciler feeds each new point to a `Watch` (`judge` is the
same decision over a whole history), which keeps a few numbers, not the history. A NaN or a value
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
    watch = Watch(rules=rules)
    for point in history:
        watch.feed(point)
    return watch.verdict


@dataclass(kw_only=True)
class Watch:
    """`judge`, one point at a time: what it keeps does not grow with the history.

    A divergence anywhere wins over a plateau, exactly as `judge` over the whole history decides.
    """

    rules: Rules
    points: int = 0
    diverged: tuple[Reason, str] | None = None
    plateaued: tuple[Reason, str] | None = None
    _best: float | None = None
    _since_best: int = 0

    @property
    def verdict(self) -> tuple[Reason, str] | None:
        return self.diverged or self.plateaued

    def feed(self, point: Mapping[str, float]) -> None:
        """Take the next point of the history."""
        self.points += 1
        if self.diverged is None:
            self.diverged = self._divergence(point)
        if self.rules.plateau is not None and self.plateaued is None:
            self._plateau(self.rules.plateau, point.get(self.rules.plateau.metric))

    def _divergence(self, point: Mapping[str, float]) -> tuple[Reason, str] | None:
        rules = self.rules
        if rules.finite:
            # The point's own values first, the rules' names only once one of them is not finite: a spec may list
            # thousands of metrics, and a training writes a point per step.
            broken = {name for name, value in point.items() if not math.isfinite(value)}
            name = next((n for n in rules.finite if n in broken), None) if broken else None
            if name is not None:
                return Reason.DIVERGED, f"{name} became {point[name]} at metrics line {self.points}"
        if rules.diverge_metric is not None and rules.diverge_above is not None:
            value = point.get(rules.diverge_metric)
            if value is not None and (not math.isfinite(value) or value > rules.diverge_above):
                return (
                    Reason.DIVERGED,
                    f"{rules.diverge_metric} = {value} exceeds {rules.diverge_above} at metrics line {self.points}",
                )
        return None

    def _plateau(self, rule: Plateau, value: float | None) -> None:
        if value is None or not math.isfinite(value):
            return
        sign = 1.0 if rule.mode == "min" else -1.0
        if self._best is None or sign * (self._best - value) > rule.min_delta:
            self._best, self._since_best = value, 0
        else:
            self._since_best += 1
        if self._since_best >= rule.patience:
            why = f"{rule.metric} has not improved on {self._best} for {rule.patience} reports"
            self.plateaued = (Reason.PLATEAUED, f"{why} (min_delta {rule.min_delta})")


def latest(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The last reported value of every metric."""
    merged: dict[str, float] = {}
    for point in history:
        merged.update(point)
    return merged
