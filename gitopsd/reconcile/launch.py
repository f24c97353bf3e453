"""Starting a run: the run row first, then its snapshot and tree, then the backend's job.

This is step 1 of the crash-safety protocol. The run row (phase Submitting) is committed before anything else,
together with the run's snapshot (what collecting it will need), so that after a crash at any later point the
next pass knows the run and asks its backend for it by run id instead of starting a second job.
"""

from __future__ import annotations

import logging
import os
import platform
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gitopsd.backends.protocol import RUNS_DIR_SETTING, Backend, runs_dir_of, runs_dir_problem
from gitopsd.errors import LeaseLost, PermanentError, is_permanent
from gitopsd.model import Job, Phase, Reason
from gitopsd.reconcile.desired import DesiredModel
from gitopsd.reconcile.snapshot import write_snapshot
from gitopsd.reconcile.state import RunRecord, StateStore, run_fields
from gitopsd.registry.store import ArtifactStore, sha256_file
from gitopsd.registry.versions import Version
from gitopsd.source.mirror import Source
from gitopsd.spec.operator import Operator
from gitopsd.spec.schema import repository_paths

log = logging.getLogger("gitopsd")


@dataclass(frozen=True, kw_only=True)
class Base:
    """The version a fine-tuning run starts from, and the store that holds its artifact."""

    ref: str
    version: Version
    store: ArtifactStore

    def lineage(self) -> dict[str, Any]:
        v = self.version
        return {"ref": self.ref, "label": v.label, "sha256": v.artifact.sha256, "run_key": v.run_key,
                "run_id": v.run_id}  # fmt: skip


class Launcher:
    def __init__(self, state: StateStore, source: Source, runs_dir: Path, data_roots: Sequence[str] = ()) -> None:
        self.state = state
        self.source = source
        self.runs_dir = runs_dir
        self.data_roots = tuple(data_roots)
        self.repository_id = ""  # written into every run.json, so a daemon taking over finds its runs (adopt)
        self.fence: Callable[[], None] = lambda: None  # raises LeaseLost when this daemon may not act ([standby])

    def submit(
        self,
        model: DesiredModel,
        *,
        commit: str,
        attempt: int,
        backend: Backend,
        keys: tuple[str, str],
        base: Base | None = None,
    ) -> RunRecord:
        """Record a new run for `model` at `commit` (with its (run key, spec digest)), then start its job."""
        run_id = f"{model.name[:40]}-{secrets.token_hex(4)}"
        now = time.time()
        run = RunRecord(
            id=run_id,
            model=model.name,
            run_key=keys[0],
            spec_digest=keys[1],
            commit_id=commit,
            spec_path=model.path,
            backend=model.train.backend,
            phase=Phase.SUBMITTING,
            attempt=attempt,
            run_dir=str((runs_dir_of(backend) or self.runs_dir) / run_id),
            created_at=now,
            updated_at=now,
            gpus=model.train.resources.gpus * model.train.resources.nodes,
            timeout_s=model.train.timeout_s,
        )
        snapshot = self._snapshot(run, model, base)
        self.state.create_run(run, message=f"attempt {attempt} for run key {run.run_key[:12]}", snapshot=snapshot)
        return self.launch(run, model, backend, resubmitted=False, base=base)

    def launch(
        self, run: RunRecord, model: DesiredModel, backend: Backend, *, resubmitted: bool, base: Base | None = None
    ) -> RunRecord:
        """Prepare the run directory and hand the job to its backend; record the outcome."""
        run_dir = Path(run.run_dir)
        try:
            snapshot = self.state.snapshot(run.id)
            if snapshot is None:  # a run submitted by an older gitopsd, never started
                self.state.keep_snapshot(run.id, self._snapshot(run, model, base))
                snapshot = self.state.snapshot(run.id) or {}
            write_snapshot(run_dir, snapshot)
            tree = run_dir / "tree"
            self.source.export(run.commit_id, tree, exported_paths(model))
            check_data(model, tree, self.data_roots)
            env = dict(model.train.env)
            if base is not None:
                artifact = run_dir / "base" / "artifact"
                if not artifact.exists():
                    artifact.parent.mkdir(parents=True, exist_ok=True)
                    base.store.copy_out(base.version.artifact.sha256, artifact)
                env.update(GITOPSD_BASE_MODEL=base.version.label, GITOPSD_BASE_ARTIFACT=str(artifact))
            self.fence()  # the last moment before the job exists: a daemon that lost its lease submits nothing
            job_id = backend.submit(self._job(run, model, tree, env))
        except LeaseLost:
            raise
        except Exception as exc:
            if not is_permanent(exc):  # transient: the run stays Submitting and is retried by run id
                log.warning("%s: submit of run %s will be retried: %s", run.model, run.id, exc, extra=run_fields(run))
                return self.state.update_run(run, event="SubmitDeferred", message=str(exc) or type(exc).__name__)
            log.error("%s: run %s cannot be submitted: %s", run.model, run.id, exc, extra=run_fields(run))
            return self.state.update_run(
                run,
                event="SubmitFailed",
                message=str(exc) or type(exc).__name__,
                phase=Phase.FAILED,
                reason=str(Reason.SUBMIT_FAILED),
                ended_at=time.time(),
            )
        verb = "resubmitted" if resubmitted else "submitted"
        log.info("%s: %s run %s to %s as job %s (commit %s)", run.model, verb, run.id, run.backend, job_id,
                 run.commit_id[:12], extra=run_fields(run))  # fmt: skip
        return self.state.update_run(
            run,
            event="Submitted",
            message=f"{verb} to {run.backend} as job {job_id}",
            job_id=job_id,
            phase=Phase.QUEUED,
        )

    @staticmethod
    def _job(run: RunRecord, model: DesiredModel, tree: Path, env: dict[str, str]) -> Job:
        run_dir = Path(run.run_dir)
        train = model.train
        return Job(
            run_id=run.id,
            model=run.model,
            command=train.command,
            run_dir=run_dir,
            tree_dir=tree,
            workdir=tree / train.workdir,
            output_dir=run_dir / "out",
            metrics_file=run_dir / "out" / model.spec.spec.outputs.metrics,
            log_dir=run_dir / "logs",
            env=env,
            resources=train.resources,
            timeout_s=train.timeout_s,
            python_requirements=tree / train.requirements if train.requirements else None,
            settings=train.settings,
            checkpoint=train.checkpoint,
            inputs=tuple(
                Path(d.uri.removeprefix("file://")) for d in model.spec.spec.data if d.uri.startswith("file://")
            ),
        )

    def snapshot_for(self, run: RunRecord, model: DesiredModel, base: Base | None) -> dict[str, Any]:
        """The snapshot a run of `model` is started with (`reconcile.adopt` rebuilds an adopted run's)."""
        return self._snapshot(run, model, base)

    def _snapshot(self, run: RunRecord, model: DesiredModel, base: Base | None) -> dict[str, Any]:
        """What collecting the run will need, fixed at submit time: gates, outputs, lineage inputs; and who
        started it (repository, run id, attempt, host), for a daemon that takes over (`reconcile.adopt`)."""
        body = model.spec.spec
        return {
            "repository_id": self.repository_id,
            "run_id": run.id,
            "attempt": run.attempt,
            "created_at": run.created_at,
            "daemon_host": platform.node(),
            "model": model.name,
            "spec_path": model.path,
            "commit": run.commit_id,
            "repo_url": self.source.shown,  # lineage is shown: no credentials in it
            "commit_info": self.source.commit_info(run.commit_id),
            "run_key": model.run_key,
            "spec_digest": model.spec_digest,
            "code_tree": model.code_tree,
            "train": asdict(model.train),
            "outputs": body.outputs.model_dump(mode="json"),
            "validate": list(body.validate_gates),
            "data": [d.model_dump(mode="json") for d in body.data],
            "base": base.lineage() if base else None,
        }


