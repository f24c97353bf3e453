"""When a run started running decides its GPU-hours (usage, weekly budgets). The backend says when; for the local
backends that comes from the supervisor's state in the run directory, which a hostile training could rewrite."""

from __future__ import annotations

import math
import time

import pytest

from gitopsd.model import Phase
from gitopsd.reconcile.apply import _running_since
from gitopsd.reconcile.state import RunRecord

SUBMITTED = 1_000_000.0


def _run() -> RunRecord:
    return RunRecord(id="r", model="m", run_key="k", spec_digest="d", commit_id="0" * 40, spec_path="models/m.yaml",
                     backend="local", phase=Phase.QUEUED, attempt=1, run_dir="/nonexistent", created_at=SUBMITTED,
                     updated_at=SUBMITTED)  # fmt: skip


def test_the_backends_start_is_kept_so_a_run_that_ended_before_it_was_seen_running_still_counts() -> None:
    assert _running_since(_run(), SUBMITTED + 5.25) == SUBMITTED + 5.25


@pytest.mark.parametrize(
    "said",
    [SUBMITTED - 86_400 * 365, 0.0, -1.0, -math.inf],  # claims hours before it was even submitted
)
def test_a_start_before_the_submission_counts_from_the_submission(said: float) -> None:
    assert _running_since(_run(), said) == SUBMITTED


@pytest.mark.parametrize("said", [time.time() + 86_400 * 365, math.inf])
def test_a_start_in_the_future_counts_from_now(said: float) -> None:
    """Never later than the pass that saw it running: no training hides the hours it ran."""
    before = time.time()
    assert before <= _running_since(_run(), said) <= time.time()


@pytest.mark.parametrize("said", [None, math.nan, True, "1000000.0"])
def test_no_usable_start_counts_from_now(said: object) -> None:
    before = time.time()
    assert before <= _running_since(_run(), said) <= time.time()  # type: ignore[arg-type]
