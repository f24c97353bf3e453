"""Keeps ended runs from filling the disk: the newest few of each model keep their whole directory, older
ones only their logs and records.

A run directory holds an exported copy of the training's tree, its outputs (the artifact, which a registered
version already has in the store) and, for a fine-tuning, its base artifact. On a login node with a home-dir
quota those copies add up one retraining at a time. Like a CronJob's history limits, `runs.keep` in
gitops.yaml says how many ended runs per model keep everything, for debugging; older ones lose `tree/`, `out/`
and `base/`, and keep `logs/`, the backend's records and `run.json`, so `gitopsd logs` and lineage still work.
Pruning is idempotent and touches only runs that have ended, so a crash half-way is finished by the next run
that ends. What is removed was written by the training, so it is removed without recursion or following links
(`remove_tree`): a tree 100,000 directories deep or a planted link must not break the pass or reach outside.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from gitopsd.reconcile.state import StateStore

log = logging.getLogger("gitopsd")

PRUNED = ("tree", "out", "base")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _enter(parent_fd: int, name: str) -> int:
    """Open a subdirectory (never a link) and make it ours to empty: the training may have made it read-only."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:  # mode 0 and friends: chmod the directory itself (O_PATH follows no link), then open
        path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            os.chmod(f"/proc/self/fd/{path_fd}", stat.S_IMODE(os.fstat(path_fd).st_mode) | stat.S_IRWXU)
        finally:
            os.close(path_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    mode = os.fstat(fd).st_mode
    if mode & stat.S_IRWXU != stat.S_IRWXU:
        os.fchmod(fd, mode | stat.S_IRWXU)
    return fd


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _empty(fd: int) -> tuple[int, list[str]]:
    """Unlink every entry of the directory `fd` that is not a directory; return the bytes and the subdirectories."""
    freed = 0
    subdirectories: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirectories.append(entry.name)
            else:
                freed += entry.stat(follow_symlinks=False).st_size
                os.unlink(entry.name, dir_fd=fd)
    return freed, subdirectories


def remove_tree(parent_fd: int, name: str) -> int:
    """Remove the directory `name` in `parent_fd` and everything below it; return the bytes of what it held.

    The training wrote this tree, so it may be any depth (100,000 levels cost no recursion and one open
    directory at a time: the walk climbs back with `..` and checks it is the directory it came from), any
    mode (read-only directories are made writable first), and hold links (removed, never followed).
    """
    fd = _enter(parent_fd, name)
    freed, pending = _empty(fd)
    below: list[tuple[str, tuple[int, int], list[str]]] = []  # per level entered: name, parent, parent's pending
    try:
        while True:
            if pending:
                child = pending.pop()
                entered = _enter(fd, child)
                below.append((child, _identity(fd), pending))
                os.close(fd)
                fd = entered
                more, pending = _empty(fd)
                freed += more
                continue
            if not below:
                break
            child, parent_identity, pending = below.pop()
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            if _identity(fd) != parent_identity:
                raise OSError(errno.ESTALE, f"{name}: a directory was moved while it was being removed; stopped")
            os.rmdir(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
    return freed


def prune_run_dir(run_dir: Path) -> int:
    """Remove the bulky parts of one ended run's directory; return the bytes freed."""
    try:
        parent = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    freed = 0
    try:
        for name in PRUNED:
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                freed += remove_tree(parent, name)
            else:  # a file, or a link the training put there: removed, never followed
                freed += st.st_size
                os.unlink(name, dir_fd=parent)
    finally:
        os.close(parent)
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
