"""README.md and `--help` stay true to the code: every command is documented, every documented one exists."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from gitopsd.cli.main import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _commands() -> set[str]:
    names = set()
    for name, command in cli.commands.items():
        sub = getattr(command, "commands", None)
        names |= {f"{name} {s}" for s in sub} if sub else {name}
    return names


def _documented() -> set[str]:
    table = README.split("## CLI reference", 1)[1].split("\n## ", 1)[0]
    return {m.group(1).strip() for m in re.finditer(r"^\| `gitopsd ([a-z]+(?: [a-z]+)?)", table, re.M)}


def test_every_command_is_in_the_readme_cli_reference_and_back() -> None:
    assert _commands() == _documented()


def test_every_command_has_help_with_a_summary() -> None:
    runner = CliRunner()
    for name in sorted(_commands()):
        result = runner.invoke(cli, [*name.split(), "--help"])
        assert result.exit_code == 0, name
        assert "Usage: " in result.output and len(result.output.splitlines()) > 3, name


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
