"""Streamed listings say what the old, all-in-memory ones said: `registry list [--json]` and `history [--json]`.

The oracle is the old way, rebuilt here from the registry's non-streaming API (`Registry.list`, which decodes
every row, and `AliasBook.history`): the JSON a listing writes must parse to the old document, the indented JSON
a terminal gets must be the old bytes, and the text must be the old lines. Registries are real SQLite files,
written through `Registry.register`, plus rows inserted by hand that only an edit of `registry.db` could make.
"""

from __future__ import annotations

import io
import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.cli.jsonstream import write_array, write_lines
from gitopsd.registry.aliases import AliasBook, AliasMove
from gitopsd.registry.listing import history, summaries, version_doc, version_texts
from gitopsd.registry.store import ArtifactRef
from gitopsd.registry.versions import Registry
from gitopsd.source.redact import redact_url
from tests.conftest import gitopsd, on_a_terminal

COLUMNS = (
    "model, number, run_id, run_key, artifact_sha256, artifact_size, artifact_uri, metrics, gates, lineage, created_at"
)
SECRET = "hunter2-token"


def _lineage(i: int, **over: Any) -> dict[str, Any]:
    lineage: dict[str, Any] = {
        "repo": "https://forge.example/ml/models.git",
        "commit": f"{i:040x}",
        "commit_info": {"author": "Dev <dev@example.org>", "subject": f"Tune it, take {i}", "time": 1_700_000_000},
        "spec_path": "models/iris.yaml",
        "data": [{"sha256": f"{i:064x}", "uri": "s3://data/train.parquet"}],
        "base": None,
        "job": {"host": "gpu-1", "exit_code": 0},
    }
    lineage.update(over)
    return lineage


def _register(reg: Registry, model: str, i: int, **over: Any) -> None:
    digest = f"{i:064x}"
    fields: dict[str, Any] = {
        "run_key": f"key-{i % 3}",
        "artifact": ArtifactRef(sha256=digest, size=100 + i, uri=f"file:///store/sha256/{digest[:2]}/{digest[2:]}"),
        "metrics": {"accuracy": 0.9 + i / 1000, "loss": 1 / (i + 1)},
        "gates": [{"gate": "accuracy >= 0.9", "passed": True, "value": 0.9 + i / 1000}],
        "lineage": _lineage(i),
        "created_at": 1_700_000_000.25 + i * 7.1,
    }
    fields.update(over)
    reg.register(model=model, run_id=f"{model}-run-{i}", **fields)


