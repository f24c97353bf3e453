"""One reconcile pass, as an ordered list of steps: fetch, load, observe, plan, apply, summarize.

The reconciler owns the I/O around the pure planner and summarizer. It keeps the crash-safety protocol: a run
row is committed (phase Submitting) before its job is submitted, and a run found in Submitting later is first
looked up in its backend by run id, so a job is never started twice. A commit with invalid specs is rejected
whole and the last good commit stays in force.
"""

from __future__ import annotations

import gc
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from gitopsd import conditions as summarizer
from gitopsd.backend import Backend, load_backend
from gitopsd.collect import collect, write_snapshot
from gitopsd.convergence import Plateau, Rules, judge
from gitopsd.desired import DesiredLoader, DesiredModel, DesiredState
from gitopsd.errors import GitopsdError, PermanentError, SourceUnavailable, SpecError, TransientError
from gitopsd.metrics import MetricsReader
from gitopsd.model import Condition, Job, JobRef, JobStatus, Phase, Reason
from gitopsd.planner import (
    Action,
    Actual,
    Adopt,
    Cancel,
    Collect,
    Fail,
    Resubmit,
    RunView,
    SetPhase,
    Submit,
    Want,
    plan,
)
from gitopsd.registry import Registry
from gitopsd.source import Source
from gitopsd.state import ModelRow, RunRecord, SourceRow, StateStore
from gitopsd.store import open_store, sha256_file

log = logging.getLogger("gitopsd")
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class PassResult:
    commit: str | None
    actions: tuple[Action, ...]
    active: int
    error: str = ""
    unavailable: Mapping[str, str] = field(default_factory=dict)


@dataclass(kw_only=True)
class Paths:
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


class PerModel(Generic[T]):
    """A value derived from each desired model, recomputed only for models that changed between commits.

    The desired-state loader keeps the same `DesiredModel` object for a model whose inputs did not change, so
    identity tells what to recompute: a one-spec commit costs one call, not one per model.
    """

    def __init__(self, derive: Callable[[DesiredModel], T]) -> None:
        self._derive = derive
        self._source: DesiredState | None = None
        self._values: dict[str, T] = {}

    def of(self, desired: DesiredState) -> dict[str, T]:
        if self._source is not desired:
            before = self._source.models if self._source is not None else {}
            old = self._values
            self._values = {
                name: old[name] if before.get(name) is model and name in old else self._derive(model)
                for name, model in desired.models.items()
            }
            self._source = desired
        return self._values


