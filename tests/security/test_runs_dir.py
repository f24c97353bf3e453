"""A repository cannot choose where runs are written: `runs_dir` (a backend's shared run root) is a path on the
operator's hosts. A gitops.yaml naming it would put a training's tree, outputs and records (and everything a
later pass reads back) anywhere the daemon may write, e.g. over another repository's runs or the state dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from gitopsd.daemon.config import load_config
from gitopsd.errors import PermanentError, SpecError
from gitopsd.spec.operator import Caps, Operator, OperatorBackend, refusals
from gitopsd.spec.resolve import load_repository_for
from tests.conftest import GitRepo, gitopsd

HPC = OperatorBackend(type="slurm", settings={"runs_dir": "/shared/runs"}, allow={"partition": "*"})
OPERATOR = Operator(backends={"hpc": HPC})
GITOPS = "apiVersion: gitopsd/v1\nkind: Repository\nbackends:\n  hpc:\n    settings: {runs_dir: /home/gitopsd/state}\n"


def test_a_repository_naming_runs_dir_is_refused_with_its_line() -> None:
    with pytest.raises(SpecError) as caught:
        load_repository_for(OPERATOR, GITOPS)
    ((problem),) = caught.value.problems
    assert (problem.line, problem.field) == (5, "backends.hpc.settings.runs_dir")
    assert "'runs_dir' is a path on the operator's hosts: only the operator's configuration" in problem.message


def test_an_operator_cannot_open_runs_dir_to_repositories(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[backends.hpc]\ntype = "slurm"\nallow = { runs_dir = "*" }\n')
    with pytest.raises(PermanentError) as caught:
        load_config(config)
    assert str(caught.value) == (
        f"{config}: backends.hpc.allow: 'runs_dir' is a path on the operator's hosts: a repository may "
        "never set it, remove it from allow"
    )


@dataclass(frozen=True)
class Declared:
    """A backend as a gitops.yaml declares it (what `refusals` reads)."""

    settings: dict[str, object]
    type: str | None = None


def test_even_an_allow_list_that_slipped_past_validation_does_not_let_it_pass() -> None:
    unchecked = OperatorBackend.model_construct(type="slurm", settings={}, allow={"runs_dir": "*"}, caps=Caps())
    found = refusals(
        {"hpc": Declared(settings={"runs_dir": "/tmp/x"})}, Operator.model_construct(backends={"hpc": unchecked})
    )
    assert [r.field for r in found] == ["backends.hpc.settings.runs_dir"]


def test_validate_and_plan_refuse_it_and_nothing_is_written_there(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere"
    config = tmp_path / "config.toml"
    config.write_text('[backends.local]\ntype = "local"\n')
    text = demo_repo.read("gitops.yaml").replace(
        "registry:\n", f"backends:\n  local:\n    settings: {{runs_dir: '{target}'}}\nregistry:\n", 1
    )
    demo_repo.write("gitops.yaml", text)
    demo_repo.commit("Write our runs where we like")
    done = gitopsd(state_dir, "--config", str(config), "reconcile", "--repo", str(demo_repo.path), check=False)
    assert "'runs_dir' is a path on the operator's hosts" in done.stdout + done.stderr
    assert not target.exists()
