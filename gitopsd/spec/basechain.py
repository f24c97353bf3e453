"""Where following fine-tuned models' base models (`spec.base`) comes back around, found in one walk.

A model's base may itself be fine-tuned from another, and a repository must not make those chains circular:
`check_models` names each model whose chain reaches a cycle. Walking each model's chain on its own would cost
the chain's length per model; a hostile repository of ten thousand models in one long chain (or one long
cycle) would then hang every pass, `validate` and `plan` for hours. Here each model is visited once: a walk
stops at the first model whose outcome is already known and hands that outcome back along its path. The
chains that problems show are cut to a few names, since a chain can be as long as the repository.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SHOWN", "cycles"]

#: The most model names a problem shows of one chain (the first ones, then the model it comes back to).
SHOWN = 8


def cycles(bases: Mapping[str, str]) -> dict[str, str]:
    """For each model of `bases` (a fine-tuned model's name: its base model's name) whose chain of bases comes
    back around: that chain from the model to the first model met twice, as "a -> b -> c -> a"."""
    # name -> (the first model of the cycle its chain reaches, how many steps from it to there), or None
    reach: dict[str, tuple[str, int] | None] = {}
    length: dict[str, int] = {}  # a model on a cycle: how many models the cycle has
    for start in bases:
        path: list[str] = []
        where: dict[str, int] = {}
        name = start
        while name in bases and name not in reach and name not in where:
            where[name] = len(path)
            path.append(name)
            name = bases[name]
        if name in where:  # a new cycle, from `name` round to it again
            ring = path[where[name] :]
            for model in ring:
                reach[model], length[model] = (model, 0), len(ring)
            path = path[: where[name]]
            found: tuple[str, int] | None = (name, 0)
        else:
            found = reach.get(name)  # None: the chain ends (a model with no base, or not declared)
        for steps, model in enumerate(reversed(path), start=1):
            reach[model] = None if found is None else (found[0], found[1] + steps)
    chains: dict[str, str] = {}
    for model, to in reach.items():
        if to is not None:
            at, steps = to
            chains[model] = _chain(model, at, steps + length[at], bases)
    return chains


def _chain(model: str, back_to: str, steps: int, bases: Mapping[str, str]) -> str:
    """The chain from `model`, `steps` steps along its bases to `back_to` met again; at most `SHOWN` names."""
    names = [model]
    while len(names) < min(steps, SHOWN - 1):
        names.append(bases[names[-1]])
    if steps < SHOWN:
        return " -> ".join([*names, back_to])
    return " -> ".join([*names, "...", back_to]) + f" ({steps} steps)"
