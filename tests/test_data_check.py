"""Repository data is checked when a change is reviewed, not when its run is submitted: a data file a spec names
must be in the commit (or the working tree) with the sha256 the spec pins, or `validate`, `plan` and the daemon
refuse the change with the file and field, as they do a missing workdir. Real Git, the real command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitopsd.errors import SpecError
from gitopsd.spec import worktree
from gitopsd.spec.worktree import load_tree
from tests.conftest import GitRepo, gitopsd

MODEL = "models/blobs.yaml"
DATA = "data/blobs.csv"


def _refused(repo: GitRepo, state_dir: Path, field: str, said: str) -> None:
    """validate, plan and reconcile each refuse the change, naming the spec file, the field and what is wrong."""
    validate = gitopsd(state_dir, "validate", str(repo.path), check=False)
    plan = gitopsd(state_dir, "plan", "--repo", str(repo.path), check=False)
    reconcile = gitopsd(state_dir, "reconcile", "--once", "--repo", str(repo.path), check=False)
    for done in (validate, plan, reconcile):
        assert f"{MODEL}: {field}: " in done.stderr and said in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert validate.returncode == 1 and plan.returncode == 1
    assert "rejected" in reconcile.stderr
    assert not (state_dir / "runs").exists() or not list((state_dir / "runs").iterdir()), "nothing was submitted"


def test_data_changed_without_its_digest_is_refused_at_review(demo_repo: GitRepo, state_dir: Path) -> None:
    with (demo_repo.path / DATA).open("a") as data:
        data.write("0.5,0.5,1\n")
    demo_repo.commit("More data, the digest forgotten")
    _refused(demo_repo, state_dir, "spec.data[0].sha256", f"{DATA} has sha256 ")


def test_data_removed_is_refused_at_review(demo_repo: GitRepo, state_dir: Path) -> None:
    (demo_repo.path / DATA).unlink()
    demo_repo.commit("The data is gone")
    _refused(demo_repo, state_dir, "spec.data[0].uri", f"file {DATA!r} does not exist")


def test_data_with_its_digest_passes(demo_repo: GitRepo, state_dir: Path) -> None:
    gitopsd(state_dir, "validate", str(demo_repo.path))
    assert "+ train blobs" in gitopsd(state_dir, "plan", "--repo", str(demo_repo.path)).stdout


def test_data_over_the_hashing_bound_is_left_to_the_submission(
    demo_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (demo_repo.path / DATA).open("a") as data:
        data.write("0.5,0.5,1\n")
    with pytest.raises(SpecError, match=r"spec\.data\[0\]\.sha256"):
        load_tree(demo_repo.path)
    monkeypatch.setattr(worktree, "DATA_HASH_BYTES", 10)
    load_tree(demo_repo.path)  # too large to hash here: its run's submission checks it


def test_a_change_of_data_alone_is_checked_against_the_applied_commit(demo_repo: GitRepo, state_dir: Path) -> None:
    """Loaded incrementally from the applied commit (the daemon, a plan with a state directory), a model whose
    spec, code and requirements did not change is still checked again when its data file did."""
    gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait")  # blobs@1, the commit applied
    applied = demo_repo.git("rev-parse", "HEAD")
    with (demo_repo.path / DATA).open("a") as data:
        data.write("0.5,0.5,1\n")
    demo_repo.commit("More data, the digest forgotten")
    plan = gitopsd(state_dir, "plan", check=False)
    assert plan.returncode == 1 and f"{MODEL}: spec.data[0].sha256: {DATA} has sha256 " in plan.stderr
    base = gitopsd(state_dir, "plan", "--base", applied, check=False)
    assert base.returncode == 1 and "spec.data[0].sha256" in base.stderr
    reconcile = gitopsd(state_dir, "reconcile", "--once", check=False)
    assert "spec.data[0].sha256" in reconcile.stderr and "rejected" in reconcile.stderr
