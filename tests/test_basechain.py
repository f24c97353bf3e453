"""Cycles of base models (`spec/basechain.py`): each model's chain, walked once for the whole repository."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.spec.basechain import SHOWN, cycles


def _walked(bases: dict[str, str]) -> dict[str, list[str]]:
    """The definition, one model at a time: follow its bases until a model comes back or the chain ends."""
    found = {}
    for model, base in bases.items():
        seen = [model]
        name = base
        while name in bases and name not in seen:
            seen.append(name)
            name = bases[name]
        if name in seen:
            found[model] = [*seen, name]
    return found


def _shown(chain: list[str]) -> str:
    if len(chain) <= SHOWN:
        return " -> ".join(chain)
    return " -> ".join([*chain[: SHOWN - 1], "...", chain[-1]]) + f" ({len(chain) - 1} steps)"


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([f"m{i}" for i in range(14)]),
                       st.sampled_from([f"m{i}" for i in range(16)]), max_size=14))  # fmt: skip
def test_each_model_whose_bases_come_back_around_gets_its_chain(bases: dict[str, str]) -> None:
    """Against the definition: the same models, each with its chain to the first model met twice (m14 and m15
    are bases that no model declares: chains that end)."""
    assert cycles(bases) == {model: _shown(chain) for model, chain in _walked(bases).items()}


def test_a_cycle_its_tail_and_a_chain_that_ends() -> None:
    bases = {"a": "b", "b": "c", "c": "a", "d": "a", "e": "d", "f": "g", "g": "root", "self": "self"}
    assert cycles(bases) == {
        "a": "a -> b -> c -> a",
        "b": "b -> c -> a -> b",
        "c": "c -> a -> b -> c",
        "d": "d -> a -> b -> c -> a",
        "e": "e -> d -> a -> b -> c -> a",
        "self": "self -> self",
    }


def test_a_long_chain_is_cut_to_a_few_names() -> None:
    ring = {f"m{i}": f"m{(i + 1) % 10_000}" for i in range(10_000)}
    found = cycles(ring)
    assert len(found) == 10_000
    assert found["m5"] == "m5 -> m6 -> m7 -> m8 -> m9 -> m10 -> m11 -> ... -> m5 (10000 steps)"
    chain = {f"m{i}": f"m{i + 1}" for i in range(10_000)}  # ends at m10000, which has no base
    assert cycles(chain) == {}
