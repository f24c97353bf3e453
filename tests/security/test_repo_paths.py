"""Repository paths stay in the repository: a data file, requirements file, workdir or spec file that is a
symbolic link out of the tree, and file:// data outside the operator's data roots, are refused before anything
outside is read, hashed or shown.

Each case is a real repository with the link committed, run through `gitopsd validate` (the working tree),
`gitopsd plan` and `gitopsd reconcile` (the commit).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from gitopsd.errors import PermanentError
from tests.conftest import GitRepo, gitopsd
from tests.security.conftest import Canary

MODEL = "models/blobs.yaml"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _link(repo: GitRepo, rel: str, target: str) -> None:
    path = repo.path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    os.symlink(target, path)


def _gates(repo: GitRepo, state_dir: Path, *config: str) -> list[str]:
    """Every output of validate, plan and reconcile on the repository, asserting that each refused."""
    validate = gitopsd(state_dir, *config, "validate", str(repo.path), check=False)
    plan = gitopsd(state_dir, *config, "plan", "--repo", str(repo.path), check=False)
    reconcile = gitopsd(state_dir, *config, "reconcile", "--repo", str(repo.path), check=False)
    status = gitopsd(state_dir, "status", "--json", check=False)
    assert validate.returncode == 1 and plan.returncode == 1, (validate.stderr, plan.stderr)
    repository = json.loads(status.stdout)["repository"]
    assert repository["applied_commit"] is None, "the commit was rejected whole"
    return [validate.stdout, validate.stderr, plan.stdout, plan.stderr, reconcile.stdout, reconcile.stderr,
            status.stdout]  # fmt: skip


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_a_data_file_linked_out_of_the_tree_is_refused_and_never_hashed(
    demo_repo: GitRepo, state_dir: Path, canary: Canary, how: str
) -> None:
    target = str(canary.file) if how == "absolute" else os.path.relpath(canary.file, demo_repo.path / "data")
    _link(demo_repo, "data/blobs.csv", target)
    demo_repo.commit("Data, of a sort")
    outputs = _gates(demo_repo, state_dir)
    assert "spec.data[0].uri" in outputs[1] and "outside the repository" in outputs[1]
    assert "spec.data[0].uri" in outputs[3] and "outside the repository" in outputs[3]
    canary.assert_not_in(*outputs)
    assert not any(_digest(canary.file) in text for text in outputs), "the outside file was never hashed"
    assert not (state_dir / "runs").exists() or not list((state_dir / "runs").iterdir())


def test_a_requirements_file_or_workdir_linked_out_is_refused(
    demo_repo: GitRepo, state_dir: Path, canary: Canary
) -> None:
    _link(demo_repo, "src/requirements.txt", str(canary.file))
    demo_repo.edit(MODEL, "    workdir: src\n", "    workdir: src\n    python: {requirements: src/requirements.txt}\n")
    _link(demo_repo, "tools", str(canary.file.parent))
    demo_repo.commit("Requirements from elsewhere")
    outputs = _gates(demo_repo, state_dir)
    assert "spec.train.python.requirements" in outputs[1] and "spec.train.python.requirements" in outputs[3]
    canary.assert_not_in(*outputs)

    demo_repo.edit(MODEL, "    python: {requirements: src/requirements.txt}\n", "")
    demo_repo.edit(MODEL, "    workdir: src\n", "    workdir: tools\n")
    demo_repo.commit("Train in a directory outside")
    outputs = _gates(demo_repo, state_dir)
    assert "spec.train.workdir" in outputs[1] and "spec.train.workdir" in outputs[3]


def test_a_spec_file_linked_out_of_the_working_tree_is_never_read(
    demo_repo: GitRepo, state_dir: Path, canary: Canary
) -> None:
    for spec in ("gitops.yaml", "models/other.yaml"):
        _link(demo_repo, spec, str(canary.file))
        done = gitopsd(state_dir, "validate", str(demo_repo.path), check=False)
        assert done.returncode == 1 and f"{spec}: a symbolic link that leads outside the repository" in done.stderr
        canary.assert_not_in(done.stdout, done.stderr)
        (demo_repo.path / spec).unlink()


def test_a_models_directory_linked_out_of_the_working_tree_is_never_read(
    demo_repo: GitRepo, state_dir: Path, canary: Canary, tmp_path: Path
) -> None:
    """Every file under a linked models/ leads outside, and `validate` refuses each one unread."""
    outside = tmp_path / "outside-models"
    (demo_repo.path / "models").rename(outside)
    (outside / "secret.yaml").write_text(f"kind: Model\nmetadata: {{name: {canary.file_secret}}}\n")
    _link(demo_repo, "models", str(outside))
    done = gitopsd(state_dir, "validate", str(demo_repo.path), check=False)
    assert done.returncode == 1
    for spec in ("models/blobs.yaml", "models/secret.yaml"):
        assert f"{spec}: a symbolic link that leads outside the repository: refused, not read" in done.stderr
    canary.assert_not_in(done.stdout, done.stderr)


def test_a_link_that_stays_inside_the_repository_is_fine(demo_repo: GitRepo, state_dir: Path) -> None:
    (demo_repo.path / "data" / "blobs.csv").rename(demo_repo.path / "data" / "blobs-v1.csv")
    _link(demo_repo, "data/blobs.csv", "blobs-v1.csv")
    demo_repo.commit("Versioned data behind a link")
    gitopsd(state_dir, "validate", str(demo_repo.path))
    shown = gitopsd(state_dir, "plan", "--repo", str(demo_repo.path)).stdout
    assert "+ train blobs" in shown


def test_file_data_must_lie_under_the_operators_data_roots(
    demo_repo: GitRepo, state_dir: Path, canary: Canary, tmp_path: Path
) -> None:
    state_db = state_dir / "state.db"
    demo_repo.edit(MODEL, "    - uri: data/blobs.csv\n", f"    - uri: file://{state_db}\n")
    demo_repo.commit("Train on the daemon's own database")
    outputs = _gates(demo_repo, state_dir)
    assert f"file://{state_db} is outside the data directories the operator allows (none)" in outputs[1]
    assert "spec.data[0].uri" in outputs[3]

    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "blobs.csv").write_text((demo_repo.path / "data" / "blobs.csv").read_text())
    os.symlink(canary.file, datasets / "sneaky.csv")
    config = tmp_path / "operator.toml"
    config.write_text(f'data_roots = ["{datasets}"]\n')
    demo_repo.edit(MODEL, f"    - uri: file://{state_db}\n", f"    - uri: file://{datasets}/blobs.csv\n")
    demo_repo.edit(MODEL, "train.py --epochs", f"train.py --data {datasets}/blobs.csv --epochs")
    demo_repo.commit("Data from the shared datasets")
    gitopsd(state_dir, "--config", str(config), "validate", str(demo_repo.path))
    gitopsd(state_dir, "--config", str(config), "reconcile", "--repo", str(demo_repo.path), "--wait")
    assert json.loads(gitopsd(state_dir, "status", "blobs", "--json").stdout)["models"][0]["latest_version"] == 1

    # A link under a data root that leads out of it is refused when the run starts, before hashing.
    demo_repo.edit(MODEL, f"file://{datasets}/blobs.csv", f"file://{datasets}/sneaky.csv")
    demo_repo.commit("Data through a link")
    gitopsd(state_dir, "--config", str(config), "reconcile", "--wait", "--timeout", "60", check=False)
    status = json.loads(gitopsd(state_dir, "status", "blobs", "--json").stdout)["models"][0]
    assert "leads outside the operator's data_roots: refused" in json.dumps(status), status
    canary.assert_not_in(json.dumps(status))
    assert _digest(canary.file) not in json.dumps(status)


def test_a_file_that_many_data_entries_name_through_links_is_hashed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository may name one large file through hundreds of links: each was hashed on its own before every
    submission (a 1 GiB file named 500 times: 500 GiB read). Each real file is now read once per check; a link
    to another file is still checked against its own digest."""
    from gitopsd.reconcile import launch
    from gitopsd.reconcile.desired import DesiredModel, keys_for
    from gitopsd.registry import store
    from gitopsd.spec.load import load_model
    from gitopsd.spec.schema import RepositorySpec, resolve_train

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"x" * 4096)
    (tmp_path / "data" / "other.bin").write_bytes(b"y")
    for index in range(200):
        os.symlink("big.bin", tmp_path / "data" / f"link{index}.bin")
    big, other = _digest(tmp_path / "data" / "big.bin"), _digest(tmp_path / "data" / "other.bin")
    entries = [("data/big.bin", big), *((f"data/link{i}.bin", big) for i in range(200)), ("data/other.bin", other)]
    data = "".join(f"    - {{uri: {uri}, sha256: '{sha}'}}\n" for uri, sha in entries)
    text = (f"apiVersion: gitopsd/v1\nkind: Model\nmetadata: {{name: m}}\nspec:\n  train: {{command: x}}\n"
            f"  data:\n{data}  outputs: {{artifact: a}}\n")  # fmt: skip
    repo = RepositorySpec.model_validate({"apiVersion": "gitopsd/v1", "kind": "Repository", "backends": {"local": {}}})
    spec = load_model(text, "models/m.yaml")
    train = resolve_train(spec, repo)
    run_key, spec_digest = keys_for(spec, train, "t", None)
    model = DesiredModel(name="m", path="models/m.yaml", spec=spec, train=train, code_tree="t", run_key=run_key,
                         spec_digest=spec_digest)  # fmt: skip
    read: list[Path] = []

    def sha256_file(path: Path) -> str:
        read.append(path)
        return store.sha256_file(path)

    monkeypatch.setattr(launch, "sha256_file", sha256_file)
    launch.check_data(model, tmp_path)
    assert sorted(p.name for p in read) == ["big.bin", "other.bin"]
    (tmp_path / "data" / "link7.bin").unlink()
    os.symlink("other.bin", tmp_path / "data" / "link7.bin")
    with pytest.raises(PermanentError, match=f"data data/link7.bin has sha256 {other}, but the spec says {big}"):
        launch.check_data(model, tmp_path)


def test_a_fifo_in_place_of_data_is_refused_without_waiting_for_a_writer(demo_repo: GitRepo, state_dir: Path) -> None:
    """`validate` hashes a working tree's data against its pinned digest: a FIFO there must not block it."""
    (demo_repo.path / "data" / "blobs.csv").unlink()
    os.mkfifo(demo_repo.path / "data" / "blobs.csv")
    done = gitopsd(state_dir, "validate", str(demo_repo.path), check=False, timeout=60)
    assert done.returncode == 1
    assert f"{MODEL}: spec.data[0].uri: file 'data/blobs.csv' does not exist" in done.stderr
