"""A cold `gitopsd plan` (no parse cache: a fresh CI runner) starts the spec-building helper of `spec.prebuild`
before it imports its heavy modules, and its load takes that helper over: the plan is the one a single core
makes, and a plan that cannot use the helper goes on without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gitopsd.reconcile.statekey import KEY_FILE
from gitopsd.spec import prebuild
from tests.conftest import GitRepo
from tests.test_speccache import model_file

TAKEN = "the load takes over the helper started before it"


def plan(state_dir: Path, *args: str, cpus: int = 2) -> subprocess.CompletedProcess[str]:
    """`gitopsd --verbose plan ARGS` with a fresh state directory, on `cpus` CPUs (one: no helper at all)."""

    def pinned() -> None:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cpus])

    return subprocess.run(
        [sys.executable, "-m", "gitopsd", "--verbose", "--state-dir", str(state_dir), "plan", *args],
        capture_output=True, text=True, timeout=120, check=False, preexec_fn=pinned,
    )  # fmt: skip


def add_models(repo: GitRepo) -> GitRepo:
    """`repo` with `prebuild.MIN_FILES` more models committed: enough for a helper."""
    for index in range(prebuild.MIN_FILES):
        repo.write(f"models/many/m{index:04}.yaml", model_file(f"m{index:04}", index + 1))
    repo.commit("Many models")
    return repo


@pytest.fixture
def large(demo_repo: GitRepo) -> GitRepo:
    return add_models(demo_repo)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a helper needs two CPUs; this machine has one")
def test_a_cold_plan_takes_over_the_helper_it_started_and_plans_as_one_core_does(
    large: GitRepo, tmp_path: Path
) -> None:
    helped = plan(tmp_path / "a", "--repo", str(large.path))
    assert helped.returncode == 0, helped.stderr
    assert TAKEN in helped.stderr
    assert "spec prebuild helper built" in helped.stderr
    alone = plan(tmp_path / "b", "--repo", str(large.path), cpus=1)
    assert alone.returncode == 0, alone.stderr
    assert "spec prebuild" not in alone.stderr
    assert helped.stdout == alone.stdout
    assert f"cost: {prebuild.MIN_FILES + 1} training(s)" in helped.stdout  # the demo's model and every one added
    assert "  m0999: trains: new model\n" in helped.stdout


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a helper needs two CPUs; this machine has one")
def test_a_plan_with_a_parse_cache_or_of_another_commit_starts_no_helper_early(large: GitRepo, tmp_path: Path) -> None:
    warm = tmp_path / "warm"
    warm.mkdir()
    (warm / KEY_FILE).write_bytes(os.urandom(32))
    (warm / KEY_FILE).chmod(0o600)
    done = plan(warm, "--repo", str(large.path))
    assert done.returncode == 0, done.stderr
    assert TAKEN not in done.stderr
    assert "spec prebuild helper built" in done.stderr  # the load's own helper: 1,000 blobs it has not seen
    missing = plan(tmp_path / "c", "--repo", str(large.path), "--base", "no-such-branch")
    assert missing.returncode == 1
    assert "'no-such-branch' is not a branch" in missing.stdout + missing.stderr
    assert TAKEN not in missing.stderr
