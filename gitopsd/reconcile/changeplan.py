"""The change report behind `gitopsd plan`: per model, what a commit range changes, whether it trains, why, at what
cost, and what is refused. Pure.

A reviewer asks "what will this change train, why, and what will it cost". The answer compares two desired
states (the base: the applied commit or `--base REF`, None when nothing was applied; the head: `--branch REF`),
and folds in what the state directory knows (versions by run key, where aliases point, runs in flight; nothing
on a fresh CI runner) and what a dry-run pass said (its actions, the models it refused and why). No I/O, no
clock: the same inputs always give the same report, so the renderers (`reconcile/planreport.py`) and their
golden tests stay stable.

Whether a model trains is decided by its run key (`reconcile/desired.py`): a model trains when its run key is
new in this change (a new model, or any input of the training changed) and nothing stands for it: no version,
no run in flight, no refusal, no suspension. What changed is named by comparing the two `DesiredModel`s field
by field, so "code tree changed" or "label only: nothing trains" is said rather than a digest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple

from gitopsd.errors import SpecProblem
from gitopsd.model import Reason

if TYPE_CHECKING:
    from gitopsd.reconcile.desired import DesiredModel, DesiredState
    from gitopsd.reconcile.planner import Action, Cancel, Submit, Wait

LATEST = "latest"


class Verdict(StrEnum):
    """What becomes of one model, the summary table's first column (a closed set, part of the JSON schema)."""

    TRAIN = "train"  # a training is submitted
    REFUSED = "refused"  # policy, the operator's caps or the backend refuse it: exit 1
    WAIT = "wait"  # blocked until something else exists (its base model's version)
    SUSPEND = "suspend"  # spec.suspend: nothing trains or moves
    REMOVE = "remove"  # gone from the head commit
    NONE = "none"  # nothing trains (label only, already registered, unchanged, in flight)


class Why(StrEnum):
    """The closed set of reason codes (JSON `reasons[].code`); each comes with a sentence for people."""

    NEW_MODEL = "new-model"
    CODE_CHANGED = "code-changed"
    DATA_CHANGED = "data-changed"
    REQUIREMENTS_CHANGED = "requirements-changed"
    BASE_MOVED = "base-moved"
    BACKEND_CHANGED = "backend-changed"
    BACKEND_SETTINGS_CHANGED = "backend-settings-changed"
    RESOURCES_CHANGED = "resources-changed"
    COMMAND_CHANGED = "command-changed"
    ENV_CHANGED = "env-changed"
    LAUNCHER_CHANGED = "launcher-changed"
    MODULES_CHANGED = "modules-changed"
    OUTPUTS_CHANGED = "outputs-changed"
    CONVERGENCE_CHANGED = "convergence-changed"
    INPUTS_CHANGED = "inputs-changed"
    RESUMED = "resumed"
    NOT_REGISTERED = "not-registered"
    LABEL_ONLY = "label-only"
    ALREADY_REGISTERED = "already-registered"
    IN_FLIGHT = "in-flight"
    UNCHANGED = "unchanged"
    SUSPENDED = "suspended"
    REMOVED = "removed"
    REFUSED = "refused"
    WAITING_FOR_BASE = "waiting-for-base"
    BACKEND_UNAVAILABLE = "backend-unavailable"
    RETRYING = "retrying"
    RETRIES_EXHAUSTED = "retries-exhausted"


@dataclass(frozen=True, kw_only=True)
class Because:
    code: Why
    text: str


SUSPENDED = Because(code=Why.SUSPENDED, text="suspended: nothing trains or moves")


@dataclass(frozen=True, kw_only=True)
class InFlight:
    """A run that has not ended, as the state directory records it."""

    model: str
    run_id: str
    run_key: str
    phase: str


