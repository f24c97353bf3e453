"""Validation gates: parsing what people write, refusing typos clearly, and judging final metrics."""

from __future__ import annotations

import math
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitopsd.spec.gates import OPERATORS, Gate, evaluate, parse_gate


@pytest.mark.parametrize(
    ("text", "metric", "op", "threshold"),
    [
        ("accuracy >= 0.9", "accuracy", ">=", 0.9),
        ("val_loss<0.5", "val_loss", "<", 0.5),
        ("f1 >= 8e-1", "f1", ">=", 0.8),
        ("val/acc > 0.7", "val/acc", ">", 0.7),
        ("top-1 <= 100", "top-1", "<=", 100.0),
        ("eval.loss == 0", "eval.loss", "==", 0.0),
        ("_private != -1.5E+2", "_private", "!=", -150.0),
        ("delta>=-.5", "delta", ">=", -0.5),
        ("  loss   <   1.  ", "loss", "<", 1.0),
    ],
)
def test_gate_forms(text: str, metric: str, op: str, threshold: float) -> None:
    gate = parse_gate(text)
    assert (gate.metric, gate.op, gate.threshold) == (metric, op, threshold)
    assert gate.text == text.strip()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "it is empty"),
        ("accuracy", "no comparison operator"),
        ("accuracy 0.9", "no comparison operator"),
        ("accuracy >> 0.9", "unknown operator '>>'"),
        ("accuracy => 0.9", "unknown operator '=>'"),
        ("accuracy = 0.9", "unknown operator '='"),
        ("accuracy <> 0.9", "unknown operator '<>'"),
        (">= 0.9", "no metric name"),
        ("1acc >= 0.9", "'1acc' is not a metric name"),
        ("acc uracy >= 0.9", "'acc uracy' is not a metric name"),
        ("acc >=", "no threshold"),
        ("acc >= high", "'high' is not a finite number"),
        ("acc >= nan", "'nan' is not a finite number"),
        ("acc >= 1e999", "'1e999' is not a finite number"),
        ("acc >= 0.9 and loss < 1", "not a finite number"),
    ],
)
def test_bad_gates_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ValueError, match="invalid gate") as info:
        parse_gate(text)
    message = str(info.value)
    assert why in message
    assert repr(text) in message
    assert "accuracy >= 0.9" in message  # the example of what is expected


_FORM = "expected '<metric> <op> <number>' with op one of >=, >, <=, <, ==, != (e.g. 'accuracy >= 0.9')"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("  ", "it is empty"),
        ("accuracy", "no comparison operator"),
        (">= 0.9", "no metric name before the operator"),
        ("acc >=", "no threshold after the operator"),
        ("acc >= high", "threshold 'high' is not a finite number"),
    ],
)
def test_a_bad_gate_is_one_plain_sentence(text: str, why: str) -> None:
    """The whole message, as `validate` prints it: what was written, what is wrong, what is expected."""
    with pytest.raises(ValueError, match="invalid gate") as info:
        parse_gate(text)
    assert str(info.value) == f"invalid gate {text!r}: {why}; {_FORM}"


def test_a_gate_that_is_not_text_is_refused() -> None:
    with pytest.raises(ValueError, match="a gate is a string"):
        parse_gate(0.9)  # type: ignore[arg-type]


def test_evaluate_reports_each_gate_in_order() -> None:
    gates = [parse_gate("accuracy >= 0.9"), parse_gate("loss < 0.5"), parse_gate("f1 > 0.1")]
    results = evaluate(gates, {"accuracy": 0.85, "loss": 0.2})
    assert [r.gate for r in results] == gates
    assert [r.passed for r in results] == [False, True, False]
    assert [r.value for r in results] == [0.85, 0.2, None]
    assert results[0].describe() == "accuracy = 0.85, needs >= 0.9"
    assert results[1].describe() == "loss = 0.2, meets < 0.5"
    assert results[2].describe().startswith("f1 missing from final metrics")


def test_a_missing_metric_does_not_hide_the_gates_after_it() -> None:
    """Every gate has a result: a gate after a missing metric is still judged and shown."""
    gates = [parse_gate("f1 > 0.5"), parse_gate("accuracy >= 0.9"), parse_gate("recall > 0.1")]
    results = evaluate(gates, {"accuracy": 0.95})
    assert [(r.gate, r.value, r.passed) for r in results] == [
        (gates[0], None, False),
        (gates[1], 0.95, True),
        (gates[2], None, False),
    ]


def test_integer_metrics_are_compared_as_numbers() -> None:
    (result,) = evaluate([parse_gate("epochs == 10")], {"epochs": 10})
    assert result.passed
    assert result.value == 10.0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_a_value_that_is_not_a_finite_number_never_passes_whatever_the_operator(value: float, op: str) -> None:
    (result,) = evaluate([parse_gate(f"loss {op} 1")], {"loss": value})
    assert not result.passed
    assert not parse_gate(f"loss {op} 1").holds(value)
    assert result.describe() == f"loss = {value!r} is not a finite number (needs {op} 1.0)"


def test_an_infinite_accuracy_fails_its_gate_instead_of_reaching_the_registry() -> None:
    """The registry refuses non-finite values: `accuracy = Infinity` used to pass `>= 0.9` and then fail to
    register, run after run."""
    (result,) = evaluate([parse_gate("accuracy >= 0.9")], {"accuracy": math.inf})
    assert not result.passed
    assert "is not a finite number" in result.describe()


_PYTHON = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_finite = st.floats(allow_nan=False, allow_infinity=False)


@given(_finite, st.sampled_from(sorted(OPERATORS)), _finite)
def test_evaluation_agrees_with_comparison(value: float, op: str, threshold: float) -> None:
    gate = parse_gate(f"m {op} {threshold!r}")
    assert gate.threshold == threshold
    (result,) = evaluate([gate], {"m": value})
    assert result.passed is _PYTHON[op](value, threshold)
    assert result.passed is gate.holds(value)


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_./-]{0,20}", fullmatch=True), st.sampled_from(sorted(OPERATORS)))
def test_every_valid_metric_name_parses(metric: str, op: str) -> None:
    gate = parse_gate(f"{metric}{op}1")
    assert (gate.metric, gate.op) == (metric, op)


def test_gates_are_plain_values() -> None:
    assert parse_gate("a >= 1") == Gate(metric="a", op=">=", threshold=1.0, text="a >= 1")
    assert hash(parse_gate("a >= 1")) == hash(parse_gate("a >= 1"))


_NAMES = st.sampled_from(["acc", "loss", "f1", "recall"])


@given(
    st.lists(st.tuples(_NAMES, st.sampled_from(sorted(OPERATORS)), _finite), max_size=6),
    st.dictionaries(_NAMES, _finite),
)
def test_every_gate_gets_one_result_in_order_whatever_metrics_are_missing(
    gates: list[tuple[str, str, float]], metrics: dict[str, float]
) -> None:
    parsed = [parse_gate(f"{metric} {op} {threshold!r}") for metric, op, threshold in gates]
    results = evaluate(parsed, metrics)
    assert [r.gate for r in results] == parsed
    for result in results:
        assert result.value == metrics.get(result.gate.metric)
        assert result.passed is (result.value is not None and result.gate.holds(result.value))
