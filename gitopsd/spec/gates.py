"""Validation gates: the `accuracy >= 0.9` lines of a model spec, parsed and checked against final metrics.

A model version is registered only when every gate passes. Gates are tiny expressions, parsed here once
(so a typo is a spec error at commit time, not a surprise after hours of training) and evaluated by the
reconciler on the metrics a run reported. Pure: no I/O.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["METRIC_PATTERN", "OPERATORS", "Gate", "GateResult", "evaluate", "parse_gate"]

#: What a metric name may look like: `accuracy`, `val/acc`, `top-1`, `eval.loss`.
METRIC_PATTERN = r"[A-Za-z_][A-Za-z0-9_./-]*"

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_GATE = re.compile(rf"\s*({METRIC_PATTERN})\s*(>=|<=|==|!=|>|<)\s*({_NUMBER})\s*", re.ASCII)
_OPERATOR = re.compile(r">=|<=|==|!=|=>|=<|<>|>|<|=")
_METRIC = re.compile(METRIC_PATTERN, re.ASCII)
_FORM = "expected '<metric> <op> <number>' with op one of >=, >, <=, <, ==, != (e.g. 'accuracy >= 0.9')"


@dataclass(frozen=True, kw_only=True)
class Gate:
    """One condition a final metric must meet; `text` is the expression as written in the spec."""

    metric: str
    op: str
    threshold: float
    text: str

    def holds(self, value: float) -> bool:
        """Whether `value` meets this gate. A value that is not a finite number (NaN, an infinity) never does,
        whatever the operator: a diverged training is no model, and the registry keeps only finite numbers."""
        if not math.isfinite(value):
            return False
        return OPERATORS[self.op](value, self.threshold)


@dataclass(frozen=True, kw_only=True)
class GateResult:
    """The outcome of one gate on one run: the value seen (None when the metric was not reported)."""

    gate: Gate
    value: float | None
    passed: bool

    def describe(self) -> str:
        """One line for a human, e.g. 'accuracy = 0.85, needs >= 0.9'."""
        gate = self.gate
        if self.value is None:
            return f"{gate.metric} missing from final metrics (needs {gate.op} {_num(gate.threshold)})"
        if not math.isfinite(self.value):
            return f"{gate.metric} = {_num(self.value)} is not a finite number (needs {gate.op} {_num(gate.threshold)})"
        verb = "meets" if self.passed else "needs"
        return f"{gate.metric} = {_num(self.value)}, {verb} {gate.op} {_num(gate.threshold)}"


def _num(value: float) -> str:
    return repr(float(value))


def parse_gate(text: str) -> Gate:
    """Parse `'<metric> <op> <number>'`; raise ValueError saying what is wrong and what is expected."""
    if not isinstance(text, str):
        raise ValueError(f"invalid gate {text!r}: a gate is a string; {_FORM}")
    match = _GATE.fullmatch(text)
    if match is not None:
        metric, op, number = match.groups()
        if not math.isfinite(float(number)):
            raise ValueError(f"invalid gate {text!r}: threshold {number!r} is not a finite number; {_FORM}")
        return Gate(metric=metric, op=op, threshold=float(number), text=text.strip())
    raise ValueError(f"invalid gate {text!r}: {_diagnose(text)}{_FORM}")


def _diagnose(text: str) -> str:
    """Say which part of a gate expression is wrong, for the error message."""
    if not text.strip():
        return "it is empty; "
    found = _OPERATOR.search(text)
    if found is None:
        return "no comparison operator; "
    op = found.group()
    if op not in OPERATORS:
        return f"unknown operator {op!r}; "
    left, right = text[: found.start()].strip(), text[found.end() :].strip()
    if not left:
        return "no metric name before the operator; "
    if not _METRIC.fullmatch(left):
        return f"{left!r} is not a metric name (letters, digits, '_', '.', '/', '-'; no leading digit); "
    if not right:
        return "no threshold after the operator; "
    if right.startswith(tuple(OPERATORS)):
        return f"unknown operator {(op + right.split()[0])!r}; "
    return f"threshold {right!r} is not a finite number; "


def evaluate(gates: Sequence[Gate], metrics: Mapping[str, float]) -> list[GateResult]:
    """Check every gate against the final metrics, in gate order. A missing metric fails its gate, and so does
    one that is not a finite number (NaN, Infinity, -Infinity)."""
    results = []
    for gate in gates:
        raw = metrics.get(gate.metric)
        if raw is None:
            results.append(GateResult(gate=gate, value=None, passed=False))
            continue
        value = float(raw)
        results.append(GateResult(gate=gate, value=value, passed=gate.holds(value)))
    return results
