"""One reconcile pass, as an ordered list of steps: fetch, load, observe, plan, apply, summarize.

The reconciler owns the I/O around the pure planner and summarizer. It keeps the crash-safety protocol: a run
row is committed (phase Submitting) before its job is submitted, and a run found in Submitting later is first
looked up in its backend by run id, so a job is never started twice. A commit with invalid specs is rejected
whole and the last good commit stays in force; so is a new tip when the operator asks for signed commits and a
commit between the applied one and the tip is not signed by an allowed key (`source/verify.py`).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from gitopsd.backends.protocol import RUNS_DIR_SETTING, Backend, can_checkpoint
from gitopsd.errors import GitopsdError, PermanentError, SourceUnavailable, SpecError
from gitopsd.model import Phase, Reason, Resources
from gitopsd.reconcile import settled
from gitopsd.reconcile.adopt import Adopter
from gitopsd.reconcile.apply import Applier
from gitopsd.reconcile.desired import DesiredLoader, DesiredModel, DesiredState, PerModel, digest
from gitopsd.reconcile.launch import Launcher
from gitopsd.reconcile.observe import Observer
from gitopsd.reconcile.outbox import Entry, Outbox
from gitopsd.reconcile.outputs import OutputLimits
from gitopsd.reconcile.passlock import PassLock
from gitopsd.reconcile.planner import Action, Actual, Cancel, Failure, Submit, Wait, Want, plan
from gitopsd.reconcile.speccache import SpecCache, state_key
from gitopsd.reconcile.state import RunRecord, SourceRow, StateStore
from gitopsd.reconcile.summarize import Summary
from gitopsd.reconcile.troubles import RetryBook
from gitopsd.reconcile.usage import read_spent
from gitopsd.registry.aliases import AliasBook, alias_targets, plan_aliases
from gitopsd.registry.audit import push_tags
from gitopsd.registry.recovery import import_missing, restore_lost, save_alias_journal
from gitopsd.registry.store import sweep_stale_uploads
from gitopsd.registry.versions import Registry, Version
from gitopsd.source.mirror import Source
from gitopsd.source.redact import redact_url
from gitopsd.source.verify import CommitVerifier, VerifyPolicy
from gitopsd.spec.operator import Operator, over_caps
from gitopsd.spec.policy import WEEK_S, Ask, Spent, budget_refusals, next_look, static_refusal, used_by_rule

log = logging.getLogger("gitopsd")

ALIAS_REFUSED_EVENT = "AliasRefused"
"""The event kind of an alias move the applied commit asks for and that cannot be made (`plan_aliases`); its
reason is the alias, its message why. Recorded where the refusal begins and when it says something else (a
new target, a new latest version): a refusal that lasts over many commits, restarts and `reconcile --once`
processes is one event, until an alias of the model moves (`ALIAS_MOVED_EVENT`) and closes it."""
ALIAS_MOVED_EVENT = "AliasMoved"
"""The event kind of an alias set, moved or removed as the applied commit declares; its reason is the kind."""

#: The alias a refusal of `plan_aliases` is about: "alias NAME -> ..." or "alias NAME: ...".
_ALIAS_OF = re.compile(r"alias ([^ :]+)[ :]")

#: How often a reconciler looks for uploads a killed writer left in its store (see `ArtifactStore`).
SWEEP_EVERY_S = 3600.0


@dataclass(frozen=True, kw_only=True)
class PassResult:
    commit: str | None
    actions: tuple[Action, ...]
    active: int
    error: str = ""
    unavailable: Mapping[str, str] = field(default_factory=dict)
    blocked: Mapping[str, str] = field(default_factory=dict)
    retry_at: float | None = None  # when failed work falls due again (time.time()); a daemon passes then
    wants: Mapping[str, Want] = field(default_factory=dict)
    """Dry run only: each model's want as the planner saw it (why it is blocked, `blocked_reason`; a fine-tuned
    model's run key bound to its base version), for `gitopsd plan`."""


@dataclass(frozen=True, kw_only=True)
class Paths:
    """Where everything lives inside a state directory."""

    root: Path

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def registry_db(self) -> Path:
        return self.root / "registry.db"

    @property
    def mirror(self) -> Path:
        return self.root / "source.git"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"


