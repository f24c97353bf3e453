"""`canonical_json` is the text every run key hashes: it must equal `json.dumps` with the same options, always."""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.reconcile.canonical import canonical_json


def reference(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.dates()
    | st.builds(Path, st.text(min_size=1, alphabet="abc/."))
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_the_same_text_as_json_dumps(value: Any) -> None:
    assert canonical_json(value) == reference(value)


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        'ünïcode \u2028 \x00 "quoted"',
        0,
        -(2**70),
        1.5,
        math.inf,
        None,
        True,
        date(2026, 1, 2),
        {"b": 1, "a": [1, {"d": None, "c": "x"}]},
        {2: "int keys", 1: "become strings"},
        {2.5: "float keys", 0.5: "too"},
        {"v": 1, "train": {"env": {"Z": "1", "A": "2"}}, "code": "a" * 40, "requirements": None},
    ],
)
def test_known_values(value: Any) -> None:
    assert canonical_json(value) == reference(value)


def test_keys_that_cannot_be_sorted_fail_as_json_dumps_does() -> None:
    with pytest.raises(TypeError):
        reference({1: "a", "b": 2})
    with pytest.raises(TypeError):
        canonical_json({1: "a", "b": 2})


def test_a_cycle_is_refused_every_time() -> None:
    loop: list[Any] = []
    loop.append(loop)
    for _ in range(2):  # a fresh check each call: nothing left over from the last one
        with pytest.raises(ValueError, match="Circular"):
            canonical_json({"x": loop})
    assert canonical_json({"x": [[], []]}) == '{"x":[[],[]]}'
