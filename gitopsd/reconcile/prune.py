"""Keeps ended runs from filling the disk: the newest few of each model keep their whole directory, older
ones only their logs and records.

A run directory holds an exported copy of the training's tree, its outputs (the artifact, which a registered
version already has in the store) and, for a fine-tuning, its base artifact. On a login node with a home-dir
quota those copies add up one retraining at a time. Like a CronJob's history limits, `runs.keep` in
gitops.yaml says how many ended runs per model keep everything, for debugging; older ones lose `tree/`, `out/`
and `base/`, and keep `logs/`, the backend's records and `run.json`, so `gitopsd logs` and lineage still work.
Pruning is idempotent and touches only runs that have ended, so a crash half-way is finished by the next run
that ends.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

from gitopsd.reconcile.state import StateStore

log = logging.getLogger("gitopsd")

PRUNED = ("tree", "out", "base")


def _size_and_unlock(path: str) -> int:
    """Bytes under `path`; directories the training made read-only are made writable so they can go."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    if info.st_mode & stat.S_IRWXU != stat.S_IRWXU:
        os.chmod(path, info.st_mode | stat.S_IRWXU)
    with os.scandir(path) as entries:
        return sum(_size_and_unlock(entry.path) for entry in entries)


def prune_run_dir(run_dir: Path) -> int:
    """Remove the bulky parts of one ended run's directory; return the bytes freed."""
    freed = 0
    for name in PRUNED:
        path = run_dir / name
        if path.is_symlink() or path.is_file():
            freed += path.lstat().st_size
            path.unlink()
        elif path.is_dir():
            freed += _size_and_unlock(str(path))
            shutil.rmtree(path)
    return freed


def prune_model_runs(state: StateStore, model: str, *, keep: int) -> int:
    """Prune every ended run of `model` but the newest `keep`; return the bytes freed. Errors are logged."""
    freed = 0
    for run in state.ended_runs(model, skip=keep):
        try:
            freed += prune_run_dir(Path(run.run_dir))
        except OSError as exc:
            log.warning("%s: cannot prune run directory %s: %s", model, run.run_dir, exc)
    return freed
