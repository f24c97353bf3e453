"""The retry book and the outbox on a real state.db, with a clock the test moves."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from gitopsd.errors import TransientError
from gitopsd.model import ConditionType, Reason
from gitopsd.reconcile.conditions import ModelFacts, summarize
from gitopsd.reconcile.outbox import Entry, Outbox
from gitopsd.reconcile.planner import Want
from gitopsd.reconcile.state import StateStore
from gitopsd.reconcile.troubles import RetryBook


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")


def test_a_transient_failure_is_due_again_only_after_its_backoff_and_success_clears_it(store: StateStore) -> None:
    clock = Clock()
    book = RetryBook(store.conn, clock)
    assert book.due("Collect:r1")
    first = book.failed("Collect:r1", model="m", what="collecting run r1", reason=Reason.REGISTRY_FAILED,
                        exc=TransientError("S3 is down"))  # fmt: skip
    assert first.attempts == 1 and first.next_at is not None and 2.5 <= first.next_at - clock.now <= 5.0
    assert not book.due("Collect:r1")
    clock.now = first.next_at
    assert book.due("Collect:r1")
    second = book.failed("Collect:r1", model="m", what="collecting run r1", reason=Reason.REGISTRY_FAILED,
                         exc=TransientError("S3 is down"))  # fmt: skip
    assert second.attempts == 2 and second.first_at == first.first_at
    assert RetryBook(store.conn, clock).all() == {"Collect:r1": second}, "kept in state.db"
    assert book.cleared("Collect:r1") and book.due("Collect:r1") and not book.cleared("Collect:r1")


def test_a_permanent_failure_waits_for_another_input_or_a_reload(store: StateStore) -> None:
    clock = Clock()
    book = RetryBook(store.conn, clock)
    denied = PermissionError(errno.EACCES, "Permission denied", "/srv/models")
    trouble = book.failed("Collect:r1", model="m", what="collecting run r1", reason=Reason.REGISTRY_FAILED,
                          exc=denied, input="file:///srv/models")  # fmt: skip
    assert trouble.permanent and "Permission denied: '/srv/models'" in trouble.message
    clock.now += 10**9
    assert not book.due("Collect:r1", "file:///srv/models"), "time alone does not mend it"
    assert book.due("Collect:r1", "file:///srv/other"), "other store settings are tried at once"
    assert RetryBook(store.conn, clock).forgive_permanent() == 1
    assert RetryBook(store.conn, clock).due("Collect:r1", "file:///srv/models"), "a reload retries it"


def test_the_condition_says_what_failed_how_often_and_when_it_is_tried_again(store: StateStore) -> None:
    book = RetryBook(store.conn, Clock())
    want = Want(model="m", run_key="k", spec_digest="d", backend="local")
    book.failed("Collect:r1", model="m", what="collecting run r1", reason=Reason.REGISTRY_FAILED,
                exc=TransientError("S3 is down"))  # fmt: skip
    condition = summarize(ModelFacts(want=want, trouble=book.by_model()["m"]))
    assert (condition.type, condition.reason) == (ConditionType.RECONCILING, Reason.REGISTRY_FAILED)
    assert condition.message.startswith("collecting run r1 failed (1 attempt, next retry at 1970-01-12 ")
    assert condition.message.endswith(" UTC): S3 is down")
    book.failed("Submit:m", model="m", what="submitting a run", reason=Reason.SUBMIT_FAILED,
                exc=OSError(errno.EROFS, "Read-only file system"))  # fmt: skip
    stalled = summarize(ModelFacts(want=want, trouble=book.by_model()["m"]))
    assert (stalled.type, stalled.reason) == (ConditionType.STALLED, Reason.SUBMIT_FAILED), "permanent first"
    assert "Read-only file system" in stalled.message and "reload the daemon" in stalled.message


def test_the_outbox_keeps_an_entry_until_its_handler_succeeds_retrying_with_backoff(store: StateStore) -> None:
    clock = Clock()
    outbox = Outbox(store.conn, clock)
    outbox.put("alias-journal", "m", model="m")
    outbox.put("alias-journal", "m", model="m")  # a second move before the first went out: one entry
    calls: list[str] = []

    def down(entry: Entry) -> None:
        calls.append(entry.subject)
        raise TransientError("the store is down")

    assert outbox.drain({"alias-journal": down}) == 1
    assert outbox.drain({"alias-journal": down}) == 1 and calls == ["m"], "not before its backoff is over"
    (entry,) = outbox.entries()
    assert (entry.attempts, entry.error) == (1, "the store is down")
    clock.now = entry.next_at
    assert outbox.drain({"alias-journal": lambda e: calls.append("sent")}) == 0
    assert calls == ["m", "sent"] and outbox.entries() == []
    assert Outbox(store.conn, clock).entries() == []
