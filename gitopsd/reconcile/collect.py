"""Collecting a finished run: check its validation gates, store its artifact, register the version.

This is the only way a version comes to exist. The run's own snapshot (kept in `state.db` when it was
submitted, see `reconcile.snapshot`) says which gates and outputs apply, so a run is judged by the spec it was
started from even if Git has moved on, and never by a file the training could have rewritten. The metrics file
and the artifact are read as hostile input (`reconcile.outputs`): no link followed, no FIFO or device, sizes
within `OutputLimits`; a refused output fails the run with reason OutputRefused and a message that names it.
The artifact is copied into the store and its digest verified before the version row is written;
registration is idempotent by run id, so a crash anywhere in here is repaired by collecting again.

The packages of the training's Python are not copied into every lineage: the environment is stored once by
its digest (`registry.environments`), before the version that names it, and lineage says
`"environment": "sha256:..."`.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitopsd.errors import PermanentError
from gitopsd.model import Reason
from gitopsd.reconcile.metrics import MetricsReader, latest_metrics
from gitopsd.reconcile.outputs import OutputLimits, opened_artifact, over_limit, sized
from gitopsd.reconcile.state import RunRecord
from gitopsd.registry import environments
from gitopsd.registry.beneath import OutputRefused
from gitopsd.registry.recovery import save_version
from gitopsd.registry.store import ArtifactStore
from gitopsd.registry.versions import Registry, Version
from gitopsd.spec.gates import evaluate, parse_gate


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What collecting a run decided: a version, or the reason there is none."""

    version: Version | None
    metrics: dict[str, float]
    reason: Reason
    message: str


def final_metrics(run_dir: Path, snapshot: dict[str, Any], limits: OutputLimits) -> dict[str, float]:
    """The last value of every metric the run reported; raises `OutputRefused` for a hostile metrics file."""
    reader = MetricsReader(run_dir=run_dir, name=str(snapshot["outputs"]["metrics"]), limits=limits)
    return latest_metrics(reader, final=True)


def collect(
    run: RunRecord,
    *,
    snapshot: dict[str, Any],
    registry: Registry,
    store: ArtifactStore,
    job: dict[str, Any],
    limits: OutputLimits | None = None,
    fence: Callable[[], None] | None = None,
) -> Outcome:
    """Validate and register one run whose job ended well.

    `snapshot` is what the run was started from (`reconcile.snapshot.load_snapshot`), `job` the backend's
    lineage description, `limits` what the run's outputs may be (default: `OutputLimits()`), `fence` what
    raises `LeaseLost` when this daemon may no longer register (`[standby]`), called just before it does.
    """
    limits = limits or OutputLimits()
    run_dir = Path(run.run_dir)
    existing = registry.by_run_id(run.id)
    try:
        metrics = final_metrics(run_dir, snapshot, limits)
    except OutputRefused as exc:
        if existing is None:
            return Outcome(version=None, metrics={}, reason=Reason.OUTPUT_REFUSED, message=str(exc))
        metrics = dict(existing.metrics)
    if existing is not None:
        save_version(store, existing)  # a crash may have come between the row and its record
        return Outcome(
            version=existing, metrics=metrics, reason=Reason.SUCCEEDED, message=f"registered {existing.label}"
        )
    results = evaluate([parse_gate(g) for g in snapshot["validate"]], metrics)
    failed = [r for r in results if not r.passed]
    if failed:
        return Outcome(
            version=None,
            metrics=metrics,
            reason=Reason.GATE_FAILED,
            message="gate failed: " + "; ".join(r.describe() for r in failed),
        )
    name = str(snapshot["outputs"]["artifact"])
    try:
        with opened_artifact(run_dir, name, limits) as opened:
            if opened is None:
                return Outcome(
                    version=None,
                    metrics=metrics,
                    reason=Reason.ARTIFACT_MISSING,
                    message=f"the job ended but wrote no artifact at $GITOPSD_OUTPUT_DIR/{name}",
                )
            artifact = store.put(opened.path)
            if artifact.size > limits.artifact_bytes and not opened.is_dir:  # it grew after it was checked
                raise over_limit(opened.shown, sized(artifact.size), sized(limits.artifact_bytes), "artifact_bytes")
    except OutputRefused as exc:
        return Outcome(version=None, metrics=metrics, reason=Reason.OUTPUT_REFUSED, message=str(exc))
    gates = [{"gate": r.gate.text, "value": r.value, "passed": r.passed} for r in results]
    if fence is not None:
        fence()
    refuse_reused_number(registry, store, run.model)
    environment = environments.from_job(job)
    if environment is not None and registry.conn is not None:
        environments.save(store, registry.conn, environment)
    version = registry.register(
        model=run.model,
        run_id=run.id,
        run_key=run.run_key,
        artifact=artifact,
        metrics={k: v for k, v in metrics.items() if math.isfinite(v)},  # JSON has no NaN; gates saw them
        gates=gates,
        lineage=lineage(run, snapshot, job, environment),
        created_at=time.time(),
    )
    save_version(store, version)
    return Outcome(
        version=version,
        metrics=metrics,
        reason=Reason.SUCCEEDED,
        message=f"registered {version.label} (sha256 {artifact.sha256[:12]})",
    )


def refuse_reused_number(registry: Registry, store: ArtifactStore, model: str) -> None:
    """Raise when the store already holds the record of the number `registry` would give next: a version
    number is never used twice, and a `registry.db` that lags the store (lost, or restored from an old copy)
    must be rebuilt from the store first."""
    latest = registry.latest(model)
    number = (latest.number if latest else 0) + 1
    if store.get_record(model, number) is not None:
        raise PermanentError(
            f"the artifact store {store.uri} already holds the record of {model}@{number}, which "
            f"{registry.path} does not know: the registry is behind its store (lost or restored from an older "
            "copy), and a version number is never given twice. Move registry.db away and run `gitopsd registry "
            "rebuild`; nothing was registered"
        )


def lineage(
    run: RunRecord, snapshot: dict[str, Any], job: dict[str, Any], environment: environments.Environment | None = None
) -> dict[str, Any]:
    """Everything needed to say where a version came from and to train it again.

    With `environment` (the one `job` lists, already stored), its packages are named by digest, not copied.
    """
    if environment is not None:
        job = {key: value for key, value in job.items() if key != "packages"}
    found = {"environment": environment.digest} if environment is not None else {"packages": job.get("packages", {})}
    return {
        "repo": snapshot["repo_url"],
        "commit": snapshot["commit"],
        "commit_info": snapshot.get("commit_info", {}),
        "spec_path": snapshot["spec_path"],
        "run_id": run.id,
        "run_key": run.run_key,
        "spec_digest": run.spec_digest,
        "code_tree": snapshot["code_tree"],
        "workdir": snapshot["train"]["workdir"],
        "command": snapshot["train"]["command"],
        "data": snapshot["data"],
        "base": snapshot.get("base"),
        "backend": {"name": run.backend, "type": snapshot["train"]["backend_type"]},
        "job_id": run.job_id,
        "attempt": run.attempt,
        "job": job,
        "started_at": job.get("started_at", run.started_at),
        "ended_at": job.get("ended_at", run.ended_at),
        "exit_code": job.get("exit_code", run.exit_code),
        "python": job.get("python") or sys.version.split()[0],
        **found,
        "gitopsd": {"host": platform.node(), "python": sys.version.split()[0]},
    }
