"""Recording conditions: what `gitopsd status` (and a settled `plan`) reads about each model at the end of a pass.

The pure summarizer (`conditions.summarize`) decides each model's condition; this module gathers the facts
it needs, recomputes only the models a pass may have changed, and writes only what differs, so a pass that
touched one model of ten thousand costs one model's work. Each model's row also holds what `gitopsd plan` says
of it while the commit stays as it is (`StateStore.plan_lines`), so a plan of a settled state directory loads
no spec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Set
from dataclasses import replace

from gitopsd.model import Condition
from gitopsd.reconcile import conditions
from gitopsd.reconcile.changeplan import gpu_cost
from gitopsd.reconcile.desired import DesiredModel, DesiredState, PerModel
from gitopsd.reconcile.planner import Action, Wait, Want
from gitopsd.reconcile.state import ModelRow, RunRecord, StateStore
from gitopsd.reconcile.troubles import Trouble


def want_of(model: DesiredModel) -> Want:
    return Want(
        model=model.name,
        run_key=model.run_key,
        spec_digest=model.spec_digest,
        backend=model.train.backend,
        retries=model.train.retries,
        suspend=model.suspend,
    )


def row_of(model: DesiredModel) -> ModelRow:
    """The row of a model as its spec alone gives it; `with_want` adds what the pass wanted of it."""
    gpus, hours = gpu_cost(model)
    train = model.train
    return ModelRow(
        name=model.name,
        spec_path=model.path,
        run_key=model.run_key,
        spec_digest=model.spec_digest,
        backend=train.backend,
        suspend=model.suspend,
        labels=_canonical(model.spec.metadata.labels),
        wanted_key=model.run_key,
        gpus=gpus,
        gpu_hours=hours,
        timeout_s=train.timeout_s,
        retries=train.retries,
        aliases=_canonical(model.spec.spec.aliases),
    )


def _canonical(mapping: Mapping[str, object]) -> str:
    """A mapping of the spec as canonical JSON (sorted keys); most are empty, and cost nothing then."""
    return json.dumps(dict(mapping), sort_keys=True) if mapping else "{}"


def with_want(row: ModelRow, want: Want) -> ModelRow:
    """`row` with the run key the pass wanted and why it may submit nothing (the same object when unchanged)."""
    blocked = (want.run_key, want.blocked, str(want.blocked_reason) if want.blocked else "")
    if (row.wanted_key, row.blocked, row.blocked_reason) == blocked:
        return row
    return replace(row, wanted_key=blocked[0], blocked=blocked[1], blocked_reason=blocked[2])


def facts_of(run: RunRecord) -> conditions.RunFacts:
    return conditions.RunFacts(
        id=run.id,
        run_key=run.run_key,
        spec_digest=run.spec_digest,
        phase=run.phase,
        backend=run.backend,
        attempt=run.attempt,
        job_id=run.job_id,
        reason=run.reason,
        message=run.message,
        metrics=run.metrics,
    )


class Summary:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.wants = PerModel(want_of)
        self._rows = PerModel(row_of)
        self._known: tuple[dict[str, ModelRow], dict[str, Condition]] | None = None
        self._last: tuple[DesiredState, dict[str, str], set[str]] | None = None
        self._troubles: dict[str, Trouble] = {}

    def record(
        self,
        desired: DesiredState,
        unavailable: Mapping[str, str],
        versions: Mapping[tuple[str, str], int],
        active_runs: list[RunRecord],
        actions: list[Action],
        alias_problems: Mapping[str, tuple[str, ...]],
        wants: Mapping[str, Want],
        touched: Set[str] = frozenset(),
        troubles: Mapping[str, Trouble] | None = None,
    ) -> None:
        """Recompute the conditions of the models this pass may have changed, and record what differs.

        `touched` names models changed by something other than the plan (an alias moved or was refused);
        `troubles` the failed work of each model (the retry book).
        """
        troubles = troubles or {}
        if self._known is None:
            self._known = (self.state.models(), self.state.conditions())
        known_rows, known_conditions = self._known
        dirty = self._dirty(desired, unavailable, active_runs, actions)
        if dirty is not None:
            dirty |= touched | {name for name in troubles.keys() | self._troubles.keys()
                                if troubles.get(name) != self._troubles.get(name)}  # fmt: skip
        self._troubles = dict(troubles)
        rows = {name: with_want(row, wants[name]) for name, row in self._rows.of(desired).items()}
        active = {r.model: r for r in active_runs}
        recomputed = desired.models.keys() if dirty is None else dirty & desired.models.keys()
        last = self.state.last_finished_runs(None if dirty is None else recomputed)
        wanted = {name: c for name, c in known_conditions.items() if name in desired.models}
        waits = {action.model: action for action in actions if isinstance(action, Wait)}
        for name in recomputed:
            model = desired.models[name]
            facts = conditions.ModelFacts(
                want=wants[name],
                version=versions.get((name, wants[name].run_key)),
                active=facts_of(active[name]) if name in active else None,
                last=facts_of(last[name]) if name in last else None,
                unavailable=unavailable.get(model.train.backend),
                alias_problems=alias_problems.get(name, ()),
                trouble=troubles.get(name),
                waiting=waits.get(name),
            )
            wanted[name] = conditions.summarize(facts)
        self.state.sync_models(rows, known_rows)
        self.state.set_conditions(wanted, known_conditions)
        self._known = (rows, wanted)
        self._last = (desired, dict(unavailable), set(active))

    def _dirty(
        self, desired: DesiredState, unavailable: Mapping[str, str], active: list[RunRecord], actions: list[Action]
    ) -> set[str] | None:
        """Models whose condition may have changed since the last summary; None means all of them."""
        if self._last is None:
            return None
        last_desired, last_unavailable, last_active = self._last
        if dict(unavailable) != last_unavailable:
            return None
        dirty = {a.model for a in actions} | {r.model for r in active} | last_active
        if last_desired is not desired:
            dirty |= {n for n, m in desired.models.items() if last_desired.models.get(n) is not m}
        return dirty
