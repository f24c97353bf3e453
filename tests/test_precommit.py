"""The shipped `.pre-commit-hooks.yaml`, run by the real pre-commit: `pre-commit run --all-files` in a GitOps
repository whose .pre-commit-config.yaml points at this project rejects a bad spec (naming file and field) and
accepts a good one.

pre-commit installs the hook's environment as it would for a user: a virtualenv, then `pip install .` of the
hook repository (this project's files at a commit). Offline and fast: pip takes every wheel from a wheelhouse
repacked once per session from the test environment (tests/wheelhouse.py; PIP_NO_INDEX, PIP_FIND_LINKS), and
pre-commit's cache (PRE_COMMIT_HOME) is in the session's tmp dir, so the environment is built once (about 30 s
on two cores) and both cases reuse it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gitopsd.cli.scaffold import init_demo
from gitopsd.spec.layout import is_spec_path
from tests.conftest import GIT_ENV, GitRepo
from tests.wheelhouse import build_wheelhouse

PROJECT = Path(__file__).resolve().parent.parent
HOOK_FILES = (".pre-commit-hooks.yaml", "pyproject.toml", "README.md", "gitopsd")


@dataclass
class HookEnv:
    hook_repo: Path
    rev: str
    env: dict[str, str]


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True, capture_output=True,
                          text=True)  # fmt: skip
    return done.stdout.strip()


@pytest.fixture(scope="session")
def hook_env(tmp_path_factory: pytest.TempPathFactory) -> HookEnv:
    """This project's working tree (the files a hook install needs) committed as a hook repository, a wheelhouse,
    and the environment that makes pre-commit and pip use them and nothing else."""
    root = tmp_path_factory.mktemp("precommit")
    hook_repo = root / "gitopsd-hooks"
    hook_repo.mkdir()
    for name in HOOK_FILES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, hook_repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, hook_repo / name)
    _git(hook_repo, "init", "-q", "-b", "main")
    _git(hook_repo, "add", "-A")
    _git(hook_repo, "commit", "-qm", "gitopsd at the commit under test")
    wheels = build_wheelhouse(PROJECT / "pyproject.toml", root / "wheels")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUALENV_", "PRE_COMMIT"))}
    env.update({"PRE_COMMIT_HOME": str(root / "cache"), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "VIRTUALENV_NO_DOWNLOAD": "1",
                "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", **GIT_ENV})  # fmt: skip
    return HookEnv(hook_repo=hook_repo, rev=_git(hook_repo, "rev-parse", "HEAD"), env=env)


def consumer(tmp_path: Path, hooks: HookEnv) -> GitRepo:
    """A GitOps repository that uses the hook, with its configuration committed (pre-commit insists)."""
    repo = GitRepo(tmp_path / "repo")
    init_demo(repo.path)
    config = {"repos": [{"repo": str(hooks.hook_repo), "rev": hooks.rev, "hooks": [{"id": "gitopsd-validate"}]}]}
    repo.write(".pre-commit-config.yaml", yaml.safe_dump(config))
    repo.commit("Validate spec files before each commit")
    return repo


def pre_commit(repo: GitRepo, hooks: HookEnv) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pre_commit", "run", "--all-files", "--color", "never"],
                          cwd=repo.path, env=hooks.env, capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_the_hook_accepts_a_good_spec(tmp_path: Path, hook_env: HookEnv) -> None:
    repo = consumer(tmp_path, hook_env)
    done = pre_commit(repo, hook_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"gitopsd validate\.+Passed", done.stdout), done.stdout


@pytest.mark.slow
def test_an_installed_gitopsd_carries_the_ci_templates(tmp_path: Path, hook_env: HookEnv) -> None:
    """The hook's environment is gitopsd installed from its own pyproject.toml: the CI templates are package data
    that `gitopsd init --ci-only` finds there, not files it reads from a source tree."""
    pre_commit(consumer(tmp_path, hook_env), hook_env)  # the environment exists after a first run
    (installed,) = Path(hook_env.env["PRE_COMMIT_HOME"]).glob("repo*/py_env-*/bin/gitopsd")
    target = tmp_path / "existing"
    target.mkdir()
    done = subprocess.run([str(installed), "init", "--ci-only", str(target)], env=hook_env.env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (target / ".github/workflows/gitopsd.yml").read_text().startswith("# gitopsd: validate and plan")
    assert (target / ".gitlab-ci.yml").is_file()


@pytest.mark.slow
def test_the_hook_rejects_a_bad_spec_naming_file_and_field(tmp_path: Path, hook_env: HookEnv) -> None:
    repo = consumer(tmp_path, hook_env)
    repo.edit("models/blobs.yaml", "workdir: src", "workdir: nowhere")
    done = pre_commit(repo, hook_env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"gitopsd validate\.+Failed", done.stdout), done.stdout
    assert "models/blobs.yaml" in done.stdout and "spec.train.workdir" in done.stdout
    assert "'nowhere' does not exist" in done.stdout


def test_the_hook_runs_on_the_spec_files_of_the_layout() -> None:
    hooks = yaml.safe_load((PROJECT / ".pre-commit-hooks.yaml").read_text())
    (hook,) = hooks
    assert hook["entry"] == "gitopsd validate" and hook["pass_filenames"] is False and hook["language"] == "python"
    pattern = re.compile(hook["files"])
    for path in ("gitops.yaml", "models/a.yaml", "models/team/b.yml", "src/train.py", "models/README.md",
                 "sub/gitops.yaml", "data/x.yaml", "gitops.yaml.bak"):  # fmt: skip
        assert bool(pattern.search(path)) == is_spec_path(path), path
