"""The command line's grammar (`gitopsd/cli/args.py` on argparse): usage errors exit 2 naming what is wrong,
every level has -h/--help, environment variables give defaults, repeatable options come as tuples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gitopsd.cli.args import build_parser, chosen, options_of
from gitopsd.cli.main import TOP_OPTIONS
from tests.cli import invoke


def _error_line(stderr: str) -> str:
    """The one `error:` line of a usage error (argparse writes `gitopsd CMD: error: ...` under the usage)."""
    lines = [line for line in stderr.splitlines() if "error: " in line]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["status", "--bogus"], "--bogus"),  # an unknown option, said by the command's own parser
        (["registry", "list", "--nope"], "--nope"),
        (["logs"], "MODEL"),  # a missing argument
        (["promote", "blobs@1"], "--alias"),  # a missing required option
        (["plan", "--format", "yaml"], "--format"),  # a bad choice
        (["usage", "--by", "group"], "--by"),
        (["reconcile", "--timeout", "soon"], "--timeout"),  # a bad number
        (["registry", "verify", "--stale-after", "-1"], "--stale-after"),
        (["nosuch"], "nosuch"),  # an unknown command
        (["registry", "nosuch"], "nosuch"),
        (["--state-dir"], "--state-dir"),  # an option without its value
    ],
)
def test_a_usage_error_exits_2_naming_it(capsys: pytest.CaptureFixture[str], args: list[str], named: str) -> None:
    done = invoke(capsys, args)
    assert done.exit_code == 2, done
    assert named in _error_line(done.stderr)
    assert done.stdout == ""


def test_an_option_of_a_command_shows_that_commands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    done = invoke(capsys, ["status", "--bogus"])
    assert done.stderr.startswith("usage: gitopsd status ")
    assert "gitopsd status: error: unrecognized arguments: --bogus" in done.stderr


def test_a_top_option_given_after_the_command_says_where_it_goes(capsys: pytest.CaptureFixture[str]) -> None:
    done = invoke(capsys, ["plan", "--config", "operator.toml"])
    assert done.exit_code == 2
    assert _error_line(done.stderr).endswith(
        "unrecognized arguments: --config operator.toml (--config goes before the command: gitopsd --config ... plan)"
    )


def test_the_operators_configuration_given_before_the_command_must_exist_and_serves_doctor(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    done = invoke(capsys, ["--config", str(tmp_path / "missing.toml"), "status"])
    assert done.exit_code == 2 and "--config" in _error_line(done.stderr) and "does not exist" in done.stderr
    config = tmp_path / "gitopsd.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    ran = _gitopsd(["--config", str(config), "doctor", "--no-probe"], {}, tmp_path)
    assert ran.stdout.startswith(f"gitopsd doctor: {config}\n"), ran.stderr


def test_a_path_that_must_exist_is_checked_before_the_command_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    done = invoke(capsys, ["--state-dir", str(tmp_path), "plan", "--verify-gpg-keyring", str(tmp_path / "none")])
    assert done.exit_code == 2
    assert "--verify-gpg-keyring" in _error_line(done.stderr) and "does not exist" in done.stderr
    done = invoke(capsys, ["--state-dir", str(tmp_path), "status", "--config", str(tmp_path)])
    assert done.exit_code == 2
    assert "--config" in _error_line(done.stderr) and "is a directory" in done.stderr


def test_a_usage_error_found_by_the_command_exits_2_with_its_usage(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    done = invoke(capsys, ["--state-dir", str(tmp_path), "reconcile"])  # nothing tracked and no --repo
    assert done.exit_code == 2
    assert done.stderr.startswith("usage: gitopsd reconcile ")
    assert "give --repo URL|PATH" in _error_line(done.stderr)


@pytest.mark.parametrize("args", [[], ["registry"]])
def test_a_group_without_its_command_shows_its_help_as_a_usage_error(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    done = invoke(capsys, args)
    assert done.exit_code == 2
    assert done.stderr.startswith(" ".join(["usage: gitopsd", *args]) + " ")
    assert "list" in done.stderr if args else "reconcile" in done.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    done = invoke(capsys, ["--version"])
    assert (done.exit_code, done.stdout) == (0, f"gitopsd, version {version('gitopsd')}\n")


def _gitopsd(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GITOPSD_")}
    return subprocess.run([sys.executable, "-m", "gitopsd", *args], capture_output=True, text=True,
                          env=base | {"XDG_CONFIG_HOME": str(cwd / "config"), **env}, cwd=cwd, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    "command", [["status"], ["reconcile", "--repo", "nowhere"], ["plan", "--repo", "nowhere"], ["history", "m"]]
)
def test_a_file_where_the_state_dir_must_be_is_one_line_naming_it(tmp_path: Path, command: list[str]) -> None:
    file = tmp_path / "state"
    file.write_text("not a directory\n")
    for given, blocking in ((file, "it"), (file / "below", str(file))):
        done = _gitopsd(["--state-dir", str(given), *command], {}, tmp_path)
        said = (
            f"error: state directory {given}: {blocking} is a file, not a directory (--state-dir or GITOPSD_STATE_DIR)"
        )
        assert (done.returncode, done.stderr.strip(), done.stdout) == (1, said, ""), done.stderr
    assert file.read_text() == "not a directory\n"


def test_the_state_dir_comes_from_the_environment_unless_given(tmp_path: Path) -> None:
    from_env = _gitopsd(["status"], {"GITOPSD_STATE_DIR": str(tmp_path / "env")}, tmp_path)
    assert from_env.returncode == 3 and f"nothing reconciled yet in {tmp_path / 'env'} " in from_env.stdout
    given = _gitopsd(["--state-dir", str(tmp_path / "flag"), "status"], {"GITOPSD_STATE_DIR": str(tmp_path)}, tmp_path)
    assert given.returncode == 3 and f"nothing reconciled yet in {tmp_path / 'flag'} " in given.stdout
    empty = _gitopsd(["status"], {"GITOPSD_STATE_DIR": "", "XDG_STATE_HOME": str(tmp_path / "xdg")}, tmp_path)
    assert empty.returncode == 3 and f"in {tmp_path / 'xdg' / 'gitopsd'} " in empty.stdout  # empty: unset
    for xdg in ("", "relative"):  # the XDG spec: an empty value is unset, a relative one is ignored
        home = {"GITOPSD_STATE_DIR": "", "XDG_STATE_HOME": xdg, "HOME": str(tmp_path / "home")}
        done = _gitopsd(["status"], home, tmp_path)
        assert done.returncode == 3 and f"in {tmp_path / 'home' / '.local' / 'state' / 'gitopsd'} " in done.stdout


def test_a_state_dir_that_cannot_be_created_is_one_line_naming_it_not_an_unexpected_error(tmp_path: Path) -> None:
    done = _gitopsd(["--state-dir", "/proc/gitopsd-nowhere", "reconcile", "--repo", str(tmp_path)], {}, tmp_path)
    assert (done.returncode, done.stderr.strip()) == (1, "error: /proc/gitopsd-nowhere: No such file or directory")


def test_gitopsd_config_satisfies_runs_required_config(tmp_path: Path) -> None:
    missing = _gitopsd(["run"], {}, tmp_path)
    assert missing.returncode == 2 and "--config" in _error_line(missing.stderr)
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml\n")
    from_env = _gitopsd(["run"], {"GITOPSD_CONFIG": str(bad)}, tmp_path)
    assert from_env.returncode == 1, from_env.stderr  # it got as far as reading the file
    assert "bad.toml" in from_env.stderr and "Traceback" not in from_env.stderr


def test_the_top_level_config_comes_from_the_environment(tmp_path: Path) -> None:
    bad = tmp_path / "operator.toml"
    bad.write_text("this is = = not toml\n")
    done = _gitopsd(["--state-dir", str(tmp_path), "usage"], {"GITOPSD_CONFIG": str(bad)}, tmp_path)
    assert done.returncode == 1 and "operator.toml" in done.stderr, done.stderr


def _options(args: list[str]) -> dict[str, object]:
    namespace, extras = build_parser(TOP_OPTIONS, only=chosen(args, TOP_OPTIONS)).parse_known_args(args)
    assert extras == []
    return options_of(namespace._command, namespace)


def test_a_repeatable_option_is_a_tuple() -> None:
    assert _options(["comment", "plan.md"])["appendix"] == ()
    assert _options(["comment", "plan.md", "--append", "a.log", "--append", "b.log"])["appendix"] == (
        Path("a.log"), Path("b.log"))  # fmt: skip


def test_defaults_and_flag_pairs() -> None:
    assert _options(["reconcile"]) == {"repo": None, "branch": None, "mode": "once", "timeout": 3600,
                                            "verify_allowed_signers": None, "verify_gpg_keyring": None,
                                            "verify_since": None}  # fmt: skip
    assert _options(["reconcile", "--wait", "--timeout", "5"])["mode"] == "wait"
    assert _options(["reconcile", "--wait", "--once"])["mode"] == "once"  # the last one wins
    assert _options(["validate"]) == {"path": Path(".")}
    assert _options(["status", "iris", "--json"]) == {"model": "iris", "as_json": True, "wide": False,
                                                      "config_path": None}  # fmt: skip


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["status"], "status"),
        (["--state-dir", "status", "logs"], "logs"),  # the value of --state-dir is not the command
        (["--state-dir=x", "-v", "registry", "list"], "registry"),
        (["--config", "c.toml", "--verbose", "plan", "--repo", "r"], "plan"),
        (["--help"], None),
        ([], None),
    ],
)
def test_the_command_is_the_first_word_after_the_top_level_options(args: list[str], command: str | None) -> None:
    assert chosen(args, TOP_OPTIONS) == command
