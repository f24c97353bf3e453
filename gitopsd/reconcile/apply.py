"""Applying a plan: each planner action becomes backend calls and state changes, one action at a time.

An action that fails is logged once, recorded as an event on its run and in the retry book (`troubles`): a
transient failure is tried again when its backoff is over, a permanent one when its input changes or the
operator reloads the daemon, and `status` says which. The rest of the plan still runs, and the next pass plans
again from what is then true (level-triggered). Nothing here decides what to do: that was the planner's job.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gitopsd.backends.protocol import Backend
from gitopsd.errors import LeaseLost
from gitopsd.model import Phase, Reason
from gitopsd.reconcile.collect import collect
from gitopsd.reconcile.desired import DesiredState
from gitopsd.reconcile.launch import Base, Launcher
from gitopsd.reconcile.observe import Observer, job_ref
from gitopsd.reconcile.outbox import Outbox
from gitopsd.reconcile.outputs import OutputLimits
from gitopsd.reconcile.planner import Action, Adopt, Cancel, Collect, Fail, Resubmit, SetPhase, Submit
from gitopsd.reconcile.prune import prune_model_runs
from gitopsd.reconcile.snapshot import SnapshotMissing, load_snapshot
from gitopsd.reconcile.state import RunRecord, StateStore, run_fields
from gitopsd.reconcile.troubles import RetryBook, describe
from gitopsd.registry.audit import tag_version
from gitopsd.registry.store import ArtifactStore
from gitopsd.registry.stores import open_store
from gitopsd.registry.versions import Registry, Version
from gitopsd.spec.operator import OperatorRegistry
from gitopsd.units import format_size

log = logging.getLogger("gitopsd")

#: The reason a failed action gives its model's condition.
_FAILED_REASON: dict[type[Action], Reason] = {
    Submit: Reason.SUBMIT_FAILED,
    Resubmit: Reason.SUBMIT_FAILED,
    Collect: Reason.REGISTRY_FAILED,
    Cancel: Reason.BACKEND_UNAVAILABLE,
}
_DOING: dict[type[Action], str] = {
    Submit: "submitting a run",
    Resubmit: "submitting run {run}",
    Adopt: "adopting run {run}",
    SetPhase: "recording the phase of run {run}",
    Cancel: "stopping run {run}",
    Collect: "collecting run {run} (gates, artifact store, registry)",
    Fail: "recording the failure of run {run}",
}


def trouble_key(action: Action) -> str:
    """The retry book's key for an action: its kind and its run (or model, for a submission)."""
    return f"{type(action).__name__}:{getattr(action, 'run_id', '') or action.model}"


