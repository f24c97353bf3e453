"""Attack cases on the parse cache (`gitopsd.reconcile.speccache`): nothing planted in the state directory's cache
makes an invalid spec valid, or any spec mean something other than what its blob says.

Only the state directory's owner can write the cache, but the cases here are what that trust does not cover: a
cache file planted or copied from elsewhere, an entry forged without the key, a cache cut short by a crash, and
an entry that verifies yet holds a model pydantic refuses (a bug of ours, or a forger with the key). Each is a
real hostile commit reconciled through the real `gitopsd` command line: the commit is still rejected, with the
same `file:line: field` problems as without any cache, and no traceback reaches the user.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from gitopsd.reconcile import speccache
from gitopsd.reconcile.speccache import CACHE_FILE, KEY_FILE
from tests.conftest import GitRepo, gitopsd

MODEL = "models/blobs.yaml"
#: A typo: the file's blob is invalid whatever any cache says.
TYPO = ("    workdir: src\n", "    workdir: src\n    comand: rm -rf /\n")


def blob_of(repo: GitRepo, path: str) -> str:
    return repo.git("rev-parse", f"HEAD:{path}")


def valid_payload(repo: GitRepo) -> str:
    """The JSON a cache entry holds for the demo's valid model (the file as it was before the typo)."""
    from gitopsd.spec.load import load_model

    return load_model(repo.read(MODEL).replace(TYPO[1], TYPO[0]), MODEL).model_dump_json(
        by_alias=True, exclude_unset=True
    )


def reconcile(state: Path, repo: GitRepo) -> str:
    done = gitopsd(state, "reconcile", "--once", "--repo", str(repo.path), check=False)
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout + done.stderr


def plant(state: Path, blob: str, payload: str, key: bytes | None) -> None:
    """An entry saying that `blob` is a valid model: MAC'd with `key`, or with a made-up key when None."""
    generation = speccache.generation()
    mac = hashlib.blake2b(
        "\0".join([generation, "parsed", blob, "", "1", payload]).encode(), key=key or b"k" * 32, digest_size=32
    ).digest()
    with sqlite3.connect(state / CACHE_FILE) as conn:
        conn.execute("DELETE FROM parsed WHERE blob = ?", (blob,))
        conn.execute("INSERT INTO parsed VALUES (?, ?, '', 1, ?, ?)", (generation, blob, payload, mac))


@pytest.fixture
def tracked(demo_repo: GitRepo, tmp_path: Path) -> tuple[GitRepo, Path, str]:
    """A repository reconciled once (its cache warm), then a commit with a typo; and the typo's problems as a
    state directory without any cache reports them."""
    state = tmp_path / "state"
    reconcile(state, demo_repo)
    assert (state / CACHE_FILE).is_file()
    demo_repo.edit(MODEL, *TYPO)
    demo_repo.commit("A typo")
    output = reconcile(tmp_path / "no-cache", demo_repo)
    problem = next(line.strip() for line in output.splitlines() if "comand" in line)  # a log line's is indented
    assert problem.startswith(f"{MODEL}:") and "spec.train.comand" in problem
    return demo_repo, state, problem


def test_an_entry_forged_without_the_key_leaves_an_invalid_spec_invalid(
    tracked: tuple[GitRepo, Path, str],
) -> None:
    repo, state, problem = tracked
    plant(state, blob_of(repo, MODEL), valid_payload(repo), key=None)
    output = reconcile(state, repo)
    assert problem in output and "rejected" in output


def test_a_cache_copied_from_another_state_directory_is_not_trusted(
    tracked: tuple[GitRepo, Path, str], tmp_path: Path
) -> None:
    """Another state directory's cache, with a valid entry for this blob signed by its own key."""
    repo, state, problem = tracked
    other = tmp_path / "other"
    shutil.copytree(state, other)
    (other / KEY_FILE).write_bytes(b"o" * 32)
    plant(other, blob_of(repo, MODEL), valid_payload(repo), key=b"o" * 32)
    shutil.copy(other / CACHE_FILE, state / CACHE_FILE)
    output = reconcile(state, repo)
    assert problem in output and "rejected" in output


def test_an_entry_that_verifies_but_holds_an_invalid_model_is_not_used(tracked: tuple[GitRepo, Path, str]) -> None:
    """Even with the key, an entry can never yield a model pydantic refuses: entries are validated when read."""
    repo, state, problem = tracked
    payload = json.loads(valid_payload(repo))
    payload["spec"]["train"]["comand"] = "rm -rf /"
    plant(state, blob_of(repo, MODEL), json.dumps(payload), key=(state / KEY_FILE).read_bytes())
    output = reconcile(state, repo)
    assert problem in output and "rejected" in output


