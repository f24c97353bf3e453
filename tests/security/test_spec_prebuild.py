"""Attack cases: hostile spec files in the share of a cold load's forked helper (`gitopsd.spec.prebuild`).

The helper reads and builds a share of the spec files of a large commit in a second process. Whatever a file
holds, the helper works within the same bounds as the loader (it gives up on an alias at once, so a bomb never
expands there), and what it hands back only ever saves this process the work of building a plain document:
every model is still validated here, and every file the helper did not build cleanly is loaded from its text.
So the commit is refused with exactly the problems, files and lines of a load without a helper, and the helper's
memory stays that of the process it was forked from.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gitopsd.source.mirror import Source
from tests.conftest import GitRepo
from tests.security.test_spec_input import bomb
from tests.test_plan_cold import add_models, plan
from tests.test_prebuild import MODELS, probe
from tests.test_speccache import model_file

HOSTILE = {
    "zz-bomb": ("  labels: {team: cache}\n", "  labels:\n" + bomb("block")),
    "zz-deep": ("team: cache", "team: " + "[" * 100 + "]" * 100),
    "zz-loop": ("labels: {team: cache}", "labels: &x {a: *x}"),
    "zz-number": ("team: cache", "team: " + "9" * 5000),
    "zz-escape": ("team: cache", 'team: "\\u001b]0;owned\\u0007"'),
}


def test_hostile_files_in_the_helpers_share_are_refused_as_without_it(demo_repo: GitRepo, tmp_path: Path) -> None:
    for index in range(MODELS):
        demo_repo.write(f"models/many/m{index:02}.yaml", model_file(f"m{index:02}", index + 1))
    for name, (old, new) in HOSTILE.items():  # named to sort last: the first files the helper takes
        demo_repo.write(f"models/many/{name}.yaml", model_file(name, 1).replace(old, new))
    (demo_repo.path / "models/many/zz-utf8.yaml").write_bytes(b"\xff\xfe" + model_file("zz-utf8", 1).encode())
    commit = demo_repo.commit("Hostile files among many")
    mirror = tmp_path / "mirror.git"
    Source(str(demo_repo.path), mirror).fetch()
    report = probe(demo_repo, mirror, commit)
    assert report["same"]
    problems = "\n".join(report["problems"])
    for name in [*HOSTILE, "zz-utf8"]:
        assert f"models/many/{name}.yaml:" in problems, problems
    assert "YAML aliases expand this document to more than 100000 values" in problems
    # the loader waited for the helper: it built every plain file (the demo's, the MODELS, and the escape, which is
    # plain YAML that validation here refuses), and none of the others
    assert report["built"] == [MODELS + 2]
    assert report["helper_peak_mib"] < 256, "the helper's memory grew with a hostile file"


@pytest.fixture
def large(demo_repo: GitRepo) -> GitRepo:
    return add_models(demo_repo)


def test_a_cold_plans_early_helper_refuses_hostile_files_as_one_core_does(large: GitRepo, tmp_path: Path) -> None:
    """The helper `gitopsd plan` starts before its load reads the repository itself, and what it makes of a
    hostile file never changes a problem."""
    for name, (old, new) in HOSTILE.items():
        large.write(f"models/many/{name}.yaml", model_file(name, 1).replace(old, new))
    (large.path / "models/many/zz-utf8.yaml").write_bytes(b"\xff\xfe" + model_file("zz-utf8", 1).encode())
    large.commit("Hostile files among many")
    helped = plan(tmp_path / "a", "--repo", str(large.path))
    alone = plan(tmp_path / "b", "--repo", str(large.path), cpus=1)
    assert "the load takes over the helper started before it" in helped.stderr
    assert helped.returncode == alone.returncode == 1
    assert helped.stdout == alone.stdout
    assert helped.stderr.splitlines()[-len(HOSTILE) - 1 :] == alone.stderr.splitlines()[-len(HOSTILE) - 1 :]
    for name in [*HOSTILE, "zz-utf8"]:
        assert f"models/many/{name}.yaml:" in helped.stderr


def test_a_file_over_the_size_bound_leaves_a_cold_plans_early_helper_unused(large: GitRepo, tmp_path: Path) -> None:
    """A file over the bound is refused unread, so the loader does not load the files the early helper works on
    (which never reads that one): it stops and reaps it, and the commit is refused as by one core."""
    large.write("models/many/zz-huge.yaml", model_file("zz-huge", 1) + "#" * (300 * 1024) + "\n")
    large.commit("A file over the bound among many")
    helped = plan(tmp_path / "a", "--repo", str(large.path))
    alone = plan(tmp_path / "b", "--repo", str(large.path), cpus=1)
    assert "the load takes over the helper started before it" not in helped.stderr
    assert helped.returncode == alone.returncode == 1
    assert helped.stdout == alone.stdout
    assert "models/many/zz-huge.yaml: the file is" in helped.stderr


def test_the_helper_stops_taking_files_once_it_holds_its_node_budget(demo_repo: GitRepo, tmp_path: Path) -> None:
    """Files within every bound but of many nodes each: this process builds, validates and drops them one by one,
    while the helper holds what it built until the two meet. So it stops at its node budget (`MAX_NODES`; 50,000
    in this probe) and leaves the rest to this process, which refuses each file as it would without a helper."""
    wide = "apiVersion: gitopsd/v1\nkind: Model\nmetadata: {name: NAME}\nspec: [" + ",".join(["ab"] * 10_000) + "]\n"
    files = 20
    for index in range(files):
        demo_repo.write(f"models/wide/w{index:02}.yaml", wide.replace("NAME", f"w{index:02}"))
    commit = demo_repo.commit("Wide files")
    mirror = tmp_path / "mirror.git"
    Source(str(demo_repo.path), mirror).fetch()
    report = probe(demo_repo, mirror, commit, "budget")
    assert report["same"]
    problems = "\n".join(report["problems"])
    for index in range(files):
        assert f"models/wide/w{index:02}.yaml:" in problems
    # each file has about 10,010 nodes: the helper takes files until it holds more than 50,000, so five
    assert report["built"] == [5]
