"""Attack cases on the settled-pass record (`gitopsd.reconcile.settled`), through the real `gitopsd reconcile
--once`: a record planted, forged, copied from another state directory or cut short never lets a pass skip work
that is due, or runs a pass that differs from the full one. The state moves after the record was written (an
event another process records); the record is then planted to claim the old, settled state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gitopsd.reconcile import settled
from gitopsd.reconcile.state import StateStore
from tests.conftest import GitRepo, gitopsd

SKIPPED = "settled since the last pass"


def once(state_dir: Path, *extra: str) -> str:
    return gitopsd(state_dir, "-v", "reconcile", "--once", *extra).stderr


@pytest.fixture
def settled_dir(demo_repo: GitRepo, tmp_path: Path) -> Path:
    """A state directory whose last pass ended settled (nothing to do), with its record."""
    state = tmp_path / "state"
    gitopsd(state, "reconcile", "--wait", "--repo", str(demo_repo.path))
    once(state)
    assert SKIPPED in once(state)  # the shortcut works here, so the cases below test the record, not luck
    return state


def _due_again(state: Path) -> None:
    """The state moves outside the commit: an event another process records."""
    with StateStore(state / "state.db") as store:
        store.event("blobs", "Noted", reason="test", message="by another process")


def test_a_stale_record_is_not_used_when_the_state_moved(settled_dir: Path) -> None:
    _due_again(settled_dir)
    assert SKIPPED not in once(settled_dir)
    assert SKIPPED in once(settled_dir)


@pytest.mark.parametrize("how", ["forged", "garbage", "truncated", "copied", "huge"])
def test_a_planted_record_is_ignored(settled_dir: Path, tmp_path: Path, demo_repo: GitRepo, how: str) -> None:
    record = settled_dir / settled.RECORD_FILE
    good = json.loads(record.read_text())
    _due_again(settled_dir)  # the state moved: only a record forged to match it could skip the pass
    if how == "forged":
        from gitopsd.reconcile.reconciler import Reconciler

        rec = Reconciler(state_dir=settled_dir, url=str(demo_repo.path))
        try:
            row = rec.state.source()
            assert row is not None
            good["payload"]["fingerprint"] = rec._settled_fingerprint(row)  # right fingerprint, no key: bad MAC
        finally:
            rec.close()
        record.write_text(json.dumps(good))
    elif how == "garbage":
        record.write_bytes(b"\x00\xff{]")
    elif how == "truncated":
        record.write_bytes(record.read_bytes()[:17])
    elif how == "huge":
        record.write_bytes(b"{" + b" " * settled.MAX_BYTES + b"}")
    else:  # from another state directory of the same repository, signed with that directory's key
        other = tmp_path / "other"
        gitopsd(other, "reconcile", "--wait", "--repo", str(demo_repo.path))
        once(other)
        shutil.copy(other / settled.RECORD_FILE, record)
    stderr = once(settled_dir)
    assert SKIPPED not in stderr
    assert "Traceback" not in stderr
    assert SKIPPED in once(settled_dir)  # the full pass wrote a good record again
