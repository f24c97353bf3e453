"""The operator's configuration against a repository's intent: what a gitops.yaml may set on the operator's
backends, the caps on what a model may ask for, and each repository's own artifact store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gitopsd.daemon.config import load_config
from gitopsd.errors import PermanentError, SpecError
from gitopsd.model import Resources
from gitopsd.spec.load import load_model
from gitopsd.spec.operator import Caps, Operator, OperatorBackend, over_caps
from gitopsd.spec.resolve import load_repository_for
from gitopsd.spec.schema import resolve_train
from tests.conftest import GitRepo, gitopsd

HPC = OperatorBackend(
    type="slurm",
    settings={
        "transport": "rest",
        "rest": {"url": "http://slurm.internal:6820", "token_env": "SLURM_JWT"},
        "partition": "gpu",
    },
    allow={"partition": ["gpu", "debug"], "qos": "*", "exclusive": [True, False]},
    caps=Caps(gpus=4, timeout=3600),
)
OPERATOR = Operator(backends={"local": OperatorBackend(type="local"), "hpc": HPC})
MODEL = """apiVersion: gitopsd/v1
kind: Model
metadata: {name: m}
spec:
  train: {command: x, backend: hpc}
  outputs: {artifact: model.bin}
"""


def repo_text(backends: str) -> str:
    return f"apiVersion: gitopsd/v1\nkind: Repository\nbackends:\n{backends}"


def problems(text: str, operator: Operator = OPERATOR) -> list[tuple[int | None, str, str]]:
    with pytest.raises(SpecError) as info:
        load_repository_for(operator, text)
    return [(p.line, p.field, p.message) for p in info.value.problems]


def test_a_repository_without_backends_gets_every_one_the_operator_offers() -> None:
    repo = load_repository_for(OPERATOR, "apiVersion: gitopsd/v1\nkind: Repository\n")
    assert sorted(repo.backends) == ["hpc", "local"]
    assert repo.backends["hpc"].settings == HPC.settings
    assert repo.backend_type("hpc") == "slurm"


def test_allowed_values_override_the_operators_and_only_they_enter_the_run_key() -> None:
    repo = load_repository_for(OPERATOR, repo_text("  hpc:\n    settings: {partition: debug, qos: high}\n"))
    assert list(repo.backends) == ["hpc"], "a repository that names backends uses only those"
    train = resolve_train(load_model(MODEL, "models/m.yaml"), repo)
    assert train.settings["partition"] == "debug" and train.settings["rest"] == HPC.settings["rest"]
    assert train.keyed_settings == {"partition": "debug", "qos": "high"}, "no URL or token source in the key"


@pytest.mark.parametrize(
    ("backends", "line", "field", "message"),
    [
        ("  hpc:\n    settings:\n      rest: {url: 'http://127.0.0.1:9'}\n", 6, "backends.hpc.settings.rest",
         "'rest' belongs in the operator's configuration"),
        ("  hpc:\n    settings: {slurm_conf: /etc/shadow}\n", 5, "backends.hpc.settings.slurm_conf",
         "a repository may set: exclusive, partition, qos"),
        ("  hpc:\n    settings: {partition: admin}\n", 5, "backends.hpc.settings.partition",
         "'admin' is not allowed for backend 'hpc' (allowed: gpu, debug)"),
        ("  hpc:\n    settings: {exclusive: 'yes'}\n", 5, "backends.hpc.settings.exclusive", "not allowed"),
        ("  hpc:\n    type: local\n", 5, "backends.hpc.type", "is of type 'slurm'"),
        ("  evil:\n    type: slurm\n", 4, "backends.evil", "'evil' is not offered"),
        ("  local:\n    settings: {max_parallel: 64}\n", 5, "backends.local.settings.max_parallel",
         "a repository may set: nothing"),
    ],
)  # fmt: skip
def test_what_the_operator_does_not_allow_is_refused_with_its_line(
    backends: str, line: int, field: str, message: str
) -> None:
    ((found_line, found_field, found_message),) = problems(repo_text(backends))
    assert (found_line, found_field) == (line, field)
    assert message in found_message


def test_the_default_backend_must_be_one_the_repository_may_use() -> None:
    text = "apiVersion: gitopsd/v1\nkind: Repository\ndefaults: {backend: gpu}\n"
    ((line, field, message),) = problems(text)
    assert (line, field) == (3, "defaults.backend")
    assert "'gpu' is not offered by the operator's configuration" in message


@pytest.mark.parametrize(
    ("resources", "timeout", "refusal"),
    [
        (Resources(gpus=4), 3600, None),
        (Resources(gpus=5), 3600, "gpus 5 is over the operator's cap of 4"),
        (Resources(gpus=1), 7200, "timeout 7200 s is over the operator's cap of 3600 s"),
        (Resources(gpus=1), None, "no timeout set"),
    ],
)
def test_caps(resources: Resources, timeout: int | None, refusal: str | None) -> None:
    found = over_caps(resources, timeout, HPC.caps)
    assert found == refusal if refusal is None else refusal in (found or "")


def test_no_caps_refuse_nothing() -> None:
    assert over_caps(Resources(cpus=512, gpus=64, memory_mb=1 << 30, nodes=99), None, Caps()) is None


# ---- the TOML ---------------------------------------------------------------------------------------------


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gitopsd.toml"
    path.write_text('state_dir = "/var/lib/gitopsd"\n' + text)
    return path


REPOS = """
[[repositories]]
name = "team-a"
url = "/srv/git/a.git"
[[repositories]]
name = "team-b"
url = "/srv/git/b.git"
backends = ["local"]
"""


def test_each_repository_gets_its_own_store_and_its_backends(tmp_path: Path) -> None:
    text = '[backends.local]\n[backends.gpu]\ntype = "nvidia"\n[registry]\nartifacts = "s3://models/prod"\n' + REPOS
    loaded = load_config(config(tmp_path, text))
    a, b = (loaded.operator_for(r) for r in loaded.repositories)
    assert (a.registry.artifacts, b.registry.artifacts) == ("s3://models/prod/team-a", "s3://models/prod/team-b")
    assert (sorted(a.backends), sorted(b.backends)) == (["gpu", "local"], ["local"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('artifacts = "file:///srv/store"\n[[repositories]]\nname = "c"\nurl = "/c"\nartifacts = "file:///srv/store/x"',
         "would share the artifact store"),
        ('[[repositories]]\nname = "c"\nurl = "/c"\nbackends = ["gpu"]', r"names backends not in \[backends\]: gpu"),
    ],
)  # fmt: skip
def test_two_repositories_never_share_a_store_and_name_only_declared_backends(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(PermanentError, match=message):
        load_config(config(tmp_path, REPOS + extra + "\n"))


def test_the_command_line_uses_the_operators_configuration(demo_repo: GitRepo, state_dir: Path) -> None:
    """`gitopsd --config` (or $GITOPSD_CONFIG) gives validate, plan and reconcile the operator's backends."""
    operator_file = state_dir.parent / "config.toml"
    operator_file.write_text('[backends.box]\ntype = "local"\nsettings = { max_parallel = 1 }\nallow = {}\n')
    refused = gitopsd(state_dir, "--config", str(operator_file), "validate", str(demo_repo.path), check=False)
    assert refused.returncode == 1
    assert "defaults.backend: backend 'local' is not offered" in refused.stderr

    demo_repo.edit("gitops.yaml", "  backend: local\n", "  backend: box\n")
    demo_repo.commit("Train on the operator's box")
    gitopsd(state_dir, "--config", str(operator_file), "validate", str(demo_repo.path))
    env_run: dict[str, Any] = {"GITOPSD_CONFIG": str(operator_file)}
    shown = _gitopsd_env(state_dir, env_run, "plan", "--repo", str(demo_repo.path)).stdout
    assert "+ train blobs (attempt 1) on box" in shown


def _gitopsd_env(state_dir: Path, env: dict[str, Any], *args: str) -> Any:
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "gitopsd", *args],
        env={**os.environ, "GITOPSD_STATE_DIR": str(state_dir), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_operator_numbers_are_bounded_too(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"registry.object_lock_days: .*36500"):
        load_config(config(tmp_path, "[registry]\nobject_lock_days = 36501\n"))
    with pytest.raises(PermanentError, match=r"backends.hpc.caps.gpus: .*10000"):
        load_config(config(tmp_path, '[backends.hpc]\ntype = "slurm"\ncaps = { gpus = 10001 }\n'))
