"""No Python traceback reaches a user of the command line on bad input; `--verbose` shows one.

Each case is a real command on real bad input (a corrupt database, a missing or malformed configuration, a
repository that does not exist, a label that is not NAME@N), in a subprocess like a user runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import GitRepo, gitopsd


def _corrupt_state(state_dir: Path) -> list[str]:
    state_dir.mkdir(parents=True)
    (state_dir / "state.db").write_bytes(b"this is not a database" * 100)
    return ["status"]


def _bad_config(state_dir: Path) -> list[str]:
    config = state_dir.parent / "bad.toml"
    config.write_text('[backends.x]\ntype = "slurm"\nsettings = "not a table"\n')
    return ["--config", str(config), "validate", str(state_dir.parent)]


def _missing_config(state_dir: Path) -> list[str]:
    return ["--config", str(state_dir.parent / "nope.toml"), "plan", "--repo", str(state_dir.parent)]


def _missing_repo(state_dir: Path) -> list[str]:
    return ["reconcile", "--repo", str(state_dir.parent / "no-such-repo")]


def _bad_label(state_dir: Path) -> list[str]:
    return ["registry", "show", "no-version-here"]


def _binary_spec(state_dir: Path) -> list[str]:
    repo = state_dir.parent / "binary"
    (repo / "models").mkdir(parents=True)
    (repo / "models" / "m.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 50)
    return ["validate", str(repo)]


CASES: dict[str, Callable[[Path], list[str]]] = {
    "corrupt state database": _corrupt_state,
    "malformed configuration": _bad_config,
    "missing configuration": _missing_config,
    "missing repository": _missing_repo,
    "malformed version label": _bad_label,
    "binary spec file": _binary_spec,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_an_error_line_not_a_traceback(tmp_path: Path, case: str) -> None:
    state_dir = tmp_path / "state"
    args = CASES[case](state_dir)
    done = gitopsd(state_dir, *args, check=False)
    assert done.returncode in (1, 2), done
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip(), "the user is told what went wrong"
    if case == "missing repository":
        assert "does not exist (or is not a git repository)" in done.stderr


def test_a_damaged_state_database_is_one_line_naming_it_and_verbose_shows_the_traceback(
    demo_repo: GitRepo, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    _corrupt_state(state_dir)
    quiet = gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), check=False)
    loud = gitopsd(state_dir, "--verbose", "reconcile", "--repo", str(demo_repo.path), check=False)
    assert quiet.returncode == loud.returncode == 1
    assert "Traceback" not in quiet.stderr and len(quiet.stderr.strip().splitlines()) == 1
    assert f"cannot read {state_dir / 'state.db'}" in quiet.stderr


def test_an_error_of_the_host_is_one_line_and_verbose_shows_its_traceback(demo_repo: GitRepo, tmp_path: Path) -> None:
    state_dir = tmp_path / ("x" * 300)  # an operating-system error gitopsd has no words of its own for
    quiet = gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), check=False)
    loud = gitopsd(state_dir, "--verbose", "reconcile", "--repo", str(demo_repo.path), check=False)
    assert quiet.returncode == loud.returncode == 1
    assert quiet.stderr.strip() == f"error: {state_dir}: File name too long", "the file and why: not a bug of ours"
    assert "Traceback" in loud.stderr


def test_an_unexpected_error_is_one_line_and_a_hint_and_verbose_shows_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gitopsd.cli import main as cli

    def broken(args: list[str]) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_run", broken)
    for args, hint in ((["status"], "run with --verbose for the traceback"),
                       (["-v", "status"], "please report it with the traceback above")):  # fmt: skip
        with pytest.raises(SystemExit) as stopped:
            cli.main(args)
        said = capsys.readouterr().err
        assert stopped.value.code == 1
        assert said.endswith(f"error: RuntimeError: a bug\n(an unexpected error; {hint})\n"), said
        assert ("Traceback" in said) == (args[0] == "-v")


def test_a_healthy_repository_still_works_after_all_that(demo_repo: GitRepo, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    gitopsd(state_dir, "validate", str(demo_repo.path))