@dataclass(frozen=True, kw_only=True)
class Facts:
    """What the state directory knows. `known` is False on a fresh one (a CI runner): nothing was applied, so
    versions and alias positions cannot be checked, and a model is judged by its own change alone."""

    known: bool = False
    versions: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (model, run key) -> number
    aliases: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (model, alias) -> number
    in_flight: Sequence[InFlight] = ()
    # model -> what its aliases need to know of its versions, read by `Registry.alias_numbers(alias_targets(...))`:
    # the newest number, and those of the numbers its aliases name that are registered
    numbers: Mapping[str, set[int]] = field(default_factory=dict)

    @cached_property
    def aliases_of(self) -> Mapping[str, Mapping[str, int]]:
        """model -> alias -> number: each model's aliases found once, not by a scan of all per model."""
        found: dict[str, dict[str, int]] = {}
        for (model, alias), number in self.aliases.items():
            found.setdefault(model, {})[alias] = number
        return found

    @cached_property
    def in_flight_of(self) -> Mapping[str, Sequence[InFlight]]:
        """model -> its runs in flight, in the order of `in_flight`."""
        found: dict[str, list[InFlight]] = {}
        for run in self.in_flight:
            found.setdefault(run.model, []).append(run)
        return found


@dataclass(frozen=True, kw_only=True)
class DryRun:
    """What a dry-run pass over the head commit said (`Reconciler.reconcile(dry_run=True)`)."""

    actions: Sequence[Action] = ()
    blocked: Mapping[str, str] = field(default_factory=dict)  # model -> why nothing may be submitted
    blocked_reasons: Mapping[str, Reason] = field(default_factory=dict)
    run_keys: Mapping[str, str] = field(default_factory=dict)  # effective run keys (bound to base versions)
    unavailable: Mapping[str, str] = field(default_factory=dict)  # backend -> why it cannot be used now


class Declared(NamedTuple):
    """What the report line of a model the change leaves as it is needs: the same from a `DesiredModel` and from
    the row a pass wrote of it (`StateStore.plan_lines`), so a settled plan can be told without loading the
    commit. A named tuple: a settled plan makes one per model, at a third of a frozen dataclass's cost."""

    name: str
    path: str
    suspend: bool
    run_key: str  # the run key the pass wants (bound to its base model's version)
    backend: str
    gpus: int
    gpu_hours: float | None
    timeout_s: int | None
    retries: int
    aliases: Mapping[str, int | str]


@dataclass(frozen=True, kw_only=True)
class AliasChange:
    """One alias that moves: from where it points (or, with no registry to ask, where the base declared it) to
    where the head declares it. `to_new`: it will point at the version this change trains."""

    alias: str
    from_version: int | None
    from_target: str | None
    to_version: int | None
    to_target: str | None
    to_new: bool = False
    refused: str = ""


