"""A run's snapshot: what it was started from, fixed at submit time and kept where the training cannot write.

Collecting a run needs its gates, the names of its artifact and metrics file, and its lineage inputs, as they
were when it was submitted, even if Git has moved on. They are kept in `state.db` (table `snapshots`), written
in the same transaction as the run's row, so a crash cannot leave a run without one, and never replaced.

The same snapshot is also written to `RUN_DIR/run.json` for people and trainings to read, but it is never read
back: a training can rewrite its run directory, and would then choose its own gates or have another file
collected as its artifact. Only a run submitted by an older gitopsd, which has no kept snapshot, is judged by
its `run.json`, read with no link followed, size-capped and checked like a spec (paths inside the output
directory, parseable gates), and then kept in the database so it is read once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gitopsd.errors import PermanentError
from gitopsd.reconcile.state import RunRecord, StateStore
from gitopsd.registry.beneath import OutputRefused, open_child
from gitopsd.spec.gates import parse_gate
from gitopsd.spec.schema import OutputsSpec

SNAPSHOT = "run.json"
LEGACY_LIMIT = 1 << 20
"""Largest `run.json` read for a run submitted by an older gitopsd."""

_LEGACY_KEYS = ("repo_url", "commit", "spec_path", "code_tree", "train", "outputs", "validate", "data")


class SnapshotMissing(PermanentError):
    """A run with no usable snapshot: it cannot be judged, so it cannot be collected."""


def write_snapshot(run_dir: Path, snapshot: dict[str, Any]) -> None:
    """Write `run.json` for people and the training to read; whatever is already there is replaced, not followed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (SNAPSHOT + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(snapshot, indent=2, sort_keys=True, default=str))
    tmp.replace(run_dir / SNAPSHOT)


def load_snapshot(state: StateStore, run: RunRecord) -> dict[str, Any]:
    """The snapshot `run` was started from: the kept one, else (older runs) its checked `run.json`, then kept."""
    kept = state.snapshot(run.id)
    if kept is not None:
        return kept
    legacy = read_legacy_snapshot(Path(run.run_dir))
    state.keep_snapshot(run.id, legacy)
    kept = state.snapshot(run.id)
    assert kept is not None
    return kept


def read_legacy_snapshot(run_dir: Path) -> dict[str, Any]:
    """`run_dir/run.json` of a run submitted before snapshots were kept in `state.db`, read as hostile input."""
    shown = str(run_dir / SNAPSHOT)
    try:
        root = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd, st = open_child(root, SNAPSHOT, shown, directory=False)
        finally:
            os.close(root)
        with os.fdopen(fd, "rb") as handle:
            if st.st_size > LEGACY_LIMIT:
                raise SnapshotMissing(f"{shown} is over {LEGACY_LIMIT} bytes; it is not a snapshot gitopsd wrote")
            data = json.loads(handle.read(LEGACY_LIMIT))
    except FileNotFoundError:
        raise SnapshotMissing(f"run has no snapshot in state.db and no {shown}: it cannot be judged") from None
    except (OutputRefused, ValueError, RecursionError) as exc:
        raise SnapshotMissing(f"{shown} cannot be used as the run's snapshot: {exc}") from None
    return _checked(data, shown)


def _checked(data: object, shown: str) -> dict[str, Any]:
    """The legacy snapshot if it has what collecting needs, with outputs and gates checked like a spec's."""
    if not isinstance(data, dict) or any(key not in data for key in _LEGACY_KEYS):
        raise SnapshotMissing(f"{shown} is not a run snapshot: it needs the keys {', '.join(_LEGACY_KEYS)}")
    try:
        outputs = OutputsSpec.model_validate(data["outputs"])
        gates = [parse_gate(str(g)).text for g in data["validate"]]
    except (ValidationError, ValueError, TypeError) as exc:
        raise SnapshotMissing(f"{shown}: outputs or validate are not what a spec allows: {exc}") from None
    return {**data, "outputs": outputs.model_dump(mode="json"), "validate": gates}
