"""Durations and memory sizes as people write them in spec files, turned into plain integers.

Spec files say `timeout: 1h30m` and `memory: 2Gi`; everything below the spec layer wants seconds and MiB.
This module owns that grammar (and the JSON Schema patterns that describe it to editors), so that every
field that takes a duration or a size accepts exactly the same forms and rejects the rest with a message
that lists what is accepted. `format_time` is the one way a moment is shown to a person (status, plan, logs).
"""

from __future__ import annotations

import re
import time

__all__ = [
    "DURATION_PATTERN",
    "MEMORY_PATTERN",
    "format_duration",
    "parse_duration",
    "parse_memory",
]

_MIB = 1024 * 1024

_DURATION_FORMS = (
    "an integer number of seconds (90), numbers with units s, m, h, d, w in that order "
    "(e.g. '90s', '10m', '1h30m', '1h 5m', '1.5h', '2d'), or HH:MM:SS / D-HH:MM:SS (e.g. '01:30:00')"
)

# Seconds per unit; the value is also its rank, so units must appear in strictly decreasing order.
_DURATION_UNITS: dict[str, int] = {
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]+)\s*", re.ASCII)
_CLOCK = re.compile(r"(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)", re.ASCII)

#: ECMA-262 pattern (JSON Schema) for the string forms `parse_duration` accepts; the parser is stricter.
_UNIT_NAMES = r"(weeks?|w|days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)"
DURATION_PATTERN = (
    rf"^\s*([0-9]+|(([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*{_UNIT_NAMES}\s*)+|([0-9]+-)?[0-9]+:[0-5][0-9]:[0-5][0-9])\s*$"
)

_MEMORY_UNITS: dict[str, int] = {
    "": _MIB,
    "B": 1,
    "k": 1000,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "P": 1000**5,
    "PB": 1000**5,
    "Ki": 1024,
    "KiB": 1024,
    "Mi": 1024**2,
    "MiB": 1024**2,
    "Gi": 1024**3,
    "GiB": 1024**3,
    "Ti": 1024**4,
    "TiB": 1024**4,
    "Pi": 1024**5,
    "PiB": 1024**5,
}

_MEMORY_FORMS = (
    "an integer number of MiB (2048), or a number with a unit: binary Ki, Mi, Gi, Ti, Pi "
    "(also KiB, MiB, ...), decimal k/K, M, G, T, P (also KB, MB, ...), or B for bytes "
    "(e.g. '512Mi', '2Gi', '1.5Gi', '2G')"
)
_MEMORY = re.compile(rf"({_NUMBER})\s*([A-Za-z]*)", re.ASCII)

#: ECMA-262 pattern (JSON Schema) for the string forms `parse_memory` accepts.
MEMORY_PATTERN = r"^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*(B|[kKMGTP]B?|[KMGTP]iB?)?\s*$"


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def parse_duration(value: str | int) -> int:
    """Seconds in `value`: an int (seconds) or a string such as '90s', '1h30m', '2d' or '01:30:00'.

    Zero is returned as 0; whether zero makes sense (it does not for a timeout) is the caller's call.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"invalid duration {_describe(value)}: expected {_DURATION_FORMS}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid duration {value}: a duration cannot be negative")
        return value
    text = value.strip()
    if not text:
        raise ValueError(f"invalid duration {value!r}: it is empty; expected {_DURATION_FORMS}")
    if text.isascii() and text.isdigit():
        return int(text)
    if text.startswith("-"):
        raise ValueError(f"invalid duration {value!r}: a duration cannot be negative")
    clock = _CLOCK.fullmatch(text)
    if clock:
        days, hours, minutes, seconds = (int(g) if g else 0 for g in clock.groups())
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return _parse_unit_duration(value, text)


def _parse_unit_duration(value: str, text: str) -> int:
    from fractions import Fraction  # here, not at the top: `gitopsd status` imports this module but parses nothing

    total = Fraction(0)
    last_rank: int | None = None
    pos = 0
    while pos < len(text):
        part = _DURATION_PART.match(text, pos)
        if part is None:
            rest = text[pos:].strip()
            why = f"{rest!r} has no unit; " if re.fullmatch(_NUMBER, rest, re.ASCII) else ""
            raise ValueError(f"invalid duration {value!r}: {why}expected {_DURATION_FORMS}")
        number, unit = part.groups()
        seconds = _DURATION_UNITS.get(unit)
        if seconds is None:
            hint = " (units are lowercase)" if unit.lower() in _DURATION_UNITS else ""
            raise ValueError(f"invalid duration {value!r}: unknown unit {unit!r}{hint}; expected {_DURATION_FORMS}")
        if last_rank is not None and seconds >= last_rank:
            raise ValueError(
                f"invalid duration {value!r}: units must go from largest to smallest, each at most once (e.g. '1h30m')"
            )
        last_rank = seconds
        total += Fraction(number) * seconds
        pos = part.end()
    if total.denominator != 1:
        raise ValueError(f"invalid duration {value!r}: it is not a whole number of seconds")
    return int(total)


def format_duration(seconds: int) -> str:
    """The shortest unit string for `seconds` that `parse_duration` reads back (e.g. 5400 -> '1h30m')."""
    if seconds < 0:
        raise ValueError(f"cannot format a negative duration ({seconds})")
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_time(at: float) -> str:
    """A moment (seconds since the epoch) as people read it in status and logs, in UTC: `2026-11-30 21:05:13 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def format_size(size_bytes: int) -> str:
    """A size for people: KiB below 1 MiB, MiB below 1 GiB, GiB with one decimal above."""
    if size_bytes < 1024**2:
        return f"{size_bytes / 1024:.0f} KiB"
    if size_bytes < 1024**3:
        return f"{size_bytes / 1024**2:.0f} MiB"
    return f"{size_bytes / 1024**3:.1f} GiB"


def parse_memory(value: str | int) -> int:
    """MiB in `value`: an int (MiB) or a string such as '512Mi', '2Gi' or '2G', rounded up to whole MiB."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"invalid memory size {_describe(value)}: expected {_MEMORY_FORMS}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid memory size {value}: a size cannot be negative")
        return value
    text = value.strip()
    if not text:
        raise ValueError(f"invalid memory size {value!r}: it is empty; expected {_MEMORY_FORMS}")
    if text.startswith("-"):
        raise ValueError(f"invalid memory size {value!r}: a size cannot be negative")
    match = _MEMORY.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid memory size {value!r}: expected {_MEMORY_FORMS}")
    number, unit = match.groups()
    factor = _MEMORY_UNITS.get(unit)
    if factor is None:
        hint = ""
        if unit == "m":
            hint = " ('m' would mean milli; write 'M' for megabytes or 'Mi' for mebibytes)"
        elif unit.lower() in {u.lower() for u in _MEMORY_UNITS if u}:
            hint = " (units are case-sensitive)"
        raise ValueError(f"invalid memory size {value!r}: unknown unit {unit!r}{hint}; expected {_MEMORY_FORMS}")
    from fractions import Fraction

    size_bytes = Fraction(number) * factor
    mib = -((-size_bytes) // _MIB)  # ceiling division
    return int(mib)
