"""What a pass reads of the runs it has recorded is looked up for the models it asks about, in an index, and agrees
with reading every run: a state directory of a long-lived repository holds one run per version and more."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.reconcile.state import Failed, StateStore


def _run(store: StateStore, run_id: str, model: str, run_key: str, digest: str, phase: str, at: float) -> None:
    store.conn.execute(
        "INSERT INTO runs (id, model, run_key, spec_digest, commit_id, spec_path, backend, phase, attempt, run_dir, "
        "reason, created_at, updated_at) VALUES (?, ?, ?, ?, '', 'p', 'local', ?, 1, '/nowhere', ?, ?, ?)",
        (run_id, model, run_key, digest, phase, f"why {run_id}", at, at),
    )  # fmt: skip


def test_failed_attempts_are_read_in_the_index_of_failed_runs_whichever_way_is_shorter(tmp_path: Path) -> None:
    """Every pass and every settled check reads the failed attempts: never by a scan of every run ever recorded
    (a long-lived repository has one per version); all the failed ones when there are few, else a lookup of each
    model's wanted key (then failures of keys no longer wanted cost nothing)."""
    with StateStore(tmp_path / "state.db") as store:
        with store.conn:
            for i in range(3):
                _run(store, f"f{i}", "m", "k", "d", "Failed", float(i))
            _run(store, "f-old", "m", "old", "d", "Failed", 9.0)  # a key the model no longer wants
            for i in range(50):
                _run(store, f"r{i}", "m", f"k{i}", "d", "Registered", float(i))
        executed: list[str] = []
        store.conn.set_trace_callback(executed.append)
        few = store.failed({"m": "k", **{f"other{i}": "k" for i in range(15)}})  # 4 failed runs, 16 models asking
        many = store.failed({"m": "k"})  # 4 failed runs, 1 model asking
        store.failed()  # the models' rows ask (none here)
        store.conn.set_trace_callback(None)
        plans = [str(row[3]) for sql in executed for row in store.conn.execute("EXPLAIN QUERY PLAN " + sql)]
    assert few == many == {("m", "k", "d"): Failed(attempts=3, ended_at=2.0, reason="why f2")}
    runs = [p for p in plans if re.match(r"(SCAN|SEARCH) (r|x|runs)\b", p)]  # each read of the runs table
    assert runs and all("USING INDEX runs_failed" in p or "PRIMARY KEY" in p for p in runs), plans
    assert sum("runs_failed (model=? AND run_key=?)" in p for p in runs) == 2, plans


@settings(max_examples=50, deadline=None)
@given(
    runs=st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.sampled_from(["k1", "k2"]),
            st.sampled_from(["d1", "d2"]),
            st.sampled_from(["Failed", "Registered", "Cancelled"]),
        ),
        max_size=14,
    ),
    wanted=st.dictionaries(st.sampled_from("abcdefghijkl"), st.sampled_from(["k1", "k2"])),
)
def test_failed_attempts_agree_with_every_run(
    tmp_path_factory: pytest.TempPathFactory, runs: list[tuple[str, str, str, str]], wanted: dict[str, str]
) -> None:
    """Either way of reading them, the failed attempts of the wanted keys are what all the runs say."""
    expected: dict[tuple[str, str, str], Failed] = {}
    with StateStore(tmp_path_factory.mktemp("state") / "state.db") as store:
        with store.conn:
            for i, (model, run_key, digest, phase) in enumerate(runs):
                _run(store, f"r{i}", model, run_key, digest, phase, float(i))
                if phase == "Failed" and wanted.get(model) == run_key:
                    before = expected.get((model, run_key, digest))
                    expected[(model, run_key, digest)] = Failed((before.attempts if before else 0) + 1, float(i),
                                                               f"why r{i}")  # fmt: skip
        assert store.failed(wanted) == expected


@settings(max_examples=50, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(["Failed", "Registered", "Cancelled", "Running"])),
        max_size=14,
    ),
    models=st.sets(st.sampled_from("abcd")),
)
def test_the_last_finished_runs_of_some_models_are_those_of_every_run(
    tmp_path_factory: pytest.TempPathFactory, runs: list[tuple[str, str]], models: set[str]
) -> None:
    """A pass that recomputes a few models' conditions reads their last finished runs only: the same runs that
    reading every model's gives."""
    with StateStore(tmp_path_factory.mktemp("state") / "state.db") as store:
        with store.conn:
            for i, (model, phase) in enumerate(runs):
                _run(store, f"r{i}", model, "k", "d", phase, float(i))
        every = store.last_finished_runs()
        assert {m: r.id for m, r in store.last_finished_runs(models).items()} == {
            m: r.id for m, r in every.items() if m in models
        }
        assert {r.id for r in every.values()} == {
            max((f"r{i}" for i, (m, p) in enumerate(runs) if m == model and p != "Running"), key=lambda r: int(r[1:]))
            for model in {m for m, p in runs if p != "Running"}
        }
