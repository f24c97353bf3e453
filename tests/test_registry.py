"""The registry numbers versions per model, never changes one, and survives crashes, races and re-opens."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.errors import PermanentError
from gitopsd.registry import versions as registry_module
from gitopsd.registry.filestore import FileStore
from gitopsd.registry.store import ArtifactRef
from gitopsd.registry.versions import Registry, Version, parse_label
from tests.race import race

NEXT = len(registry_module.MIGRATIONS) + 1
"""The number a test migration gets: one past the real ones."""


def _artifact(n: int = 0) -> ArtifactRef:
    digest = f"{n:064x}"
    return ArtifactRef(sha256=digest, size=n, uri=f"file:///store/sha256/{digest[:2]}/{digest[2:]}")


def _register(reg: Registry, model: str, run_id: str, run_key: str = "k", **over: Any) -> Version:
    fields: dict[str, Any] = {
        "artifact": _artifact(),
        "metrics": {"accuracy": 0.97},
        "gates": [{"metric": "accuracy", "op": ">=", "value": 0.9, "passed": True}],
        "lineage": {"commit": "abc123", "backend": {"type": "local"}},
        "created_at": 1_700_000_000.5,
    }
    fields.update(over)
    return reg.register(model=model, run_id=run_id, run_key=run_key, **fields)


def test_numbers_count_up_per_model(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry.db") as reg:
        labels = [
            _register(reg, "iris", "r1").label,
            _register(reg, "iris", "r2").label,
            _register(reg, "mnist", "r3").label,
            _register(reg, "iris", "r4").label,
            _register(reg, "mnist", "r5").label,
        ]
        assert labels == ["iris@1", "iris@2", "mnist@1", "iris@3", "mnist@2"]
        assert reg.alias_numbers({"iris": set(), "mnist": set()}) == {"iris": {3}, "mnist": {2}}


def test_registered_version_reads_back_identically(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    with Registry(path) as reg:
        written = _register(reg, "iris", "r1", run_key="key-a", artifact=_artifact(7))
        assert reg.get("iris", 1) == written
    with Registry(path, readonly=True) as reg:
        read = reg.get("iris", 1)
    assert read == written
    assert read is not None
    assert read.artifact == _artifact(7)
    assert read.metrics == {"accuracy": 0.97}
    assert read.gates[0]["passed"] is True
    assert read.lineage["backend"] == {"type": "local"}
    assert read.created_at == 1_700_000_000.5


def test_queries(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry.db") as reg:
        assert reg.latest("iris") is None
        assert reg.list() == []
        _register(reg, "mnist", "m1", run_key="ka")
        _register(reg, "iris", "i1", run_key="ka")
        _register(reg, "iris", "i2", run_key="kb")
        _register(reg, "iris", "i3", run_key="ka")  # retrained with an old key (e.g. a reverted commit)
        assert [v.label for v in reg.list()] == ["iris@1", "iris@2", "iris@3", "mnist@1"]
        assert [v.label for v in reg.list("iris")] == ["iris@1", "iris@2", "iris@3"]
        latest = reg.latest("iris")
        assert latest is not None
        assert latest.run_id == "i3"
        assert reg.get("iris", 4) is None
        by_id = reg.by_run_id("i2")
        assert by_id is not None
        assert by_id.label == "iris@2"
        assert reg.by_run_id("nope") is None
        by_key = reg.by_run_key("iris", "ka")
        assert by_key is not None
        assert by_key.label == "iris@3"
        assert reg.by_run_key("mnist", "kb") is None
        # what a pass asks: the number of the one key each model wants now, never the rest of its history
        assert reg.wanted_numbers({"iris": "ka", "mnist": "kb", "absent": "ka"}) == {("iris", "ka"): 3}
        assert reg.wanted_numbers({"iris": "kb", "mnist": "ka"}) == {("iris", "kb"): 2, ("mnist", "ka"): 1}
        assert reg.wanted_numbers({}) == {}
        # what moving aliases asks: each model's newest number, and which of the numbers named are registered
        assert reg.alias_numbers({"iris": {1, 7}, "mnist": set(), "absent": {1}}) == {"iris": {1, 3}, "mnist": {1}}
        assert reg.alias_numbers({}) == {}


@settings(max_examples=40, deadline=None)
@given(
    registered=st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["k1", "k2", "k3"])), max_size=12),
    wanted=st.dictionaries(st.sampled_from("abcd"), st.sampled_from(["k1", "k2", "k3"])),
    named=st.dictionaries(st.sampled_from("abcd"), st.sets(st.integers(1, 8), max_size=3)),
)
def test_the_reads_of_a_pass_agree_with_the_whole_history(
    tmp_path_factory: pytest.TempPathFactory, registered: list[tuple[str, str]], wanted: dict[str, str],
    named: dict[str, set[int]],
) -> None:  # fmt: skip
    """`wanted_numbers` and `alias_numbers` read the index instead of every version: they must say what reading
    the whole history says."""
    with Registry(tmp_path_factory.mktemp("reg") / "registry.db") as reg:
        for i, (model, run_key) in enumerate(registered):
            _register(reg, model, f"r{i}", run_key=run_key, artifact=_artifact(i))
        every: dict[tuple[str, str], int] = {}  # the newest number of each run key, from every version
        numbers: dict[str, set[int]] = {}
        for version in reg.list():
            every[(version.model, version.run_key)] = max(
                version.number, every.get((version.model, version.run_key), 0)
            )
            numbers.setdefault(version.model, set()).add(version.number)
        assert reg.wanted_numbers(wanted) == {(m, k): n for (m, k), n in every.items() if wanted.get(m) == k}
        assert reg.alias_numbers(named) == {
            model: {max(numbers[model])} | (named[model] & numbers[model]) for model in named if model in numbers
        }


def test_the_newest_row_moves_with_every_registration_and_only_then(tmp_path: Path) -> None:
    """What the settled-pass record digests instead of the whole history: it must change on each registration
    (versions are only ever added) and stay put when nothing is registered, a repeated registration included."""
    with Registry(tmp_path / "registry.db") as reg:
        assert reg.empty() and reg.newest_row() == (0,)
        seen = [reg.newest_row()]
        for run_id, model in (("r1", "iris"), ("r2", "iris"), ("r3", "mnist")):
            _register(reg, model, run_id)
            seen.append(reg.newest_row())
        _register(reg, "iris", "r2")  # idempotent: already version iris@2
        assert reg.newest_row() == seen[-1]
        assert len(set(seen)) == 4 and not reg.empty()
        assert seen[-1][0] == 3  # the count leads


def test_register_is_idempotent_by_run_id(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry.db") as reg:
        first = _register(reg, "iris", "r1", metrics={"accuracy": 0.9})
        again = _register(reg, "iris", "r1", metrics={"accuracy": 0.1}, created_at=5.0)
        assert again == first
        assert reg.list() == [first]
        assert _register(reg, "iris", "r2").number == 2


def test_a_run_id_cannot_become_a_version_of_another_model(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry.db") as reg:
        _register(reg, "iris", "r1")
        with pytest.raises(PermanentError, match=r"run r1 is already registered as iris@1.*'mnist'"):
            _register(reg, "mnist", "r1")
        assert [v.label for v in reg.list()] == ["iris@1"]


def test_non_finite_metrics_are_refused_with_the_field_named(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry.db") as reg:
        with pytest.raises(PermanentError, match=r"cannot register iris \(run r1\): metrics must be JSON"):
            _register(reg, "iris", "r1", metrics={"loss": float("nan")})
        assert reg.list() == []
        assert _register(reg, "iris", "r2").number == 1


def _register_many(path: str, worker: int, count: int, start: Any) -> None:
    with Registry(Path(path)) as reg:
        start.wait()  # all workers hold an open registry, then race
        for i in range(count):
            _register(reg, "iris", f"w{worker}-{i}")


def test_concurrent_processes_never_share_a_number(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    workers, count = 4, 100
    race(_register_many, path, workers, count, spawn=True, timeout=120)
    with Registry(path, readonly=True) as reg:
        versions = reg.list("iris")
    assert sorted(v.number for v in versions) == list(range(1, workers * count + 1))
    assert {v.run_id for v in versions} == {f"w{w}-{i}" for w in range(workers) for i in range(count)}


def _one_row(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT * FROM versions").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE versions SET artifact_sha256 = 'evil' WHERE model = 'iris'",
        "DELETE FROM versions WHERE model = 'iris'",
        "INSERT OR REPLACE INTO versions SELECT model, number, 'other-run', run_key, 'evil', artifact_size, "
        "artifact_uri, metrics, gates, lineage, created_at FROM versions",
        "INSERT INTO versions SELECT model, number, run_id, run_key, artifact_sha256, artifact_size, "
        "artifact_uri, metrics, gates, lineage, created_at FROM versions WHERE true "
        "ON CONFLICT DO UPDATE SET artifact_sha256 = 'evil'",
    ],
    ids=["update", "delete", "insert-or-replace", "upsert"],
)
def test_sqlite_itself_refuses_to_change_a_version(tmp_path: Path, statement: str) -> None:
    path = tmp_path / "registry.db"
    with Registry(path) as reg:
        _register(reg, "iris", "r1")
    before = _one_row(path)
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="versions are immutable"):
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()
    assert _one_row(path) == before


def test_sqlite3_shell_cannot_change_a_version(tmp_path: Path) -> None:
    shell = shutil.which("sqlite3")
    if shell is None:
        pytest.skip("the sqlite3 command-line shell is not installed; the plain sqlite3 test covers the triggers")
    path = tmp_path / "registry.db"
    with Registry(path) as reg:
        _register(reg, "iris", "r1")
    before = _one_row(path)
    for statement in ("UPDATE versions SET metrics = '{}';", "DELETE FROM versions;"):
        done = subprocess.run([shell, str(path), statement], capture_output=True, text=True, check=False)
        assert done.returncode != 0
        assert "versions are immutable" in done.stderr
    assert _one_row(path) == before


def test_readonly_on_a_missing_file_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "registry.db"
    with Registry(path, readonly=True) as reg:
        assert reg.list() == []
        assert reg.latest("iris") is None
        assert reg.wanted_numbers({"iris": "k"}) == {} and reg.alias_numbers({"iris": {1}}) == {}
        assert reg.verify(FileStore(tmp_path / "store")) == []
    assert not path.exists()
    assert not path.parent.exists()


def test_readonly_sees_versions_and_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    writer = Registry(path)
    _register(writer, "iris", "r1")
    with Registry(path, readonly=True) as reader:
        assert reader.alias_numbers({"iris": set()}) == {"iris": {1}}
        _register(writer, "iris", "r2")  # the daemon keeps writing while status reads
        assert reader.alias_numbers({"iris": set()}) == {"iris": {2}}
        with pytest.raises(PermanentError, match="is open read-only"):
            _register(reader, "iris", "r3")
    writer.close()


def test_readonly_runs_no_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    applied = [(number,) for number, _ in registry_module.MIGRATIONS]
    newer = (len(applied) + 1, "CREATE TABLE x (a);")
    monkeypatch.setattr(registry_module, "MIGRATIONS", [*registry_module.MIGRATIONS, newer])
    with Registry(path, readonly=True) as reg:
        assert reg.list() == []
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT number FROM migrations").fetchall() == applied
    conn.close()


def test_closed_registry_refuses_use(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db")
    reg.close()
    with pytest.raises(PermanentError, match="is closed"):
        reg.list()
    with pytest.raises(PermanentError, match="is closed"):
        _register(reg, "iris", "r1")


def test_database_is_wal_with_recorded_migrations(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        numbers = [n for (n,) in conn.execute("SELECT number FROM migrations ORDER BY number")]
    finally:
        conn.close()
    assert numbers == [n for n, _ in registry_module.MIGRATIONS]


def test_reopening_applies_only_new_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "registry.db"
    with Registry(path) as reg:
        _register(reg, "iris", "r1")
    with Registry(path) as reg:  # migration 1 is not re-run (it would fail: table versions already exists)
        assert [v.label for v in reg.list()] == ["iris@1"]
    monkeypatch.setattr(
        registry_module,
        "MIGRATIONS",
        [
            *registry_module.MIGRATIONS,
            (NEXT, "CREATE TABLE notes (label TEXT); INSERT INTO notes VALUES ('x');"),
        ],
    )
    for _ in range(2):
        with Registry(path) as reg:
            assert [v.label for v in reg.list()] == ["iris@1"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT number FROM migrations ORDER BY number").fetchall() == [
            (n,) for n in range(1, NEXT + 1)
        ]
        assert conn.execute("SELECT label FROM notes").fetchall() == [("x",)]
    finally:
        conn.close()


def test_a_failing_migration_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    monkeypatch.setattr(
        registry_module,
        "MIGRATIONS",
        [*registry_module.MIGRATIONS, (NEXT, "CREATE TABLE half (a); SELECT no_such_function();")],
    )
    with pytest.raises(PermanentError, match=rf"registry .*registry\.db: migration {NEXT} failed: .*no_such_function"):
        Registry(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT number FROM migrations").fetchall() == [(n,) for n in range(1, NEXT)]
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchall() == []
    finally:
        conn.close()


def test_a_registry_from_a_newer_gitopsd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO migrations VALUES (99, 0)")
    conn.commit()
    conn.close()
    with pytest.raises(PermanentError, match=r"has schema migration 99 .* upgrade gitopsd"):
        Registry(path)


def test_verify_names_missing_and_tampered_artifacts(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    refs = [store.put(_write_bytes(tmp_path / f"m{i}.bin", f"weights {i}".encode())) for i in range(3)]
    with Registry(tmp_path / "registry.db") as reg:
        for i, ref in enumerate(refs):
            _register(reg, "iris", f"r{i}", artifact=ref)
        assert reg.verify(store) == []
        tampered = store.path(refs[0].sha256)
        tampered.chmod(0o644)
        tampered.write_bytes(b"weights X")
        missing = store.path(refs[2].sha256)
        missing.unlink()
        problems = reg.verify(store)
    assert len(problems) == 2
    assert problems[0].startswith(f"iris@1: artifact {tampered}: expected sha256 {refs[0].sha256}")
    assert problems[1] == f"iris@3: artifact {missing}: expected sha256 {refs[2].sha256}, found missing"


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("label", "parsed"),
    [("iris@3", ("iris", 3)), ("team@x@12", ("team@x", 12)), ("m@9223372036854775807", ("m", 2**63 - 1))],
)
def test_parse_label(label: str, parsed: tuple[str, int]) -> None:
    assert parse_label(label) == parsed


@pytest.mark.parametrize(
    "label",
    ["iris", "iris@", "@3", "iris@0", "iris@-1", "iris@three", "iris@3.0", "iris@\u00b2", "iris@\u0663",
     "iris@9223372036854775808", "iris@" + "9" * 30],
)  # fmt: skip
def test_parse_label_rejects_malformed_labels(label: str) -> None:
    with pytest.raises(ValueError, match=r"is not of the form MODEL@N"):
        parse_label(label)
