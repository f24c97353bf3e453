"""The dashboard's reading of run directories: curves from metrics files (offsets, growth, axes, garbage),
log tails, backend records, and which state directories `gitopsd ui --state-dir` finds."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import pytest

from gitopsd.reconcile.metrics import MetricsReader
from gitopsd.ui import metricsfile, runfiles
from gitopsd.ui.metricsfile import CurveCache, window
from gitopsd.ui.sources import discover, repository_name


def run_dir(tmp_path: Path, run_id: str = "blobs-1") -> Path:
    path = tmp_path / "state" / "runs" / run_id
    (path / "out").mkdir(parents=True)
    return path


def append(path: Path, *lines: str | Mapping[str, object]) -> None:
    with path.open("a") as handle:
        for line in lines:
            handle.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def test_step_axis_growth_and_since_offsets(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    metrics = run / "out" / "metrics.jsonl"
    append(metrics, *({"step": 10 * i, "loss": 1 / (i + 1), "accuracy": i / 10} for i in range(5)))
    cache = CurveCache()
    curves = cache.curves(run, "out/metrics.jsonl", final=False)
    assert curves is not None
    first = window(curves, 0)
    assert first.axis == "step"
    assert first.series["loss"] == [(10.0 * i, 1 / (i + 1)) for i in range(5)]
    assert set(first.series) == {"loss", "accuracy"}, "the axis is not a curve"
    assert first.points == 5 and first.offset == metrics.stat().st_size

    append(metrics, {"step": 50, "loss": 0.1}, {"gpu_util": 87.0, "gpu_mem_mb": 1234.0})
    metrics.write_bytes(metrics.read_bytes() + b'{"step": 60, "loss": 0.0}')  # no newline yet
    curves = cache.curves(run, "out/metrics.jsonl", final=False)
    assert curves is not None
    grown = window(curves, first.offset)
    assert grown.series["loss"] == [(50.0, 0.1)]
    assert grown.series["gpu_util"] == [(50.0, 87.0)], "a GPU sample is drawn at the last step seen"
    assert grown.series["accuracy"] == []
    assert grown.points == 2
    assert grown.offset < metrics.stat().st_size, "the half-written line is left for the next read"

    ended = cache.curves(run, "out/metrics.jsonl", final=True)
    assert ended is not None
    assert window(ended, grown.offset).series["loss"] == [(60.0, 0.0)], "a run that ended: its last line counts"


def test_epoch_then_index_axes(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    append(run / "out" / "metrics.jsonl", {"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0})
    append(run / "out" / "other.jsonl", {"loss": 2.0}, "not json", {"loss": 1.5}, "[1, 2]", {"loss": 1.0})
    cache = CurveCache()
    by_epoch = cache.curves(run, "out/metrics.jsonl", final=True)
    by_index = cache.curves(run, "out/other.jsonl", final=True)
    assert by_epoch is not None and by_index is not None
    assert window(by_epoch, 0).axis == "epoch"
    assert window(by_epoch, 0).series == {"loss": [(1.0, 2.0), (2.0, 1.0)]}
    indexed = window(by_index, 0)
    assert indexed.axis == "index"
    assert indexed.series == {"loss": [(0.0, 2.0), (1.0, 1.5), (2.0, 1.0)]}, "garbage lines are no points"


def test_points_are_counted_as_the_reconciler_counts_them(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    lines: list[str | Mapping[str, object]] = [{"step": 1, "loss": 1.0}, "garbage", {"note": "text"}, {"step": 2}]
    lines += [{"step": 3, "loss": float("nan")}, {"step": 4, "loss": 0.5}]
    append(run / "out" / "metrics.jsonl", *lines)
    reader = MetricsReader(run_dir=run, name="metrics.jsonl")
    expected = list(reader.read(final=True))
    curves = CurveCache().curves(run, "out/metrics.jsonl", final=True)
    assert curves is not None
    assert curves.points == len(expected) == 4
    assert [curves.x_of(i, "step") for i in range(4)] == [1.0, 2.0, 3.0, 4.0]
    assert window(curves, 0).series["loss"] == [(1.0, 1.0), (4.0, 0.5)], "NaN is not drawn"


def test_unchanged_file_is_not_read_again_and_a_replaced_one_is(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    metrics = run / "out" / "metrics.jsonl"
    append(metrics, *({"step": i, "loss": float(i)} for i in range(1000)))
    cache = CurveCache()
    first = cache.curves(run, "out/metrics.jsonl", final=True)
    again = cache.curves(run, "out/metrics.jsonl", final=True)
    assert first is again and first is not None and first.points == 1000

    replacement = run / "out" / "new.jsonl"
    append(replacement, {"step": 1, "loss": 9.0})
    os.replace(replacement, metrics)
    fresh = cache.curves(run, "out/metrics.jsonl", final=True)
    assert fresh is not None and fresh.points == 1
    assert window(fresh, 0).series == {"loss": [(1.0, 9.0)]}


def test_a_large_file_is_read_over_several_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_dir(tmp_path)
    metrics = run / "out" / "metrics.jsonl"
    append(metrics, *({"step": i, "loss": 1.0 / (i + 1)} for i in range(3000)))
    monkeypatch.setattr(metricsfile, "READ_BYTES", 20_000)
    cache = CurveCache()
    seen = []
    for _ in range(100):
        curves = cache.curves(run, "out/metrics.jsonl", final=True)
        assert curves is not None
        seen.append(curves.points)
        if curves.offset == metrics.stat().st_size:
            break
    assert seen[0] < 3000 and seen[-1] == 3000 and seen == sorted(seen)


def test_missing_file_or_directory_is_absent(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    assert CurveCache().curves(run, "out/metrics.jsonl", final=True) is None
    (run / "out" / "metrics.jsonl").mkdir()
    assert CurveCache().curves(run, "out/metrics.jsonl", final=True) is None


def test_the_cache_forgets_the_least_recently_used_files(tmp_path: Path) -> None:
    cache = CurveCache(max_values=250)
    runs = [run_dir(tmp_path, f"r{i}") for i in range(3)]
    for run in runs:
        append(run / "out" / "metrics.jsonl", *({"step": i, "loss": 1.0} for i in range(100)))
        assert cache.curves(run, "out/metrics.jsonl", final=True) is not None
    assert len(cache._files) == 2


def test_log_tail_is_the_newest_log_cut_at_a_line(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    assert runfiles.tail(run, 100) is None
    (run / "logs").mkdir()
    (run / "logs" / "slurm-1.out").write_text("old segment\n")
    os.utime(run / "logs" / "slurm-1.out", (1, 1))
    (run / "logs" / "slurm-2.out").write_text("".join(f"line {i}\n" for i in range(100)))
    tail = runfiles.tail(run, 30)
    assert tail is not None and tail.truncated and tail.name == "slurm-2.out"
    assert tail.data.endswith(b"line 99\n") and tail.data.startswith(b"line ")
    whole = runfiles.tail(run, 1 << 20)
    assert whole is not None and not whole.truncated and whole.data.startswith(b"line 0\n")


def test_records_are_read_bounded(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    (run / "slurm").mkdir()
    (run / "slurm" / "started.json").write_text(json.dumps({"nodes": "gpu[1-2]"}))
    (run / "slurm" / "big.json").write_text(json.dumps({"x": "a" * (runfiles.RECORD_LIMIT + 1)}))
    (run / "slurm" / "list.json").write_text("[1]")
    assert runfiles.read_record(run, "slurm/started.json") == {"nodes": "gpu[1-2]"}
    assert runfiles.read_record(run, "slurm/big.json") is None
    assert runfiles.read_record(run, "slurm/list.json") is None
    assert runfiles.read_record(run, "slurm/none.json") is None


def test_run_dir_must_be_the_state_dirs_own(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    state = tmp_path / "state"
    assert runfiles.run_dir_of(state, "blobs-1", str(run)) == run
    assert runfiles.run_dir_of(state, "blobs-1", str(tmp_path / "elsewhere")) is None
    for bad in ("", ".", "..", "../state", "a/b", "nope"):
        assert runfiles.run_dir_of(state, bad) is None


def make_state(directory: Path, url: str | None) -> None:
    directory.mkdir(parents=True)
    conn = sqlite3.connect(directory / "state.db")
    conn.execute("CREATE TABLE sources (id INTEGER PRIMARY KEY, url TEXT)")
    if url is not None:
        conn.execute("INSERT INTO sources VALUES (1, ?)", (url,))
    conn.commit()
    conn.close()


def test_discover_one_repository_or_its_children(tmp_path: Path) -> None:
    make_state(tmp_path / "one", "https://user:secret@example.org/org/models.git")
    assert discover(tmp_path / "one") == {"models": tmp_path / "one"}
    make_state(tmp_path / "many" / "b", "x")
    make_state(tmp_path / "many" / "a", None)
    (tmp_path / "many" / "not-state").mkdir()
    assert discover(tmp_path / "many") == {"a": tmp_path / "many" / "a", "b": tmp_path / "many" / "b"}
    assert discover(tmp_path / "missing") == {}
    make_state(tmp_path / "nourl", None)
    assert discover(tmp_path / "nourl") == {"default": tmp_path / "nourl"}


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://example.org/org/models.git", "models"),
        ("/srv/git/repo/", "repo"),
        ("git@host:org/ml-models.git", "ml-models"),
        ("https://host/a/b?token=x#frag", "b"),
        ("https://host/<script>.git", "script"),
        ("", "default"),
        (None, "default"),
        ("https://host/..", "default"),
    ],
)
def test_repository_name(url: str | None, name: str) -> None:
    assert repository_name(url) == name


def test_nan_values_never_reach_a_series(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    append(run / "out" / "metrics.jsonl", '{"step": 1, "loss": NaN}', '{"step": 2, "loss": Infinity}')
    curves = CurveCache().curves(run, "out/metrics.jsonl", final=True)
    assert curves is not None and curves.points == 2
    assert all(math.isfinite(y) for s in window(curves, 0).series.values() for _, y in s)
