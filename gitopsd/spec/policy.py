"""Team policy: the operator's rules on what the models under a path may ask for and how many GPU-hours they may
spend. Pure: no clock, no I/O; the time and the recorded runs are inputs.

A rule (`[[policies]]` in the operator's configuration) names a team, the repositories and the spec file paths
(globs such as `models/vision/**`) it covers, and limits: allowed backends and Slurm partitions, GPUs per model,
timeout, retries, and GPU-hour budgets per change and per rolling week. Rules are read top-down like a
firewall: the first rule whose repositories and paths match a model's spec file decides, alone: it names the
model's team and its limits are the ones that apply; later rules do not see the model. So a team's rule may be
looser or tighter than a catch-all rule after it, and a budget belongs to its rule, counted over the models
that rule decides for (in this repository's recorded runs). A model no rule matches is free of policy.

Path globs are about where a spec file lives: `*` stays within one directory, `**` spans any number of them.
Renaming or moving a spec file moves it to whichever rule matches its new path, so an operator who budgets by
team ends the list with a catch-all rule (no `paths`) that bounds everything else.

Static limits judge what a model asks for (`static_refusal`); budgets judge the trainings a change would start
against what the recorded runs used (`budget_refusals`): a run in flight holds what its timeout allows, a run
that ended counts what it used inside the window, each times its GPUs (GPUs x nodes).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gitopsd.spec.fields import Duration, Name
from gitopsd.units import format_duration

WEEK_S = 7 * 24 * 3600
#: How often a model refused for a weekly budget is looked at again at the latest, while nothing else happens:
#: the window rolls, so what its earlier runs used leaves it a little at a time.
RECHECK_S = 900


def _glob(value: str) -> str:
    """A relative path glob without `.`, `..` or empty segments (a spec's path never has one)."""
    if not value or value.startswith("/") or "\\" in value or "\x00" in value:
        raise ValueError(f"{value!r}: expected a relative path glob such as 'models/vision/**'")
    if any(part in ("", ".", "..") for part in value.split("/")):
        raise ValueError(f"{value!r}: no empty, '.' or '..' segment: a glob matches a spec file's path as Git has it")
    return value


PathGlob = Annotated[str, AfterValidator(_glob)]


def glob_match(pattern: str, path: str) -> bool:
    """Whether `path` (a repository-relative POSIX path) matches `pattern`: `*`, `?` and `[...]` within one
    segment, `**` as a whole segment for any number of segments (none included)."""
    pats, parts = tuple(pattern.split("/")), tuple(path.split("/"))

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(pats):
            return j == len(parts)
        if pats[i] == "**":
            return match(i + 1, j) or (j < len(parts) and match(i, j + 1))
        return j < len(parts) and fnmatchcase(parts[j], pats[i]) and match(i + 1, j + 1)

    return match(0, 0)


class PolicyRule(BaseModel):
    """One `[[policies]]` entry: who (team, repositories, paths) and what they may ask for and spend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    team: Name = Field(description="The team the matched models belong to (the first matching rule names it).")
    repositories: list[str] | None = Field(
        default=None, description="Names of [[repositories]] the rule covers (default: every repository)."
    )
    paths: list[PathGlob] | None = Field(
        default=None, description="Globs on spec file paths, e.g. 'models/vision/**' (default: every model)."
    )
    backends: list[str] | None = Field(default=None, description="Backends the models may train on.")
    partitions: list[str] | None = Field(
        default=None, description="Slurm partitions (the effective `partition` setting) the models may use."
    )
    max_gpus: Annotated[int, Field(ge=0)] | None = Field(default=None, description="GPUs per model (GPUs x nodes).")
    max_timeout: Duration | None = Field(default=None, description="Longest spec.train.timeout, e.g. '48h'.")
    max_retries: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Most spec.train.retries.")
    max_gpu_hours_per_change: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        default=None, description="GPU-hours the trainings one commit starts may take, bounded by their timeouts."
    )
    max_gpu_hours_per_week: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        default=None, description="GPU-hours the matched models may use in any 7 days (rolling)."
    )

    def covers(self, repository: str | None) -> bool:
        """Whether the rule applies to this repository (None: command-line use, only rules for every one)."""
        return self.repositories is None or (repository is not None and repository in self.repositories)

    def matches(self, path: str) -> bool:
        return self.paths is None or any(glob_match(glob, path) for glob in self.paths)

    @property
    def budgeted(self) -> bool:
        return self.max_gpu_hours_per_change is not None or self.max_gpu_hours_per_week is not None


Rules = Sequence[tuple[int, PolicyRule]]
"""The rules that apply to one repository, each with its index in the configuration (for messages)."""


def applicable(policies: Sequence[PolicyRule], repository: str | None) -> tuple[tuple[int, PolicyRule], ...]:
    """The rules of the configuration that cover `repository`, with their indices, in order."""
    return tuple((i, rule) for i, rule in enumerate(policies) if rule.covers(repository))


@dataclass(frozen=True, kw_only=True)
class Ask:
    """What one model asks for, as policy sees it: its spec file, backend, effective partition, GPUs (GPUs x
    nodes), timeout and retries."""

    model: str
    path: str
    backend: str
    partition: str | None = None
    gpus: int = 0
    nodes: int = 1
    timeout_s: int | None = None
    retries: int = 0

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.nodes

    @property
    def gpu_hours(self) -> float | None:
        """GPU-hours its timeout bounds; None when it has GPUs and no timeout (unbounded)."""
        if self.total_gpus == 0:
            return 0.0
        return None if self.timeout_s is None else self.total_gpus * self.timeout_s / 3600


def deciding(path: str, rules: Rules) -> tuple[int, PolicyRule] | None:
    """The rule that decides for a spec file: the first that matches it, with its index; None if none does."""
    return next(((i, rule) for i, rule in rules if rule.matches(path)), None)


def team_of(path: str, rules: Rules) -> str | None:
    """The team of a spec file: its deciding rule's, or None."""
    found = deciding(path, rules)
    return found[1].team if found else None


def _where(index: int, rule: PolicyRule) -> tuple[str, str]:
    return f"team {rule.team}", f"(policies[{index}])"


def _num(value: float) -> str:
    return f"{value:g}"


def _hours(value: float) -> str:
    """GPU-hours as a message says them: one decimal, and two significant digits under one hour, so that a small
    ask never reads as equal to a small limit ("0.33 > 0.25", not "0.3 > 0.25")."""
    return f"{value:.2g}" if 0 < value < 1 else f"{value:.1f}"


def static_refusal(ask: Ask, rules: Rules) -> str | None:
    """Why a model's spec breaks a static limit of its deciding rule, or None."""
    found = deciding(ask.path, rules)
    if found is None or not (why := _static(ask, found[1])):
        return None
    team, where = _where(*found)
    return f"{team}: {why} {where}"


def _static(ask: Ask, rule: PolicyRule) -> str | None:
    if rule.backends is not None and ask.backend not in rule.backends:
        return f"backend {ask.backend!r} is not allowed (allowed: {', '.join(rule.backends) or 'none'})"
    if rule.partitions is not None and ask.partition is not None:
        # Slurm takes a comma-separated list and runs in whichever has room first: every one must be allowed
        for partition in ask.partition.split(","):
            if partition.strip() not in rule.partitions:
                allowed = ", ".join(rule.partitions) or "none"
                return f"partition {partition.strip()!r} is not allowed (allowed: {allowed})"
    if rule.max_gpus is not None and ask.total_gpus > rule.max_gpus:
        shape = f" ({ask.gpus} x {ask.nodes} nodes)" if ask.nodes > 1 else ""
        return f"{ask.total_gpus} GPUs{shape} > {rule.max_gpus} allowed per model"
    if rule.max_timeout is not None:
        allowed = format_duration(rule.max_timeout)
        if ask.timeout_s is None:
            return f"no timeout set, and at most {allowed} is allowed: set spec.train.timeout"
        if ask.timeout_s > rule.max_timeout:
            return f"timeout {format_duration(ask.timeout_s)} > {allowed} allowed"
    if rule.max_retries is not None and ask.retries > rule.max_retries:
        return f"{ask.retries} retries > {rule.max_retries} allowed"
    return None


@dataclass(frozen=True, kw_only=True)
class Spent:
    """One run gitopsd recorded, as usage sees it. `started_at`: when it started (else when it was created);
    `ended_at`: None while it is in flight."""

    model: str
    path: str
    gpus: int
    started_at: float
    ended_at: float | None = None
    timeout_s: int | None = None

    def used(self, since: float, until: float) -> float:
        """GPU-hours it used between `since` and `until` (in flight: up to `until`)."""
        end = min(self.ended_at if self.ended_at is not None else until, until)
        return self.gpus * max(0.0, end - max(self.started_at, since)) / 3600

    def held(self, since: float, now: float) -> float:
        """GPU-hours it counts against a budget: what it used since `since`, and while in flight, what its
        timeout still allows it (it may use all of it)."""
        if self.ended_at is not None or self.timeout_s is None:
            return self.used(since, now)
        end = max(now, self.started_at + self.timeout_s)  # never before its start or `since`
        return self.gpus * (end - max(self.started_at, since)) / 3600


def used_by_rule(rules: Rules, week: Iterable[Spent], *, now: float, window_s: int = WEEK_S) -> dict[int, float]:
    """GPU-hours the models of each rule with a weekly budget used or hold in the window that ends now."""
    since = now - window_s
    totals = {index: 0.0 for index, rule in rules if rule.max_gpu_hours_per_week is not None}
    for run in week:
        found = deciding(run.path, rules)
        if found is not None and found[0] in totals:
            totals[found[0]] += run.held(since, now)
    return totals


def budget_refusals(
    trainings: Iterable[Ask],
    rules: Rules,
    *,
    week: Iterable[Spent] = (),
    started: Iterable[Ask] = (),
    elsewhere: Mapping[int, float] | None = None,
    now: float,
) -> dict[str, str]:
    """The new trainings a change would start that its rules' budgets refuse: model -> why.

    `week`: the runs recorded in the last 7 days (and those in flight); `started`: the trainings this change
    started already (one per model), which its per-change budgets count first; `elsewhere`: GPU-hours the
    other repositories a rule covers used or hold in the week, by rule index (`used_by_rule` over theirs).
    The trainings are taken in model name order; each one admitted counts against its deciding rule's
    budgets, so the verdict does not depend on the order they are given in.
    """
    if not any(rule.budgeted for _, rule in rules):
        return {}
    used = used_by_rule(rules, week, now=now)
    for index, hours in (elsewhere or {}).items():
        if index in used:
            used[index] += hours
    change = {i: 0.0 for i, _ in rules}
    this_change = {i: 0.0 for i, _ in rules}
    for ask in started:
        if (found := deciding(ask.path, rules)) is not None:
            change[found[0]] += ask.gpu_hours or 0.0
    refused: dict[str, str] = {}
    for ask in sorted(trainings, key=lambda a: a.model):
        found = deciding(ask.path, rules)
        if found is None or not found[1].budgeted:
            continue
        index, rule = found
        why = _over(ask, index, rule, used, change, this_change)
        if why:
            refused[ask.model] = why
            continue
        change[index] += ask.gpu_hours or 0.0
        this_change[index] += ask.gpu_hours or 0.0
    return refused


def _over(
    ask: Ask, index: int, rule: PolicyRule, used: Mapping[int, float], change: Mapping[int, float],
    this_change: Mapping[int, float],
) -> str | None:  # fmt: skip
    team, where = _where(index, rule)
    hours = ask.gpu_hours
    if hours is None:
        budgets = ((rule.max_gpu_hours_per_change, "change"), (rule.max_gpu_hours_per_week, "week"))
        limits = [f"{_num(v)} per {per}" for v, per in budgets if v is not None]
        return (f"{team}: no timeout: its GPU-hours ({ask.total_gpus} GPUs) are unbounded and team {rule.team} has "
                f"a budget of {' and '.join(limits)} GPU-hours: set spec.train.timeout {where}")  # fmt: skip
    if hours == 0:  # no GPUs: no GPU-hours, whatever the team spent
        return None
    limit = rule.max_gpu_hours_per_change
    if limit is not None and change[index] + hours > limit + 1e-9:
        before = f"{_hours(change[index])} GPU-hours for other trainings of this change + " if change[index] else ""
        return f"{team}: {before}{_hours(hours)} for this training > {_num(limit)} allowed per change {where}"
    limit = rule.max_gpu_hours_per_week
    if limit is not None and used[index] + this_change[index] + hours > limit + 1e-9:
        others = f" + {_hours(this_change[index])} for other trainings of this change" if this_change[index] else ""
        return (f"{team}: {_hours(used[index])} GPU-hours used in the last 7 days{others} + {_hours(hours)} for this "
                f"training > {_num(limit)} allowed per week {where}")  # fmt: skip
    return None


def next_look(week: Iterable[Spent], *, now: float, window_s: int = WEEK_S) -> float:
    """When a model refused for a weekly budget must be looked at again: when the first counted run leaves the
    window, and at most `RECHECK_S` from now (what earlier runs used leaves the window a little at a time)."""
    leaving = [run.ended_at + window_s for run in week if run.ended_at is not None and run.ended_at + window_s > now]
    return min([now + RECHECK_S, *leaving])


@dataclass(frozen=True, kw_only=True)
class Usage:
    """GPU-hours of one team or model over a window, and how many runs made them."""

    key: str
    gpu_hours: float
    runs: int
    in_flight: int


def usage(
    runs: Iterable[Spent], rules: Rules, *, since: float, until: float, by: str = "team"
) -> list[Usage]:  # fmt: skip
    """GPU-hours per team (a model no rule matches counts under "-") or per model, most first, then by name."""
    totals: dict[str, list[float]] = {}
    for run in runs:
        hours = run.used(since, until)
        if run.ended_at is not None and run.ended_at < since:
            continue
        key = (team_of(run.path, rules) or "-") if by == "team" else run.model
        entry = totals.setdefault(key, [0.0, 0, 0])
        entry[0] += hours
        entry[1] += 1
        entry[2] += run.ended_at is None
    rows = [Usage(key=k, gpu_hours=v[0], runs=int(v[1]), in_flight=int(v[2])) for k, v in totals.items()]
    return sorted(rows, key=lambda u: (-u.gpu_hours, u.key))
