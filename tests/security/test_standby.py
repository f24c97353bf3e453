"""A daemon taking over a repository reads the shared run root, which trainings can write: forged run
directories are adopted only as far as Git backs them, and nothing in them decides how a run is judged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GitRepo
from tests.test_adopt import Site


@pytest.fixture
def site(tmp_path: Path, demo_repo: GitRepo) -> Iterator[Site]:
    made = Site(tmp_path, demo_repo)
    yield made
    for rec in made.opened:
        rec.close()


def plant(site: Site, template: dict[str, object], name: str, **changes: object) -> Path:
    run_dir = site.runs / name
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({**template, "run_id": name, **changes}))
    return run_dir


def test_forged_run_directories_are_not_adopted_and_gates_come_from_git(site: Site, tmp_path: Path) -> None:
    login1 = site.daemon("login1")
    login1.reconcile()
    (real,) = site.run_dirs()
    template = json.loads((site.runs / real / "run.json").read_text())
    login1.close()

    lenient = plant(site, template, "blobs-0000000a", validate=["accuracy >= 0"], daemon_host="evil\nFAKE LOG LINE")
    plant(site, template, "blobs-00000013", outputs={"artifact": "../../../etc", "metrics": "metrics.jsonl"})
    plant(site, template, "blobs-0000000b", repository_id="0" * 16)  # another repository's
    plant(site, template, "blobs-0000000c", run_id="blobs-0000000d")  # names another run
    plant(site, template, "blobs-0000000e", run_key="f" * 64)  # a run key the commit does not want
    plant(site, template, "blobs-0000000f", commit="0" * 40)  # a commit the repository does not have
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({**template, "run_id": "blobs-00000010"}))
    (site.runs / "blobs-00000010").mkdir()
    (site.runs / "blobs-00000010" / "run.json").symlink_to(outside)  # a link: never followed
    (site.runs / "blobs-00000011").symlink_to(lenient)  # a linked run directory
    huge = site.runs / "blobs-00000012"
    huge.mkdir()
    (huge / "run.json").write_text(json.dumps({**template, "run_id": "blobs-00000012", "pad": "x" * (2 << 20)}))

    login2 = site.daemon("login2")
    login2.take_over()
    login2.reconcile()
    adopted = {run_id for run_id, _ in site.rows("login2")}
    assert len(adopted) == 1 and adopted <= {real, "blobs-0000000a"}, "one run per run key, never a second copy"
    if "blobs-0000000a" not in adopted:  # the real one came first (its random name sorted before the forgery)
        return
    snapshot = login2.state.snapshot("blobs-0000000a")
    assert snapshot is not None
    assert snapshot["validate"] == ["accuracy >= 0.9", "loss < 0.5"], "the gates are the spec's, not run.json's"
    assert snapshot["outputs"]["artifact"] == "model.json"
    messages = [e["message"] for e in login2.state.events("blobs") if e["run_id"] == "blobs-0000000a"]
    assert messages and all("\n" not in m for m in messages), messages
    # nothing else was touched (the real run's training may still be writing in its directory)
    assert sorted(p.name for p in site.runs.iterdir() if p.name != real) == sorted(
        ["blobs-0000000a", "blobs-0000000b", "blobs-0000000c", "blobs-0000000e", "blobs-0000000f", "blobs-00000010",
         "blobs-00000011", "blobs-00000012", "blobs-00000013"]
    )  # fmt: skip
