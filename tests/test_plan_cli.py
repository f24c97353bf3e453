"""`gitopsd plan` as a CI job runs it: `--repo` a local clone, `--base`/`--branch` any REF the clone knows (a
remote-tracking branch, a tag, a commit id, a detached HEAD), on a fresh state directory that it never creates;
exit 0 fine, 1 for an invalid head or an unknown REF, with one clear line and no traceback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import GIT_ENV, GitRepo, gitopsd

MODEL = "models/blobs.yaml"


def _clone(origin: GitRepo, where: Path) -> GitRepo:
    subprocess.run(
        ["git", "clone", "-q", str(origin.path), str(where)], check=True, env={**GIT_ENV, "PATH": "/usr/bin:/bin"}
    )
    return GitRepo(where)


def test_a_ci_runner_plans_a_pull_request_from_its_clone_without_a_state_directory(
    demo_repo: GitRepo, tmp_path: Path
) -> None:
    clone = _clone(demo_repo, tmp_path / "clone")
    clone.git("checkout", "-q", "-b", "feature")
    clone.edit("src/train.py", "import", "# faster\nimport")
    clone.commit("Train faster")
    clone.git("checkout", "-q", "--detach")  # what a CI checkout of a pull request looks like
    state_dir = tmp_path / "fresh"
    done = gitopsd(state_dir, "plan", "--repo", str(clone.path), "--base", "origin/main", "--branch", "HEAD",
                   "--format", "markdown")  # fmt: skip
    assert done.stdout.startswith("<!-- gitopsd:plan -->\n")
    assert "| 🚀 train | blobs | code tree changed (src) |" in done.stdout
    assert not state_dir.exists(), "a plan never writes to the state directory"


def test_base_and_branch_may_be_tags_and_commit_ids(demo_repo: GitRepo, state_dir: Path) -> None:
    demo_repo.git("tag", "v1")
    first = demo_repo.git("rev-parse", "HEAD")
    demo_repo.edit(MODEL, "    team: demo\n", "    team: vision\n")
    second = demo_repo.commit("Relabel")
    done = gitopsd(state_dir, "plan", "--repo", str(demo_repo.path), "--base", "v1", "--branch", second[:10],
                   "--format", "json")  # fmt: skip
    doc = json.loads(done.stdout)
    assert (doc["base"]["commit"], doc["head"]["commit"]) == (first, second)
    assert [(m["name"], m["action"], m["reasons"][0]["code"]) for m in doc["models"]] == [
        ("blobs", "none", "label-only")
    ]


def test_an_unknown_ref_is_one_clear_line_and_exit_1(demo_repo: GitRepo, state_dir: Path) -> None:
    done = gitopsd(state_dir, "plan", "--repo", str(demo_repo.path), "--branch", "no-such-branch", check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "'no-such-branch' is not a branch, a remote-tracking branch, a tag or a commit id" in done.stderr
    done = gitopsd(state_dir, "plan", "--repo", str(demo_repo.path), "--base", "--upload-pack=touch /tmp/x",
                   "--format", "json", check=False)  # fmt: skip
    assert done.returncode == 1 and json.loads(done.stdout)["valid"] is False
    done = gitopsd(state_dir, "plan", "--repo", str(demo_repo.path), "--base", "no-such-base", check=False)
    assert done.returncode == 1
    assert "cannot plan against --base no-such-base: 'no-such-base' is not a branch" in done.stderr, "not the head"


def test_a_repository_with_no_commits_is_said_to_have_none(tmp_path: Path) -> None:
    empty = GitRepo(tmp_path / "empty")
    empty.path.mkdir()
    empty.git("init", "-q")
    for state, command in ((tmp_path / "a", "plan"), (tmp_path / "b", "reconcile")):
        done = gitopsd(state, command, "--repo", str(empty.path), check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert f"{empty.path} has no commits yet: commit and push a first one" in done.stderr
        assert "None" not in done.stderr


def test_a_mistyped_repo_that_never_applied_can_be_corrected_but_an_applied_one_is_kept(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path
) -> None:
    typo = gitopsd(state_dir, "reconcile", "--once", "--repo", str(tmp_path / "no-such-repo"), check=False)
    assert typo.returncode == 1
    fixed = gitopsd(state_dir, "reconcile", "--once", "--repo", str(demo_repo.path))
    assert "now tracking" in fixed.stderr and "which never applied a commit here" in fixed.stderr
    assert f"repository {demo_repo.path} " in gitopsd(state_dir, "status", check=False).stdout
    other = gitopsd(state_dir, "reconcile", "--once", "--repo", str(tmp_path / "another"), check=False)
    assert other.returncode == 1 and f"already tracks {demo_repo.path}; use another --state-dir" in other.stderr


def test_an_invalid_head_says_file_line_and_field_in_every_format(demo_repo: GitRepo, state_dir: Path) -> None:
    demo_repo.git("checkout", "-q", "-b", "typo")
    demo_repo.edit(MODEL, "  train:\n", "  train:\n    gpu: 1\n")
    demo_repo.commit("A typo")
    args = ("plan", "--repo", str(demo_repo.path), "--base", "main", "--branch", "typo")
    text = gitopsd(state_dir, *args, check=False)
    assert text.returncode == 1 and "models/blobs.yaml:" in text.stderr and "spec.train.gpu" in text.stderr
    doc = json.loads(gitopsd(state_dir, *args, "--format", "json", check=False).stdout)
    assert doc["valid"] is False and doc["exit_code"] == 1 and doc["models"] == []
    problem = doc["problems"][0]
    assert problem["file"] == MODEL and problem["field"] == "spec.train.gpu" and problem["line"]
    markdown = gitopsd(state_dir, *args, "--format", "markdown", check=False)
    assert markdown.returncode == 1 and "cannot be planned" in markdown.stdout
    assert "| models/blobs.yaml |" in markdown.stdout


def test_the_text_plan_compares_with_the_applied_commit_of_a_known_state_directory(
    demo_repo: GitRepo, state_dir: Path
) -> None:
    gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait")
    demo_repo.git("checkout", "-q", "-b", "relabel")
    demo_repo.edit(MODEL, "    team: demo\n", "    team: vision\n")
    demo_repo.commit("Relabel")
    shown = gitopsd(state_dir, "plan", "--branch", "relabel").stdout
    assert "0 action(s)" in shown and "(base: the applied commit, head: relabel)" in shown
    assert (
        "blobs: no training: label only: nothing trains (changed: metadata.labels) (its run key is registered as v1)"
        in shown
    )
    assert "cost: no training" in shown


def test_an_invalid_base_is_said_and_every_model_of_the_head_is_new(demo_repo: GitRepo, state_dir: Path) -> None:
    demo_repo.edit(MODEL, "  train:\n", "  train:\n    gpu: 1\n")
    broken = demo_repo.commit("A typo on main")
    demo_repo.edit(MODEL, "  train:\n    gpu: 1\n", "  train:\n")
    demo_repo.commit("Fixed")
    done = gitopsd(state_dir, "plan", "--repo", str(demo_repo.path), "--base", broken, "--format", "json")
    doc = json.loads(done.stdout)
    assert doc["notes"] == [
        f"base commit {broken[:12]} is invalid (1 problem(s)): every model of the head is shown as new"
    ]
    assert [(m["name"], m["change"], m["action"]) for m in doc["models"]] == [("blobs", "added", "train")]