class Applier:
    def __init__(
        self,
        *,
        state: StateStore,
        registry: Registry,
        launcher: Launcher,
        observer: Observer,
        artifacts: Path,
        store: OperatorRegistry | None = None,
        limits: OutputLimits | None = None,
        troubles: RetryBook | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.state = state
        self.troubles = troubles or RetryBook(state.conn, time.time)
        self.outbox = outbox or Outbox(state.conn, time.time)
        self.registry = registry
        self.launcher = launcher
        self.observer = observer
        self.artifacts = artifacts
        self.store_config = store or OperatorRegistry()
        self.limits = limits or OutputLimits()
        self.fence: Callable[[], None] = lambda: None  # raises LeaseLost when this daemon may not act ([standby])

    def apply(
        self,
        actions: list[Action],
        desired: DesiredState,
        backends: Mapping[str, Backend],
        bases: Mapping[str, Version] | None = None,
    ) -> list[Action]:
        """Apply every action that is due; `bases` are the versions fine-tuned models start from (see
        `spec.base`). Returns the actions tried: one that failed before waits for its retry."""
        tried: list[Action] = []
        for action in actions:
            key, input = trouble_key(action), self._input(action)
            if not self.troubles.due(key, input):
                continue  # failed before: waiting for its retry, or stalled until its input changes
            self.fence()  # outside the try: a lost lease ends the pass, it is not this action's failure
            tried.append(action)
            try:
                self._apply(action, desired, backends, bases or {})
            except LeaseLost:
                raise
            except Exception as exc:  # one broken action must not stop the others
                self._failed(action, key, input, exc)
            else:
                self.troubles.cleared(key)
        for model in sorted({action.model for action in actions if isinstance(action, Cancel | Fail | Collect)}):
            freed = prune_model_runs(self.state, model, keep=desired.repo.runs.keep)
            if freed:
                log.info("%s: pruned old run directories (%s freed)", model, format_size(freed))
        return tried

    def _apply(
        self, action: Action, desired: DesiredState, backends: Mapping[str, Backend], bases: Mapping[str, Version]
    ) -> None:
        if isinstance(action, Submit):
            model = desired.models[action.model]
            self.launcher.submit(
                model,
                commit=desired.commit,
                attempt=action.attempt,
                backend=backends[model.train.backend],
                keys=(action.run_key, action.spec_digest),
                base=self._base(model.spec.spec.base, bases.get(model.name)),
            )
            return
        run = self.state.get_run(getattr(action, "run_id", ""))
        if run is None:
            return
        if isinstance(action, Resubmit):
            model = desired.models[run.model]
            base = self._base(model.spec.spec.base, bases.get(model.name))
            self.launcher.launch(run, model, backends[run.backend], resubmitted=True, base=base)
        elif isinstance(action, Adopt):
            log.info(
                "%s: adopted job %s of run %s after a restart", run.model, action.job_id, run.id, extra=run_fields(run)
            )
            self.state.update_run(
                run,
                event="Adopted",
                message=f"job {action.job_id} found by run id",
                job_id=action.job_id,
                phase=Phase.QUEUED,
            )
        elif isinstance(action, SetPhase):
            started = run.started_at
            if action.phase is Phase.RUNNING and started is None:
                started = _running_since(run, action.started_at)
            message = f"job {run.job_id} is {action.phase}"
            self.state.update_run(run, event=str(action.phase), message=message, phase=action.phase, started_at=started)
        elif isinstance(action, Cancel):
            self._cancel(run, action, backends)
        elif isinstance(action, Fail):
            log.warning("%s: run %s failed: %s", run.model, run.id, action.message, extra=run_fields(run))
            self._end(run, Phase.FAILED, action.reason, action.message, exit_code=action.exit_code)
        elif isinstance(action, Collect):
            self._collect(run, desired, backends)

    def _input(self, action: Action) -> str:
        """What a failed action's retry depends on besides time: the store settings, for a collection."""
        if isinstance(action, Collect):
            config = self.store_config
            return f"{config.artifacts}|{config.endpoint_url}|{config.object_lock_days}"
        return ""

    def _failed(self, action: Action, key: str, input: str, exc: Exception) -> None:
        run_id = getattr(action, "run_id", None)
        what = _DOING.get(type(action), type(action).__name__).format(run=run_id)
        trouble = self.troubles.failed(
            key, model=action.model, what=what, reason=_FAILED_REASON.get(type(action), Reason.PROGRESSING),
            exc=exc, input=input,
        )  # fmt: skip
        if trouble.next_at is None:
            log.error("%s: %s failed: %s; fix it, then reload the daemon (or run gitopsd reconcile) to retry",
                      action.model, what, trouble.message, exc_info=log.isEnabledFor(logging.DEBUG))  # fmt: skip
        else:
            log.warning("%s: %s failed (attempt %d, next retry in %.0f s): %s", action.model, what, trouble.attempts,
                        trouble.next_at - trouble.last_at, trouble.message,
                        exc_info=log.isEnabledFor(logging.DEBUG))  # fmt: skip
        if trouble.attempts == 1 or trouble.next_at is None:  # the event log gets the first and the final word
            kind = "Stalled" if trouble.next_at is None else f"{type(action).__name__}Failed"
            self.state.event(action.model, kind, run_id=run_id, reason=str(trouble.reason), message=describe(exc))

    def _base(self, ref: str | None, version: Version | None) -> Base | None:
        if ref is None or version is None:
            return None
        return Base(ref=ref, version=version, store=self.store())

    def store(self) -> ArtifactStore:
        """The artifact store the operator configured for this repository (default: STATE_DIR/artifacts)."""
        config = self.store_config
        return open_store(config.artifacts, self.artifacts, endpoint_url=config.endpoint_url,
                          object_lock_days=config.object_lock_days)  # fmt: skip

    def _end(self, run: RunRecord, phase: Phase, reason: Reason, message: str, **changes: Any) -> None:
        event = "Cancelled" if phase is Phase.CANCELLED else "Failed"
        changes.setdefault("ended_at", time.time())
        self.state.update_run(run, event=event, message=message, phase=phase, reason=str(reason), **changes)
        self.observer.forget(run.id)

    def _cancel(self, run: RunRecord, action: Cancel, backends: Mapping[str, Backend]) -> None:
        log.info("%s: stopping run %s: %s", run.model, run.id, action.message, extra=run_fields(run))
        backend = backends.get(run.backend)
        if backend is not None and run.job_id is not None:
            backend.cancel(job_ref(run))
        if action.reason is Reason.PLATEAUED:  # not a failure: collected once the job is gone
            self.state.update_run(
                run,
                event="EarlyStop",
                message=action.message,
                stop_reason=str(action.reason),
                reason=str(action.reason),
            )
        elif action.reason is Reason.CANCELLED:
            self._end(run, Phase.CANCELLED, action.reason, action.message)
        else:
            self._end(run, Phase.FAILED, action.reason, action.message)

    def _collect(self, run: RunRecord, desired: DesiredState, backends: Mapping[str, Backend]) -> None:
        if run.phase is not Phase.VALIDATING:
            run = self.state.update_run(
                run, event="Validating", message="job ended; checking gates", phase=Phase.VALIDATING
            )
        backend = backends.get(run.backend)
        job: dict[str, Any] = backend.describe(job_ref(run)) if backend and run.job_id else {}
        store = self.store()
        try:
            snapshot = load_snapshot(self.state, run)
        except SnapshotMissing as exc:
            log.warning("%s: run %s cannot be collected: %s", run.model, run.id, exc, extra=run_fields(run))
            self._end(run, Phase.FAILED, Reason.OUTPUT_REFUSED, str(exc), ended_at=job.get("ended_at") or time.time())
            return
        outcome = collect(run, snapshot=snapshot, registry=self.registry, store=store, job=job, limits=self.limits,
                          fence=self.fence)  # fmt: skip
        ended = {"metrics": outcome.metrics, "ended_at": job.get("ended_at") or time.time(),
                 "exit_code": job.get("exit_code"), "started_at": _started(run, job)}  # fmt: skip
        if outcome.version is None:
            log.warning("%s: run %s not registered: %s", run.model, run.id, outcome.message, extra=run_fields(run))
            self._end(run, Phase.FAILED, outcome.reason, outcome.message, **ended)
            return
        log.info("%s: %s", run.model, outcome.message, extra=run_fields(run))
        tags = desired.repo.registry.tags
        if tags.enabled:
            tag_version(self.launcher.source, outcome.version)
            if tags.push:
                self.outbox.put("audit-tags", "push", model=run.model)
        self.state.update_run(
            run,
            event="Registered",
            message=outcome.message,
            phase=Phase.REGISTERED,
            reason=str(Reason.SUCCEEDED),
            version=outcome.version.number,
            **ended,
        )
        self.observer.forget(run.id)


def _running_since(run: RunRecord, said: float | None) -> float:
    """When a run seen running for the first time started: as its backend says, else now. What a backend says
    can come from files a training writes, so it is held between the run's submission and now: a training cannot
    count hours it did not run, nor hide the ones it did beyond what observing it late would (a training that
    ends between two passes must not count zero GPU-hours because the pass saw it running after its end)."""
    now = time.time()
    if isinstance(said, bool) or not isinstance(said, int | float) or math.isnan(said):
        return now
    return min(max(float(said), run.created_at), now)


def _started(run: RunRecord, job: Mapping[str, Any]) -> float | None:
    """When the run started: as recorded, else as its backend says (a job that ended between two passes was
    never seen running), so that its GPU-hours are counted from its start rather than its submission."""
    said = job.get("started_at")
    if run.started_at is None and isinstance(said, int | float) and not isinstance(said, bool):
        return _running_since(run, said)  # held between its submission and now, as above
    return run.started_at
