"""Aliases declared in Git: moved only onto registered versions, every move recorded, rollback by revert."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.reconcile.changeplan import Facts, alias_changes
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.registry.aliases import AliasBook, AliasMove, alias_targets, kind_of, plan_aliases
from gitopsd.registry.sqlitedb import migrate
from gitopsd.registry.versions import MIGRATIONS, Registry
from tests.conftest import GitRepo, gitopsd

MODEL = "models/blobs.yaml"


def test_plan_moves_onto_registered_versions_only() -> None:
    moves, refused = plan_aliases("m", {"production": 2, "staging": "latest"}, {1, 2, 3}, {"production": 1})
    assert moves == [
        AliasMove(model="m", alias="production", version=2, previous=1),
        AliasMove(model="m", alias="staging", version=3, previous=None),
    ]
    assert refused == []


def test_plan_refuses_a_version_that_does_not_exist_and_says_why() -> None:
    moves, refused = plan_aliases("m", {"production": 5}, {1, 2}, {"production": 1})
    assert moves == []
    assert "production -> m@5 refused" in refused[0] and "latest is m@2" in refused[0]
    _, none_yet = plan_aliases("m", {"staging": "latest"}, set(), {})
    assert none_yet == ["alias staging: m has no version yet"]


def test_an_alias_dropped_from_git_is_removed() -> None:
    moves, _ = plan_aliases("m", {}, {1}, {"production": 1})
    assert moves == [AliasMove(model="m", alias="production", version=None, previous=1)]


def test_kinds_of_moves() -> None:
    assert kind_of(AliasMove(model="m", alias="p", version=1, previous=None), "x") == "set"
    assert kind_of(AliasMove(model="m", alias="p", version=2, previous=1), "x") == "moved"
    assert kind_of(AliasMove(model="m", alias="p", version=1, previous=2), "x") == "rolled back"
    assert kind_of(AliasMove(model="m", alias="p", version=3, previous=2), 'Revert "y"') == "rolled back"
    assert kind_of(AliasMove(model="m", alias="p", version=None, previous=2), "x") == "removed"


@given(
    declared=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.one_of(st.integers(1, 6), st.just("latest"))),
    versions=st.sets(st.integers(1, 5)),
    current=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 5)),
)
def test_applying_the_moves_converges(
    declared: dict[str, int | str], versions: set[int], current: dict[str, int]
) -> None:
    moves, refused = plan_aliases("m", declared, versions, current)
    after = dict(current)
    for move in moves:
        assert move.version is None or move.version in versions
        if move.version is None:
            after.pop(move.alias)
        else:
            after[move.alias] = move.version
    again, refused_again = plan_aliases("m", declared, versions, after)
    assert again == []
    assert refused_again == refused


@given(
    declared=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.one_of(st.integers(1, 6), st.just("latest"))),
    base=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.one_of(st.integers(1, 6), st.just("latest"))),
    versions=st.sets(st.integers(1, 5)),
    current=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 5)),
    trains=st.booleans(),
)
def test_the_newest_version_and_the_ones_named_decide_like_the_whole_history(
    declared: dict[str, int | str], base: dict[str, int | str], versions: set[int], current: dict[str, int],
    trains: bool,
) -> None:  # fmt: skip
    """A pass reads of a model's versions only the newest and those its aliases name (`Registry.alias_numbers`
    of `alias_targets`), not its whole history: the daemon's moves and the plan's alias lines must be the same as
    with every version."""
    named = alias_targets([("m", base), ("m", declared)], [("m", alias) for alias in current])
    read = {max(versions)} | (named.get("m", set()) & versions) if versions else set()
    assert plan_aliases("m", declared, read, current) == plan_aliases("m", declared, versions, current)
    facts = Facts(known=True, aliases={("m", alias): number for alias, number in current.items()})
    lines = [alias_changes(model="m", base=base, head=declared, facts=facts, numbers=have, trains=trains)
             for have in (read, versions)]  # fmt: skip
    assert lines[0] == lines[1]


def _aliases(state_dir: Path) -> dict[str, Any]:
    doc = json.loads(gitopsd(state_dir, "status", "--json").stdout)
    entry: dict[str, Any] = next(m for m in doc["models"] if m["name"] == "blobs")
    return entry


def test_promote_then_revert_moves_production_back_and_history_shows_both(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    demo_repo.edit(MODEL, "spec:\n  train:", "spec:\n  aliases:\n    production: 1\n  train:")
    demo_repo.commit("Production is v1")
    reconciler.reconcile_until_settled(timeout_s=60)
    demo_repo.edit("src/train.py", "random.shuffle(rows)", "random.shuffle(rows)  # v2")
    demo_repo.commit("Train v2")
    reconciler.reconcile_until_settled(timeout_s=60)
    assert _aliases(state_dir)["aliases"] == {"production": 1}

    demo_repo.edit(MODEL, "production: 1", "production: 2")
    promote = demo_repo.commit("Promote v2")
    reconciler.reconcile_until_settled(timeout_s=60)
    assert _aliases(state_dir)["aliases"] == {"production": 2}

    demo_repo.git("revert", "--no-edit", "HEAD")
    revert = demo_repo.git("rev-parse", "HEAD")
    reconciler.reconcile_until_settled(timeout_s=60)
    assert _aliases(state_dir)["aliases"] == {"production": 1}

    moves = [e for e in json.loads(gitopsd(state_dir, "history", "blobs", "--json").stdout) if "alias" in e]
    assert [(m["event"], m["previous"], m["version"], m["commit"]) for m in moves][-2:] == [
        ("alias moved", 1, 2, promote),
        ("alias rolled back", 2, 1, revert),
    ]
    shown = gitopsd(state_dir, "history", "blobs").stdout
    assert "production rolled back: blobs@2 -> blobs@1" in shown and 'Revert "Promote v2"' in shown


def test_an_alias_to_a_missing_version_is_refused_with_a_reason(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    demo_repo.edit(MODEL, "spec:\n  train:", "spec:\n  aliases:\n    production: 7\n  train:")
    demo_repo.commit("Point production at a version that does not exist")
    reconciler.reconcile_until_settled(timeout_s=60)
    blobs = _aliases(state_dir)
    assert blobs["aliases"] == {}
    assert blobs["reason"] == "AliasRefused"
    assert "blobs@7" in blobs["message"] and "no such registered version" in blobs["message"]


def test_every_version_gets_an_annotated_tag_in_the_tracked_repository(
    demo_repo: GitRepo, reconciler: Reconciler
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    demo_repo.edit("src/train.py", "random.shuffle(rows)", "random.shuffle(rows)  # v2")
    second = demo_repo.commit("Train v2")
    reconciler.reconcile_until_settled(timeout_s=60)
    assert demo_repo.git("tag", "-l", "models/*").split() == ["models/blobs/v1", "models/blobs/v2"]
    assert demo_repo.git("cat-file", "-t", "models/blobs/v2") == "tag", "annotated, not lightweight"
    assert demo_repo.git("rev-parse", "models/blobs/v2^{commit}") == second
    message = demo_repo.git("tag", "-l", "--format=%(contents)", "models/blobs/v2")
    assert "run key:" in message and "artifact: sha256:" in message and "accuracy=" in message


def test_promote_commits_the_alias_in_a_local_clone_and_keeps_comments(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    before = demo_repo.git("rev-parse", "HEAD")
    refused = gitopsd(state_dir, "promote", "blobs@9", "--alias", "production", "--clone", str(demo_repo.path),
                      check=False)  # fmt: skip
    assert refused.returncode == 1 and "blobs@9 is not a registered version" in refused.stderr

    original = demo_repo.read(MODEL)
    bad = gitopsd(state_dir, "promote", "blobs@1", "--alias", "Production", "--clone", str(demo_repo.path),
                  check=False)  # fmt: skip
    assert bad.returncode == 1 and f"{MODEL}:" in bad.stderr and "spec.aliases.Production" in bad.stderr
    assert demo_repo.read(MODEL) == original, "a refused edit is put back"
    demo_repo.edit(MODEL, "team: demo", "team: edited")
    dirty = gitopsd(state_dir, "promote", "blobs@1", "--alias", "production", "--clone", str(demo_repo.path),
                    check=False)  # fmt: skip
    assert dirty.returncode == 1 and f"{MODEL} has changes not committed" in dirty.stderr
    demo_repo.write(MODEL, original)
    demo_repo.write("src/notes.txt", "staged, not for this commit\n")
    demo_repo.git("add", "src/notes.txt")
    assert demo_repo.git("rev-parse", "HEAD") == before

    done = gitopsd(state_dir, "promote", "blobs@1", "--alias", "production", "--clone", str(demo_repo.path))
    assert "not pushed" in done.stdout
    assert demo_repo.git("rev-parse", "HEAD^") == before
    assert demo_repo.git("log", "-1", "--format=%s") == "Promote blobs@1 to production"
    assert demo_repo.git("diff", "--numstat", "HEAD^", "HEAD") == f"2\t0\t{MODEL}", "the alias lines and nothing else"
    spec = demo_repo.read(MODEL)
    assert "# One model: a logistic-regression classifier" in spec, "comments survive the edit"
    assert "production: 1" in spec
    assert demo_repo.git("status", "--porcelain") == "A  src/notes.txt", "what else was staged stays staged"
    demo_repo.git("rm", "-q", "--cached", "src/notes.txt")
    (demo_repo.path / "src/notes.txt").unlink()

    reconciler.reconcile_until_settled(timeout_s=60)
    assert _aliases(state_dir)["aliases"] == {"production": 1}


def test_a_fine_tuned_model_records_its_base_and_retrains_when_the_base_alias_moves(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    demo_repo.edit(MODEL, "spec:\n  train:", "spec:\n  aliases:\n    production: 1\n  train:")
    tuned = (
        demo_repo.read(MODEL)
        .replace("name: blobs", "name: blobs-tuned")
        .replace("  aliases:\n    production: 1\n", "  base: blobs@production\n")
        .replace("command: python3 train.py", 'command: test -s "$GITOPSD_BASE_ARTIFACT" && python3 train.py')
    )
    demo_repo.write("models/blobs-tuned.yaml", tuned)
    demo_repo.commit("Fine-tune from production")
    reconciler.reconcile_until_settled(timeout_s=60)
    reconciler.reconcile_until_settled(timeout_s=60)  # the base registered in the first pass; now the tuned one
    version = json.loads(gitopsd(state_dir, "registry", "show", "blobs-tuned@1").stdout)
    assert version["lineage"]["base"]["label"] == "blobs@1"
    assert "blobs-tuned@1 <- blobs@1" in gitopsd(state_dir, "lineage", "blobs-tuned@1").stdout

    demo_repo.edit("src/train.py", '"epoch": epoch}', '"epoch": epoch, "version": 2}')  # new bytes
    demo_repo.commit("Train blobs v2 (which also retrains the tuned model: same code dir)")
    reconciler.reconcile_until_settled(timeout_s=60)
    demo_repo.edit(MODEL, "production: 1", "production: 2")
    demo_repo.commit("Promote blobs v2")
    reconciler.reconcile_until_settled(timeout_s=60)
    reconciler.reconcile_until_settled(timeout_s=60)
    latest = json.loads(gitopsd(state_dir, "registry", "list", "blobs-tuned", "--json").stdout)[-1]
    assert latest["lineage"]["base"]["label"] == "blobs@2"


def test_a_model_waits_for_its_base(demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path) -> None:
    tuned = (
        demo_repo.read(MODEL)
        .replace("name: blobs", "name: tuned")
        .replace("spec:\n  train:", "spec:\n  base: blobs@production\n  train:")
    )
    demo_repo.write("models/tuned.yaml", tuned)
    demo_repo.commit("tuned fine-tunes from a production alias nobody set")
    reconciler.reconcile_until_settled(timeout_s=60)
    doc = json.loads(gitopsd(state_dir, "status", "--json").stdout)
    waiting = next(m for m in doc["models"] if m["name"] == "tuned")
    assert waiting["reason"] == "BaseUnavailable" and "blobs@production" in waiting["message"]
    assert waiting["run"] is None


_MOVES = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["latest", "production"]), st.none() | st.integers(1, 4)),
    max_size=25,
)


def _scanned(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """Where each alias points, told from its newest move: what `alias_current` must always hold."""
    rows = conn.execute("SELECT model, alias, version FROM alias_moves WHERE seq IN "
                        "(SELECT max(seq) FROM alias_moves GROUP BY model, alias)")  # fmt: skip
    return {(m, a): v for m, a, v in rows if v is not None}


@settings(max_examples=50, deadline=None)
@given(before=_MOVES, after=_MOVES)
def test_where_aliases_point_is_kept_by_the_database_as_moves_are_appended(
    before: list[tuple[str, str, int | None]], after: list[tuple[str, str, int | None]]
) -> None:
    """`current` reads a table a trigger keeps, not the whole history of moves: after any moves, made before the
    table existed (an older registry, migrated on open) or after, it says what the newest move of each alias
    says; a registry read-only that predates the table is read from the moves."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "registry.db"
        with sqlite3.connect(path) as conn:  # the registry as the code before the table left it
            migrate(conn, [m for m in MIGRATIONS if m[0] < 4], what="test registry")
            book = AliasBook(conn)
            book.record([AliasMove(model=m, alias=a, version=v, previous=None) for m, a, v in before],
                        commit="0" * 40, subject="before")  # fmt: skip
            older = book.current()
        assert older == _scanned(sqlite3.connect(path))
        assert _from_status(path) == older
        with Registry(path, readonly=True) as registry:
            assert AliasBook(registry.conn).current() == older
        with Registry(path) as registry:  # migrated here
            book = AliasBook(registry.conn)
            assert registry.conn is not None
            assert book.current() == older
            for m, a, v in after:
                book.record([AliasMove(model=m, alias=a, version=v, previous=None)], commit="1" * 40, subject="")
                assert book.current() == _scanned(registry.conn)
            for model in ("a", "b"):
                assert book.current(model) == {k: v for k, v in book.current().items() if k[0] == model}
            assert _from_status(path) == book.current()


def _from_status(registry: Path) -> dict[tuple[str, str], int]:
    """What `gitopsd status` reads of the aliases, with the registry attached as it attaches it."""
    with sqlite3.connect(":memory:") as conn:
        conn.execute("ATTACH DATABASE ? AS reg", (f"file:{registry}?mode=ro",))
        return AliasBook(conn, schema="reg").current()
