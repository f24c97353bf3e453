"""`gitopsd init`: the demo repository a new user starts from."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gitopsd.cli.scaffold import blobs_csv, init_demo
from gitopsd.errors import SpecError
from gitopsd.spec.worktree import load_tree
from tests.conftest import GIT_ENV, gitopsd


def test_init_makes_a_valid_repository_with_one_commit(tmp_path: Path) -> None:
    repo = tmp_path / "demo"
    commit = init_demo(repo)
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%H"], capture_output=True, text=True, check=True)
    assert log.stdout.split() == [commit]
    specs = load_tree(repo)
    assert [m.name for m in specs.models.values()] == ["blobs"]
    assert not subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, check=True
    ).stdout, "everything is committed"


def test_init_inside_another_repository_does_not_commit_into_it(tmp_path: Path) -> None:
    outer = tmp_path / "project"
    outer.mkdir()
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    (outer / "keep.txt").write_text("mine\n")
    subprocess.run(["git", "-C", str(outer), "add", "keep.txt"], check=True)
    subprocess.run(
        ["git", "-C", str(outer), "commit", "-qm", "outer"], check=True, env={**GIT_ENV, "PATH": "/usr/bin:/bin"}
    )
    init_demo(outer / "demo" / "repo")
    outer_log = subprocess.run(
        ["git", "-C", str(outer), "log", "--format=%s"], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert outer_log[0] == "outer"
    assert (outer / "demo" / "repo" / ".git").is_dir()


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("")
    done = gitopsd(tmp_path / "state", "init", str(tmp_path / "x"), check=False)
    assert done.returncode == 1
    assert "not empty" in done.stderr


def test_demo_data_is_the_same_everywhere() -> None:
    assert blobs_csv() == blobs_csv()
    assert blobs_csv().count("\n") == 201


def test_validate_names_a_missing_workdir(tmp_path: Path) -> None:
    repo = tmp_path / "demo"
    init_demo(repo)
    spec = repo / "models" / "blobs.yaml"
    spec.write_text(spec.read_text().replace("workdir: src", "workdir: nowhere"))
    with pytest.raises(SpecError, match=r"models/blobs.yaml.*spec.train.workdir.*'nowhere' does not exist"):
        load_tree(repo)
