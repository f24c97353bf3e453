"""The error taxonomy: which failures are retried, and on what schedule."""

from __future__ import annotations

import errno
import random

import pytest

from gitopsd.errors import (
    RETRY_BASE_S,
    RETRY_CAP_S,
    BackendUnavailable,
    IntegrityError,
    PermanentError,
    SourceUnavailable,
    SpecError,
    TransientError,
    is_permanent,
    retry_delay,
)


@pytest.mark.parametrize(
    "exc",
    [
        PermanentError("refused"),
        IntegrityError("digest"),
        SpecError([]),
        PermissionError(errno.EACCES, "Permission denied", "/etc/shadow"),
        OSError(errno.EROFS, "Read-only file system"),
        OSError(errno.EPERM, "Operation not permitted"),
        UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"),
        OverflowError("int too large to convert to float"),
    ],
)
def test_failures_that_retrying_cannot_mend_are_permanent(exc: BaseException) -> None:
    assert is_permanent(exc)


@pytest.mark.parametrize(
    "exc",
    [
        TransientError("down"),
        BackendUnavailable("slurmctld"),
        SourceUnavailable("remote"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        TimeoutError("timed out"),
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("a bug or an unexpected outage"),
    ],
)
def test_outages_and_unknown_failures_are_transient(exc: BaseException) -> None:
    assert not is_permanent(exc)


def test_retry_delay_doubles_from_the_base_to_the_cap_with_jitter_between_half_and_all_of_each_step() -> None:
    low, high = random.Random(), random.Random()
    low.random = lambda: 0.0  # type: ignore[method-assign]
    high.random = lambda: 0.999999  # type: ignore[method-assign]
    for attempt, step in [(1, RETRY_BASE_S), (2, 2 * RETRY_BASE_S), (3, 4 * RETRY_BASE_S), (10, RETRY_CAP_S)]:
        assert retry_delay(attempt, rand=low) == pytest.approx(step / 2)
        assert retry_delay(attempt, rand=high) == pytest.approx(step, rel=1e-5)
    assert retry_delay(10**9, rand=high) == pytest.approx(RETRY_CAP_S, rel=1e-5)  # no overflow
    assert retry_delay(0, rand=low) == retry_delay(1, rand=low)
    seeded = [retry_delay(5, rand=random.Random(seed)) for seed in range(20)]
    assert len(set(seeded)) > 1, "jitter spreads retries"
