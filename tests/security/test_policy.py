"""A repository trying to dodge the operator's team policy (`[[policies]]`).

Policy is the operator's: a repository can neither declare it nor lift it. What a repository does control is
where its spec files live and the settings `allow` lets it set, so these are the attacks: moving a spec out of
its team's directory, setting a forbidden Slurm partition through gitops.yaml (alone, in a comma-separated
list, or with spaces), and writing a `policies:` section of its own. Each is judged by a dry-run pass (what
`gitopsd plan` shows on a pull request) over a real Git repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gitopsd.daemon.config import load_config
from gitopsd.reconcile.reconciler import Reconciler
from tests.conftest import GitRepo, gitopsd
from tests.test_e2e import MODEL

OPERATOR = """
[backends.local]
type = "local"

[backends.hpc]
type = "slurm"
allow = { partition = "*" }

[backends.hpc.settings]
transport = "rest"
rest = { url = "http://127.0.0.1:9", token_env = "OPERATOR_SLURM_JWT" }
partition = "gpu"

[[policies]]
team = "vision"
paths = ["models/vision/**"]
partitions = ["gpu", "debug"]
max_gpus = 4

[[policies]]
team = "everyone"
max_gpus = 1
"""


def blocked(repo: GitRepo, state_dir: Path, config: Path) -> dict[str, str]:
    rec = Reconciler(state_dir=state_dir, url=str(repo.path), operator=load_config(config).operator())
    try:
        result = rec.reconcile(dry_run=True)
    finally:
        rec.close()
    assert not result.error, result.error
    return dict(result.blocked)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gitopsd.toml"
    path.write_text(OPERATOR)
    return path


def vision_model(repo: GitRepo, path: str, *, gpus: int = 4, backend: str = "local") -> None:
    spec = repo.read(MODEL).replace(
        "  train:\n", f"  train:\n    backend: {backend}\n    resources:\n      gpus: {gpus}\n"
    )
    repo.write(path, spec)
    repo.git("rm", "-q", "--cached", MODEL)
    (repo.path / MODEL).unlink()
    repo.commit(f"a model at {path}")


def test_moving_a_spec_out_of_its_teams_directory_lands_it_under_the_catch_all(
    demo_repo: GitRepo, state_dir: Path, config: Path
) -> None:
    vision_model(demo_repo, "models/vision/blobs.yaml")
    assert blocked(demo_repo, state_dir, config) == {}, "4 GPUs are vision's to use"
    demo_repo.git("mv", "models/vision/blobs.yaml", "models/blobs.yaml")
    demo_repo.commit("Not vision any more: no limit?")
    assert blocked(demo_repo, state_dir, config) == {
        "blobs": "refused at plan time: team everyone: 4 GPUs > 1 allowed per model (policies[1])"
    }


@pytest.mark.parametrize("partition", ["big", "gpu,big", "debug,gpu,big"])
def test_a_forbidden_partition_set_through_gitops_yaml_is_refused(
    demo_repo: GitRepo, state_dir: Path, config: Path, partition: str
) -> None:
    demo_repo.edit(
        "gitops.yaml",
        "registry:\n",
        f"backends:\n  local: {{}}\n  hpc:\n    settings:\n      partition: {partition}\nregistry:\n",
    )
    vision_model(demo_repo, "models/vision/blobs.yaml", backend="hpc")
    refused = blocked(demo_repo, state_dir, config)
    assert "team vision: partition " in refused.get("blobs", ""), refused
    assert refused["blobs"].endswith("is not allowed (allowed: gpu, debug) (policies[0])")


def test_the_operators_own_partition_and_an_allowed_one_pass(demo_repo: GitRepo, state_dir: Path, config: Path) -> None:
    vision_model(demo_repo, "models/vision/blobs.yaml", backend="hpc")
    assert blocked(demo_repo, state_dir, config) == {}, "the operator's partition (gpu) is allowed"
    config.write_text(OPERATOR.replace('partitions = ["gpu", "debug"]', 'partitions = ["debug"]'))
    assert blocked(demo_repo, state_dir, config) == {  # the effective settings are judged, the operator's too
        "blobs": "refused at plan time: team vision: partition 'gpu' is not allowed (allowed: debug) (policies[0])"
    }
    config.write_text(OPERATOR)
    demo_repo.edit(
        "gitops.yaml",
        "registry:\n",
        "backends:\n  local: {}\n  hpc:\n    settings:\n      partition: debug\nregistry:\n",
    )
    demo_repo.commit("debug partition")
    assert blocked(demo_repo, state_dir, config) == {}


def test_a_repository_cannot_declare_or_loosen_policy(demo_repo: GitRepo, state_dir: Path, tmp_path: Path) -> None:
    demo_repo.edit("gitops.yaml", "registry:\n", "policies:\n  - team: us\n    max_gpus: 1000\nregistry:\n")
    demo_repo.commit("Our own rules")
    done = gitopsd(state_dir, "plan", "--repo", str(demo_repo.path), check=False)
    assert done.returncode == 1 and "policies" in done.stderr and "Traceback" not in done.stderr