def check_runs_dirs(operator: Operator) -> None:
    """At start-up: every `runs_dir` the operator set exists and takes new run directories, else PermanentError
    (one line naming the backend, the setting and the fix) before anything is submitted to it."""
    for name, backend in sorted(operator.backends.items()):
        value = backend.settings.get(RUNS_DIR_SETTING)
        if value is None:
            continue
        if not isinstance(value, str) or not value.startswith("/"):
            raise PermanentError(f"backend {name!r} setting {RUNS_DIR_SETTING}: expected an absolute path, got "
                                 f"{value!r}; change [backends.{name}] settings.{RUNS_DIR_SETTING} in the operator's "
                                 "configuration")  # fmt: skip
        if problem := runs_dir_problem(name, Path(value)):
            raise PermanentError(problem)


def _within(path: Path, roots: Sequence[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(root) for root in roots)


def exported_paths(model: DesiredModel) -> list[str]:
    """What a run sees of its commit: its workdir, its repository data and its requirements file.

    Exactly what its run key covers, so a training cannot depend on a file whose change would not retrain it.
    """
    return [path for _, path in repository_paths(model.spec, model.train)]


def check_data(model: DesiredModel, tree: Path, data_roots: Sequence[str] = ()) -> None:
    """Local data must match its declared digest before any GPU time is spent on it, and must be where it is
    allowed to be: inside the run's tree, or under a data root of the operator's, once symbolic links are
    followed (the same holds for the requirements file). Nothing outside is ever hashed. Data the daemon may not
    read (permission denied) is a PermanentError naming it: retrying cannot help until someone changes it."""
    inside = [Path(os.path.realpath(tree))]
    if model.train.requirements and not _within(tree / model.train.requirements, inside):
        raise PermanentError(f"requirements {model.train.requirements} lead outside the repository: refused")
    hashed: dict[str, str] = {}  # by real path: a file that many entries name (links, spellings) is read once
    for item in model.spec.spec.data:
        if "://" in item.uri and not item.uri.startswith("file://"):
            continue
        local = item.uri.startswith("file://")
        path = Path(item.uri.removeprefix("file://")) if local else tree / item.uri
        if not _within(path, [Path(os.path.realpath(r)) for r in data_roots] if local else inside):
            where = "the operator's data_roots" if local else "the repository"
            raise PermanentError(f"data {item.uri} leads outside {where}: refused")
        try:
            if not path.is_file():
                raise PermanentError(f"data {item.uri} not found")
            real = os.path.realpath(path)
            actual = hashed.get(real)
            if actual is None:
                actual = hashed[real] = sha256_file(path)
        except OSError as exc:
            if not is_permanent(exc):
                raise
            raise PermanentError(_unreadable(item.uri, exc)) from exc
        if actual != item.sha256:
            raise PermanentError(f"data {item.uri} has sha256 {actual}, but the spec says {item.sha256}")


def _unreadable(uri: str, exc: OSError) -> str:
    """What a user needs to know of data the daemon cannot read: which, why, and what to fix."""
    who = f"the daemon's user (uid {os.geteuid()})"
    return (
        f"data {uri} cannot be read by gitopsd: {exc.strerror or exc}; make it readable by {who}, or name "
        "data it can read (the run is not retried until the spec changes)"
    )
