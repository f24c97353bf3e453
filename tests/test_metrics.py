"""A training appends JSON lines to its metrics file while gitopsd reads it: what the reader must get right.

Each pass reads only what was appended since the last one, a line still being written waits for the next pass,
NaN and Infinity (as Python's json writes them) reach the divergence rules, and anything that is not a number
is ignored rather than failing the pass. The file is hostile input too: over-long and over-deep lines are
skipped without being held whole, a link or a FIFO or an oversized file is refused with its name.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitopsd.reconcile.metrics import MAX_DEPTH, MAX_NAMES, MetricsReader, latest_metrics, parse_line, too_deep
from gitopsd.reconcile.outputs import OutputLimits
from gitopsd.registry.beneath import OutputRefused

NAME = "metrics.jsonl"


def _append(path: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(data)


def _metrics_path(run_dir: Path) -> Path:
    return run_dir / "out" / NAME


def _reader(run_dir: Path, **limits: int) -> MetricsReader:
    return MetricsReader(run_dir=run_dir, name=NAME, limits=OutputLimits(**limits))


def read_all(run_dir: Path) -> list[dict[str, float]]:
    """Every point of a finished job's metrics file."""
    return list(_reader(run_dir).read(final=True))


def _history(reader: MetricsReader, history: list[dict[str, float]], *, final: bool = False) -> list[dict[str, float]]:
    history.extend(reader.read(final=final))
    return history


def test_each_read_parses_only_what_was_appended_since_the_last(tmp_path: Path) -> None:
    path = _metrics_path(tmp_path)
    _append(path, '{"epoch": 1, "loss": 2.5}\n{"epoch": 2, "loss": 1.5}\n')
    reader = _reader(tmp_path)
    assert list(reader.read()) == [{"epoch": 1.0, "loss": 2.5}, {"epoch": 2.0, "loss": 1.5}]
    assert reader.offset == path.stat().st_size
    assert list(reader.read()) == []
    _append(path, '{"epoch": 3, "loss": 0.5}\n')
    assert list(reader.read()) == [{"epoch": 3.0, "loss": 0.5}]
    assert reader.lines == 3
    assert reader.offset == path.stat().st_size


def test_a_half_written_line_is_left_for_the_next_read(tmp_path: Path) -> None:
    path = _metrics_path(tmp_path)
    _append(path, '{"loss": 1.0}\n{"loss": 0.')
    reader = _reader(tmp_path)
    assert list(reader.read()) == [{"loss": 1.0}]
    assert reader.offset == len(b'{"loss": 1.0}\n')
    _append(path, "5}\n")
    assert list(reader.read()) == [{"loss": 0.5}]


