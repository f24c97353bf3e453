"""README.md and `--help` stay true to the code: every command is documented, every documented one exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gitopsd.cli.args import GRAMMAR
from tests.cli import invoke

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _commands() -> set[str]:
    import gitopsd.cli.main  # noqa: F401  (it declares the commands, its own and its modules')

    return {command.path for command in GRAMMAR.commands}


def _documented() -> set[str]:
    table = README.split("## CLI reference", 1)[1].split("\n## ", 1)[0]
    return {m.group(1).strip() for m in re.finditer(r"^\| `gitopsd ([a-z]+(?: [a-z]+)?)", table, re.M)}


def test_every_command_is_in_the_readme_cli_reference_and_back() -> None:
    assert _commands() == _documented()


def test_every_command_has_help_with_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    listed = invoke(capsys, ["--help"])
    assert listed.exit_code == 0
    for name in sorted(_commands()):
        assert re.search(rf"^ +{name.split()[0]} +[A-Z]", listed.stdout, re.M), f"{name} is not listed by --help"
        for flag in ("--help", "-h"):
            result = invoke(capsys, [*name.split(), flag])
            assert result.exit_code == 0, name
            assert result.stdout.startswith(f"usage: gitopsd {name} "), name
            assert len(result.stdout.splitlines()) > 3 and result.stderr == "", name


def test_the_example_daemon_configuration_is_valid() -> None:
    from gitopsd.daemon.config import load_config

    config = load_config(Path(__file__).resolve().parent.parent / "config" / "gitopsd.example.toml")
    assert config.repositories[0].name == "ml-models"


def test_every_toml_example_in_the_readme_is_a_valid_configuration(tmp_path: Path) -> None:
    from gitopsd.daemon.config import load_config

    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        path = tmp_path / f"example-{i}.toml"
        path.write_text(block)
        load_config(path)