def _insert(db: Path, name: str, number: int, **over: Any) -> None:
    """A row written around `Registry.register`, as only a hand edit of registry.db could."""
    row: dict[str, Any] = {
        "model": name, "number": number, "run_id": f"{name}-edited-{number}", "run_key": "edited",
        "artifact_sha256": "e" * 64, "artifact_size": 1, "artifact_uri": "file:///e", "metrics": '{"a": 1.0}',
        "gates": "[]", "lineage": json.dumps(_lineage(number)), "created_at": 1_700_000_500.5,
    }  # fmt: skip
    row.update(over)
    with sqlite3.connect(db) as conn:
        conn.execute(f"INSERT INTO versions ({COLUMNS}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    conn.close()


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A registry of three models, unicode, a URL with a credential from before redaction, a fine-tune."""
    db = tmp_path / "registry.db"
    with Registry(db) as reg:
        for i in range(1, 8):
            _register(reg, "iris", i)
        _register(reg, "mnist", 20, metrics={"accuracy": 0.99, "ünï": 1e-300})
        _register(reg, "mnist", 21, lineage=_lineage(21, repo=f"https://bot:{SECRET}@forge.example/ml/models.git"))
        _register(reg, "mnist", 22, lineage=_lineage(22, commit_info={"subject": 'Quote " and \\ and \u00e9 \u2603'}))
        _register(reg, "mnist", 23, lineage=_lineage(23, repo=f"https://forge.example/m.git?token={SECRET}"))
        _register(reg, "mnist", 24, lineage=_lineage(24, repo="git@forge.example:ml/models.git"))
        _register(reg, "tuned", 30, lineage=_lineage(30, base={"label": "iris@7", "ref": "production"}))
        _register(reg, "tuned", 31, lineage={"commit": "c" * 40})  # no repo at all
        _register(reg, "tuned", 32, lineage={"repo": None, "commit": "d" * 40})
        _register(reg, "tuned", 33, lineage={"repo": 7})
        _register(reg, "tuned", 34, created_at=1e18, metrics={})
    return db


def _old_json(db: Path, model: str | None) -> str:
    """What `registry list --json` printed before listings streamed."""
    with Registry(db, readonly=True) as reg:
        return json.dumps([version_doc(v) for v in reg.list(model)], indent=2) + "\n"


def _streamed(db: Path, model: str | None, indent: int | None) -> str:
    out = io.StringIO()
    with Registry(db, readonly=True) as reg:
        write_array(version_texts(reg, model, indent=indent), out, indent=indent)
    return out.getvalue()


def _canonical(text: str) -> str:
    """The document a JSON parser reads from `text`, written one way (NaN included, which equals nothing)."""
    return json.dumps(json.loads(text), sort_keys=True)


@pytest.mark.parametrize("model", [None, "iris", "mnist", "tuned", "nothing", ""])
def test_json_listing_parses_to_the_old_one(registry: Path, model: str | None) -> None:
    streamed = _streamed(registry, model, None)
    assert json.loads(streamed) == json.loads(_old_json(registry, model))
    rows = streamed.splitlines()
    assert len(json.loads(streamed)) == max(0, len(rows) - 2), "one element per line between [ and ]"


@pytest.mark.parametrize("model", [None, "mnist", "nothing"])
def test_json_on_a_terminal_is_the_old_bytes(registry: Path, model: str | None) -> None:
    assert _streamed(registry, model, 2) == _old_json(registry, model)


def test_a_credential_never_leaves_and_the_rest_is_written_as_stored(registry: Path) -> None:
    streamed = _streamed(registry, None, None)
    assert SECRET not in streamed
    docs = {d["label"]: d for d in json.loads(streamed)}
    assert docs["mnist@2"]["lineage"]["repo"] == redact_url(f"https://bot:{SECRET}@forge.example/ml/models.git")
    assert docs["mnist@5"]["lineage"]["repo"] == "git@forge.example:ml/models.git"
    assert docs["tuned@4"]["lineage"]["repo"] == 7
    with sqlite3.connect(registry) as conn:
        (stored,) = conn.execute("SELECT lineage FROM versions WHERE model = 'iris' AND number = 1").fetchone()
    conn.close()
    assert f'"lineage": {stored}, ' in streamed.splitlines()[1], "a clean row is written as it is stored"


HAND_EDITS: list[dict[str, Any]] = [
    {"metrics": '{"a": NaN}'},  # Python reads NaN, SQLite's json_valid does not: the old way
    {"metrics": '{"a": 1, "a": 2}'},  # a duplicate key in metrics reads the same either way
    {"lineage": '[["repo", "https://u:p@h/x.git"]]'},  # not an object, yet dict() of it is one
    {"lineage": '{"repo": "https://u:p@h/x.git", "commit": "x"}'},
    {"lineage": ' {"commit": "spaced"} '},
    {"gates": '{"x": [1, 2, {"y": null}]}'},
    {"created_at": float("inf")},
    {"created_at": 12},
    {"artifact_size": 2.5},
    {"run_key": 42},
    {"metrics": "1e400"},
]


@pytest.mark.parametrize("edit", HAND_EDITS, ids=[next(iter(e)) + str(i) for i, e in enumerate(HAND_EDITS)])
def test_hand_edited_rows_list_as_before(registry: Path, edit: dict[str, Any]) -> None:
    _insert(registry, "edited", 1, **edit)
    for model in (None, "edited"):
        old = _old_json(registry, model)
        assert _canonical(_streamed(registry, model, None)) == _canonical(old)
        assert _streamed(registry, model, 2) == old


@pytest.mark.parametrize(
    ("edit", "error"),
    [({"lineage": '{"commit": '}, ValueError), ({"gates": "[1,"}, ValueError), ({"metrics": "{'a': 1}"}, ValueError),
     ({"lineage": '["not", "an", "object"]'}, ValueError), ({"model": b"bytes"}, TypeError)],
)  # fmt: skip
def test_rows_that_cannot_be_read_fail_as_before(registry: Path, edit: dict[str, Any], error: type) -> None:
    _insert(registry, "edited", 1, **edit)
    model = None if "model" in edit else "edited"
    with pytest.raises(error) as old:
        _old_json(registry, model)
    for indent in (None, 2):
        with pytest.raises(error) as new:
            _streamed(registry, model, indent)
        assert str(new.value) == str(old.value)


def _old_text(db: Path, model: str | None) -> list[str]:
    """What `registry list` printed before listings streamed."""
    with Registry(db, readonly=True) as reg:
        versions = reg.list(model)
    lines = []
    for v in versions:
        shown = ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))
        lines.append(f"{v.label:<24} sha256:{v.artifact.sha256[:12]}  {v.artifact.size:>10} B  "
                     f"commit {v.lineage.get('commit', '')[:12]}  {shown}")  # fmt: skip
    return lines


def _new_text(db: Path, model: str | None) -> list[str]:
    from gitopsd.cli.registry import _version_line

    with Registry(db, readonly=True) as reg:
        return [_version_line(s) for s in summaries(reg, model)]


@pytest.mark.parametrize(
    "edit",
    [{}, {"lineage": '{"commit": "short"}'}, {"lineage": '{"other": 1}'}, {"lineage": '{"commit": "\\u00e9t\\u00e9"}'},
     {"metrics": '{"b": 2, "a": 1e-9}'}],
)  # fmt: skip
def test_text_listing_is_the_old_lines(registry: Path, edit: dict[str, Any]) -> None:
    if edit:
        _insert(registry, "edited", 1, **edit)
    for model in (None, "iris", "edited", "nothing"):
        assert _new_text(registry, model) == _old_text(registry, model)


def test_a_duplicate_key_only_a_hand_edit_makes_is_read_as_sqlite_reads_it(registry: Path) -> None:
    """The one known difference (module docstring of gitopsd.registry.listing): SQLite reads the first."""
    _insert(registry, "edited", 1, lineage='{"commit": "first", "commit": "last"}')
    assert "commit last" in _old_text(registry, "edited")[0]
    assert "commit first" in _new_text(registry, "edited")[0]


@pytest.mark.parametrize(
    ("edit", "error"),
    [({"lineage": '{"commit": null}'}, TypeError), ({"gates": "[1,"}, ValueError), ({"lineage": "[]"}, AttributeError)],
)
def test_text_listing_fails_as_before(registry: Path, edit: dict[str, Any], error: type) -> None:
    _insert(registry, "edited", 1, **edit)
    with pytest.raises(error) as old:
        _old_text(registry, "edited")
    with pytest.raises(error) as new:
        _new_text(registry, "edited")
    assert str(new.value) == str(old.value)


def _old_history(db: Path, model: str) -> list[dict[str, Any]]:
    """What `history --json` printed before listings streamed."""
    with Registry(db, readonly=True) as reg:
        versions = reg.list(model)
        moves = AliasBook(reg.conn).history(model)
    entries: list[dict[str, Any]] = [
        {"at": v.created_at, "event": "registered", "version": v.number, "commit": v.lineage.get("commit", ""),
         "subject": v.lineage.get("commit_info", {}).get("subject", ""), "run_key": v.run_key,
         "artifact": v.artifact.sha256}
        for v in versions
    ]  # fmt: skip
    entries += [
        {"at": m.at, "event": f"alias {m.kind}", "alias": m.alias, "version": m.version, "previous": m.previous,
         "commit": m.commit_id, "subject": m.subject}
        for m in moves
    ]  # fmt: skip
    entries.sort(key=lambda e: e["at"])
    return entries


def _moves(db: Path, model: str, moves: list[tuple[int | None, int | None, float]]) -> None:
    with sqlite3.connect(db) as conn:
        book = AliasBook(conn)
        conn.isolation_level = None
        for version, previous, at in moves:
            (record,) = book.record([AliasMove(model=model, alias="production", version=version, previous=previous)],
                                    commit=f"{version}" * 8, subject=f"move to {version}")  # fmt: skip
            conn.execute("INSERT INTO alias_moves (model, alias, version, previous, kind, commit_id, subject, at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (model, "staging", version, previous, record.kind,
                                                               record.commit_id, "later", at))  # fmt: skip
    conn.close()


def test_history_is_the_old_history_in_the_old_order(registry: Path) -> None:
    iris_times = [1_700_000_000.25 + i * 7.1 for i in range(1, 8)]
    _insert(registry, "iris", 8, created_at=iris_times[2])  # registered "before" number 4: clocks go back
    _insert(registry, "iris", 9, created_at=iris_times[2])  # a tie
    _moves(registry, "iris", [(3, None, iris_times[2]), (1, 3, iris_times[0] - 1), (None, 1, iris_times[6] + 1),
                              (9, None, iris_times[2])])  # fmt: skip
    _moves(registry, "mnist", [(1, None, 5.0)])
    for model in ("iris", "mnist", "tuned", "", "nothing"):  # "": no versions, and every model's moves, as before
        with Registry(registry, readonly=True) as reg:
            assert list(history(reg, model)) == _old_history(registry, model)
    ties = [(e["event"], e.get("version")) for e in _old_history(registry, "iris") if e["at"] == iris_times[2]]
    assert ties == [("registered", 3), ("registered", 8), ("registered", 9), ("alias set", 3), ("alias set", 9)]


def test_history_of_a_registry_that_does_not_exist(tmp_path: Path) -> None:
    with Registry(tmp_path / "none.db", readonly=True) as reg:
        assert list(history(reg, "iris")) == []
        assert list(version_texts(reg)) == []
        assert list(summaries(reg)) == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(st.lists(JSON, max_size=6), st.sampled_from([None, 1, 2, 4]))
@settings(max_examples=300, deadline=None)
def test_write_array_is_json_dumps_of_the_list(elements: list[Any], indent: int | None) -> None:
    out = io.StringIO()
    count = write_array((json.dumps(e, indent=indent) for e in elements), out, indent=indent)
    assert count == len(elements)
    if indent:
        assert out.getvalue() == json.dumps(elements, indent=indent) + "\n"
    else:
        assert json.loads(out.getvalue()) == elements
        assert out.getvalue().count("\n") == (len(elements) + 2 if elements else 1)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_write_lines_removes_escape_sequences_only_off_a_terminal() -> None:
    lines = ["plain", "\x1b[31mred\x1b[0m subject", ""]
    piped, terminal = io.StringIO(), _Terminal()
    write_lines(iter(lines), piped)
    write_lines(iter(lines), terminal)
    assert piped.getvalue() == "plain\nred subject\n\n"
    assert terminal.getvalue() == "\n".join(lines) + "\n"


# The command line, as whole processes.


def test_an_empty_or_missing_registry(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    for _ in range(2):  # no registry.db, then an empty one
        assert gitopsd(state_dir, "registry", "list", "--json").stdout == "[]\n"
        assert gitopsd(state_dir, "registry", "list", "iris", "--json").stdout == "[]\n"
        assert gitopsd(state_dir, "registry", "list").stdout == ""
        missing = gitopsd(state_dir, "history", "iris", "--json", check=False)
        assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", "error: no history for 'iris'\n")
        Registry(state_dir / "registry.db").close()


def test_the_command_line_streams_what_the_old_one_printed(registry: Path) -> None:
    state_dir = registry.parent
    listed = gitopsd(state_dir, "registry", "list", "--json").stdout
    assert json.loads(listed) == json.loads(_old_json(registry, None))
    assert gitopsd(state_dir, "registry", "list").stdout.splitlines() == _old_text(registry, None)
    shown = json.loads(gitopsd(state_dir, "history", "iris", "--json").stdout)
    assert shown == _old_history(registry, "iris")
    text = gitopsd(state_dir, "history", "iris").stdout.splitlines()
    assert len(text) == len(shown) and text[0].startswith(time.strftime("%Y-%m-%d", time.localtime(shown[0]["at"])))


def test_a_terminal_gets_the_old_indented_json(registry: Path) -> None:
    assert on_a_terminal(registry.parent, "registry", "list", "mnist", "--json") == _old_json(registry, "mnist")
    history_text = on_a_terminal(registry.parent, "history", "tuned", "--json")
    assert history_text == json.dumps(_old_history(registry, "tuned"), indent=2) + "\n"


@pytest.mark.parametrize("args", [["registry", "list", "--json"], ["registry", "list"], ["history", "big"],
                                  ["history", "big", "--json"]])  # fmt: skip
def test_a_reader_that_goes_away_ends_it_quietly(tmp_path: Path, args: list[str]) -> None:
    db = tmp_path / "registry.db"
    Registry(db).close()
    with sqlite3.connect(db) as conn:
        for i in range(3000):  # far more than a pipe holds
            lineage = json.dumps(_lineage(i), sort_keys=True)
            conn.execute(
                f"INSERT INTO versions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ("big", i + 1, f"run-{i}", "k", f"{i:064x}", i, "file:///x", "{}", "[]", lineage, 1.7e9 + i),
            )
    conn.close()
    env = {**os.environ, "GITOPSD_STATE_DIR": str(tmp_path)}
    with subprocess.Popen([sys.executable, "-m", "gitopsd", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as reader:  # fmt: skip
        assert reader.stdout is not None and reader.stderr is not None
        assert reader.stdout.read(100)  # like `| head -c 100`
        reader.stdout.close()
        stderr = reader.stderr.read().decode()
        assert reader.wait(timeout=60) == 1, "a broken pipe is exit 1, as it always was"
    assert stderr == "", stderr


def test_nan_is_what_it_was(registry: Path) -> None:
    _insert(registry, "edited", 1, metrics='{"a": NaN}')
    (doc,) = json.loads(_streamed(registry, "edited", None))
    assert math.isnan(doc["metrics"]["a"])