class Reconciler:
    """Reconciles one repository (URL or path, branch) into one state directory."""

    _spec_cache: SpecCache | None = None  # set in __init__ once the state directory is known to be this one's
    _settled_generation: str | None = None  # `settled.code_generation`, computed when first needed
    _setup: object = None  # `_settled_setup`, computed when first needed
    _configured: str | None = None  # the `setup` given: the configuration file's digest

    def __init__(
        self,
        *,
        state_dir: Path,
        url: str,
        branch: str | None = None,
        operator: Operator | None = None,
        verify: VerifyPolicy | None = None,
        limits: OutputLimits | None = None,
        fence: Callable[[], None] | None = None,
        spec_cache: SpecCache | Literal["own"] | None = "own",
        settled_pass: bool = True,
        setup: str | None = None,
        role: str = "reconcile",
        on_busy: Callable[[str], None] | None = None,
        busy_until: float | None = None,
    ) -> None:
        """`operator`: the operator's backends and store (default: one local backend, a file store here).
        `verify`: the operator's signed-commit policy; None applies commits without checking signatures.
        `limits`: caps on what a run's outputs may be (operator settings; default `OutputLimits()`).
        `fence`: with `[standby]`, what raises `LeaseLost` when this daemon no longer holds the repository's
        lease; it is called before every side effect, and each pass first adopts the runs another daemon
        started (`reconcile.adopt`). None: no lease, no adoption.
        `settled_pass`: a first pass may skip loading the commit when the state directory's settled-pass record
        (`reconcile/settled.py`) shows that a full pass would do nothing; False always runs the full pass.
        `setup`: when `operator` and `limits` come from an operator's configuration file, that file's
        `DaemonConfig.settled_setup`, the record's operator part (which `quickpass` can compute too).
        `role` and `on_busy`: who this process is, and what it does when another process is in a pass in this
        state directory (`reconcile.passlock`): None raises `PassBusy`; a callable is told who, once, and the pass
        waits for it, until `busy_until` (`time.monotonic()`; None: as long as it takes)."""
        self.state_dir, self._configured, self.paths = state_dir, setup, Paths(root=state_dir)
        # the lock on passes, and what a pass does while another process's holds it (`reconcile.passlock`)
        self.pass_lock, self._when_busy = PassLock(state_dir, role), (on_busy, busy_until)
        self.operator = operator or Operator()
        self.branch = branch
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state = StateStore(self.paths.state_db)
        self._registry_checked = False
        self.registry = Registry(self.paths.registry_db)
        self.source = Source(url, self.paths.mirror)
        self.url = self.source.url
        self._follow_this_repository()
        self._spec_cache = SpecCache.open(state_dir, writable=True) if spec_cache == "own" else spec_cache
        self.loader = DesiredLoader(self.source, self.operator, cache=self._spec_cache)
        self.verifier = CommitVerifier(verify) if verify is not None else None
        self._refusal_logged = ""
        self._rejection_logged = ""  # the commit whose rejection was logged: once, not on every pass
        self.limits = limits or OutputLimits()
        self.observer = Observer(self.state, state_dir, self.limits)
        self.summary = Summary(self.state)
        self.troubles = RetryBook(self.state.conn, time.time)
        self.retry_stalled()  # a start or a reload: the operator may have fixed the cause
        self.outbox = Outbox(self.state.conn, time.time)
        self.applier = Applier(
            state=self.state,
            registry=self.registry,
            launcher=Launcher(self.state, self.source, self.paths.runs, self.operator.data_roots),
            observer=self.observer,
            artifacts=self.paths.artifacts,
            store=self.operator.registry,
            limits=self.limits,
            troubles=self.troubles,
            outbox=self.outbox,
        )
        self.repository_id = digest({"url": self.source.url, "branch": self.branch})[:16]
        self.applier.launcher.repository_id = self.repository_id
        self.fence: Callable[[], None] = fence or (lambda: None)
        self.applier.fence = self.applier.launcher.fence = self.fence
        self.adopter = (
            Adopter(state=self.state, launcher=self.applier.launcher, registry=lambda: self.registry,
                    repository_id=self.repository_id)
            if fence is not None else None
        )  # fmt: skip
        self.aliases = AliasBook(self.registry.conn)
        self._alias_view = PerModel(lambda m: dict(m.spec.spec.aliases))
        self._base_view = PerModel(lambda m: m.spec.spec.base)
        self._resource_view = PerModel(lambda m: (m.train.backend, m.train.resources))
        self._caps_view = PerModel(self._over_caps)
        self._policy_view = PerModel(lambda m: static_refusal(ask_of(m), self.operator.policies))
        self._over_budget: dict[str, str] = {}  # models the budgets refused in the last pass, and why
        self._budget_look: float | None = None  # when a budget refusal must be looked at again
        self._admitted: dict[tuple[str, Resources], tuple[Backend | None, str | None]] = {}
        # the models refused at plan time (by their backend, the caps or policy) and whether their backend refused any
        self._refused_for: tuple[DesiredState, dict[str, str], bool] | None = None
        self._last_based: dict[str, Want] = {}
        self._alias_state = self.aliases.current()
        self._alias_seen: dict[str, tuple[tuple[tuple[str, str], ...], int]] = {}
        self._alias_problems: dict[str, tuple[str, ...]] = {}
        self._settled_pass = settled_pass  # may a first pass be skipped
        self._settled: tuple[str, tuple[tuple[str, str], ...], int] | None = None
        self._retry_at = float("inf")  # when a settled state must be looked at again (a retry falls due)
        self._next_sweep = 0.0  # when to look for unfinished uploads in the store next

    def retry_stalled(self) -> int:
        """Make the work that stalled on a permanent error due again (the operator says it is fixed)."""
        count = self.troubles.forgive_permanent()
        if count:
            log.info("retrying %d piece(s) of work that had stalled on a permanent error", count)
        return count

    def close(self) -> None:
        self.state.close()
        self.registry.close()
        if self._spec_cache is not None:
            self._spec_cache.close()

    def reconcile(self, trigger: str = "cli", *, dry_run: bool = False, at: str | None = None) -> PassResult:
        """One pass. With `dry_run`, return the plan without applying it or recording anything; with `at` too,
        plan that commit (already in the mirror: `gitopsd plan --branch REF`) instead of the fetched branch tip;
        `at` is for dry runs only (a pass applies the branch it follows). A pass that applies holds the state
        directory's pass lock (`reconcile.passlock`) throughout; a dry run takes none."""
        if dry_run:
            return self._pass(trigger, dry_run=True, at=at)
        with self.pass_lock.held(*self._when_busy):
            return self._pass(trigger, dry_run=False, at=None)

    def _pass(self, trigger: str, *, dry_run: bool, at: str | None) -> PassResult:
        row = self.state.source() or SourceRow(url=self.source.url, branch=self.branch)
        row = _with(row, branch=self.branch, trigger=trigger)
        if not self._registry_checked and not dry_run:
            problem = self._restore_lost_registry()
            if problem:
                if problem != row.error:
                    log.error("%s", problem)
                self.state.set_source(_with(row, error_reason=Reason.REGISTRY_FAILED, error=problem))
                return PassResult(commit=row.applied_commit, actions=(), active=0, error=problem)
        commit, row = self._fetch(row) if at is None or not dry_run else (at, row)
        refusal = self._verify(commit, row)
        if not refusal and not dry_run and at is None and (quick := self._resume_settled(commit, row)) is not None:
            return quick
        if refusal:
            desired, row = self._last_good(row), _with(row, error_reason=Reason.SIGNATURE_INVALID, error=refusal)
        else:
            desired, row = self._load(commit, row)
        if not dry_run:
            self.state.set_source(row)
        self._adopt(desired, dry_run)
        runs = self.state.active_runs()
        if desired is None:
            return PassResult(commit=commit, actions=(), active=len(runs), error=row.error)
        backends, unavailable = self.observer.backends(desired, runs)
        settled = (desired.commit, tuple(sorted(unavailable.items())), self.state.last_event())
        if not runs and not dry_run and settled == self._settled and self.troubles.clock() < self._retry_at:
            due = None if self._retry_at == float("inf") else self._retry_at  # a daemon still passes then
            return PassResult(commit=commit, actions=(), active=0, error=row.error, retry_at=due)
        views = self.observer.observe(runs, desired, backends, unavailable, record=not dry_run)
        wants, bases, rebased = self._effective_wants(desired, backends)
        keys = {name: want.run_key for name, want in wants.items()}  # what the registry and the runs are asked
        versions = self.registry.wanted_numbers(keys)
        registered: dict[str, set[str]] = {}
        for model, run_key in versions:
            registered.setdefault(model, set()).add(run_key)
        failed = self.state.failed(keys)
        actual = Actual(
            runs=views, registered=registered, failed_attempts={t: f.attempts for t, f in failed.items()},
            unavailable=unavailable, now=time.time(),
            last_failures={t: Failure(ended_at=f.ended_at, reason=f.reason) for t, f in failed.items()},
        )  # fmt: skip
        wants, actions, rebased = self._within_budgets(desired, wants, plan(wants, actual), rebased)
        if dry_run:
            return PassResult(
                commit=desired.commit, actions=tuple(actions), active=len(runs), error=row.error,
                unavailable=dict(unavailable),
                blocked={name: want.blocked for name, want in wants.items() if want.blocked}, wants=wants,
            )  # fmt: skip
        tried = self.applier.apply(actions, desired, backends, bases)
        if tried:
            versions = self.registry.wanted_numbers(keys)  # budgets block wants, never change their keys
        moved, problems = self._sync_aliases(desired)
        touched = moved | problems | rebased
        waiting = self.outbox.drain({"alias-journal": self._send_alias_journal, "audit-tags": self._push_tags})
        self._sweep_uploads()
        active = self.state.active_runs()
        live = {run.id for run in active}
        self.troubles.forget_where(lambda t: t.model in desired.models and t.subject in live | {t.model})
        troubles = self.troubles.by_model()
        self.summary.record(
            desired, unavailable, versions, active, actions, self._alias_problems, wants, touched, troubles
        )
        retry_at = self._next_due(actions, waiting)
        # Refused aliases and the wants of fine-tuned or refused models are compared with what this process saw
        # last: a new process finds them all "changed" on its first pass, and what changed is recorded by now. Only
        # what this pass did (a submission, an alias moved) keeps the state from being settled, or a repository
        # with a fine-tune or an alias of a version to come would never settle for `reconcile --once`.
        self._note_settled(desired, row, unavailable, retry_at, quiet=not tried and not active and not moved,
                           done=not actions and commit == desired.commit)  # fmt: skip
        return PassResult(commit=commit, actions=tuple(actions), active=len(active), error=row.error, retry_at=retry_at)

    def _settled_fingerprint(self, row: SourceRow) -> str:
        """`settled.fingerprint` of this reconciler's state and setup."""
        return settled.fingerprint(
            row, state=self.state, troubles=self.troubles, outbox=self.outbox, registry=self.registry,
            aliases=self.aliases, setup=self._settled_setup(),
        )  # fmt: skip

    def _settled_setup(self) -> object:
        """Without a signature policy, what `quickpass` can check without pydantic: the configuration file's
        digest when one was given (`setup`), else `settled.DEFAULT_SETUP` with the built-in operator and output
        limits. Otherwise the configuration itself."""
        if self._setup is None:
            default = self.operator == Operator() and self.limits == OutputLimits() and self.verifier is None
            if self._configured is not None and self.verifier is None:
                self._setup = self._configured
            elif default:
                self._setup = settled.DEFAULT_SETUP
            else:
                self._setup = [self.operator.model_dump_json(), repr(self.limits)]
        return self._setup

    def _follow_this_repository(self) -> None:
        """Refuse a state directory that tracks another repository (PermanentError), unless that one never
        applied a commit here (a mistyped --repo): nothing is lost by following this one instead."""
        known = self.state.source()
        if known is None or known.url == self.source.url:
            return
        if known.applied_commit is None and not self.state.ever_ran() and self.registry.empty():
            log.warning("state directory %s: now tracking %s instead of %s, which never applied a commit here",
                        self.state_dir, self.source.shown, redact_url(known.url))  # fmt: skip
            self.state.set_source(SourceRow(url=self.source.url, branch=self.branch))
            return
        self.close()
        raise PermanentError(
            f"state directory {self.state_dir} already tracks {redact_url(known.url)}; "
            f"use another --state-dir for {self.source.shown}"
        )

    def _settled_key(self, *, create: bool) -> tuple[bytes, str] | None:
        """The state directory's MAC key and the code's generation, or None when the record cannot be used."""
        if not self._settled_pass or self.adopter is not None:  # a standby daemon adopts on every pass
            return None
        key = state_key(self.state_dir, create=create)
        if key is None:
            return None
        if self._settled_generation is None:
            self._settled_generation = settled.code_generation()
        return key, self._settled_generation

    def _resume_settled(self, commit: str | None, row: SourceRow) -> PassResult | None:
        """The first pass of a process, when the settled-pass record shows that a full pass would find what the
        daemon's settled shortcut finds (same commit, no run in flight, same backends' health, nothing else
        changed): that shortcut's result, without loading the commit. None: run the full pass."""
        if commit is None or row.error or commit != row.applied_commit or self.loader.last_good is not None:
            return None
        signing = self._settled_key(create=False)
        if signing is None:
            return None
        record = settled.read(self.state_dir, *signing)
        if record is None or record.commit != commit or self.state.active_runs():
            return None
        if record.fingerprint != self._settled_fingerprint(row):
            return None
        _, unavailable = self.observer.check(record.backends)
        if unavailable != dict(record.unavailable):
            return None
        log.debug("commit %s: settled since the last pass (%s), nothing to load", commit[:12], settled.RECORD_FILE)
        self.state.set_source(row)
        self._sweep_uploads()  # as the full pass of a new process would
        return PassResult(commit=commit, actions=(), active=0, error=row.error)

    def _note_settled(
        self,
        desired: DesiredState,
        row: SourceRow,
        unavailable: Mapping[str, str],
        retry_at: float | None,
        *,
        quiet: bool,
        done: bool,
    ) -> None:
        """After a full pass that applied: when it was `quiet` (nothing tried, no run in flight, no alias moved),
        the daemon's settled state; when moreover it planned nothing for the fetched commit (`done`), nothing
        falls due later and no backend refuses a model, a settled-pass record for the next process, else none."""
        if quiet:
            self._settled = (desired.commit, tuple(sorted(unavailable.items())), self.state.last_event())
            self._retry_at = float("inf") if retry_at is None else retry_at
        # A backend's refusal is not settled for good: its answer (the host's CPUs and memory, a cluster's nodes,
        # a plugin's abilities) may change with nothing in the repository or the configuration changing. The
        # caps' and policy's refusals follow from the configuration, which the record's fingerprint covers.
        backend_refused = self._refused_for is not None and self._refused_for[0] is desired and self._refused_for[2]
        last = quiet and done and retry_at is None and not self._over_budget and not backend_refused and not row.error
        signing = self._settled_key(create=True) if last else None
        if signing is None:
            settled.forget(self.state_dir)
            return
        needed = self.observer.needed(desired, [])
        record = settled.Settled(
            commit=desired.commit, backends=needed, unavailable=dict(unavailable),
            fingerprint=self._settled_fingerprint(row),
        )  # fmt: skip
        settled.write(self.state_dir, *signing, record)

    def take_over(self) -> tuple[int, int]:
        """This daemon just became the repository's active one (`[standby]`): import the versions and alias
        moves the artifact store holds and `registry.db` lacks, so numbering goes on where the daemon before it
        stopped and nothing stalls on a number the store already holds. Returns (versions, alias moves)."""
        imported = import_missing(self.applier.store(), self.registry)
        self._alias_state = self.aliases.current()
        self._alias_seen.clear()
        self._settled = None
        if any(imported):
            log.warning("registry %s brought up to date from the artifact store: %d version(s), %d alias move(s) "
                        "registered by the daemon active before", self.paths.registry_db, *imported)  # fmt: skip
        return imported

    def _adopt(self, desired: DesiredState | None, dry_run: bool) -> None:
        """With a lease, before anything is planned: import the runs of this repository another daemon started."""
        if self.adopter is not None and desired is not None and not dry_run:
            self.adopter.adopt(desired, self._run_roots())

    def _run_roots(self) -> Iterator[Path]:
        """Where run directories live: this state directory's, and the shared run roots of the operator's
        backends (`runs_dir`, an operator-only setting)."""
        yield self.paths.runs
        for config in self.operator.backends.values():
            shared = config.settings.get(RUNS_DIR_SETTING)
            if isinstance(shared, str) and shared.startswith("/"):
                yield Path(shared)

    def _refused(self, desired: DesiredState, backends: Mapping[str, Backend]) -> dict[str, str]:
        """Models whose backend says it can never run their resources (asked once per backend and resources)."""
        asks = self._resource_view.of(desired)
        fresh = {
            key
            for key in set(asks.values())
            if key[0] in backends and self._admitted.get(key, (None, None))[0] is not backends[key[0]]
        }
        for key in fresh:
            backend = backends[key[0]]
            try:
                self._admitted[key] = (backend, backend.admit(key[1]))
            except Exception as exc:  # a plugin bug must not stop the pass; ask again next time
                log.warning("backend %s: admit failed: %s", key[0], exc)
        if fresh or self._refused_for is None or self._refused_for[0] is not desired:
            refused = {name: why for name, key in asks.items() if (why := self._admitted.get(key, (None, None))[1])}
            unable = {name: why for name, m in desired.models.items() if (why := _no_checkpoint(m, backends))}
            by_backend = bool(refused or unable)
            refused.update({name: why for name, why in self._caps_view.of(desired).items() if why})
            refused.update(
                {name: why for name, why in self._policy_view.of(desired).items() if why and name not in refused}
            )
            refused.update(unable)
            self._refused_for = (desired, refused, by_backend)
        return self._refused_for[1]

    def _over_caps(self, model: DesiredModel) -> str | None:
        """Why a model asks for more than the operator's caps on its backend allow, or None."""
        backend = self.operator.backends.get(model.train.backend)
        return over_caps(model.train.resources, model.train.timeout_s, backend.caps) if backend else None

    def _effective_wants(
        self, desired: DesiredState, backends: Mapping[str, Backend]
    ) -> tuple[dict[str, Want], dict[str, Version], set[str]]:
        """Wants as the planner must see them now: refused resources block a model, and each fine-tuned
        model's key is bound to the base version it would start from.

        A model with `base: NAME@N|ALIAS` trains again when its base resolves to another artifact, and waits
        (blocked) while the base has no such version. Returns the wants, the resolved bases, and the models
        whose want changed since the last pass.
        """
        wants = self.summary.wants.of(desired)
        refused = self._refused(desired, backends)
        refs = {name: ref for name, ref in self._base_view.of(desired).items() if ref}
        if not refs and not refused:
            return wants, {}, set()
        wants = dict(wants)
        for name, why in refused.items():
            wants[name] = replace(
                wants[name], blocked=f"refused at plan time: {why}", blocked_reason=Reason.POLICY_DENIED
            )
        bases: dict[str, Version] = {}
        for name, ref in refs.items():
            base = self._resolve_base(ref)
            want = wants[name]
            if base is None:
                wants[name] = replace(want, blocked=f"waiting for base model {ref}: no such registered version yet")
                continue
            bases[name] = base
            tie = {"base": base.artifact.sha256}
            wants[name] = replace(
                want,
                run_key=digest({"run_key": want.run_key, **tie}),
                spec_digest=digest({"spec_digest": want.spec_digest, **tie}),
            )
        special = refs.keys() | refused.keys()
        changed = {name for name in special | self._last_based.keys() if self._last_based.get(name) != wants.get(name)}
        self._last_based = {name: wants[name] for name in special}
        return wants, bases, changed

    def _within_budgets(
        self, desired: DesiredState, wants: dict[str, Want], actions: list[Action], changed: set[str]
    ) -> tuple[dict[str, Want], list[Action], set[str]]:
        """Hold back the new trainings the policy's GPU-hour budgets refuse (`gitopsd.spec.policy`).

        Only what this pass would submit is judged: a model whose run key has a version or a run in flight
        plans no submission, so a budget never refuses, cancels or blocks a run already started. Returns the
        wants (refused ones blocked, PolicyDenied), the actions without their submissions, and `changed` with
        the models whose refusal changed since the last pass. Runs of the last week come from an indexed query;
        a refused model is looked at again on the next pass, or at `next_look` at the latest (the window rolls).
        """
        now = time.time()
        submits = {a.model for a in actions if isinstance(a, Submit)}
        refused: dict[str, str] = {}
        self._budget_look = None
        if submits and any(rule.budgeted for _, rule in self.operator.policies):
            stopping = {a.run_id for a in actions if isinstance(a, Cancel)}  # superseded: they end in this pass
            week = [spent_of(run, now if run.id in stopping else None) for run in self.state.gpu_runs(now - WEEK_S)]
            started: dict[str, Ask] = {}
            for run in self.state.runs_of_commit(desired.commit):
                if run.model not in submits:
                    started[run.model] = ask_of_run(run)
            trainings = [ask_of(desired.models[name]) for name in sorted(submits)]
            refused = budget_refusals(trainings, self.operator.policies, week=week, started=started.values(),
                                      elsewhere=self._peers_week(now), now=now)  # fmt: skip
            if refused:
                self._budget_look = next_look(week, now=now)
        before, self._over_budget = self._over_budget, refused
        changed = changed | {n for n in refused.keys() | before.keys() if refused.get(n) != before.get(n)}
        if not refused:
            return wants, actions, changed
        wants = dict(wants)
        for name, why in refused.items():
            wants[name] = replace(wants[name], blocked=f"refused by policy: {why}", blocked_reason=Reason.POLICY_DENIED)
        kept = [a for a in actions if not (isinstance(a, Submit) and a.model in refused)]
        return wants, kept, changed

    def _peers_week(self, now: float) -> dict[int, float]:
        """GPU-hours the other repositories that share a weekly budget with this one used or hold in the last
        7 days, by rule index: their runs, each judged by the rules that cover its own repository (read-only,
        indexed). A repository whose state cannot be read counts nothing, with a warning."""
        totals: dict[int, float] = {}
        for name, directory, rules in self.operator.budget_peers:
            try:
                week = read_spent(Path(directory), now - WEEK_S)
            except sqlite3.Error as exc:
                log.warning("weekly budgets: the runs of repository %s (%s) cannot be read, so they are not "
                            "counted: %s", name, directory, exc)  # fmt: skip
                continue
            for index, hours in used_by_rule(rules, week, now=now).items():
                totals[index] = totals.get(index, 0.0) + hours
        return totals

    def _resolve_base(self, ref: str) -> Version | None:
        model, _, which = ref.partition("@")
        number = int(which) if which.isdigit() else self._alias_state.get((model, which))
        return self.registry.get(model, number) if number is not None else None

    def _sync_aliases(self, desired: DesiredState) -> tuple[set[str], set[str]]:
        """Move aliases to where the applied commit declares them; return the models whose aliases moved, and
        those whose refused aliases differ from what this process last saw."""
        declared = {name: aliases for name, aliases in self._alias_view.of(desired).items() if aliases}
        pointing: dict[str, dict[str, int]] = {}  # each model's aliases as the registry has them, grouped once
        for (model, alias), number in self._alias_state.items():
            pointing.setdefault(model, {})[alias] = number
        named: dict[str, set[int]] = {name: set() for name in self._alias_seen}
        named |= alias_targets(declared.items(), self._alias_state)
        numbers = self.registry.alias_numbers(named)  # each model's newest version, and those its aliases name
        moved: set[str] = set()
        problems: set[str] = set()
        for name in sorted(named):
            wanted = declared.get(name, {})
            have = numbers.get(name, set())
            key = (tuple(sorted((a, str(t)) for a, t in wanted.items())), max(have, default=0))
            if self._alias_seen.get(name) == key:
                continue
            current = pointing.get(name, {})
            moves, refused = plan_aliases(name, wanted, have, current)
            if moves:
                self.fence()  # an alias moves only while this daemon holds the lease ([standby])
                subject = str(self.source.commit_info(desired.commit)["subject"])
                records = self.aliases.record(moves, commit=desired.commit, subject=subject)
                self.outbox.put("alias-journal", name, model=name)  # drained at the end of this pass
                for record in records:
                    target = f"{name}@{record.version}" if record.version is not None else "nothing"
                    before = f"{name}@{record.previous}" if record.previous is not None else "nothing"
                    message = f"alias {record.alias} {record.kind}: {before} -> {target}"
                    log.info("%s: %s (commit %s)", name, message, desired.commit[:12])
                    self.state.event(name, ALIAS_MOVED_EVENT, reason=record.kind, message=message,
                                     commit_id=desired.commit)  # fmt: skip
                    if record.version is None:
                        self._alias_state.pop((name, record.alias), None)
                    else:
                        self._alias_state[(name, record.alias)] = record.version
            if refused:
                self.fence()  # the event log is the active daemon's to write ([standby])
            for alias, problem in _refused_aliases(wanted, refused):  # for the alias history (`gitopsd.ui`)
                if self.state.event_once(name, ALIAS_REFUSED_EVENT, reason=alias, message=problem,
                                         commit_id=desired.commit, ended_by=ALIAS_MOVED_EVENT):  # fmt: skip
                    log.info("%s: %s (commit %s)", name, problem, desired.commit[:12])
            if tuple(refused) != self._alias_problems.get(name, ()):
                problems.add(name)
            if refused:
                self._alias_problems[name] = tuple(refused)
            else:
                self._alias_problems.pop(name, None)
            if moves:
                moved.add(name)
            self._alias_seen[name] = key
        return moved, problems

    def _next_due(self, actions: list[Action], waiting: int) -> float | None:
        """When failed work falls due again: an attempt's backoff, a retry in the book, an outbox entry."""
        due = [a.retry_at for a in actions if isinstance(a, Wait)]
        due += [t.next_at for t in self.troubles.all().values() if t.next_at is not None]
        due += [e.next_at for e in self.outbox.entries()] if waiting else []
        due += [self._budget_look] if self._budget_look is not None else []
        return min(due, default=None)

    def _worth_waiting(self, result: PassResult) -> bool:
        """Whether another pass may change something: a retry's backoff runs, or a run in flight is not stuck
        on a permanent failure (waiting longer cannot mend that)."""
        if any(isinstance(action, Wait) for action in result.actions):
            return True
        stalled = {trouble.subject for trouble in self.troubles.all().values() if trouble.permanent}
        return any(run.id not in stalled for run in self.state.active_runs())

    def _restore_lost_registry(self) -> str:
        """Before any version number is given: when the registry holds no version but the store holds
        records, rebuild it from the store. Returns why the pass cannot go on ("" when it can)."""
        if not self.registry.empty():
            self._registry_checked = True
            return ""
        try:
            store = self.applier.store()
            self.registry.close()
            try:
                restored = restore_lost(store, self.paths.registry_db)
            finally:
                self.registry = self.applier.registry = Registry(self.paths.registry_db)
                self.aliases = AliasBook(self.registry.conn)
                self._alias_state = self.aliases.current()
        except (GitopsdError, OSError) as exc:
            return (
                f"registry {self.paths.registry_db} holds no version and its artifact store cannot be checked for "
                f"records of earlier ones, so no version number is given until it can: {exc}"
            )
        self._registry_checked = True
        if restored:
            log.warning("registry %s held no version: rebuilt from the artifact store (%d versions, %d alias moves)",
                        self.paths.registry_db, *restored)  # fmt: skip
        return ""

    def _sweep_uploads(self) -> None:
        """Now and then, abort the store's uploads that a killed or cut-off writer left unfinished."""
        now = self.troubles.clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        sweep_stale_uploads(self.applier.store)

    def _send_alias_journal(self, entry: Entry) -> None:
        self.fence()
        save_alias_journal(self.applier.store(), self.aliases, entry.subject)

    def _push_tags(self, entry: Entry) -> None:
        self.fence()
        push_tags(self.source)

    def _fetch(self, row: SourceRow) -> tuple[str | None, SourceRow]:
        try:
            self.source.fetch()
            commit = self.source.resolve(self.branch)
        except SourceUnavailable as exc:
            log.warning("source unavailable: %s", exc)
            return row.applied_commit, _with(row, error_reason=Reason.SOURCE_UNAVAILABLE, error=str(exc))
        return commit, _with(row, fetched_commit=commit, fetched_at=time.time(), error_reason="", error="")

    def _verify(self, commit: str | None, row: SourceRow) -> str:
        """Why `commit` may not be applied under the signature policy ("" when it may, or when there is none)."""
        if self.verifier is None or commit is None:
            return ""
        verdict = self.verifier.verify(self.source.repo, row.applied_commit, commit)
        if verdict.ok:
            self._refusal_logged = ""
            return ""
        good = row.applied_commit[:12] if row.applied_commit else "no earlier commit"
        error = f"commit {commit[:12]} refused, {good} stays in force: {verdict.message}"
        if error != self._refusal_logged:
            log.error("%s", error)
            self._refusal_logged = error
        return error

    def _load(self, commit: str | None, row: SourceRow) -> tuple[DesiredState | None, SourceRow]:
        """Desired state at `commit`; for a bad commit, the last good one and the reason it stays in force."""
        if commit is None:
            return None, row
        try:
            desired = self.loader.load(commit)
        except SpecError as exc:
            # `_fetch` clears the row's error on every pass, so the row cannot say whether this was logged.
            if self._rejection_logged != commit:
                log.error("commit %s rejected:\n%s", commit[:12], exc)
                self._rejection_logged = commit
            good = row.applied_commit[:12] if row.applied_commit else "no earlier commit"
            error = f"commit {commit[:12]} rejected, {good} stays in force:\n{exc}"
            return self._last_good(row), _with(row, error_reason=Reason.SPEC_INVALID, error=error)
        if row.applied_commit != commit:
            row = _with(row, applied_commit=commit, applied_at=time.time())
        return desired, row

    def _last_good(self, row: SourceRow) -> DesiredState | None:
        if self.loader.last_good is not None:
            return self.loader.last_good
        if row.applied_commit is None:
            return None
        try:
            return self.loader.load(row.applied_commit)
        except GitopsdError:
            return None

    def reconcile_until_settled(self, *, timeout_s: float, trigger: str = "cli") -> PassResult:
        """Pass again and again until no run is in flight (or the timeout), backing off between passes."""
        deadline = time.monotonic() + timeout_s
        delay = 0.2
        result = self.reconcile(trigger)
        while self._worth_waiting(result) and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
            result = self.reconcile(trigger)
        return result


