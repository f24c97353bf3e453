"""A cold load with the forked helper (`gitopsd.spec.prebuild`) gives exactly the state, or exactly the problems,
of a load without it, and a helper that fails, is killed or is left behind costs nothing but time.

The helper is only forked from a process with one thread, as a command is; pytest's process may have others, so
each load runs in a process of its own (`tests/prebuild_probe.py`), from a real repository and mirror.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from gitopsd.source.mirror import Source
from gitopsd.spec import prebuild
from tests.conftest import GitRepo
from tests.test_speccache import model_file

ROOT = Path(__file__).resolve().parents[1]
MODELS = 40


def with_anchor(name: str) -> str:
    """Valid, but not plain (an anchor): only the careful path loads it."""
    return model_file(name, 2).replace("labels: {team", "labels: &labels {team")


def probe(repo: GitRepo, mirror: Path, commit: str, *how: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.prebuild_probe", str(repo.path), str(mirror), commit, *how],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    report["stderr"] = done.stderr
    return report


@pytest.fixture
def many(demo_repo: GitRepo, tmp_path: Path) -> tuple[GitRepo, Path, str]:
    """A repository of `MODELS` more models and one that is not plain, and its mirror."""
    for index in range(MODELS):
        demo_repo.write(f"models/many/m{index:02}.yaml", model_file(f"m{index:02}", index + 1))
    demo_repo.write("models/many/zz-anchored.yaml", with_anchor("anchored"))  # last: in the helper's share
    commit = demo_repo.commit("Many models")
    mirror = tmp_path / "mirror.git"
    Source(str(demo_repo.path), mirror).fetch()
    return demo_repo, mirror, commit


def test_a_load_with_the_helper_is_the_load_without_it(many: tuple[GitRepo, Path, str]) -> None:
    repo, mirror, commit = many
    report = probe(repo, mirror, commit)
    assert report["threads"] == 1
    assert report["problems"] is None  # the commit is valid
    assert report["same"]
    # 42 files: the demo's model, m00-m39, zz-anchored. The loader waited until the helper had taken all of them:
    # it built all but the one that is not plain, which was loaded here from its text, and all without it.
    assert report["built"] == [41]
    assert report["from_text"] == [1, 42]


def test_the_loader_and_the_helper_meet_where_they_do(many: tuple[GitRepo, Path, str]) -> None:
    repo, mirror, commit = many
    for _ in range(3):
        report = probe(repo, mirror, commit, "race")
        assert report["same"]
        (built,), (from_text, alone) = report["built"], report["from_text"]
        # every file once: built by the helper, or loaded here (those it had not reached, and the anchored one)
        assert built + from_text == alone == 42
        assert from_text >= 1


def test_a_helper_started_before_the_load_is_taken_over(many: tuple[GitRepo, Path, str]) -> None:
    repo, mirror, commit = many
    report = probe(repo, mirror, commit, "offered")
    del report["stderr"]
    assert report == {"same": True, "taken": True, "pids": 1, "reaped": True, "started": True}


def test_a_helper_started_for_other_blobs_is_stopped_and_not_used(many: tuple[GitRepo, Path, str]) -> None:
    repo, mirror, commit = many
    report = probe(repo, mirror, commit, "stale")
    del report["stderr"]
    assert report == {"same": True, "taken": False, "pids": 1, "reaped": True, "started": True}


def test_a_bad_commit_gets_the_same_problems_with_the_helper(many: tuple[GitRepo, Path, str], tmp_path: Path) -> None:
    repo, mirror, _ = many
    repo.edit("models/many/m30.yaml", "memory: 1Gi", "memory: lots")
    repo.edit("models/many/m33.yaml", "    workdir: src\n", "    workdir: src\n    workdir: elsewhere\n")
    repo.edit("models/many/m36.yaml", "python3 train.py", "python3 train.py\x07")
    repo.edit("models/many/m37.yaml", "team: cache", 'team: "x\\u001b[2J"')  # a label the terminal would obey
    (repo.path / "models/many/m39.yaml").write_bytes(model_file("m39", 1).encode().replace(b"m39", b"m\xff39"))
    commit = repo.commit("Five bad files in the helper's share")
    Source(str(repo.path), mirror).fetch()
    report = probe(repo, mirror, commit)
    assert report["same"]
    problems = "\n".join(report["problems"])
    for file in ("m30", "m33", "m36", "m37", "m39"):
        assert f"models/many/{file}.yaml" in problems
    assert report["built"]


def test_validate_reads_a_working_tree_with_the_helper_as_without_it(many: tuple[GitRepo, Path, str]) -> None:
    repo, mirror, commit = many
    report = probe(repo, mirror, commit, "tree")
    assert report["problems"] is None
    assert report["same"]
    repo.edit("models/many/m30.yaml", "memory: 1Gi", "memory: lots")
    repo.edit("models/many/m37.yaml", "team: cache", 'team: "x\\u001b[2J"')
    (repo.path / "models/many/m39.yaml").write_bytes(b"\xff" + repo.read("models/many/m39.yaml").encode())
    report = probe(repo, mirror, commit, "tree")
    assert report["same"]
    problems = "\n".join(report["problems"])
    for file in ("m30", "m37", "m39"):
        assert f"models/many/{file}.yaml" in problems


@pytest.mark.parametrize("how", ["killed", "garbage", "short", "mistyped", "terminated"])
def test_a_helper_that_fails_leaves_its_files_to_the_loader(many: tuple[GitRepo, Path, str], how: str) -> None:
    repo, mirror, commit = many
    report = probe(repo, mirror, commit, how)
    assert report["problems"] is None
    assert report["same"]
    assert report["built"] == [0]  # it had taken every file, and nothing it said was used
    assert report["from_text"] == [42, 42]
    assert "SIGTERM handled" not in report["stderr"]  # a signal ends the helper; the loader's handler never runs there


def test_a_load_that_stops_early_kills_and_reaps_its_helper(many: tuple[GitRepo, Path, str]) -> None:
    repo, mirror, commit = many
    report = probe(repo, mirror, commit, "early")
    assert report["started"]
    assert report["reaped"]
    assert report["seconds"] < 30  # not the minute the helper would sleep


def test_no_helper_with_another_thread_alive_or_one_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prebuild, "_cpus", lambda: 2)
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    assert prebuild.worth_it(prebuild.MIN_FILES)
    assert not prebuild.worth_it(prebuild.MIN_FILES - 1)
    monkeypatch.setattr(prebuild, "_cpus", lambda: 1)
    assert not prebuild.worth_it(prebuild.MIN_FILES)
    monkeypatch.setattr(prebuild, "_cpus", lambda: 2)
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    assert not prebuild.worth_it(prebuild.MIN_FILES)


def test_below_the_bound_the_loader_gets_a_helper_of_nothing() -> None:
    with prebuild.helper(["models/a.yaml", "models/b.yaml"], lambda p: "") as helper:
        assert helper.pid is None
        assert list(helper.mine()) == ["models/a.yaml", "models/b.yaml"]
        assert helper.taken == 2
        assert helper.results() == {}