class Entry(NamedTuple):
    """One model's line of the report. A named tuple, immutable as a frozen dataclass is but made in a third of
    its time: a plan of ten thousand models makes ten thousand (pass every field by keyword)."""

    model: str
    path: str
    verdict: Verdict
    change: str  # added | modified | removed | unchanged
    reasons: tuple[Because, ...]
    backend: str = ""
    gpus: int = 0
    gpu_hours: float | None = 0.0  # None: unbounded (GPUs and no timeout)
    timeout_s: int | None = None
    retries: int = 0
    refused: str = ""
    attempt: int | None = None
    cancels: tuple[str, ...] = ()  # "run R: why" of each run this change cancels
    continues: tuple[str, ...] = ()  # runs in flight that go on
    aliases: tuple[AliasChange, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def trains(self) -> bool:
        return self.verdict is Verdict.TRAIN

    @property
    def interesting(self) -> bool:
        """Whether the summary table must show it: anything but a quiet "nothing trains, nothing moves", which an
        unchanged model also is when it stays suspended (its runs in flight, if any, are named: it is shown)."""
        if self.change != "unchanged" or self.aliases or self.cancels or self.continues:
            return True
        return self.verdict is not Verdict.NONE and self.verdict is not Verdict.SUSPEND


class Omitted(NamedTuple):
    """The models a brief plan counts instead of listing: each a quiet line ("unchanged", or "suspended" for
    `suspended` of them) that a terminal or a pull-request comment only counts, so a settled plan of ten
    thousand models makes no entry for them (`settled(omitted=...)`). JSON lists every model: never brief."""

    models: int = 0
    suspended: int = 0


NONE_OMITTED = Omitted()


@dataclass(frozen=True, kw_only=True)
class Totals:
    trainings: int
    gpus: int
    gpu_hours: float  # the bounded part
    unbounded: tuple[str, ...]  # models that train on GPUs without a timeout
    refused: int
    waiting: int
    removed: int
    suspended: int
    cancelled: int
    alias_moves: int
    models: int


@dataclass(frozen=True, kw_only=True)
class ChangePlan:
    base_commit: str | None
    head_commit: str | None
    base_label: str  # how the base was chosen, for people: "origin/main", "the applied commit", "nothing"
    head_label: str
    entries: tuple[Entry, ...] = ()
    problems: tuple[SpecProblem, ...] = ()  # the head commit is invalid: nothing is planned
    error: str = ""  # the head could not be planned for another reason (source, signature)
    notes: tuple[str, ...] = ()  # backends unavailable, an invalid base
    omitted: Omitted = NONE_OMITTED  # quiet models counted, not in `entries` (a brief settled plan)

    @property
    def valid(self) -> bool:
        return not self.problems and not self.error

    @cached_property
    def totals(self) -> Totals:
        """The sums over `entries`, counted once (every face of the report asks)."""
        return totals(self.entries, self.omitted)

    @property
    def exit_code(self) -> int:
        """0 fine; 1 when the head is invalid or anything is refused, so CI blocks the merge."""
        return 0 if self.valid and not self.totals.refused else 1


# ---- what changed between two versions of one model ---------------------------------------------------------


def _keys(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def training_changes(base: DesiredModel, head: DesiredModel) -> list[Because]:
    """Why `head` is a different training from `base`: every input of the run key that differs, named."""
    b, h = base.train, head.train
    out: list[Because] = []
    if base.code_tree != head.code_tree or b.workdir != h.workdir:
        where = h.workdir if b.workdir == h.workdir else f"{b.workdir} -> {h.workdir}"
        out.append(Because(code=Why.CODE_CHANGED, text=f"code tree changed ({where})"))
    before = {d.uri: d.sha256 for d in base.spec.spec.data}
    after = {d.uri: d.sha256 for d in head.spec.spec.data}
    if before != after:
        uris = _keys(before, after)
        out.append(Because(code=Why.DATA_CHANGED, text=f"data digest changed ({', '.join(uris)})"))
    if b.requirements != h.requirements or _requirements_moved(base, head):
        out.append(Because(code=Why.REQUIREMENTS_CHANGED, text=f"requirements changed ({h.requirements or 'none'})"))
    if base.spec.spec.base != head.spec.spec.base:
        refs = f"{base.spec.spec.base or 'none'} -> {head.spec.spec.base or 'none'}"
        out.append(Because(code=Why.BASE_MOVED, text=f"base moved ({refs})"))
    if (b.backend, b.backend_type) != (h.backend, h.backend_type):
        out.append(Because(code=Why.BACKEND_CHANGED, text=f"backend changed ({b.backend} -> {h.backend})"))
    elif b.keyed_settings != h.keyed_settings:
        keys = ", ".join(_keys(b.keyed_settings, h.keyed_settings))
        out.append(Because(code=Why.BACKEND_SETTINGS_CHANGED, text=f"backend settings changed ({keys})"))
    br, hr = b.resources, h.resources
    sizes = [("cpus", br.cpus, hr.cpus), ("memory_mb", br.memory_mb, hr.memory_mb), ("gpus", br.gpus, hr.gpus),
             ("nodes", br.nodes, hr.nodes)]  # fmt: skip
    moved = [f"{what} {old} -> {new}" for what, old, new in sizes if old != new]
    if moved:
        out.append(Because(code=Why.RESOURCES_CHANGED, text=f"resources changed ({', '.join(moved)})"))
    if b.command != h.command:
        out.append(Because(code=Why.COMMAND_CHANGED, text="command changed"))
    if b.env != h.env:
        out.append(Because(code=Why.ENV_CHANGED, text=f"env changed ({', '.join(_keys(b.env, h.env))})"))
    if br.launcher != hr.launcher:
        out.append(Because(code=Why.LAUNCHER_CHANGED, text=f"launcher changed ({br.launcher} -> {hr.launcher})"))
    if br.modules != hr.modules:
        out.append(Because(code=Why.MODULES_CHANGED, text="modules changed"))
    if base.spec.spec.outputs != head.spec.spec.outputs:
        out.append(Because(code=Why.OUTPUTS_CHANGED, text="outputs changed"))
    if base.spec.spec.convergence != head.spec.spec.convergence:
        out.append(Because(code=Why.CONVERGENCE_CHANGED, text="convergence changed"))
    if not out and base.run_key != head.run_key:
        out.append(Because(code=Why.INPUTS_CHANGED, text="training inputs changed (the run key differs)"))
    return out


def _requirements_moved(base: DesiredModel, head: DesiredModel) -> bool:
    """Same requirements file, same everything else of the run key, yet another key: the file's content moved."""
    if base.train.requirements is None or base.run_key == head.run_key:
        return False
    same = (base.code_tree, base.train, base.spec.spec.data, base.spec.spec.outputs, base.spec.spec.convergence)
    return same == (head.code_tree, head.train, head.spec.spec.data, head.spec.spec.outputs, head.spec.spec.convergence)


def spec_changes(base: DesiredModel, head: DesiredModel) -> list[str]:
    """The top-level spec fields that differ (for "label only": what did change, if not the training)."""
    before = base.spec.model_dump(mode="json", by_alias=True)
    after = head.spec.model_dump(mode="json", by_alias=True)
    changed: list[str] = []
    for part in ("metadata", "spec"):
        b, a = before.get(part) or {}, after.get(part) or {}
        for key in _keys(b, a):
            if part == "spec" and key == "train":
                changed += [f"spec.train.{k}" for k in _keys(b.get("train") or {}, a.get("train") or {})]
            else:
                changed.append(f"{part}.{key}")
    if base.path != head.path:
        changed.append(f"file {base.path} -> {head.path}")
    if not changed and base.spec_digest != head.spec_digest:
        changed.append("gitops.yaml defaults (retries or timeout)")
    return changed


def gpu_cost(model: DesiredModel) -> tuple[int, float | None]:
    """GPUs one attempt holds (gpus x nodes) and the GPU-hours its time limit allows: timeout x GPUs, times the
    most segments of a checkpointed run; None when it holds GPUs without a timeout (unbounded)."""
    train = model.train
    gpus = train.resources.gpus * train.resources.nodes
    if not gpus:
        return 0, 0.0
    if train.timeout_s is None:
        return gpus, None
    segments = train.checkpoint.max_segments if train.checkpoint is not None else 1
    return gpus, gpus * train.timeout_s * segments / 3600


# ---- aliases ------------------------------------------------------------------------------------------------


def alias_changes(
    *,
    model: str,
    base: Mapping[str, int | str],
    head: Mapping[str, int | str],
    facts: Facts,
    numbers: Iterable[int],
    trains: bool,
) -> tuple[AliasChange, ...]:
    """Each alias of `model` that moves. With a known registry, from where it points now to where the head's
    declaration resolves (refused onto a version that does not exist); on a fresh state directory, from the base's
    declaration to the head's. `latest`, or the next number, on a model this change trains: the new version."""
    current = dict(facts.aliases_of.get(model, {})) if facts.known else {}
    if not (base or head or current):
        return ()
    have = set(numbers)
    latest = max(have, default=None)
    out: list[AliasChange] = []
    for alias in sorted(set(base) | set(head) | set(current)):
        target = head.get(alias)
        old_target = base.get(alias)
        from_version = current.get(alias) if facts.known else (old_target if isinstance(old_target, int) else None)
        from_text = None if facts.known or old_target is None else str(old_target)
        to_version: int | None = None
        to_new, refused = False, ""
        if target == LATEST:
            to_new = trains
            to_version = None if trains or not facts.known else latest
        elif isinstance(target, int):
            to_version = target
            if facts.known and target not in have:
                if trains and target == (latest or 0) + 1:
                    to_new = True
                else:
                    known = f"latest is {model}@{latest}" if latest else "none is registered yet"
                    refused = f"no such registered version ({known})"
        to_text = None if target is None else str(target)
        if facts.known:
            if target == LATEST and not trains and latest is None:
                refused = f"{model} has no version yet"
            if not to_new and not refused and from_version == to_version:
                continue
        elif not to_new and old_target == target:
            continue
        out.append(AliasChange(alias=alias, from_version=from_version, from_target=from_text,
                               to_version=to_version, to_target=to_text, to_new=to_new, refused=refused))  # fmt: skip
    return tuple(out)


# ---- the report ---------------------------------------------------------------------------------------------


def build(
    *,
    base: DesiredState | None,
    head: DesiredState,
    facts: Facts,
    dry_run: DryRun,
    base_label: str = "",
    head_label: str = "",
    notes: Sequence[str] = (),
) -> ChangePlan:
    """The change report from `base` to `head` (one entry per model of either, by name)."""
    by_model: dict[str, list[Action]] = {}
    for action in dry_run.actions:
        by_model.setdefault(action.model, []).append(action)
    numbers = facts.numbers
    before = base.models if base is not None else {}
    entries: list[Entry] = []
    for name in sorted(before.keys() | head.models.keys()):
        old, new = before.get(name), head.models.get(name)
        actions = by_model.get(name, [])
        if new is None:
            assert old is not None
            entries.append(_removed(old, actions, facts, numbers.get(name, set())))
        else:
            entries.append(_entry(old, new, actions, facts, dry_run, numbers.get(name, set())))
    unavailable = tuple(f"backend {name} unavailable: {why}" for name, why in sorted(dry_run.unavailable.items()))
    return ChangePlan(
        base_commit=base.commit if base is not None else None, head_commit=head.commit, base_label=base_label,
        head_label=head_label, entries=tuple(entries), notes=(*notes, *unavailable),
    )  # fmt: skip


def _submit_of(actions: Sequence[Action]) -> Submit | None:
    # The planner's classes are imported where a plan has actions: a settled plan has none, and building the
    # planner's thirteen dataclasses is a few ms of its start.
    from gitopsd.reconcile.planner import Submit

    return next((a for a in actions if isinstance(a, Submit)), None)


def _wait_of(actions: Sequence[Action]) -> Wait | None:
    from gitopsd.reconcile.planner import Wait

    return next((a for a in actions if isinstance(a, Wait)), None)


def _cancelled(actions: Sequence[Action]) -> list[Cancel]:
    from gitopsd.reconcile.planner import Cancel

    return [a for a in actions if isinstance(a, Cancel)]


def _cancels(actions: Sequence[Action]) -> tuple[str, ...]:
    return tuple(f"run {a.run_id}: {a.message}" for a in _cancelled(actions))


def _continuing(model: str, facts: Facts, actions: Sequence[Action], key: str | None) -> tuple[str, ...]:
    runs = facts.in_flight_of.get(model)
    if not runs:
        return ()
    cancelled = {a.run_id for a in _cancelled(actions)}
    return tuple(
        f"run {r.run_id} ({r.phase})" for r in runs if r.run_id not in cancelled and (key is None or r.run_key != key)
    )


def _removed(old: DesiredModel, actions: Sequence[Action], facts: Facts, numbers: set[int]) -> Entry:
    declared = dict(old.spec.spec.aliases)
    aliases = alias_changes(model=old.name, base=declared, head={}, facts=facts, numbers=numbers, trains=False)
    cancels = _cancels(actions)
    text = "removed from the head commit: nothing trains" + (f"; cancels {len(cancels)} run(s)" if cancels else "")
    return Entry(model=old.name, path=old.path, verdict=Verdict.REMOVE, change="removed",
                 reasons=(Because(code=Why.REMOVED, text=text),), backend=old.train.backend,
                 cancels=cancels, continues=_continuing(old.name, facts, actions, None), aliases=aliases)  # fmt: skip


def _entry(
    old: DesiredModel | None,
    new: DesiredModel,
    actions: Sequence[Action],
    facts: Facts,
    dry_run: DryRun,
    numbers: set[int],
) -> Entry:
    name = new.name
    if old is new:  # the loader keeps the object of a model whose inputs did not move: nothing can differ
        gpus, hours = gpu_cost(new)
        declared = Declared(name=name, path=new.path, suspend=new.suspend,
                            run_key=dry_run.run_keys.get(name, new.run_key), backend=new.train.backend, gpus=gpus,
                            gpu_hours=hours, timeout_s=new.train.timeout_s, retries=new.train.retries,
                            aliases=new.spec.spec.aliases)  # fmt: skip
        return unchanged(declared, actions, facts, dry_run, numbers)
    submit = _submit_of(actions)
    key = submit.run_key if submit is not None else dry_run.run_keys.get(name, new.run_key)
    if old is None:
        change, why = "added", [Because(code=Why.NEW_MODEL, text="new model")]
    else:
        why = training_changes(old, new)
        if old.suspend and not new.suspend:
            why.append(Because(code=Why.RESUMED, text="resumed (suspend removed)"))
        same = old.spec == new.spec and old.path == new.path and old.run_key == new.run_key
        change = "unchanged" if same and old.spec_digest == new.spec_digest else "modified"
    verdict, reasons, refused = Verdict.NONE, list[Because](), ""
    if new.suspend:
        verdict, reasons = Verdict.SUSPEND, [SUSPENDED]
    elif (held := _held(name, why, dry_run)) is not None:
        verdict, reasons, refused = held
    elif why:
        verdict, reasons = _changed(new, key, why, actions, facts, dry_run)
    else:
        verdict, reasons = _same(name, spec_changes(old, new) if old is not None else [], key, submit, facts)
    attempt = _attempt(verdict, submit, actions)
    aliases = alias_changes(
        model=name, base=dict(old.spec.spec.aliases) if old is not None else {}, head=dict(new.spec.spec.aliases),
        facts=facts, numbers=numbers, trains=verdict is Verdict.TRAIN,
    )  # fmt: skip
    gpus, hours = gpu_cost(new)
    return Entry(
        model=name, path=new.path, verdict=verdict, change=change, reasons=tuple(reasons),
        backend=new.train.backend, gpus=gpus, gpu_hours=hours, timeout_s=new.train.timeout_s,
        retries=new.train.retries, refused=refused, attempt=attempt, cancels=_cancels(actions),
        continues=_continuing(name, facts, actions, None) if new.suspend else (), aliases=aliases,
    )  # fmt: skip


def unchanged(declared: Declared, actions: Sequence[Action], facts: Facts, dry_run: DryRun, numbers: set[int]) -> Entry:
    """The line of a model whose declaration the change leaves as it is (the same object in base and head):
    `_entry` with nothing changed, from what `Declared` holds. A settled plan makes one per model with no actions,
    so that case does no work for them."""
    name = declared.name
    submit = _submit_of(actions) if actions else None
    key = submit.run_key if submit is not None else declared.run_key
    refused = ""
    reasons: tuple[Because, ...]
    if declared.suspend:
        verdict, reasons = Verdict.SUSPEND, (SUSPENDED,)
    elif (held := _held(name, [], dry_run)) is not None:
        verdict, why, refused = held
        reasons = tuple(why)
    else:
        verdict, same = _same(name, [], key, submit, facts)
        reasons = tuple(same)
    trains = verdict is Verdict.TRAIN
    aliases = declared.aliases
    moved: tuple[AliasChange, ...] = ()
    if aliases or name in facts.aliases_of:  # what alias_changes returns at once for a model with no alias
        moved = alias_changes(model=name, base=aliases, head=aliases, facts=facts, numbers=numbers, trains=trains)
    return Entry(
        model=name, path=declared.path, verdict=verdict, change="unchanged", reasons=reasons,
        backend=declared.backend, gpus=declared.gpus, gpu_hours=declared.gpu_hours, timeout_s=declared.timeout_s,
        retries=declared.retries, refused=refused, attempt=_attempt(verdict, submit, actions) if trains else None,
        cancels=_cancels(actions) if actions else (),
        continues=_continuing(name, facts, actions, None) if declared.suspend and name in facts.in_flight_of else (),
        aliases=moved,
    )  # fmt: skip


def settled(
    *,
    commit: str,
    models: Iterable[Declared],
    facts: Facts,
    dry_run: DryRun,
    base_label: str = "",
    head_label: str = "",
    omitted: Omitted = NONE_OMITTED,
) -> ChangePlan:
    """The report of a commit against itself when a pass over it does nothing (`reconcile/settled.py`): every
    model unchanged, each line from what the pass recorded of it, as `build` would give with both states loaded.
    `omitted`: the models not in `models` because their lines are quiet, counted by the caller
    (`StateStore.settled_quiet`)."""
    numbers = facts.numbers
    entries = tuple(unchanged(m, (), facts, dry_run, numbers.get(m.name, set()))
                    for m in sorted(models, key=lambda m: m.name))  # fmt: skip
    unavailable = tuple(f"backend {name} unavailable: {why}" for name, why in sorted(dry_run.unavailable.items()))
    return ChangePlan(base_commit=commit, head_commit=commit, base_label=base_label, head_label=head_label,
                      entries=entries, notes=unavailable, omitted=omitted)  # fmt: skip


def _held(name: str, why: list[Because], dry_run: DryRun) -> tuple[Verdict, list[Because], str] | None:
    """What the dry run blocked: WAIT while its base model has no such version, else REFUSED with the refusal;
    None when nothing blocks it. `why`: what changed, said first."""
    if name not in dry_run.blocked:
        return None
    message = dry_run.blocked[name]
    if dry_run.blocked_reasons.get(name, Reason.POLICY_DENIED) is Reason.BASE_UNAVAILABLE:
        return Verdict.WAIT, [*why, Because(code=Why.WAITING_FOR_BASE, text=message)], ""
    return Verdict.REFUSED, [*why, Because(code=Why.REFUSED, text=message)], message


def _attempt(verdict: Verdict, submit: Submit | None, actions: Sequence[Action]) -> int | None:
    """The attempt a training is: the submission's, or the one after a failed attempt's backoff."""
    if verdict is not Verdict.TRAIN:
        return None
    wait = _wait_of(actions)
    return submit.attempt if submit is not None else wait.failed + 1 if wait is not None else None


def _changed(
    new: DesiredModel, key: str, why: list[Because], actions: Sequence[Action], facts: Facts, dry_run: DryRun
) -> tuple[Verdict, list[Because]]:
    """A model whose training changed (or is new): it trains unless a version, a run or spent retries stand for it."""
    registered = facts.versions.get((new.name, key))
    live = [r for r in facts.in_flight_of.get(new.name, ()) if r.run_key == key]
    if registered is not None:
        return Verdict.NONE, [*why, Because(code=Why.ALREADY_REGISTERED, text=f"already registered as v{registered}")]
    if live:
        return Verdict.NONE, [*why, Because(code=Why.IN_FLIGHT, text=f"already training: run {live[0].run_id}")]
    if _submit_of(actions) is not None:
        return Verdict.TRAIN, why
    if new.train.backend in dry_run.unavailable:
        text = f"backend {new.train.backend} is unavailable now: it trains once the backend is back"
        return Verdict.TRAIN, [*why, Because(code=Why.BACKEND_UNAVAILABLE, text=text)]
    wait = _wait_of(actions)
    if wait is not None:
        text = f"attempt {wait.failed} failed: attempt {wait.failed + 1} starts after its backoff"
        return Verdict.TRAIN, [*why, Because(code=Why.RETRYING, text=text)]
    if facts.known:
        text = "its run key failed and its retries are spent: nothing trains"
        return Verdict.NONE, [*why, Because(code=Why.RETRIES_EXHAUSTED, text=text)]
    return Verdict.TRAIN, why


def _same(name: str, spec: list[str], key: str, submit: Submit | None, facts: Facts) -> tuple[Verdict, list[Because]]:
    """A model whose training is what the base had: label only (`spec`: the fields that changed), or unchanged;
    with a known state directory, a reconcile may still train it (its key has no version yet), and the plan says
    so."""
    registered = facts.versions.get((name, key))
    live = [r for r in facts.in_flight_of.get(name, ()) if r.run_key == key]
    if registered is not None:
        tail = f" (its run key is registered as v{registered})"
    elif live:
        tail = f" (its run key is training: run {live[0].run_id})"
    else:
        tail = ""
    pending = facts.known and submit is not None
    if spec:
        said = "this change trains nothing new" if pending else "nothing trains"
        reasons = [Because(code=Why.LABEL_ONLY, text=f"label only: {said} (changed: {', '.join(spec)}){tail}")]
    else:
        reasons = [Because(code=Why.UNCHANGED, text=f"unchanged{tail}")]
    if pending:
        text = "no version has its run key in this state directory yet: a reconcile trains it, change or not"
        return Verdict.TRAIN, [*reasons, Because(code=Why.NOT_REGISTERED, text=text)]
    return Verdict.NONE, reasons


def totals(entries: Iterable[Entry], omitted: Omitted = NONE_OMITTED) -> Totals:
    """Sums over the trainings (GPUs, bounded GPU-hours, the models without a bound) and counts of the rest, in
    one pass over the entries (ten thousand in a large plan), `omitted` ones included."""
    count = dict.fromkeys(Verdict, 0)
    count[Verdict.SUSPEND], count[Verdict.NONE] = omitted.suspended, omitted.models - omitted.suspended
    hours: float = 0  # an int while nothing trains, as sum() gave: the JSON says 0, not 0.0
    gpus, unbounded, cancelled, moves, models = 0, [], 0, 0, omitted.models
    for e in entries:
        models += 1
        count[e.verdict] += 1
        if e.verdict is Verdict.TRAIN:
            gpus += e.gpus
            if e.gpu_hours is None:
                unbounded.append(e.model)
            else:
                hours += e.gpu_hours
        if e.cancels:
            cancelled += len(e.cancels)
        if e.aliases:
            moves += len(e.aliases)
    return Totals(
        trainings=count[Verdict.TRAIN], gpus=gpus, gpu_hours=hours, unbounded=tuple(unbounded),
        refused=count[Verdict.REFUSED], waiting=count[Verdict.WAIT], removed=count[Verdict.REMOVE],
        suspended=count[Verdict.SUSPEND], cancelled=cancelled, alias_moves=moves, models=models,
    )  # fmt: skip


def invalid(*, base_commit: str | None, head_commit: str | None, base_label: str, head_label: str,
            problems: Sequence[SpecProblem] = (), error: str = "") -> ChangePlan:  # fmt: skip
    """The report of a head that cannot be planned: its spec problems (file, line, field), or why not."""
    return ChangePlan(base_commit=base_commit, head_commit=head_commit, base_label=base_label,
                      head_label=head_label, problems=tuple(problems), error=error)  # fmt: skip