def test_a_line_written_by_a_real_process_in_two_flushes_is_read_once_complete(tmp_path: Path) -> None:
    """A child process writes like a training loop does (json.dumps + flush), pausing in the middle of a line."""
    path = _metrics_path(tmp_path)
    path.parent.mkdir()
    script = (
        "import json, sys\n"
        "with open(sys.argv[1], 'a') as f:\n"
        "    f.write(json.dumps({'step': 1, 'loss': float('nan')}) + '\\n'); f.flush()\n"
        "    f.write(json.dumps({'step': 2, 'loss': float('inf')})[:9]); f.flush()\n"
        "    print('half', flush=True); sys.stdin.readline()\n"
        "    f.write(json.dumps({'step': 2, 'loss': float('inf')})[9:] + '\\n')\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        try:
            assert child.stdout.readline() == "half\n"
            reader = _reader(tmp_path)
            [first] = reader.read()
            assert first["step"] == 1.0
            assert math.isnan(first["loss"])
            child.stdin.write("go\n")
            child.stdin.close()
            assert child.wait(timeout=30) == 0
        finally:
            child.kill()
    assert list(reader.read()) == [{"step": 2.0, "loss": math.inf}]


def test_nan_and_infinity_count_as_numbers(tmp_path: Path) -> None:
    _append(_metrics_path(tmp_path), '{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400}\n')
    [point] = read_all(tmp_path)
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


def test_a_metric_name_with_a_control_character_or_too_long_is_ignored() -> None:
    """A training names its metrics; an escape sequence in a name would reach an operator's terminal through
    `registry list`, so such a name is skipped like a non-numeric field."""
    names = ["loss", "\x1b]0;owned\x07acc", "bidi\u202eevil", "new\nline", "x" * 257, "y" * 256, "épsilon"]
    point = parse_line(json.dumps(dict.fromkeys(names, 1.0)).encode())
    assert point == {"loss": 1.0, "y" * 256: 1.0, "épsilon": 1.0}


@pytest.mark.parametrize(
    "line",
    [b"", b"   ", b"not json", b"[1, 2, 3]", b"42", b'"loss"', b"null", b'{"loss": 1.0', b"\xff\xfe{}", b'{"x": "y"}'],
)
def test_lines_that_are_not_objects_with_numbers_are_skipped(line: bytes) -> None:
    assert parse_line(line) == {}


def test_a_file_with_junk_lines_keeps_the_good_ones_in_order(tmp_path: Path) -> None:
    _append(
        _metrics_path(tmp_path),
        b'Epoch 1/3 starting\n{"loss": 3.0}\r\n\n\xff\xfe\n{"status": "ok"}\n[1]\n{"loss": 2.0}\n',
    )
    assert read_all(tmp_path) == [{"loss": 3.0}, {"loss": 2.0}]


def test_a_missing_file_is_an_empty_history_until_the_job_creates_it(tmp_path: Path) -> None:
    reader = _reader(tmp_path)
    assert list(reader.read()) == []
    (tmp_path / "out").mkdir()
    assert read_all(tmp_path) == []
    _append(_metrics_path(tmp_path), '{"loss": 1.0}\n')
    assert list(reader.read()) == [{"loss": 1.0}]


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
    path = _metrics_path(tmp_path)
    path.unlink(missing_ok=True)
    reader = _reader(tmp_path)
    history: list[dict[str, float]] = []
    previous = 0
    for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
        _append(path, data[previous:cut])
        previous = cut
        _history(reader, history)
    assert history == read_all(tmp_path)
    assert history == [parse_line(json.dumps(p).encode()) for p in points if parse_line(json.dumps(p).encode())]
    assert reader.offset == len(data)


def test_once_the_job_has_ended_a_last_line_without_newline_counts(tmp_path: Path) -> None:
    """A training may print its final metrics without a newline; the gates must still see them."""
    _append(_metrics_path(tmp_path), '{"loss": 0.5}\n{"accuracy": 0.93}')
    reader = _reader(tmp_path)
    assert list(reader.read()) == [{"loss": 0.5}]
    assert list(reader.read(final=True)) == [{"accuracy": 0.93}]
    assert read_all(tmp_path) == [{"loss": 0.5}, {"accuracy": 0.93}]


def test_an_integer_too_large_for_a_float_is_ignored_not_fatal(tmp_path: Path) -> None:
    _append(_metrics_path(tmp_path), '{"step": 1, "big": 1' + "0" * 400 + "}\n")
    assert read_all(tmp_path) == [{"step": 1.0}]


# -- the metrics file as hostile input ----------------------------------------------------------------------


def test_a_line_over_the_length_limit_is_skipped_and_the_next_one_read(tmp_path: Path) -> None:
    long = json.dumps({"loss": 9.0, "pad": "x" * 200})
    _append(_metrics_path(tmp_path), f'{{"loss": 1.0}}\n{long}\n{{"loss": 0.5}}\n')
    reader = _reader(tmp_path, metrics_line_bytes=100)
    assert list(reader.read(final=True)) == [{"loss": 1.0}, {"loss": 0.5}]
    assert (reader.lines, reader.skipped) == (3, 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, 700), max_size=8), final_newline=st.booleans())
def test_however_a_long_line_arrives_it_is_dropped_and_the_lines_around_it_kept(
    tmp_path: Path, cuts: list[int], final_newline: bool
) -> None:
    """A line still being written that is already too long is dropped as it streams, across any split."""
    data = ('{"a": 1}\n' + "y" * 500 + '\n{"b": 2}\n' + "z" * 150 + ("\n" if final_newline else "")).encode()
    path = _metrics_path(tmp_path)
    path.unlink(missing_ok=True)
    reader = _reader(tmp_path, metrics_line_bytes=64)
    history: list[dict[str, float]] = []
    previous = 0
    for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
        _append(path, data[previous:cut])
        previous = cut
        _history(reader, history)
    _history(reader, history, final=True)
    assert history == [{"a": 1.0}, {"b": 2.0}]
    assert reader.skipped == 2
    assert reader.offset == len(data)


