"""The persistent parse cache (`gitopsd.reconcile.speccache`): a loader with it gives exactly what a loader without
it gives, across commits, with the cache deleted, corrupt, truncated or written by another version, and parses
only the blobs the cache has not seen. Real Git repositories, real SQLite, the real loader."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gitopsd.errors import SpecError, SpecProblem
from gitopsd.reconcile import desired as desired_module
from gitopsd.reconcile import speccache
from gitopsd.reconcile.desired import DesiredLoader, DesiredState
from gitopsd.reconcile.speccache import CACHE_FILE, KEY_FILE, SpecCache
from gitopsd.source.mirror import Source
from gitopsd.spec.load import load_model
from gitopsd.spec.yamlplain import Plain
from tests.conftest import GitRepo

MODEL = "models/blobs.yaml"


def model_file(name: str, epochs: int = 3) -> str:
    return f"""\
apiVersion: gitopsd/v1
kind: Model
metadata:
  name: {name}
  labels: {{team: cache}}
spec:
  train:
    command: python3 train.py --epochs {epochs}
    workdir: src
    env: {{SEED: "7"}}
    resources: {{memory: 1Gi}}
    timeout: 1h30m
  outputs:
    artifact: model.json
  validate: [accuracy >= 0.9]
"""


@pytest.fixture
def repo(demo_repo: GitRepo) -> GitRepo:
    for index in range(4):
        demo_repo.write(f"models/extra/m{index}.yaml", model_file(f"m{index}"))
    demo_repo.commit("Four more models")
    return demo_repo


class Counting:
    """Counts the blobs really parsed (`load_model` calls) by the loader."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = load_model

        def counted(text: str, file: str, plain: Plain | None = None) -> object:
            self.paths.append(file)
            return real(text, file, plain)

        monkeypatch.setattr(desired_module, "load_model", counted)


def source_of(repo: GitRepo, tmp_path: Path) -> Source:
    source = Source(str(repo.path), tmp_path / "mirror.git")
    source.fetch()
    return source


def outcome(load: Callable[[], DesiredState]) -> object:
    """Everything a loaded state holds, or the problems of a rejected commit."""
    try:
        state = load()
    except SpecError as exc:
        return list(exc.problems)
    models = {
        name: (m.path, m.spec, m.spec.model_fields_set, m.train, m.code_tree, m.run_key, m.spec_digest)
        for name, m in state.models.items()
    }
    return state.commit, state.repo, models


def cached_loader(source: Source, state: Path) -> DesiredLoader:
    """A loader as a new process makes one: nothing in memory, the state directory's cache on disk."""
    state.mkdir(exist_ok=True)
    return DesiredLoader(source, cache=SpecCache.open(state, writable=True))


