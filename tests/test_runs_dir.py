"""A backend's shared run root (`runs_dir`): checked when the daemon or `gitopsd reconcile` starts, so a missing,
misnamed or read-only run root is one clear line before anything is submitted, not a failed job later."""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

from gitopsd.backends.protocol import runs_dir_of, runs_dir_problem
from gitopsd.errors import PermanentError
from gitopsd.reconcile.launch import check_runs_dirs
from gitopsd.spec.operator import Operator, OperatorBackend
from tests.conftest import GitRepo, gitopsd


def operator_with(runs_dir: object) -> Operator:
    return Operator(backends={"hpc": OperatorBackend(type="slurm", settings={"runs_dir": runs_dir})})


def test_a_writable_directory_is_accepted_and_the_check_leaves_nothing_behind(tmp_path: Path) -> None:
    assert runs_dir_problem("hpc", tmp_path) is None
    check_runs_dirs(operator_with(str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("what", "words"),
    [
        ("missing", "does not exist: create it on the filesystem the compute nodes share"),
        ("file", "is not a directory"),
    ],
)
def test_a_missing_run_root_or_a_file_is_named_with_backend_setting_and_fix(
    tmp_path: Path, what: str, words: str
) -> None:
    path = tmp_path / what
    if what == "file":
        path.touch()
    with pytest.raises(PermanentError) as caught:
        check_runs_dirs(operator_with(str(path)))
    message = str(caught.value)
    assert message.startswith(f"backend 'hpc' setting runs_dir ({path}) ")
    assert words in message and "[backends.hpc] settings.runs_dir" in message
    assert "\n" not in message


def test_a_relative_run_root_is_refused() -> None:
    with pytest.raises(PermanentError, match="backend 'hpc' setting runs_dir: expected an absolute path, got 'runs'"):
        check_runs_dirs(operator_with("runs"))


def problem_as_nobody(path: Path) -> str:
    """`runs_dir_problem` in a forked child that has become the user nobody (as a daemon's own user would be)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, (runs_dir_problem("hpc", path) or "").encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    return text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to check as another user")
def test_a_run_root_the_daemons_user_cannot_write_is_refused() -> None:
    base = Path(tempfile.mkdtemp(prefix="gitopsd-runs-dir-"))  # pytest's tmp_path is not searchable by nobody
    try:
        base.chmod(0o755)
        root = base / "runs"
        root.mkdir(mode=0o755)
        message = problem_as_nobody(root)
        assert message.startswith(f"backend 'hpc' setting runs_dir ({root}) is not writable by the daemon's user "
                                  "(uid 65534): Permission denied; make it writable")  # fmt: skip
        assert "ReadWritePaths=" in message
        root.chmod(0o777)
        assert problem_as_nobody(root) == "", "once it may write there, it is accepted"
        assert list(root.iterdir()) == []
    finally:
        shutil.rmtree(base)


def test_backends_without_a_run_root_keep_their_runs_in_the_state_dir() -> None:
    class Plain:
        name = "local"

    class Shared:
        name = "hpc"
        runs_dir = Path("/shared/runs")

    assert runs_dir_of(Plain()) is None
    assert runs_dir_of(Shared()) == Path("/shared/runs")


def config_toml(tmp_path: Path, runs_dir: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(f"""
        state_dir = "{tmp_path / "daemon-state"}"
        [[repositories]]
        name = "demo"
        url = "{tmp_path / "repo"}"
        [backends.local]
        type = "local"
        [backends.hpc]
        type = "slurm"
        settings = {{ runs_dir = "{runs_dir}" }}
        """)
    )
    return config


def test_reconcile_refuses_to_start_with_a_missing_run_root(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path
) -> None:
    config = config_toml(tmp_path, tmp_path / "not-mounted")
    done = gitopsd(state_dir, "--config", str(config), "reconcile", "--repo", str(demo_repo.path), check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: backend 'hpc' setting runs_dir ({tmp_path / 'not-mounted'}) does not exist: create it on the "
        "filesystem the compute nodes share, or change [backends.hpc] settings.runs_dir in the operator's "
        "configuration"
    ]
    assert not state_dir.exists(), "nothing was fetched or recorded"


def test_the_daemon_refuses_to_start_with_a_missing_run_root(demo_repo: GitRepo, tmp_path: Path) -> None:
    config = config_toml(tmp_path, tmp_path / "not-mounted")
    done = gitopsd(tmp_path / "unused", "run", "--config", str(config), check=False, timeout=60)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: backend 'hpc' setting runs_dir (") and "does not exist" in line
    assert not (tmp_path / "daemon-state").exists(), "a refused start holds nothing"
