"""Collecting a finished run: check its validation gates, store its artifact, register the version.

This is the only way a version comes to exist. The run's own snapshot (`run.json`, written before it was
submitted) says which gates and outputs apply, so a run is judged by the spec it was started from even if Git
has moved on. The artifact is copied into the store and its digest verified before the version row is written;
registration is idempotent by run id, so a crash anywhere in here is repaired by collecting again.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitopsd.model import Reason
from gitopsd.reconcile.metrics import read_all
from gitopsd.reconcile.state import RunRecord
from gitopsd.registry.recovery import save_version
from gitopsd.registry.store import ArtifactStore
from gitopsd.registry.versions import Registry, Version
from gitopsd.spec.gates import evaluate, parse_gate

SNAPSHOT = "run.json"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What collecting a run decided: a version, or the reason there is none."""

    version: Version | None
    metrics: dict[str, float]
    reason: Reason
    message: str


def write_snapshot(run_dir: Path, snapshot: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (SNAPSHOT + ".tmp")
    tmp.write_text(json.dumps(snapshot, indent=2, sort_keys=True, default=str))
    tmp.replace(run_dir / SNAPSHOT)


def read_snapshot(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / SNAPSHOT).read_text())
    return data


def final_metrics(run_dir: Path, snapshot: dict[str, Any]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for point in read_all(run_dir / "out" / snapshot["outputs"]["metrics"]):
        merged.update(point)
    return merged


def collect(run: RunRecord, *, registry: Registry, store: ArtifactStore, job: dict[str, Any]) -> Outcome:
    """Validate and register one run whose job ended well. `job` is the backend's lineage description."""
    run_dir = Path(run.run_dir)
    snapshot = read_snapshot(run_dir)
    metrics = final_metrics(run_dir, snapshot)
    existing = registry.by_run_id(run.id)
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
    artifact_path = run_dir / "out" / snapshot["outputs"]["artifact"]
    if not artifact_path.exists():
        return Outcome(
            version=None,
            metrics=metrics,
            reason=Reason.ARTIFACT_MISSING,
            message=f"the job ended but wrote no artifact at $GITOPSD_OUTPUT_DIR/{snapshot['outputs']['artifact']}",
        )
    artifact = store.put(artifact_path)
    gates = [{"gate": r.gate.text, "value": r.value, "passed": r.passed} for r in results]
    version = registry.register(
        model=run.model,
        run_id=run.id,
        run_key=run.run_key,
        artifact=artifact,
        metrics={k: v for k, v in metrics.items() if math.isfinite(v)},  # JSON has no NaN; gates saw them
        gates=gates,
        lineage=lineage(run, snapshot, job),
        created_at=time.time(),
    )
    save_version(store, version)
    return Outcome(
        version=version,
        metrics=metrics,
        reason=Reason.SUCCEEDED,
        message=f"registered {version.label} (sha256 {artifact.sha256[:12]})",
    )


def lineage(run: RunRecord, snapshot: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to say where a version came from and to train it again."""
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
        "packages": job.get("packages", {}),
        "gitopsd": {"host": platform.node(), "python": sys.version.split()[0]},
    }