def test_a_new_process_parses_only_the_blobs_it_has_not_seen(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    first = repo.git("rev-parse", "HEAD")
    counting = Counting(monkeypatch)
    assert outcome(lambda: cached_loader(source, state).load(first)) == outcome(
        lambda: DesiredLoader(source).load(first)
    )
    counting.paths.clear()
    assert outcome(lambda: cached_loader(source, state).load(first)) == outcome(
        lambda: DesiredLoader(source).load(first)
    )
    assert counting.paths == [MODEL, *(f"models/extra/m{i}.yaml" for i in range(4))]  # only the uncached run

    repo.write("models/extra/m2.yaml", model_file("m2", epochs=9))
    second = repo.commit("One spec changed")
    source.fetch()
    counting.paths.clear()
    with_cache = outcome(lambda: cached_loader(source, state).load(second))
    assert counting.paths == ["models/extra/m2.yaml"]
    assert with_cache == outcome(lambda: DesiredLoader(source).load(second))


def test_the_state_is_the_same_with_and_without_the_cache_when_only_the_code_or_configuration_moves(
    repo: GitRepo, tmp_path: Path
) -> None:
    """Run keys are cached by everything they depend on: a new code tree or new defaults give new keys."""
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    commits = [repo.git("rev-parse", "HEAD")]
    repo.write("src/helper.py", "X = 1\n")
    commits.append(repo.commit("Code changes, no spec does"))
    repo.edit("gitops.yaml", "cpus: 1", "cpus: 2")
    commits.append(repo.commit("Defaults change"))
    source.fetch()
    keys = []
    for commit in commits:
        cached = outcome(lambda c=commit: cached_loader(source, state).load(c))  # type: ignore[misc]
        assert cached == outcome(lambda c=commit: DesiredLoader(source).load(c))  # type: ignore[misc]
        assert isinstance(cached, tuple)
        keys.append({name: model[5] for name, model in cached[2].items()})
    assert keys[0]["m0"] != keys[1]["m0"] != keys[2]["m0"]


def test_a_rejected_commit_gives_the_same_problems_and_its_errors_are_cached_by_path(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    repo.write("models/extra/m1.yaml", model_file("m1").replace("workdir: src", "workdir: src\n    comand: x"))
    bad = repo.commit("A typo")
    source.fetch()
    expected = outcome(lambda: DesiredLoader(source).load(bad))
    assert isinstance(expected, list) and expected[0].file == "models/extra/m1.yaml" and expected[0].line
    assert outcome(lambda: cached_loader(source, state).load(bad)) == expected
    counting = Counting(monkeypatch)
    assert outcome(lambda: cached_loader(source, state).load(bad)) == expected
    assert counting.paths == []

    repo.git("mv", "models/extra/m1.yaml", "models/extra/renamed.yaml")
    moved = repo.commit("The same bad blob at another path")
    source.fetch()
    problems = outcome(lambda: cached_loader(source, state).load(moved))
    assert counting.paths == ["models/extra/renamed.yaml"]  # an error names its file: not reused elsewhere
    assert problems == outcome(lambda: DesiredLoader(source).load(moved))
    assert isinstance(problems, list) and {p.file for p in problems} == {"models/extra/renamed.yaml"}


@pytest.mark.parametrize(
    "damage",
    ["deleted", "garbage", "truncated", "empty", "key deleted", "key truncated", "foreign table"],
)
def test_a_damaged_cache_is_ignored_and_rebuilt(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    head = repo.git("rev-parse", "HEAD")
    expected = outcome(lambda: DesiredLoader(source).load(head))
    outcome(lambda: cached_loader(source, state).load(head))
    db, key = state / CACHE_FILE, state / KEY_FILE
    if damage == "deleted":
        db.unlink()
    elif damage == "garbage":
        db.write_bytes(b"this is not a database\n" * 100)
    elif damage == "truncated":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    elif damage == "empty":
        db.write_bytes(b"")
    elif damage == "key deleted":
        key.unlink()
    elif damage == "key truncated":
        key.write_bytes(key.read_bytes()[:5])
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE parsed")
            conn.execute("CREATE TABLE parsed (x)")
    assert outcome(lambda: DesiredLoader(source, cache=SpecCache.open(state, writable=False)).load(head)) == expected
    assert outcome(lambda: cached_loader(source, state).load(head)) == expected
    counting = Counting(monkeypatch)
    assert outcome(lambda: cached_loader(source, state).load(head)) == expected
    assert counting.paths == []  # rebuilt: the next process parses nothing


def test_another_generation_of_the_code_never_reuses_a_parse(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    head = repo.git("rev-parse", "HEAD")
    expected = outcome(lambda: cached_loader(source, state).load(head))
    real = speccache.generation()
    monkeypatch.setattr(speccache, "generation", lambda: real.replace("gitopsd ", "gitopsd 99.", 1))
    counting = Counting(monkeypatch)
    assert outcome(lambda: cached_loader(source, state).load(head)) == expected
    assert len(counting.paths) == 5
    with sqlite3.connect(state / CACHE_FILE) as conn:
        generations = {g for (g,) in conn.execute("SELECT DISTINCT generation FROM parsed")}
    assert generations == {speccache.generation()}  # the old generation's rows are gone


def test_the_generation_follows_the_version_the_schema_and_the_loading_code() -> None:
    parts = speccache.generation().split("; ")
    assert [p.split(" ")[0] for p in parts] == ["cache", "gitopsd", "schema", "spec", "pydantic", "pyyaml"]


def test_a_read_only_cache_reads_but_never_writes(repo: GitRepo, tmp_path: Path) -> None:
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    state.mkdir()
    assert SpecCache.open(state, writable=False) is None  # nothing there: nothing is created
    assert list(state.iterdir()) == []
    head = repo.git("rev-parse", "HEAD")
    outcome(lambda: cached_loader(source, state).load(head))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in state.iterdir()}
    repo.write("models/extra/new.yaml", model_file("new"))
    commit = repo.commit("A new model")
    source.fetch()
    reader = SpecCache.open(state, writable=False)
    assert reader is not None and not reader.writable
    DesiredLoader(source, cache=reader).load(commit)
    reader.close()
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in state.iterdir()} == before


def test_the_cache_forgets_blobs_no_commit_needs_once_it_has_grown(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speccache, "SLACK_ROWS", 2)
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    for epochs in range(5, 12):
        repo.write("models/extra/m3.yaml", model_file("m3", epochs=epochs))
        commit = repo.commit(f"{epochs} epochs")
        source.fetch()
        cached_loader(source, state).load(commit)
    with sqlite3.connect(state / CACHE_FILE) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM parsed").fetchone()
    assert rows <= 2 * 5 + 2 + 1


def test_an_invalid_blob_moved_to_new_paths_does_not_pile_up(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file's problems are kept by blob and path: the same invalid blob at ever new paths, commit after commit,
    is forgotten at the paths no commit has any more, although the blob itself is still in use."""
    monkeypatch.setattr(speccache, "SLACK_ROWS", 2)
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    invalid = "apiVersion: gitopsd/v1\nkind: Model\nmetadata: {name: broken}\nspec: {}\n"
    for round_ in range(6):
        if round_:
            repo.git("rm", "-rq", "models/broken")
        for index in range(4):
            repo.write(f"models/broken/r{round_}/f{index}.yaml", invalid)
        commit = repo.commit(f"The same invalid file at four new paths ({round_})")
        source.fetch()
        with pytest.raises(SpecError):
            cached_loader(source, state).load(commit)
    with sqlite3.connect(state / CACHE_FILE) as conn:
        paths = {path for (path,) in conn.execute("SELECT path FROM parsed WHERE ok = 0")}
        (rows,) = conn.execute("SELECT count(*) FROM parsed").fetchone()
    assert rows <= 2 * 10 + 2 + 4
    assert paths >= {f"models/broken/r5/f{index}.yaml" for index in range(4)}
    assert not any(path.startswith(("models/broken/r0/", "models/broken/r1/")) for path in paths)


def test_a_daemons_loader_forgets_the_run_keys_of_code_trees_no_model_has_any_more(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One loader, only incremental loads (a daemon's life): each commit that changes the shared code tree gives
    every model a new run key, and the cache keeps about those of the models now, not one set per commit."""
    monkeypatch.setattr(speccache, "SLACK_ROWS", 2)
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    loader = cached_loader(source, state)
    for round_ in range(8):
        repo.write("src/noise.txt", f"{round_}\n")
        commit = repo.commit(f"The code changes ({round_})")
        source.fetch()
        models = len(loader.load(commit).models)
    with sqlite3.connect(state / CACHE_FILE) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM keyed").fetchone()
    assert models == 5 and rows <= 2 * models + 2 + models


def test_problems_restored_from_the_cache_are_the_problems_stored(tmp_path: Path) -> None:
    cache = SpecCache.open(tmp_path, writable=True)
    assert cache is not None
    problems = (
        SpecProblem(file="models/a.yaml", line=3, field="spec.train.comand", message="unknown key 'comand'"),
        SpecProblem(file="models/a.yaml", line=None, field="", message="binary content"),
    )
    blob = "a" * 40
    cache.store_parsed({"models/a.yaml": (blob, 200, speccache.Parsed(None, problems))})
    assert cache.parsed({"models/a.yaml": blob}) == {"models/a.yaml": speccache.Parsed(None, problems)}
    assert cache.parsed({"models/b.yaml": blob}) == {}
    cache.close()


@pytest.mark.parametrize("few", [0, 10_000])
def test_looking_up_few_blobs_or_reading_the_whole_cache_gives_the_same(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    head = repo.git("rev-parse", "HEAD")
    expected = outcome(lambda: cached_loader(source, state).load(head))
    monkeypatch.setattr(speccache, "FEW", few)
    counting = Counting(monkeypatch)
    assert outcome(lambda: cached_loader(source, state).load(head)) == expected
    assert counting.paths == []
    repo.write("models/extra/m0.yaml", model_file("m0", epochs=7))
    commit = repo.commit("One change")
    source.fetch()
    loader = cached_loader(source, state)
    loader.load(head)
    counting.paths.clear()
    got = outcome(lambda: loader.load(commit))
    assert counting.paths == ["models/extra/m0.yaml"]
    assert got == outcome(lambda: DesiredLoader(source).load(commit))


def test_a_cache_another_process_holds_locked_costs_only_the_write(repo: GitRepo, tmp_path: Path) -> None:
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    head = repo.git("rev-parse", "HEAD")
    loader = cached_loader(source, state)
    assert loader.cache is not None
    blocker = sqlite3.connect(state / CACHE_FILE, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        loader.cache._require().execute("PRAGMA busy_timeout = 10")
        assert outcome(lambda: loader.load(head)) == outcome(lambda: DesiredLoader(source).load(head))
    finally:
        blocker.rollback()
        blocker.close()
    assert loader.cache.parsed({MODEL: blob_of(repo, MODEL)}) == {}  # nothing was stored while it was locked
    problem = SpecProblem(file=MODEL, line=1, field="", message="x")
    loader.cache.store_parsed({MODEL: (blob_of(repo, MODEL), 500, speccache.Parsed(None, (problem,)))})
    assert loader.cache.parsed({MODEL: blob_of(repo, MODEL)})  # and the cache is still in use afterwards


def blob_of(repo: GitRepo, path: str) -> str:
    return repo.git("rev-parse", f"HEAD:{path}")


def test_the_collector_paused_for_a_load_is_back_afterwards_even_when_the_commit_is_rejected(
    repo: GitRepo, tmp_path: Path
) -> None:
    import gc

    source = source_of(repo, tmp_path)
    good = repo.git("rev-parse", "HEAD")
    repo.write("models/extra/m1.yaml", "kind: [\n")
    bad = repo.commit("Broken YAML")
    source.fetch()
    assert gc.isenabled()
    DesiredLoader(source).load(good)
    assert gc.isenabled()
    with pytest.raises(SpecError):
        DesiredLoader(source).load(bad)
    assert gc.isenabled()
    gc.disable()
    try:
        DesiredLoader(source).load(good)
        assert not gc.isenabled()  # whoever turned it off keeps it off
    finally:
        gc.enable()


def test_a_data_file_is_hashed_once_per_state_directory(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new process (a new loader) reads the digest of a data blob from the cache instead of hashing it again;
    the demo's model checks `data/blobs.csv` against the sha256 its spec pins."""
    source, state = source_of(repo, tmp_path), tmp_path / "state"
    head = repo.git("rev-parse", "HEAD")
    hashed: list[str] = []
    real = Source.blob_sha256

    def counted(self: Source, blob: str, most: int) -> str | None:
        hashed.append(blob)
        return real(self, blob, most)

    monkeypatch.setattr(Source, "blob_sha256", counted)
    for _ in range(3):
        assert outcome(lambda: cached_loader(source, state).load(head)) == outcome(
            lambda: DesiredLoader(source).load(head)
        )
    assert hashed == [blob_of(repo, "data/blobs.csv")] * 4  # the cached loader once, each uncached one
