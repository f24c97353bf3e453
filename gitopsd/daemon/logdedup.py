"""A repeated identical warning or error is logged once, then again only every N minutes (default 10).

A daemon that polls a missing repository every minute, or meets the same refused commit on every pass, would
otherwise write the same line hundreds of times a day and bury what changed. The filter sits on the log
handler: a record is the same as an earlier one when its logger, level and formatted message are; the first is
written, repeats are counted and dropped, and once the window has passed the next repeat is written again with
how many were dropped ("(12 more times in the last 10 min)"). A different message (the error changed) is
written at once. Info and debug lines are events and are never dropped. Bounded: at most `max_keys` distinct
messages are remembered (the oldest forgotten first).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_WINDOW_S = 600.0


class _Seen:
    """When a message was last written, and how many repeats were dropped since (a plain class: `dataclasses`
    imports `inspect`, milliseconds every command's start would pay for this filter)."""

    __slots__ = ("dropped", "written_at")

    def __init__(self, written_at: float, dropped: int = 0) -> None:
        self.written_at = written_at
        self.dropped = dropped


class RepeatFilter(logging.Filter):
    """Drops repeats of a warning or error seen within `window_s` seconds (see the module docstring)."""

    def __init__(
        self,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1000,
    ) -> None:
        super().__init__()
        self._window_s = window_s
        self._level = level
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[tuple[str, int, str], _Seen] = OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self._level:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted is the handler's to report
            return True
        key = (record.name, record.levelno, message)
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.written_at < self._window_s:
                seen.dropped += 1
                return False
            self._seen[key] = _Seen(written_at=now)
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
        if seen is not None and seen.dropped:
            minutes = f"{self._window_s / 60:g} min"
            record.msg, record.args = f"{message} ({seen.dropped} more times in the last {minutes})", None
        return True
