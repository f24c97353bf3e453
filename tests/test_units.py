"""Durations and memory sizes: every form a spec may use, and a clear refusal of the rest."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitopsd.units import (
    DURATION_PATTERN,
    MEMORY_PATTERN,
    format_duration,
    format_size,
    format_time,
    parse_duration,
    parse_memory,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0),
        (90, 90),
        ("0", 0),
        ("90", 90),
        (" 7 ", 7),
        ("90s", 90),
        ("10m", 600),
        ("1h30m", 5400),
        ("1h 5m", 3900),
        ("2d", 172800),
        ("1w", 604800),
        ("1d2h3m4s", 93784),
        ("1.5h", 5400),
        (".5m", 30),
        ("2 hours 3 min", 7380),
        ("10 seconds", 10),
        ("01:30:00", 5400),
        ("0:00:05", 5),
        ("100:00:00", 360000),
        ("1-00:00:01", 86401),
    ],
)
def test_duration_forms(value: str | int, seconds: int) -> None:
    assert parse_duration(value) == seconds
    assert re.match(DURATION_PATTERN, str(value)), "the JSON Schema pattern must accept every form"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("10x", "unknown unit 'x'"),
        ("1H", "units are lowercase"),
        ("-5m", "negative"),
        (-5, "negative"),
        ("1m1h", "largest to smallest"),
        ("1h1h", "largest to smallest"),
        ("0.5s", "whole number of seconds"),
        ("1h30", "'30' has no unit"),
        ("1:3:00", "expected"),
        ("01:60:00", "expected"),
        ("h", "expected"),
        ("²", "expected"),
        ("1h-5m", "expected"),
    ],
)
def test_bad_durations_say_what_is_wrong_and_what_is_accepted(value: str | int, why: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(value)
    assert why in str(info.value)
    if why not in ("largest to smallest", "whole number of seconds"):
        assert re.match(DURATION_PATTERN, str(value)) is None
    if why not in ("negative", "largest to smallest", "whole number of seconds"):
        assert "HH:MM:SS" in str(info.value)
        assert "1h30m" in str(info.value)


@pytest.mark.parametrize("value", [True, 1.5, None, [1]])
def test_durations_of_other_types_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10**9))
def test_formatted_durations_read_back(seconds: int) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert re.match(DURATION_PATTERN, text)


@given(
    st.integers(0, 400),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.sampled_from(["", " "]),
)
def test_unit_and_clock_forms_agree(d: int, h: int, m: int, s: int, sep: str) -> None:
    total = ((d * 24 + h) * 60 + m) * 60 + s
    parts = [f"{n}{u}" for n, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if n]
    if parts:
        assert parse_duration(sep.join(parts)) == total
    assert parse_duration(f"{d}-{h:02d}:{m:02d}:{s:02d}") == total
    assert parse_duration(str(total)) == total


def test_format_duration_refuses_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(-1)


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        (0, 0),
        (512, 512),
        ("512", 512),
        ("512Mi", 512),
        ("512MiB", 512),
        ("2Gi", 2048),
        ("1.5Gi", 1536),
        ("1Ti", 1024 * 1024),
        ("1Pi", 1024**3),
        ("1024Ki", 1),
        ("1Ki", 1),
        ("2G", 1908),
        ("2GB", 1908),
        ("500M", 477),
        ("1k", 1),
        ("1T", 953675),
        ("1048576B", 1),
        ("1048577B", 2),
        (" 4 Gi ", 4096),
    ],
)
def test_memory_forms(value: str | int, mib: int) -> None:
    assert parse_memory(value) == mib
    assert re.match(MEMORY_PATTERN, str(value)), "the JSON Schema pattern must accept every form"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("2X", "unknown unit 'X'"),
        ("2gi", "case-sensitive"),
        ("2m", "milli"),
        ("-1Gi", "negative"),
        (-1, "negative"),
        ("1 2", "expected"),
        ("Gi", "expected"),
    ],
)
def test_bad_memory_sizes_list_the_accepted_units(value: str | int, why: str) -> None:
    with pytest.raises(ValueError, match="invalid memory size") as info:
        parse_memory(value)
    assert why in str(info.value)
    assert re.match(MEMORY_PATTERN, str(value)) is None
    if why != "negative":
        assert all(unit in str(info.value) for unit in ("Ki", "Mi", "Gi", "Ti", "G"))


@pytest.mark.parametrize("value", [True, 2.5, None])
def test_memory_of_other_types_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="invalid memory size"):
        parse_memory(value)  # type: ignore[arg-type]


@given(st.integers(0, 10**6), st.sampled_from([("Ki", 1 / 1024), ("Mi", 1), ("Gi", 1024), ("Ti", 1024**2)]))
def test_binary_units_scale_exactly(n: int, unit: tuple[str, float]) -> None:
    suffix, factor = unit
    assert parse_memory(f"{n}{suffix}") == math.ceil(n * factor)
    assert re.match(MEMORY_PATTERN, f"{n}{suffix}")


@given(st.integers(0, 10**7), st.sampled_from([("k", 10**3), ("M", 10**6), ("G", 10**9), ("T", 10**12)]))
def test_decimal_units_round_up_to_whole_mib(n: int, unit: tuple[str, int]) -> None:
    suffix, factor = unit
    mib = parse_memory(f"{n}{suffix}")
    assert (mib - 1) * 2**20 < n * factor <= mib * 2**20 or n == 0 == mib


# ---- every alias and every message, pinned (docs/mutation-testing.md) ----------------------------------------
_DURATION_FORMS = (
    "an integer number of seconds (90), numbers with units s, m, h, d, w in that order "
    "(e.g. '90s', '10m', '1h30m', '1h 5m', '1.5h', '2d'), or HH:MM:SS / D-HH:MM:SS (e.g. '01:30:00')"
)
_MEMORY_FORMS = (
    "an integer number of MiB (2048), or a number with a unit: binary Ki, Mi, Gi, Ti, Pi "
    "(also KiB, MiB, ...), decimal k/K, M, G, T, P (also KB, MB, ...), or B for bytes "
    "(e.g. '512Mi', '2Gi', '1.5Gi', '2G')"
)
SECONDS_PER = {
    **dict.fromkeys(("w", "week", "weeks"), 7 * 24 * 3600),
    **dict.fromkeys(("d", "day", "days"), 24 * 3600),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
}
BYTES_PER = {
    "B": 1,
    **{unit: 1000**power for power, units in enumerate((("k", "K", "KB"), ("M", "MB"), ("G", "GB"),
                                                        ("T", "TB"), ("P", "PB")), 1) for unit in units},
    **{unit: 1024**power for power, units in enumerate((("Ki", "KiB"), ("Mi", "MiB"), ("Gi", "GiB"),
                                                        ("Ti", "TiB"), ("Pi", "PiB")), 1) for unit in units},
}  # fmt: skip


@pytest.mark.parametrize(("unit", "seconds"), sorted(SECONDS_PER.items()))
def test_every_duration_unit_alias_is_exact(unit: str, seconds: int) -> None:
    """`2 hrs` is 7200 s, not 7202: every alias, not just the short ones, has its exact size."""
    assert parse_duration(f"2{unit}") == 2 * seconds
    assert parse_duration(f"2 {unit}") == 2 * seconds
    assert re.match(DURATION_PATTERN, f"2{unit}")


@pytest.mark.parametrize(("unit", "size"), sorted(BYTES_PER.items()))
def test_every_memory_unit_alias_is_exact(unit: str, size: int) -> None:
    """2**20 of a unit is exactly `size` MiB, so a factor off by one byte shows (rounding up to MiB would hide it)."""
    assert parse_memory(f"{2**20}{unit}") == size
    assert re.match(MEMORY_PATTERN, f"{2**20}{unit}")


def test_a_plain_number_is_mib() -> None:
    assert parse_memory(f"{2**20}") == 2**20 == parse_memory(2**20)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, f"invalid duration float 1.5: expected {_DURATION_FORMS}"),
        ("10x", f"invalid duration '10x': unknown unit 'x'; expected {_DURATION_FORMS}"),
        ("1H", f"invalid duration '1H': unknown unit 'H' (units are lowercase); expected {_DURATION_FORMS}"),
        (" 1h30 ", f"invalid duration ' 1h30 ': '30' has no unit; expected {_DURATION_FORMS}"),
        ("h", f"invalid duration 'h': expected {_DURATION_FORMS}"),
        ("\u0663", f"invalid duration '\u0663': expected {_DURATION_FORMS}"),  # an Arabic-Indic 3 is no number here
        (" 1m1h", "invalid duration ' 1m1h': units must go from largest to smallest, each at most once (e.g. '1h30m')"),
        ("0.5s", "invalid duration '0.5s': it is not a whole number of seconds"),
    ],
)
def test_a_bad_duration_is_one_plain_sentence(value: object, message: str) -> None:
    """The whole message: the value as written (not stripped), what is wrong, what is accepted."""
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(value)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, f"invalid memory size NoneType None: expected {_MEMORY_FORMS}"),
        (2.5, f"invalid memory size float 2.5: expected {_MEMORY_FORMS}"),
        ("2X", f"invalid memory size '2X': unknown unit 'X'; expected {_MEMORY_FORMS}"),
        ("2gi", f"invalid memory size '2gi': unknown unit 'gi' (units are case-sensitive); expected {_MEMORY_FORMS}"),
        (
            "2m",
            "invalid memory size '2m': unknown unit 'm' ('m' would mean milli; write 'M' for megabytes or 'Mi' for "
            f"mebibytes); expected {_MEMORY_FORMS}",
        ),
    ],
)
def test_a_bad_memory_size_is_one_plain_sentence(value: object, message: str) -> None:
    with pytest.raises(ValueError, match="invalid memory size") as info:
        parse_memory(value)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("size_bytes", "shown"),
    [
        (0, "0 KiB"),
        (1536, "2 KiB"),
        (1024**2 - 1024, "1023 KiB"),
        (1024**2, "1 MiB"),
        (1024**3 - 1024**2, "1023 MiB"),
        (1024**3, "1.0 GiB"),
        (3 * 1024**3 // 2, "1.5 GiB"),
        (100 * 1024**3, "100.0 GiB"),
    ],
)
def test_sizes_are_shown_in_the_unit_a_person_reads(size_bytes: int, shown: str) -> None:
    assert format_size(size_bytes) == shown


@pytest.mark.parametrize(
    ("at", "shown"),
    [
        (0, "1970-01-01 00:00:00 UTC"),
        (1_796_092_115.9, "2026-12-01 02:28:35 UTC"),  # fractions of a second are cut, not rounded
        (951_782_400, "2000-02-29 00:00:00 UTC"),
    ],
)
def test_moments_are_shown_in_utc_to_the_second(at: float, shown: str) -> None:
    assert format_time(at) == shown
