"""The repeat filter: a repeated identical warning or error is written once, then once per window."""

from __future__ import annotations

import logging

import pytest

from gitopsd.daemon.logdedup import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def written() -> list[str]:
    return []


def _logger(name: str, written: list[str], repeat: RepeatFilter) -> logging.Logger:
    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            written.append(f"{record.levelname} {record.getMessage()}")

    logger = logging.getLogger(f"test-logdedup.{name}")
    logger.handlers.clear()
    handler = Collect()
    handler.addFilter(repeat)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def test_a_repeated_error_is_written_once_then_again_after_the_window_with_the_count(written: list[str]) -> None:
    clock = Clock()
    log = _logger("a", written, RepeatFilter(window_s=600, clock=clock))
    for _ in range(5):
        log.error("cannot fetch %s: gone", "/srv/repo")
        clock.now += 60
    assert written == ["ERROR cannot fetch /srv/repo: gone"]
    clock.now += 600
    log.error("cannot fetch %s: gone", "/srv/repo")
    assert written[-1] == "ERROR cannot fetch /srv/repo: gone (4 more times in the last 10 min)"
    log.error("cannot fetch %s: gone", "/srv/repo")
    assert len(written) == 2, "the window starts again from the line written"


def test_a_changed_message_another_level_or_another_logger_is_written_at_once(written: list[str]) -> None:
    repeat = RepeatFilter(clock=Clock())
    log, other = _logger("b", written, repeat), _logger("c", written, repeat)
    log.error("source unavailable: A")
    log.error("source unavailable: B")
    log.warning("source unavailable: B")
    other.error("source unavailable: B")
    log.error("source unavailable: B")
    assert written == ["ERROR source unavailable: A", "ERROR source unavailable: B", "WARNING source unavailable: B",
                       "ERROR source unavailable: B"]  # fmt: skip


def test_info_lines_are_events_and_never_dropped(written: list[str]) -> None:
    log = _logger("d", written, RepeatFilter(clock=Clock()))
    for _ in range(3):
        log.info("webhook github: push to refs/heads/main")
    assert len(written) == 3


def test_it_remembers_a_bounded_number_of_messages(written: list[str]) -> None:
    repeat = RepeatFilter(clock=Clock(), max_keys=10)
    log = _logger("e", written, repeat)
    for i in range(100):
        log.error("error %d", i)
    log.error("error 0")  # forgotten, so written again
    assert len(written) == 101 and len(repeat._seen) == 10


def test_the_daemon_and_the_command_line_install_it() -> None:
    from gitopsd.daemon import logs

    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logs.setup("info", "json")
        assert any(isinstance(f, RepeatFilter) for h in root.handlers for f in h.filters)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