@pytest.mark.parametrize("cut", [0, 1, 100, 4096])
def test_a_cache_cut_short_by_a_crash_is_survived(tracked: tuple[GitRepo, Path, str], cut: int) -> None:
    repo, state, problem = tracked
    data = (state / CACHE_FILE).read_bytes()
    (state / CACHE_FILE).write_bytes(data[:cut])
    output = reconcile(state, repo)
    assert problem in output and "rejected" in output
    done = gitopsd(state, "plan", check=False)
    assert problem in done.stderr and "Traceback" not in done.stdout + done.stderr


def test_a_hostile_cache_file_is_not_read_by_plan_either(tracked: tuple[GitRepo, Path, str]) -> None:
    """`gitopsd plan` reads the cache read-only: a planted entry there changes nothing, and plan writes nothing."""
    repo, state, problem = tracked
    plant(state, blob_of(repo, MODEL), valid_payload(repo), key=None)

    def cache_files() -> list[tuple[str, int, int]]:
        return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in state.glob("speccache*"))

    before = cache_files()
    done = gitopsd(state, "plan", check=False)
    assert done.returncode == 1 and problem in done.stderr and "Traceback" not in done.stdout + done.stderr
    assert cache_files() == before  # no journal either: the cache is opened read-only, in rollback mode


def test_yaml_aliases_cannot_blow_a_small_file_up_in_the_cache(demo_repo: GitRepo, tmp_path: Path) -> None:
    """An anchored 4,000-character value named 300 times: 7 KB of YAML, 1.2 MB as the model's JSON. The spec is
    valid and planned as usual, but the cache does not keep its spelled-out copy (200 such files would be a
    quarter of a gigabyte of cache, and of memory at each restore): the file is parsed again instead."""
    value = "A" * 4000
    env = "\n".join([f'      K0: &v "{value}"', *(f"      K{i}: *v" for i in range(1, 300))])
    demo_repo.write(
        "models/aliased.yaml",
        "apiVersion: gitopsd/v1\nkind: Model\nmetadata: {name: aliased}\nspec:\n  suspend: true\n  train:\n"
        f"    command: python3 train.py\n    workdir: src\n    env:\n{env}\n  outputs: {{artifact: model.json}}\n",
    )
    demo_repo.commit("Aliases")
    state = tmp_path / "state"
    for _ in range(2):
        output = reconcile(state, demo_repo)
        assert "rejected" not in output
    with sqlite3.connect(state / CACHE_FILE) as conn:
        (largest,) = conn.execute("SELECT max(length(payload)) FROM parsed").fetchone()
    assert largest < 10_000  # the demo's own model is cached; the aliased one is not
    assert (state / CACHE_FILE).stat().st_size < 200_000
    done = gitopsd(state, "plan", "--format", "json", check=False)
    assert done.returncode == 0 and '"aliased"' in done.stdout


def test_a_data_digest_forged_without_the_key_never_makes_changed_data_pass(demo_repo: GitRepo, tmp_path: Path) -> None:
    """The cache remembers each data blob's sha256. An entry claiming that changed data still has the pinned
    digest, written without the state directory's key, does not verify: the blob is hashed and the change is
    refused. (A verified entry is trusted like the rest of the cache, whose key only the state directory's owner
    holds; a run's submission hashes its exported data again in any case.)"""
    state = tmp_path / "state"
    reconcile(state, demo_repo)
    pinned = hashlib.sha256((demo_repo.path / "data/blobs.csv").read_bytes()).hexdigest()
    with (demo_repo.path / "data/blobs.csv").open("a") as data:
        data.write("0.5,0.5,1\n")
    demo_repo.commit("Changed data, the digest not")
    blob = blob_of(demo_repo, "data/blobs.csv")
    generation = speccache.generation()
    forged = hashlib.blake2b("\0".join([generation, "digest", blob, pinned]).encode(), key=b"k" * 32, digest_size=32)
    with sqlite3.connect(state / CACHE_FILE) as conn:
        conn.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)", (generation, blob, pinned, forged.digest()))
    output = reconcile(state, demo_repo)
    assert "spec.data[0].sha256" in output and "rejected" in output
