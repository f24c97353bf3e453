"""Observing actual state: which backends can be used, what every in-flight job is doing, what its metrics say.

One batched `status` call per backend answers for all of its jobs, however many there are. Runs left in
Submitting by a crash are looked up by run id (`find`). Metrics files are read incrementally and judged by the
convergence rules of the spec the run was started from. Anything a plugin raises makes that backend
unavailable for this pass instead of breaking the pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gitopsd.backends.protocol import Backend, load_backend
from gitopsd.model import JobRef, JobStatus, Phase, Reason
from gitopsd.reconcile.collect import read_snapshot
from gitopsd.reconcile.convergence import Plateau, Rules, judge
from gitopsd.reconcile.desired import DesiredModel, DesiredState, PerModel
from gitopsd.reconcile.metrics import MetricsReader
from gitopsd.reconcile.planner import RunView
from gitopsd.reconcile.state import RunRecord, StateStore

log = logging.getLogger("gitopsd")


def job_ref(run: RunRecord) -> JobRef:
    return JobRef(run_id=run.id, job_id=run.job_id or "", run_dir=Path(run.run_dir))


class Observer:
    """Keeps the backend plugins and the metrics readers alive between passes."""

    def __init__(self, state: StateStore, state_dir: Path) -> None:
        self.state = state
        self.state_dir = state_dir
        self._plugins: dict[str, tuple[tuple[str, str], Backend]] = {}
        self._readers: dict[str, MetricsReader] = {}
        self._used = PerModel(lambda m: m.train.backend)

    def backends(self, desired: DesiredState, runs: Iterable[RunRecord]) -> tuple[dict[str, Backend], dict[str, str]]:
        """The backends this pass needs, and why each of the others cannot be used now."""
        usable: dict[str, Backend] = {}
        unavailable: dict[str, str] = {}
        names = set(self._used.of(desired).values()) | {r.backend for r in runs}
        for name in sorted(names):
            config = desired.repo.backends.get(name)
            type_ = desired.repo.backend_type(name) if config else name
            settings = dict(config.settings) if config else {}
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
                self._record(run, job)
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

    def _reader(self, run: RunRecord) -> MetricsReader | None:
        reader = self._readers.get(run.id)
        if reader is None:
            try:
                name = str(read_snapshot(Path(run.run_dir))["outputs"]["metrics"])
            except (OSError, ValueError, KeyError):
                return None
            reader = self._readers[run.id] = MetricsReader(path=Path(run.run_dir) / "out" / name)
        return reader

    def _judge(self, run: RunRecord, model: DesiredModel | None) -> tuple[Reason, str] | None:
        if model is None or model.run_key != run.run_key:
            return None
        rules = convergence_rules(model)
        reader = self._reader(run)
        if rules.empty or reader is None:
            return None
        return judge(rules, reader.read())

    def _record(self, run: RunRecord, job: JobStatus | None) -> None:
        """Keep what status shows fresh: the latest metrics, and what the backend says (e.g. a pending reason)."""
        changes: dict[str, Any] = {}
        reader = self._reader(run)
        if reader is not None:
            merged: dict[str, float] = {}
            for point in reader.read():
                merged.update(point)
            if merged != dict(run.metrics):
                changes["metrics"] = merged
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
