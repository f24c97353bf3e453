"""The dashboard's data layer against hostile repositories and trainings: paths out of `runs/`, links, FIFOs,
huge or endless metrics, markup in names and messages, credentials in URLs.

The JSON it builds is data: markup stays a plain string (the page inserts text with textContent), every
credential is redacted, nothing outside the run directory `state.db` records is read, and memory and time stay bounded.
"""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from pathlib import Path

import pytest

from gitopsd.model import Phase
from gitopsd.reconcile.state import ModelRow, RunRecord, SourceRow, StateStore
from gitopsd.registry.store import ArtifactRef
from gitopsd.registry.versions import Registry
from gitopsd.ui import metricsfile
from gitopsd.ui.views import UiContext, clear_caches, model_page, overview, run_log, run_metrics, version_page

TOKEN = "tok-" + "9" * 20
SCRIPT = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def make_state(state_dir: Path, run_ids: list[str]) -> None:
    with StateStore(state_dir / "state.db") as store:
        store.set_source(SourceRow(url=f"https://user:{TOKEN}@forge.example/org/models.git", applied_commit="a" * 40,
                                   error=f"fetch failed: https://x:{TOKEN}@forge.example/ said no"))  # fmt: skip
        labels = json.dumps({"team": SCRIPT, "note": f"see https://h/?token={TOKEN}"})
        store.sync_models({"m": ModelRow(name="m", spec_path="models/m.yaml", run_key="k", spec_digest="d",
                                         backend="local", suspend=False, labels=labels)}, {})  # fmt: skip
        now = time.time()
        for run_id in run_ids:
            run_dir = state_dir / "runs" / run_id
            store.create_run(
                RunRecord(id=run_id, model="m", run_key="k", spec_digest="d", commit_id="a" * 40,
                          spec_path="models/m.yaml", backend="local", phase=Phase.RUNNING, attempt=1,
                          run_dir=str(run_dir), created_at=now, updated_at=now,
                          message=f"{SCRIPT} https://u:{TOKEN}@h/x"),
                message="created", snapshot={"outputs": {"metrics": "metrics.jsonl"}, "validate": ["acc >= 0.5"]},
            )  # fmt: skip
    registry = Registry(state_dir / "registry.db")
    lineage = {"repo": f"https://u:{TOKEN}@forge.example/r.git", "commit": "a" * 40, "run_id": run_ids[0],
               "commit_info": {"subject": SCRIPT}, "job": {"host": f"{SCRIPT}"}, "base": {"label": "m@1"}}  # fmt: skip
    registry.register(model="m", run_id=run_ids[0], run_key="k", artifact=ArtifactRef(sha256="b" * 64, size=1,
                      uri=f"s3://bucket/x?X-Amz-Signature={TOKEN}"), metrics={"acc": 1.0}, gates=[],
                      lineage=lineage, created_at=1.0)  # fmt: skip
    registry.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    make_state(directory, ["good", "linked", "outside"])
    good = directory / "runs" / "good"
    (good / "out").mkdir(parents=True)
    (good / "logs").mkdir()
    (good / "out" / "metrics.jsonl").write_text('{"step": 1, "acc": 0.5}\n')
    (good / "logs" / "output.log").write_text(f"cloning https://user:{TOKEN}@forge.example/x.git\n{SCRIPT}\n")
    clear_caches()
    return directory


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(f'{{"step": 1, "stolen": 1}}\n{TOKEN}\n')
    return path


def ctx_of(state_dir: Path) -> UiContext:
    return UiContext(sources={"r": state_dir})


def test_run_ids_that_climb_out_of_runs_are_unknown(state_dir: Path) -> None:
    ctx = ctx_of(state_dir)
    for bad in ("../state", "..", ".", "good/../good", "/etc", "good/out", "", "x\0y"):
        assert run_metrics(ctx, "r", bad) is None, bad
        assert run_log(ctx, "r", bad) is None, bad
    assert model_page(ctx, "r", "../m") is None
    assert model_page(ctx, "../r", "m") is None
    assert version_page(ctx, "r", "../m", 1) is None


