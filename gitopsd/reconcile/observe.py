"""Observing actual state: which backends can be used, what every in-flight job is doing, what its metrics say.

One batched `status` call per backend answers for all of its jobs, however many there are. Runs left in
Submitting by a crash are looked up by run id (`find`). Metrics files are read incrementally, one point at a
time, and judged by the convergence rules of the spec the run was started from; what is kept per run is the last
value of each metric and the convergence watch, not the history. A metrics file that is refused (a link, a
FIFO, over its size limit) fails the run with reason OutputRefused. Anything a plugin raises makes that backend
unavailable for this pass instead of breaking the pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitopsd.backends.protocol import Backend, load_backend
from gitopsd.errors import GitopsdError
from gitopsd.model import JobRef, JobStatus, Phase, Reason
from gitopsd.reconcile.convergence import Plateau, Rules, Watch
from gitopsd.reconcile.desired import DesiredModel, DesiredState, PerModel
from gitopsd.reconcile.metrics import MetricsReader, merge_latest
from gitopsd.reconcile.outputs import OutputLimits
from gitopsd.reconcile.planner import RunView
from gitopsd.reconcile.snapshot import load_snapshot
from gitopsd.reconcile.state import RunRecord, StateStore
from gitopsd.registry.beneath import OutputRefused

log = logging.getLogger("gitopsd")


def job_ref(run: RunRecord) -> JobRef:
    return JobRef(run_id=run.id, job_id=run.job_id or "", run_dir=Path(run.run_dir))


@dataclass(kw_only=True)
class RunMetrics:
    """What is kept of one run's metrics between passes: the reader's place, the last values, the watch."""

    reader: MetricsReader
    watch: Watch
    latest: dict[str, float] = field(default_factory=dict)
    refused: str | None = None

    def catch_up(self) -> None:
        """Read what the training appended since the last pass; a refused file is remembered, not retried."""
        if self.refused is not None:
            return
        try:
            for point in self.reader.read():
                self.watch.feed(point)
                merge_latest(self.latest, point)
        except OutputRefused as exc:
            self.refused = str(exc)
        except OSError as exc:  # e.g. a shared filesystem hiccup: try again next pass
            log.warning("%s: cannot read metrics now: %s", self.reader.shown, exc)

    @property
    def verdict(self) -> tuple[Reason, str] | None:
        if self.refused is not None:
            return Reason.OUTPUT_REFUSED, self.refused
        return self.watch.verdict


class Observer:
    """Keeps the backend plugins and each run's metrics alive between passes."""

    def __init__(self, state: StateStore, state_dir: Path, limits: OutputLimits | None = None) -> None:
        self.state = state
        self.state_dir = state_dir
        self.limits = limits or OutputLimits()
        self._plugins: dict[str, tuple[tuple[str, str], Backend]] = {}
        self._readers: dict[str, RunMetrics] = {}
        self._used = PerModel(lambda m: m.train.backend)

    def backends(self, desired: DesiredState, runs: Iterable[RunRecord]) -> tuple[dict[str, Backend], dict[str, str]]:
        """The backends this pass needs, and why each of the others cannot be used now."""
        return self.check(self.needed(desired, runs))

    def needed(self, desired: DesiredState, runs: Iterable[RunRecord]) -> dict[str, tuple[str, dict[str, Any]]]:
        """The backends a pass needs (its models' and its runs'), by name: (type, settings)."""
        needed: dict[str, tuple[str, dict[str, Any]]] = {}
        for name in sorted(set(self._used.of(desired).values()) | {r.backend for r in runs}):
            config = desired.repo.backends.get(name)
            settings = dict(config.settings) if config else {}
            needed[name] = (desired.repo.backend_type(name) if config else name, settings)
        return needed

    def check(self, needed: Mapping[str, tuple[str, Mapping[str, Any]]]) -> tuple[dict[str, Backend], dict[str, str]]:
        """Each needed backend's plugin (made once per type and settings), checked now; and why the others
        cannot be used."""
        usable: dict[str, Backend] = {}
        unavailable: dict[str, str] = {}
        for name, (type_, given) in sorted(needed.items()):
            settings = dict(given)
            key = (type_, repr(sorted(settings.items())))
            try:
                cached = self._plugins.get(name)
                if cached is None or cached[0] != key:
                    plugin = load_backend(type_, name=name, settings=settings, state_dir=self.state_dir)
                    self._plugins[name] = (key, plugin)
                backend = self._plugins[name][1]
                backend.check()
                usable[name] = backend
            except Exception as exc:  # a plugin's failure must not stop the other backends
                unavailable[name] = str(exc) or type(exc).__name__
        return usable, unavailable

    def observe(
        self,
        runs: list[RunRecord],
        desired: DesiredState,
        backends: Mapping[str, Backend],
        unavailable: dict[str, str],
        *,
        record: bool,
    ) -> dict[str, RunView]:
        """The planner's view of every unfinished run; with `record`, latest metrics are saved for status."""
        statuses = self._statuses(runs, backends, unavailable)
        views: dict[str, RunView] = {}
        for run in runs:
            found = None
            if run.phase is Phase.SUBMITTING and run.backend in backends and run.backend not in unavailable:
                try:
                    found = backends[run.backend].find(run.id, Path(run.run_dir))
                except Exception as exc:
                    unavailable[run.backend] = str(exc) or type(exc).__name__
            job = statuses.get(run.id)
            model = desired.models.get(run.model)
            judging = job is not None and not job.state.finished and not run.stop_reason
            metrics = self._metrics(run, model) if judging or record else None
            verdict = None
            if judging and metrics is not None and model is not None and model.run_key == run.run_key:
                verdict = metrics.verdict
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
                self._record(run, job, metrics)
        return views

    def forget(self, run_id: str) -> None:
        self._readers.pop(run_id, None)

    def _statuses(
        self, runs: list[RunRecord], backends: Mapping[str, Backend], unavailable: dict[str, str]
    ) -> dict[str, JobStatus]:
        by_backend: dict[str, list[JobRef]] = {}
        for run in runs:
            if run.job_id is not None and run.phase is not Phase.VALIDATING:
                by_backend.setdefault(run.backend, []).append(job_ref(run))
        statuses: dict[str, JobStatus] = {}
        for name, refs in sorted(by_backend.items()):
            if name not in backends:
                continue
            try:
                statuses.update(backends[name].status(refs))
            except Exception as exc:
                log.warning("backend %s: status failed: %s", name, exc)
                unavailable[name] = str(exc) or type(exc).__name__
        return statuses

    def _metrics(self, run: RunRecord, model: DesiredModel | None) -> RunMetrics | None:
        """The run's metrics, caught up with its file; None when the run's snapshot cannot be had."""
        metrics = self._readers.get(run.id)
        if metrics is None:
            try:
                name = str(load_snapshot(self.state, run)["outputs"]["metrics"])
            except (GitopsdError, OSError, ValueError, KeyError):
                return None
            same_spec = model is not None and model.run_key == run.run_key
            rules = convergence_rules(model) if model is not None and same_spec else Rules()
            reader = MetricsReader(run_dir=Path(run.run_dir), name=name, limits=self.limits)
            metrics = self._readers[run.id] = RunMetrics(reader=reader, watch=Watch(rules=rules))
        metrics.catch_up()
        return metrics

    def _record(self, run: RunRecord, job: JobStatus | None, metrics: RunMetrics | None) -> None:
        """Keep what status shows fresh: the latest metrics, and what the backend says (e.g. a pending reason)."""
        changes: dict[str, Any] = {}
        if metrics is not None and metrics.latest != dict(run.metrics):
            changes["metrics"] = dict(metrics.latest)
        if job is not None and job.message and not job.state.finished and job.message != run.message:
            changes["message"] = job.message
        if changes:
            self.state.update_run(run, **changes)


def convergence_rules(model: DesiredModel) -> Rules:
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