def test_an_endless_line_is_never_held_whole(tmp_path: Path) -> None:
    """8 MiB without a newline, read with a 1 KiB line limit: the reader keeps its place, not the bytes."""
    path = _metrics_path(tmp_path)
    _append(path, b"[" * (8 << 20))
    reader = _reader(tmp_path, metrics_line_bytes=1024)
    assert list(reader.read()) == []
    assert reader.offset == path.stat().st_size  # dropped, not left for the next read to pick up again
    _append(path, b'\n{"loss": 0.25}\n')
    assert list(reader.read()) == [{"loss": 0.25}]
    assert reader.skipped == 1


def test_a_line_nested_100000_deep_is_skipped_without_recursing(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    _append(_metrics_path(tmp_path), f'{{"loss": 1.0}}\n{{"x": {deep}}}\n{{"loss": 0.5}}\n')
    reader = _reader(tmp_path, metrics_line_bytes=1 << 20)
    assert list(reader.read()) == [{"loss": 1.0}, {"loss": 0.5}]
    assert reader.skipped == 1
    assert parse_line(f'{{"x": {deep}}}'.encode()) == {}


@pytest.mark.parametrize(
    ("line", "deep"),
    [
        (b'{"a": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b', "loss": 1}', True),
        (b'{"a": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b', "loss": 1}', False),
        (b'{"a": "' + b"[" * 1000 + b'", "loss": 1}', False),
        (b'{"a": "\\"' + b"{" * 1000 + b'", "loss": 1}', False),
        (b"[]" * 1000, False),
    ],
)
def test_depth_counts_brackets_outside_strings(line: bytes, deep: bool) -> None:
    assert too_deep(line) is deep
    if not deep and line.startswith(b"{"):
        assert parse_line(line) == {"loss": 1.0}


def test_a_metrics_file_over_its_size_limit_is_refused_by_name(tmp_path: Path) -> None:
    path = _metrics_path(tmp_path)
    path.parent.mkdir()
    with path.open("wb") as handle:
        handle.truncate(2 << 30)  # 2 GiB, sparse: costs no disk
    reader = _reader(tmp_path)
    with pytest.raises(OutputRefused) as refused:
        list(reader.read())
    message = str(refused.value)
    assert "$GITOPSD_OUTPUT_DIR/metrics.jsonl is 2.0 GiB (2147483648 bytes)" in message
    assert "limit of 64 MiB (67108864 bytes)" in message
    assert "output_limits.metrics_bytes" in message


@pytest.mark.parametrize("kind", ["symlink-to-file", "symlink-to-dev-zero", "fifo", "directory", "linked-out-dir"])
def test_a_metrics_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text('{"leaked": 1}\n')
    run_dir = tmp_path / "run"
    path = _metrics_path(run_dir)
    path.parent.mkdir(parents=True)
    if kind == "symlink-to-file":
        path.symlink_to(outside)
    elif kind == "symlink-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        (run_dir / "out").rmdir()
        (run_dir / "real").mkdir()
        (run_dir / "real" / NAME).write_text('{"leaked": 1}\n')
        (run_dir / "out").symlink_to(run_dir / "real")
    with pytest.raises(OutputRefused, match=r"\$GITOPSD_OUTPUT_DIR") as refused:
        list(_reader(run_dir).read(final=True))
    expected = {
        "symlink-to-file": "metrics.jsonl is a symbolic link",
        "symlink-to-dev-zero": "metrics.jsonl is a symbolic link (to '/dev/zero')",
        "fifo": "metrics.jsonl is a FIFO (named pipe)",
        "directory": "metrics.jsonl is a directory",
        "linked-out-dir": "$GITOPSD_OUTPUT_DIR is a symbolic link",
    }[kind]
    assert expected in str(refused.value)


def test_only_so_many_metric_names_are_kept(tmp_path: Path) -> None:
    lines = "".join(json.dumps({f"m{i}": i}) + "\n" for i in range(MAX_NAMES + 50))
    _append(_metrics_path(tmp_path), lines + '{"m0": -1}\n')
    latest = latest_metrics(_reader(tmp_path), final=True)
    assert len(latest) == MAX_NAMES
    assert latest["m0"] == -1.0
    assert f"m{MAX_NAMES}" not in latest


def test_limits_must_be_positive_whole_numbers() -> None:
    with pytest.raises(ValueError, match=r"output_limits.metrics_bytes must be a whole number >= 1, got 0"):
        OutputLimits(metrics_bytes=0)
