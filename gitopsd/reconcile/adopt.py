"""Adopting the runs another daemon started: after a take-over (`[standby]`), no training is started twice.

The daemon that takes over a repository has its own `state.db`, which does not know the runs the old active
daemon started. Their run directories are on the shared run root, each with the `run.json` the launcher wrote
before its job was submitted (naming the repository, run id, model, keys, commit and attempt). On every pass
of a daemon with a lease, before planning, each run directory this state does not know is examined; a run of
this repository that stands for what a model wants now (the same run key and spec digest) is imported as a run
row in phase Submitting, and the usual crash-safety step does the rest: its backend's `find` by run id returns
its job (Slurm: `slurm/submitted.json`, or the job comment `gitopsd-run=RUN_ID`), which is adopted, so the planner
sees a live run for the run key and submits nothing; a run whose job never reached the backend is submitted
under its own run id. A run that already registered is found in the registry by its run id (the registry is
brought up to date from the store first), so it is marked Registered, never registered twice.

A run directory is the training's to write, so `run.json` is read as hostile input (no link followed,
size-capped) and trusted for nothing that decides how the run is judged: its snapshot (gates, outputs, lineage
inputs) is rebuilt from the model as the applied commit declares it, which its run key and spec digest must
match; a fine-tuning run's base must be a version the registry holds. Run directories of other repositories,
of older run keys, or that cannot be read are skipped (once per commit) and never touched.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gitopsd.model import Phase
from gitopsd.reconcile.desired import DesiredModel, DesiredState, digest
from gitopsd.reconcile.launch import Launcher
from gitopsd.reconcile.snapshot import SnapshotMissing, read_legacy_snapshot
from gitopsd.reconcile.state import RunRecord, StateStore, run_fields
from gitopsd.registry.versions import Registry

log = logging.getLogger("gitopsd")

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,40}-[0-9a-f]{8}$")
COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


class Adopter:
    """Finds and imports the runs of this repository that this state does not know (module docstring)."""

    def __init__(
        self,
        *,
        state: StateStore,
        launcher: Launcher,
        registry: Callable[[], Registry],
        repository_id: str,
    ) -> None:
        self.state = state
        self.launcher = launcher
        self.registry = registry
        self.repository_id = repository_id
        self._skipped: dict[str, str] = {}  # run directory -> the commit it was skipped at ("" for good)
        self._held: set[tuple[str, str]] = set()

    def adopt(self, desired: DesiredState, roots: Iterable[Path]) -> list[RunRecord]:
        """Import every run of this repository under `roots` that this state does not know; the new rows."""
        known = {row[0] for row in self.state.conn.execute("SELECT id FROM runs")}
        # One run per (run key, spec digest) that is live or registered: a second would train or register the same
        # thing again (a training can copy a real run directory under a new name on the shared run root).
        self._held = set(
            self.state.conn.execute(
                "SELECT run_key, spec_digest FROM runs WHERE phase NOT IN (?, ?)", (Phase.FAILED, Phase.CANCELLED)
            )
        )
        adopted = []
        for root in dict.fromkeys(roots):
            try:
                names = sorted(os.listdir(root))
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("run root %s cannot be listed, its runs are not adopted now: %s", root, exc.strerror)
                continue
            for name in names:
                path = root / name
                if name in known or not RUN_ID.match(name) or self._skipped.get(str(path)) in ("", desired.commit):
                    continue
                run = self._examine(path, name, desired)
                if run is not None:
                    adopted.append(run)
                    known.add(name)
        return adopted

    def _skip(self, path: Path, why: str, *, for_good: bool, commit: str) -> None:
        self._skipped[str(path)] = "" if for_good else commit
        log.debug("run directory %s not adopted: %s", path, why)

    def _examine(self, path: Path, name: str, desired: DesiredState) -> RunRecord | None:
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                self._skip(path, "not a directory", for_good=True, commit=desired.commit)
                return None
            claimed = read_legacy_snapshot(path)
        except (OSError, SnapshotMissing) as exc:
            self._skip(path, str(exc), for_good=False, commit=desired.commit)
            return None
        if claimed.get("repository_id") != self.repository_id or claimed.get("run_id") != name:
            self._skip(path, "another repository's run", for_good=True, commit=desired.commit)
            return None
        model = desired.models.get(str(claimed.get("model")))
        why = self._mismatch(claimed, model)
        if why or model is None:
            self._skip(path, why or "its model is not in the applied commit", for_good=False, commit=desired.commit)
            return None
        base = claimed.get("base") if model.spec.spec.base else None
        keys = (model.run_key, model.spec_digest)
        if isinstance(base, dict):
            tie = {"base": base["sha256"]}
            keys = (digest({"run_key": keys[0], **tie}), digest({"spec_digest": keys[1], **tie}))
        if keys in self._held:
            self._skip(
                path, "a run of the same run key and spec is already known", for_good=False, commit=desired.commit
            )
            return None
        self._held.add(keys)
        return self._import(path, name, claimed, model, keys, base)

    def _mismatch(self, claimed: dict[str, Any], model: DesiredModel | None) -> str:
        """Why the claimed run does not stand for what `model` wants now ("" when it does)."""
        if model is None:
            return ""
        if claimed.get("run_key") != model.run_key or claimed.get("spec_digest") != model.spec_digest:
            return "an older run key or spec of its model"
        commit, attempt, created = claimed.get("commit"), claimed.get("attempt"), claimed.get("created_at")
        if not isinstance(commit, str) or not COMMIT.match(commit) or not self._known_commit(commit):
            return "its commit is not a commit of this repository"
        if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt <= 1000:
            return "no attempt number"
        if isinstance(created, bool) or not isinstance(created, int | float):
            return "no creation time"
        if model.spec.spec.base:
            base = claimed.get("base")
            if not isinstance(base, dict) or not self._registered(str(base.get("label")), base.get("sha256")):
                return "its base is not a version the registry holds"
        return ""

    def _known_commit(self, commit: str) -> bool:
        try:
            self.launcher.source.commit_info(commit)
        except (AssertionError, ValueError, KeyError, TypeError):
            return False
        return True

    def _registered(self, label: str, sha256: object) -> bool:
        model, _, number = label.partition("@")
        if not number.isdigit():
            return False
        version = self.registry().get(model, int(number))
        return version is not None and version.artifact.sha256 == sha256

    def _import(
        self,
        path: Path,
        name: str,
        claimed: dict[str, Any],
        model: DesiredModel,
        keys: tuple[str, str],
        base: dict[str, Any] | None,
    ) -> RunRecord:
        now = time.time()
        run = RunRecord(
            id=name,
            model=model.name,
            run_key=keys[0],
            spec_digest=keys[1],
            commit_id=str(claimed["commit"]),
            spec_path=model.path,
            backend=model.train.backend,
            phase=Phase.SUBMITTING,
            attempt=int(claimed["attempt"]),
            run_dir=str(path),
            created_at=float(claimed["created_at"]),
            updated_at=now,
            gpus=model.train.resources.gpus * model.train.resources.nodes,
            timeout_s=model.train.timeout_s,
        )
        snapshot = self.launcher.snapshot_for(run, model, None)
        if base is not None:
            snapshot["base"] = {k: base.get(k) for k in ("ref", "label", "sha256", "run_key", "run_id")}
        who = str(claimed.get("daemon_host") or "another daemon")[:200]
        message = f"adopted run {name} started by {who!r}: its job is looked up by run id"
        self.state.create_run(run, message=message, snapshot=snapshot)
        log.warning("%s: %s (run directory %s)", run.model, message, path, extra=run_fields(run))
        self._skipped[str(path)] = ""
        return run