def test_a_run_dir_that_is_a_link_or_recorded_elsewhere_is_not_read(
    state_dir: Path, secret_file: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside-run"
    (outside / "out").mkdir(parents=True)
    (outside / "logs").mkdir()
    os.symlink(secret_file, outside / "out" / "metrics.jsonl")
    (outside / "logs" / "output.log").write_text(TOKEN)
    os.symlink(outside, state_dir / "runs" / "linked")
    ctx = ctx_of(state_dir)
    assert run_metrics(ctx, "r", "linked") is None
    assert run_log(ctx, "r", "linked") is None
    # `outside` is a real directory in runs/, but state.db says the run lives elsewhere: not the same run.
    (state_dir / "runs" / "outside").mkdir()
    with StateStore(state_dir / "state.db") as store:
        store.conn.execute("UPDATE runs SET run_dir = ? WHERE id = 'outside'", (str(outside),))
    assert run_metrics(ctx, "r", "outside") is None


def test_a_run_on_a_shared_run_root_is_read_where_state_db_records_it(state_dir: Path, tmp_path: Path) -> None:
    """A Slurm backend keeps its runs under the operator's `runs_dir`: the dashboard follows the record there, but
    only to a real directory named after the run (a link in its place reads as absent)."""
    shared = tmp_path / "scratch" / "gitopsd-runs"
    real = shared / "outside"
    (real / "out").mkdir(parents=True)
    (real / "out" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n')
    with StateStore(state_dir / "state.db") as store:
        store.conn.execute("UPDATE runs SET run_dir = ? WHERE id = 'outside'", (str(real),))
    ctx = ctx_of(state_dir)
    doc = run_metrics(ctx, "r", "outside")
    assert doc is not None and doc["series"]["loss"] == [[1.0, 0.5], [2.0, 0.25]]
    moved = shared / "moved"
    real.rename(moved)
    os.symlink(moved, real)
    assert run_metrics(ctx, "r", "outside") is None, "a run directory replaced by a link is not followed"


def test_links_inside_a_run_dir_are_not_followed(state_dir: Path, secret_file: Path) -> None:
    good = state_dir / "runs" / "good"
    (good / "out" / "metrics.jsonl").unlink()
    os.symlink(secret_file, good / "out" / "metrics.jsonl")
    (good / "logs" / "output.log").unlink()
    os.symlink(secret_file, good / "logs" / "output.log")
    ctx = ctx_of(state_dir)
    metrics = run_metrics(ctx, "r", "good")
    log = run_log(ctx, "r", "good")
    assert metrics is not None and metrics["series"] == {}
    assert log is not None and log["text"] == ""
    assert TOKEN not in json.dumps([metrics, log])
    (good / "logs" / "output.log").unlink()
    os.rmdir(good / "logs")
    os.symlink(secret_file.parent, good / "logs")
    log = run_log(ctx, "r", "good")
    assert log is not None and log["text"] == ""


def test_a_fifo_as_metrics_file_does_not_hang(state_dir: Path) -> None:
    good = state_dir / "runs" / "good"
    (good / "out" / "metrics.jsonl").unlink()
    os.mkfifo(good / "out" / "metrics.jsonl")
    started = time.monotonic()
    doc = run_metrics(ctx_of(state_dir), "r", "good")
    assert doc is not None and doc["series"] == {}
    assert time.monotonic() - started < 30, "no writer ever opens the FIFO: a read would wait for ever"


def test_a_huge_line_is_dropped_as_it_streams_in_bounded_memory_and_calls(state_dir: Path) -> None:
    metrics = state_dir / "runs" / "good" / "out" / "metrics.jsonl"
    with metrics.open("ab") as handle:
        chunk = b'"' + b"x" * (1 << 20)
        handle.write(b'{"junk": ')
        for _ in range(40):  # a 40 MiB line, no newline for a long while
            handle.write(chunk)
        handle.write(b'"}\n{"step": 2, "acc": 0.75}\n')
    ctx = ctx_of(state_dir)
    tracemalloc.start()
    try:
        calls = 0
        while calls < 20:
            calls += 1
            doc = run_metrics(ctx, "r", "good")
            assert doc is not None
            if doc["offset"] == metrics.stat().st_size:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * 1024 * 1024, f"peak {peak} bytes: a line over the limit is never held whole"
    assert calls > metrics.stat().st_size // metricsfile.READ_BYTES, "one call reads at most READ_BYTES"
    assert doc is not None and doc["series"]["acc"] == [[1.0, 0.5], [2.0, 0.75]]


def test_many_lines_are_read_a_bounded_slice_per_call(state_dir: Path) -> None:
    metrics = state_dir / "runs" / "good" / "out" / "metrics.jsonl"
    with metrics.open("a") as handle:
        for step in range(2, 300_002):
            handle.write(f'{{"step": {step}, "acc": 0.5, "loss": 1.0}}\n')
    first = run_metrics(ctx_of(state_dir), "r", "good", points=100)
    assert first is not None and first["offset"] < metrics.stat().st_size, "not all of it in one call"
    assert first["offset"] <= metricsfile.READ_BYTES
    assert all(len(points) <= 100 for points in first["series"].values())


def test_too_many_metric_names_are_capped(state_dir: Path) -> None:
    metrics = state_dir / "runs" / "good" / "out" / "metrics.jsonl"
    metrics.write_text(json.dumps({f"m{i}": float(i) for i in range(2000)}) + "\n")
    doc = run_metrics(ctx_of(state_dir), "r", "good")
    assert doc is not None and len(doc["series"]) == metricsfile.MAX_SERIES


def test_markup_stays_plain_data_and_credentials_are_redacted(state_dir: Path) -> None:
    ctx = ctx_of(state_dir)
    docs = [overview(ctx), model_page(ctx, "r", "m"), run_log(ctx, "r", "good"), version_page(ctx, "r", "m", 1)]
    text = json.dumps(docs, allow_nan=False)
    assert TOKEN not in text
    row = docs[0]["models"][0]  # type: ignore[index]
    assert row["team"] == SCRIPT and row["labels"]["team"] == SCRIPT, "a string, for textContent"
    assert "token=***" in row["labels"]["note"]
    repo = docs[0]["repositories"][0]  # type: ignore[index]
    assert repo["url"] == "https://***@forge.example/org/models.git" and "***@forge.example" in repo["error"]
    log = docs[2]
    assert log is not None and "https://***@forge.example/x.git" in log["text"] and SCRIPT in log["text"]
    version = docs[3]
    assert version is not None and version["artifact"]["uri"].endswith("X-Amz-Signature=***")
    subjects = [n["detail"].get("subject") for n in version["graph"]["nodes"] if n["kind"] == "commit"]
    assert subjects == [SCRIPT]
