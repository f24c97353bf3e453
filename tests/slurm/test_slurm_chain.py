"""Chained segments without a cluster: what follows a segment, the book read as hostile input, and adoption."""

from __future__ import annotations

from typing import Any

import pytest
from gitopsd_slurm.chain import Next, adoptable, decide, exhausted_status, first_book, read_book
from gitopsd_slurm.records import SlurmJob

from gitopsd.model import JobState, JobStatus


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.TIMEOUT, JobState.LOST])
def test_a_segment_that_ended_after_its_signal_is_followed_by_the_next(state: JobState) -> None:
    status = JobStatus(state=state)
    assert decide(status, signalled=True, segment=2, max_segments=10) is Next.CONTINUE
    assert decide(status, signalled=True, segment=10, max_segments=10) is Next.EXHAUSTED


@pytest.mark.parametrize("state", list(JobState))
def test_without_the_signal_a_segment_is_the_runs_outcome(state: JobState) -> None:
    expected = Next.DONE if state.finished else Next.RUNNING
    assert decide(JobStatus(state=state), signalled=False, segment=1, max_segments=10) is expected


def test_a_cancelled_segment_is_never_continued() -> None:
    assert decide(JobStatus(state=JobState.CANCELLED), signalled=True, segment=1, max_segments=10) is Next.DONE


def test_running_out_of_segments_says_which_setting_to_raise() -> None:
    status = exhausted_status(JobStatus(state=JobState.TIMEOUT), segment=10, max_segments=10)
    assert status.state is JobState.TIMEOUT
    assert "not finished after 10 of at most 10 segments" in status.message
    assert "raise spec.train.checkpoint.max_segments" in status.message


def book_data(*rows: dict[str, Any], run_id: str = "r1") -> dict[str, Any]:
    return {"run_id": run_id, "segments": list(rows)}


def test_the_book_is_read_back() -> None:
    data = book_data({"segment": 1, "job_id": "10", "outcome": {"state": "Failed"}}, {"segment": 2, "job_id": None})
    book = read_book(data, "r1", "10")
    assert [(s.segment, s.job_id) for s in book.segments] == [(1, "10"), (2, None)]
    assert book.current.job_id is None and book.job_ids() == {"10"}


@pytest.mark.parametrize(
    "data",
    [
        None,
        book_data({"segment": 1, "job_id": "10"}, run_id="other"),
        book_data({"segment": 1, "job_id": "11"}),  # not the reconciler's job
        book_data({"segment": 1, "job_id": "10"}, {"segment": 3, "job_id": "12"}),  # a gap
        book_data({"segment": 1, "job_id": "10"}, {"segment": 2, "job_id": "12; scancel -u root"}),
        book_data({"segment": 1, "job_id": None}, {"segment": 2, "job_id": "12"}),  # an intent before the end
        book_data({"segment": 1, "job_id": "10", "outcome": "x"}),
        book_data(*({"segment": n, "job_id": str(n + 9)} for n in range(1, 1003))),
        {"run_id": "r1", "segments": "many"},
    ],
)
def test_a_book_that_is_not_ours_counts_as_the_first_segment_only(data: dict[str, Any] | None) -> None:
    assert read_book(data, "r1", "10") == first_book("r1", "10")


def job(job_id: str, run_id: str = "r1", segment: int | None = None) -> SlurmJob:
    comment = f"gitopsd-run={run_id}" + (f" gitopsd-segment={segment}" if segment else "")
    return SlurmJob(job_id=job_id, name=f"gitopsd-{run_id}", comment=comment)


def test_the_next_segments_job_is_adopted_only_if_it_is_new_ours_and_that_segment() -> None:
    book = read_book(book_data({"segment": 1, "job_id": "10"}, {"segment": 2, "job_id": None}), "r1", "10")
    assert adoptable([job("10"), job("9", segment=2), job("12", "r2", 2), job("13", segment=3)], book, 2) is None
    assert adoptable([job("10"), job("14", segment=2), job("12", segment=2)], book, 2) == "12"
    by_name = SlurmJob(job_id="15", name="gitopsd-r1")  # accounting by name: no comment
    assert adoptable([by_name], book, 2) == "15"