def _refused_aliases(declared: Mapping[str, object], refused: list[str]) -> Iterator[tuple[str, str]]:
    """(alias, why) for each refusal of `plan_aliases`, whose messages start with `alias NAME` and a space or a
    colon, which no alias name has: read off each message, not looked for among thousands of aliases."""
    for problem in refused:
        found = _ALIAS_OF.match(problem)
        if found is not None and found.group(1) in declared:
            yield found.group(1), problem


def _with(row: SourceRow, **changes: Any) -> SourceRow:
    return SourceRow(**{**asdict(row), **changes})


def ask_of(model: DesiredModel) -> Ask:
    """What a desired model asks for, as the operator's policy judges it."""
    train = model.train
    partition = train.settings.get("partition")
    return Ask(
        model=model.name, path=model.path, backend=train.backend,
        partition=None if partition is None else str(partition), gpus=train.resources.gpus,
        nodes=train.resources.nodes, timeout_s=train.timeout_s, retries=train.retries,
    )  # fmt: skip


def ask_of_run(run: RunRecord) -> Ask:
    """What a recorded run asked for (its GPUs are already GPUs x nodes)."""
    return Ask(model=run.model, path=run.spec_path, backend=run.backend, gpus=run.gpus, timeout_s=run.timeout_s)


def spent_of(run: RunRecord, ends_at: float | None = None) -> Spent:
    """A recorded run as usage counts it: from its start (else its creation), until it ended (else in flight;
    `ends_at`: it is being stopped, and holds nothing beyond)."""
    started = run.started_at if run.started_at is not None else run.created_at
    ended = (run.ended_at or run.updated_at) if run.phase in _ENDED else ends_at
    return Spent(model=run.model, path=run.spec_path, gpus=run.gpus, started_at=started, ended_at=ended,
                 timeout_s=run.timeout_s)  # fmt: skip


_ENDED = (Phase.REGISTERED, Phase.FAILED, Phase.CANCELLED)


def _no_checkpoint(model: DesiredModel, backends: Mapping[str, Backend]) -> str | None:
    """Why the model's backend cannot run its `spec.train.checkpoint`, or None."""
    backend = backends.get(model.train.backend)
    if model.train.checkpoint is None or backend is None or can_checkpoint(backend):
        return None
    return (
        f"spec.train.checkpoint: backend {model.train.backend!r} (type {model.train.backend_type}) cannot chain "
        "checkpointed jobs; remove spec.train.checkpoint or train on a Slurm backend"
    )