@dataclass(kw_only=True)
class Reconciler:
    """Reconciles one repository (URL or path, branch) into one state directory."""

    state_dir: Path
    url: str
    branch: str | None = None
    paths: Paths = field(init=False)
    state: StateStore = field(init=False)
    registry: Registry = field(init=False)
    source: Source = field(init=False)
    loader: DesiredLoader = field(init=False)
    _backends: dict[str, tuple[Any, Backend]] = field(default_factory=dict)
    _readers: dict[str, MetricsReader] = field(default_factory=dict)
    _want_view: PerModel[Want] = field(default_factory=lambda: PerModel(_want))
    _row_view: PerModel[ModelRow] = field(default_factory=lambda: PerModel(_row))
    _backend_view: PerModel[str] = field(default_factory=lambda: PerModel(lambda m: m.train.backend))
    _known: tuple[dict[str, ModelRow], dict[str, Condition]] | None = None
    _settled: tuple[str, tuple[tuple[str, str], ...], int] | None = None
    _frozen: bool = False
    _summarized: tuple[DesiredState, dict[str, str], set[str]] | None = None

    def __post_init__(self) -> None:
        self.paths = Paths(root=self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = StateStore(self.paths.state_db)
        self.registry = Registry(self.paths.registry_db)
        self.source = Source(self.url, self.paths.mirror)
        self.loader = DesiredLoader(self.source)
        known = self.state.source()
        if known is not None and known.url != self.source.url:
            raise PermanentError(
                f"state directory {self.state_dir} already tracks {known.url}; use another --state-dir for "
                f"{self.source.url}"
            )

    def close(self) -> None:
        self.state.close()
        self.registry.close()

    # the pass -------------------------------------------------------------------------------------------
    def reconcile(self, trigger: str = "cli", *, dry_run: bool = False) -> PassResult:
        """One pass. With `dry_run`, return the plan without applying it or recording anything."""
        row = self.state.source() or SourceRow(url=self.source.url, branch=self.branch)
        row = SourceRow(**{**asdict(row), "branch": self.branch, "trigger": trigger})
        commit, row = self._fetch(row)
        desired, row = self._load(commit, row)
        if desired is not None and not self._frozen:
            # The first desired state lives as long as the daemon: move it out of the cyclic collector's
            # sight, so later passes do not rescan tens of thousands of long-lived spec objects.
            gc.freeze()
            self._frozen = True
        if not dry_run:
            self.state.set_source(row)
        if desired is None:
            return PassResult(commit=commit, actions=(), active=len(self.state.active_runs()), error=row.error)
        backends, unavailable = self._backends_for(desired)
        runs = self.state.active_runs()
        settled = (desired.commit, tuple(sorted(unavailable.items())), self.state.last_event())
        if not runs and not dry_run and settled == self._settled:
            return PassResult(commit=commit, actions=(), active=0, error=row.error)
        views = self._observe(runs, desired, backends, unavailable, record=not dry_run)
        numbers = self.registry.key_numbers()
        registered: dict[str, set[str]] = {}
        for model, run_key in numbers:
            registered.setdefault(model, set()).add(run_key)
        actual = Actual(
            runs=views,
            registered=registered,
            failed_attempts=self.state.attempts(),
            unavailable=unavailable,
        )
        actions = plan(self._wants(desired), actual)
        if dry_run:
            return PassResult(
                commit=desired.commit,
                actions=tuple(actions),
                active=len(runs),
                error=row.error,
                unavailable=dict(unavailable),
            )
        by_id = {r.id: r for r in runs}
        for action in actions:
            self._apply(action, desired, backends, by_id)
        if actions:
            numbers = self.registry.key_numbers()
        active = self.state.active_runs()
        self._summarize(desired, unavailable, numbers, active, actions)
        if not actions and not active:
            self._settled = (desired.commit, tuple(sorted(unavailable.items())), self.state.last_event())
        return PassResult(commit=commit, actions=tuple(actions), active=len(active), error=row.error)

    def _wants(self, desired: DesiredState) -> dict[str, Want]:
        """The planner's view of desired state."""
        return self._want_view.of(desired)

    def _fetch(self, row: SourceRow) -> tuple[str | None, SourceRow]:
        try:
            self.source.fetch()
            commit = self.source.resolve(self.branch)
        except SourceUnavailable as exc:
            log.warning("source unavailable: %s", exc)
            return row.applied_commit, _with(row, error_reason=Reason.SOURCE_UNAVAILABLE, error=str(exc))
        return commit, _with(row, fetched_commit=commit, fetched_at=time.time(), error_reason="", error="")

    def _load(self, commit: str | None, row: SourceRow) -> tuple[DesiredState | None, SourceRow]:
        if commit is None:
            return None, row
        try:
            desired = self.loader.load(commit)
        except SpecError as exc:
            if row.fetched_commit == commit and row.error_reason != Reason.SPEC_INVALID:
                log.error("commit %s rejected:\n%s", commit[:12], exc)
            row = _with(
                row,
                error_reason=Reason.SPEC_INVALID,
                error=f"commit {commit[:12]} rejected, {row.applied_commit and row.applied_commit[:12]} "
                f"stays in force:\n{exc}",
            )
            return self._last_good(row), row
        if row.applied_commit != commit:
            row = _with(row, applied_commit=commit, applied_at=time.time())
        return desired, row

    def _last_good(self, row: SourceRow) -> DesiredState | None:
        if self.loader.last_good is not None:
            return self.loader.last_good
        if row.applied_commit is None:
            return None
        try:
            return DesiredLoader(self.source).load(row.applied_commit)
        except GitopsdError:
            return None

    def _backends_for(self, desired: DesiredState) -> tuple[dict[str, Backend], dict[str, str]]:
        backends: dict[str, Backend] = {}
        unavailable: dict[str, str] = {}
        needed = dict(desired.repo.backends.items())
        used = set(self._backend_view.of(desired).values())
        for name in sorted(used | self._run_backends()):
            cfg = needed.get(name)
            type_ = desired.repo.backend_type(name) if cfg else name
            settings = dict(cfg.settings) if cfg else {}
            key = (type_, repr(sorted(settings.items())))
            try:
                cached = self._backends.get(name)
                if cached is None or cached[0] != key:
                    backend = load_backend(type_, name=name, settings=settings, state_dir=self.state_dir)
                    self._backends[name] = (key, backend)
                backend = self._backends[name][1]
                backend.check()
                backends[name] = backend
            except TransientError as exc:
                unavailable[name] = str(exc)
        return backends, unavailable

    def _run_backends(self) -> set[str]:
        return {r.backend for r in self.state.active_runs()}

    # observe ----------------------------------------------------------------------------------------------
    def _observe(
        self,
        runs: list[RunRecord],
        desired: DesiredState,
        backends: Mapping[str, Backend],
        unavailable: dict[str, str],
        *,
        record: bool,
    ) -> dict[str, RunView]:
        statuses: dict[str, JobStatus] = {}
        by_backend: dict[str, list[JobRef]] = {}
        for run in runs:
            if run.job_id is not None and run.phase is not Phase.VALIDATING:
                by_backend.setdefault(run.backend, []).append(_ref(run))
        for name, refs in sorted(by_backend.items()):
            if name not in backends:
                continue
            try:
                statuses.update(backends[name].status(refs))
            except TransientError as exc:
                unavailable[name] = str(exc)
        views: dict[str, RunView] = {}
        for run in runs:
            found = None
            if run.phase is Phase.SUBMITTING and run.backend in backends:
                found = backends[run.backend].find(run.id, Path(run.run_dir))
            job = statuses.get(run.id)
            verdict = None
            if job is not None and not job.state.finished and not run.stop_reason:
                verdict = self._judge(run, desired.models.get(run.model))
            views[run.id] = RunView(
                id=run.id,
                model=run.model,
                run_key=run.run_key,
                spec_digest=run.spec_digest,
                backend=run.backend,
                phase=run.phase,
                attempt=run.attempt,
                job_id=run.job_id,
                job=job,
                found_job_id=found,
                stop_reason=run.stop_reason,
                verdict=verdict,
            )
            if record:
                self._record_metrics(run)
        return views

    def _reader(self, run: RunRecord) -> MetricsReader | None:
        snapshot_outputs = self._metrics_path(run)
        if snapshot_outputs is None:
            return None
        reader = self._readers.get(run.id)
        if reader is None:
            reader = self._readers[run.id] = MetricsReader(path=snapshot_outputs)
        return reader

    def _metrics_path(self, run: RunRecord) -> Path | None:
        from gitopsd.collect import read_snapshot

        try:
            name = str(read_snapshot(Path(run.run_dir))["outputs"]["metrics"])
        except (OSError, ValueError, KeyError):
            return None
        return Path(run.run_dir) / "out" / name

    def _judge(self, run: RunRecord, model: DesiredModel | None) -> tuple[Reason, str] | None:
        if model is None or model.run_key != run.run_key:
            return None
        rules = _rules(model)
        reader = self._reader(run)
        if rules.empty or reader is None:
            return None
        return judge(rules, reader.read())

    def _record_metrics(self, run: RunRecord) -> None:
        reader = self._reader(run)
        if reader is None:
            return
        merged: dict[str, float] = {}
        for point in reader.read():
            merged.update(point)
        if merged != dict(run.metrics):
            self.state.update_run(run, metrics=merged)

    # apply ------------------------------------------------------------------------------------------------
    def _apply(
        self,
        action: Action,
        desired: DesiredState,
        backends: Mapping[str, Backend],
        runs: dict[str, RunRecord],
    ) -> None:
        run = self.state.get_run(action.run_id) if hasattr(action, "run_id") else None
        if isinstance(action, Submit):
            self._submit(action, desired.models[action.model], backends)
        elif isinstance(action, Resubmit) and run is not None:
            model = desired.models.get(run.model)
            if model is not None:
                self._launch(run, model, backends[run.backend], resubmitted=True)
        elif isinstance(action, Adopt) and run is not None:
            log.info("%s: adopted job %s of run %s after a restart", run.model, action.job_id, run.id)
            self.state.update_run(
                run,
                event="Adopted",
                message=f"job {action.job_id} found by run id",
                job_id=action.job_id,
                phase=Phase.QUEUED,
            )
        elif isinstance(action, SetPhase) and run is not None:
            started = time.time() if action.phase is Phase.RUNNING and run.started_at is None else run.started_at
            self.state.update_run(
                run,
                event=str(action.phase),
                message=f"job {run.job_id} is {action.phase}",
                phase=action.phase,
                started_at=started,
            )
        elif isinstance(action, Cancel) and run is not None:
            self._cancel(run, action, backends)
        elif isinstance(action, Fail) and run is not None:
            log.warning("%s: run %s failed: %s", run.model, run.id, action.message)
            self.state.update_run(
                run,
                event="Failed",
                message=action.message,
                phase=Phase.FAILED,
                reason=str(action.reason),
                exit_code=action.exit_code,
                ended_at=time.time(),
            )
        elif isinstance(action, Collect) and run is not None:
            self._collect(run, backends)

    def _submit(self, action: Submit, model: DesiredModel, backends: Mapping[str, Backend]) -> None:
        run_id = f"{model.name[:40]}-{secrets.token_hex(4)}"
        run_dir = self.paths.runs / run_id
        now = time.time()
        run = RunRecord(
            id=run_id,
            model=model.name,
            run_key=model.run_key,
            spec_digest=model.spec_digest,
            commit_id=self.loader.last_good.commit if self.loader.last_good else "",
            spec_path=model.path,
            backend=model.train.backend,
            phase=Phase.SUBMITTING,
            attempt=action.attempt,
            run_dir=str(run_dir),
            created_at=now,
            updated_at=now,
        )
        self._write_snapshot(run, model)
        self.state.create_run(run, message=f"attempt {action.attempt} for run key {model.run_key[:12]}")
        self._launch(run, model, backends[model.train.backend], resubmitted=False)

    def _write_snapshot(self, run: RunRecord, model: DesiredModel) -> None:
        write_snapshot(
            Path(run.run_dir),
            {
                "model": model.name,
                "spec_path": model.path,
                "commit": run.commit_id,
                "repo_url": self.source.url,
                "commit_info": self.source.commit_info(run.commit_id),
                "run_key": model.run_key,
                "spec_digest": model.spec_digest,
                "code_tree": model.code_tree,
                "train": asdict(model.train),
                "outputs": model.spec.spec.outputs.model_dump(mode="json"),
                "validate": list(model.spec.spec.validate_gates),
                "data": [d.model_dump(mode="json") for d in model.spec.spec.data],
            },
        )

    def _launch(self, run: RunRecord, model: DesiredModel, backend: Backend, *, resubmitted: bool) -> None:
        run_dir = Path(run.run_dir)
        try:
            tree = run_dir / "tree"
            self.source.export(run.commit_id, tree, _exported_paths(model))
            self._check_data(model, tree)
            job = Job(
                run_id=run.id,
                model=run.model,
                command=model.train.command,
                run_dir=run_dir,
                tree_dir=tree,
                workdir=tree / model.train.workdir,
                output_dir=run_dir / "out",
                metrics_file=run_dir / "out" / model.spec.spec.outputs.metrics,
                log_dir=run_dir / "logs",
                env=model.train.env,
                resources=model.train.resources,
                timeout_s=model.train.timeout_s,
                python_requirements=tree / model.train.requirements if model.train.requirements else None,
                settings=model.train.settings,
            )
            job_id = backend.submit(job)
        except PermanentError as exc:
            log.error("%s: run %s cannot be submitted: %s", run.model, run.id, exc)
            self.state.update_run(
                run,
                event="SubmitFailed",
                message=str(exc),
                phase=Phase.FAILED,
                reason=str(Reason.SUBMIT_FAILED),
                ended_at=time.time(),
            )
            return
        except (TransientError, OSError) as exc:
            log.warning("%s: submit of run %s will be retried: %s", run.model, run.id, exc)
            self.state.update_run(run, event="SubmitDeferred", message=str(exc))
            return
        verb = "resubmitted" if resubmitted else "submitted"
        log.info(
            "%s: %s run %s to %s as job %s (commit %s)",
            run.model,
            verb,
            run.id,
            run.backend,
            job_id,
            run.commit_id[:12],
        )
        self.state.update_run(
            run,
            event="Submitted",
            message=f"{verb} to {run.backend} as job {job_id}",
            job_id=job_id,
            phase=Phase.QUEUED,
        )

    def _check_data(self, model: DesiredModel, tree: Path) -> None:
        """Local data must match its declared digest before any GPU time is spent on it."""
        for item in model.spec.spec.data:
            if "://" in item.uri and not item.uri.startswith("file://"):
                continue
            path = Path(item.uri.removeprefix("file://")) if item.uri.startswith("file://") else tree / item.uri
            if not path.is_file():
                raise PermanentError(f"data {item.uri} not found")
            actual = sha256_file(path)
            if actual != item.sha256:
                raise PermanentError(f"data {item.uri} has sha256 {actual}, spec says {item.sha256}")

    def _cancel(self, run: RunRecord, action: Cancel, backends: Mapping[str, Backend]) -> None:
        log.info("%s: stopping run %s: %s", run.model, run.id, action.message)
        backend = backends.get(run.backend)
        if backend is not None and run.job_id is not None:
            backend.cancel(_ref(run))
        if action.reason is Reason.PLATEAUED:
            self.state.update_run(
                run,
                event="EarlyStop",
                message=action.message,
                stop_reason=str(action.reason),
                reason=str(action.reason),
            )
        elif action.reason is Reason.CANCELLED:
            self.state.update_run(
                run,
                event="Cancelled",
                message=action.message,
                phase=Phase.CANCELLED,
                reason=str(action.reason),
                ended_at=time.time(),
            )
        else:
            self.state.update_run(
                run,
                event="Failed",
                message=action.message,
                phase=Phase.FAILED,
                reason=str(action.reason),
                ended_at=time.time(),
            )

    def _collect(self, run: RunRecord, backends: Mapping[str, Backend]) -> None:
        if run.phase is not Phase.VALIDATING:
            run = self.state.update_run(
                run, event="Validating", message="job ended; checking gates", phase=Phase.VALIDATING
            )
        backend = backends.get(run.backend)
        job: dict[str, Any] = backend.describe(_ref(run)) if backend and run.job_id else {}
        store = open_store(self.state_registry_uri(), self.paths.artifacts)
        outcome = collect(run, registry=self.registry, store=store, job=job)
        common = {
            "metrics": outcome.metrics,
            "ended_at": job.get("ended_at") or time.time(),
            "exit_code": job.get("exit_code"),
        }
        if outcome.version is None:
            log.warning("%s: run %s not registered: %s", run.model, run.id, outcome.message)
            self.state.update_run(
                run,
                event="Failed",
                message=outcome.message,
                phase=Phase.FAILED,
                reason=str(outcome.reason),
                **common,
            )
        else:
            log.info("%s: %s", run.model, outcome.message)
            self.state.update_run(
                run,
                event="Registered",
                message=outcome.message,
                phase=Phase.REGISTERED,
                reason=str(Reason.SUCCEEDED),
                version=outcome.version.number,
                **common,
            )
        self._readers.pop(run.id, None)

    def state_registry_uri(self) -> str | None:
        good = self.loader.last_good
        return good.repo.registry.artifacts if good is not None else None

    # summarize -----------------------------------------------------------------------------------------------
    def _summarize(
        self,
        desired: DesiredState,
        unavailable: Mapping[str, str],
        numbers: Mapping[tuple[str, str], int],
        active_runs: list[RunRecord],
        actions: list[Action],
    ) -> None:
        """Recompute the conditions of the models this pass may have changed, and record what differs."""
        if self._known is None:
            self._known = (self.state.models(), self.state.conditions())
        known_rows, known_conditions = self._known
        dirty = self._dirty(desired, unavailable, active_runs, actions)
        rows = self._row_view.of(desired)
        active = {r.model: r for r in active_runs}
        last = self.state.last_finished_runs()
        wants = self._wants(desired)
        wanted = {name: c for name, c in known_conditions.items() if name in desired.models}
        for name in desired.models if dirty is None else dirty & desired.models.keys():
            model = desired.models[name]
            facts = summarizer.ModelFacts(
                want=wants[name],
                version=numbers.get((name, model.run_key)),
                active=_facts(active[name]) if name in active else None,
                last=_facts(last[name]) if name in last else None,
                unavailable=unavailable.get(model.train.backend),
            )
            wanted[name] = summarizer.summarize(facts)
        self.state.sync_models(rows, known_rows)
        self.state.set_conditions(wanted, known_conditions)
        self._known = (rows, wanted)
        self._summarized = (desired, dict(unavailable), set(active))

    def _dirty(
        self, desired: DesiredState, unavailable: Mapping[str, str], active: list[RunRecord], actions: list[Action]
    ) -> set[str] | None:
        """Models whose condition may have changed since the last summary; None means all of them."""
        if self._summarized is None:
            return None
        last_desired, last_unavailable, last_active = self._summarized
        if dict(unavailable) != last_unavailable:
            return None
        dirty = {a.model for a in actions} | {r.model for r in active} | last_active
        if last_desired is not desired:
            dirty |= {n for n, m in desired.models.items() if last_desired.models.get(n) is not m}
        return dirty

    # waiting ---------------------------------------------------------------------------------------------------
    def reconcile_until_settled(self, *, timeout_s: float, trigger: str = "cli") -> PassResult:
        """Pass again and again until no run is in flight (or the timeout), backing off between passes."""
        deadline = time.monotonic() + timeout_s
        delay = 0.2
        result = self.reconcile(trigger)
        while result.active and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
            result = self.reconcile(trigger)
        return result


def _with(row: SourceRow, **changes: Any) -> SourceRow:
    return SourceRow(**{**asdict(row), **changes})


def _ref(run: RunRecord) -> JobRef:
    return JobRef(run_id=run.id, job_id=run.job_id or "", run_dir=Path(run.run_dir))


def _want(model: DesiredModel) -> Want:
    return Want(
        model=model.name,
        run_key=model.run_key,
        spec_digest=model.spec_digest,
        backend=model.train.backend,
        retries=model.train.retries,
        suspend=model.suspend,
    )


def _facts(run: RunRecord) -> summarizer.RunFacts:
    return summarizer.RunFacts(
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


def _row(model: DesiredModel) -> ModelRow:
    return ModelRow(
        name=model.name,
        spec_path=model.path,
        run_key=model.run_key,
        spec_digest=model.spec_digest,
        backend=model.train.backend,
        suspend=model.suspend,
    )


def _exported_paths(model: DesiredModel) -> list[str]:
    """What a run sees of its commit: its workdir, its repository data and its requirements file.

    Exactly what its run key covers, so a training cannot depend on a file that does not change its key.
    """
    paths = [model.train.workdir]
    paths += [d.uri for d in model.spec.spec.data if "://" not in d.uri]
    if model.train.requirements:
        paths.append(model.train.requirements)
    return paths


def _rules(model: DesiredModel) -> Rules:
    conv = model.spec.spec.convergence
    plateau = None
    if conv.plateau is not None:
        plateau = Plateau(
            metric=conv.plateau.metric,
            mode=conv.plateau.mode,
            patience=conv.plateau.patience,
            min_delta=conv.plateau.min_delta,
        )
    return Rules(
        finite=tuple(conv.nan),
        diverge_metric=conv.diverge.metric if conv.diverge else None,
        diverge_above=conv.diverge.above if conv.diverge else None,
        plateau=plateau,
    )
