"""A training appends JSON lines to its metrics file while gitopsd reads it: what the reader must get right.

Each pass reads only what was appended since the last one, a line still being written waits for the next pass,
NaN and Infinity (as Python's json writes them) reach the divergence rules, and anything that is not a number
is ignored rather than failing the pass.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitopsd.reconcile.metrics import MetricsReader, parse_line, read_all


def _append(path: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    with path.open("ab") as handle:
        handle.write(data)


def test_each_read_parses_only_what_was_appended_since_the_last(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _append(path, '{"epoch": 1, "loss": 2.5}\n{"epoch": 2, "loss": 1.5}\n')
    reader = MetricsReader(path=path)
    assert reader.read() == [{"epoch": 1.0, "loss": 2.5}, {"epoch": 2.0, "loss": 1.5}]
    assert reader.offset == path.stat().st_size
    assert reader.read() == [{"epoch": 1.0, "loss": 2.5}, {"epoch": 2.0, "loss": 1.5}]
    _append(path, '{"epoch": 3, "loss": 0.5}\n')
    assert reader.read()[-1] == {"epoch": 3.0, "loss": 0.5}
    assert len(reader.history) == 3
    assert reader.offset == path.stat().st_size


def test_a_half_written_line_is_left_for_the_next_read(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _append(path, '{"loss": 1.0}\n{"loss": 0.')
    reader = MetricsReader(path=path)
    assert reader.read() == [{"loss": 1.0}]
    assert reader.offset == len(b'{"loss": 1.0}\n')
    _append(path, "5}\n")
    assert reader.read() == [{"loss": 1.0}, {"loss": 0.5}]


def test_a_line_written_by_a_real_process_in_two_flushes_is_read_once_complete(tmp_path: Path) -> None:
    """A child process writes like a training loop does (json.dumps + flush), pausing in the middle of a line."""
    path = tmp_path / "metrics.jsonl"
    script = (
        "import json, sys\n"
        "with open(sys.argv[1], 'a') as f:\n"
        "    f.write(json.dumps({'step': 1, 'loss': float('nan')}) + '\\n'); f.flush()\n"
        "    f.write(json.dumps({'step': 2, 'loss': float('inf')})[:9]); f.flush()\n"
        "    print('half', flush=True); sys.stdin.readline()\n"
        "    f.write(json.dumps({'step': 2, 'loss': float('inf')})[9:] + '\\n')\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        assert child.stdout.readline() == "half\n"
        reader = MetricsReader(path=path)
        [first] = reader.read()
        assert first["step"] == 1.0
        assert math.isnan(first["loss"])
        child.stdin.write("go\n")
        child.stdin.close()
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
    assert reader.read()[1] == {"step": 2.0, "loss": math.inf}


def test_nan_and_infinity_count_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _append(path, '{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400}\n')
    [point] = read_all(path)
    assert math.isnan(point["a"])
    assert (point["b"], point["c"], point["d"]) == (math.inf, -math.inf, math.inf)


def test_only_numeric_fields_are_kept_and_ints_become_floats() -> None:
    line = json.dumps(
        {"loss": 0.5, "step": 7, "done": True, "flag": False, "phase": "train", "lr": None, "cfg": {"a": 1},
         "hist": [1, 2]}
    ).encode()  # fmt: skip
    point = parse_line(line)
    assert point == {"loss": 0.5, "step": 7.0}
    assert all(type(v) is float for v in point.values())


@pytest.mark.parametrize(
    "line",
    [b"", b"   ", b"not json", b"[1, 2, 3]", b"42", b'"loss"', b"null", b'{"loss": 1.0', b"\xff\xfe{}", b'{"x": "y"}'],
)
def test_lines_that_are_not_objects_with_numbers_are_skipped(line: bytes) -> None:
    assert parse_line(line) == {}


def test_a_file_with_junk_lines_keeps_the_good_ones_in_order(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _append(path, b'Epoch 1/3 starting\n{"loss": 3.0}\r\n\n\xff\xfe\n{"status": "ok"}\n[1]\n{"loss": 2.0}\n')
    assert read_all(path) == [{"loss": 3.0}, {"loss": 2.0}]


def test_a_missing_file_is_an_empty_history_until_the_job_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "out" / "metrics.jsonl"
    reader = MetricsReader(path=path)
    assert reader.read() == []
    assert read_all(path) == []
    path.parent.mkdir()
    _append(path, '{"loss": 1.0}\n')
    assert reader.read() == [{"loss": 1.0}]


POINTS = st.lists(
    st.dictionaries(
        st.sampled_from(["loss", "acc", "step", "lr"]),
        st.floats(allow_nan=False) | st.integers(-(10**6), 10**6) | st.booleans() | st.text(max_size=3),
        min_size=1,
    ),
    max_size=12,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=POINTS, cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_however_the_writes_are_split_the_reader_sees_the_same_points(
    tmp_path: Path, points: list[dict[str, object]], cuts: list[int]
) -> None:
    data = "".join(json.dumps(p) + "\n" for p in points).encode()
    path = tmp_path / "metrics.jsonl"
    path.unlink(missing_ok=True)
    reader = MetricsReader(path=path)
    previous = 0
    for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
        _append(path, data[previous:cut])
        previous = cut
        reader.read()
    assert reader.history == read_all(path)
    assert reader.history == [parse_line(json.dumps(p).encode()) for p in points if parse_line(json.dumps(p).encode())]
    assert reader.offset == len(data)


def test_once_the_job_has_ended_a_last_line_without_newline_counts(tmp_path: Path) -> None:
    """A training may print its final metrics without a newline; the gates must still see them."""
    path = tmp_path / "metrics.jsonl"
    _append(path, '{"loss": 0.5}\n{"accuracy": 0.93}')
    reader = MetricsReader(path=path)
    assert reader.read() == [{"loss": 0.5}]
    assert reader.read(final=True) == [{"loss": 0.5}, {"accuracy": 0.93}]
    assert read_all(path) == [{"loss": 0.5}, {"accuracy": 0.93}]


def test_an_integer_too_large_for_a_float_is_ignored_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _append(path, '{"step": 1, "big": 1' + "0" * 400 + "}\n")
    assert read_all(path) == [{"step": 1.0}]
