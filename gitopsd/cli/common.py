"""What the `gitopsd` subcommand modules share: the state directory, failing with exit 1, the registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from gitopsd.registry.versions import Registry

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "gitopsd"


def state_dir(ctx: click.Context) -> Path:
    path: Path = ctx.obj["state_dir"]
    return path


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(1)


def open_registry(ctx: click.Context) -> Registry:
    from gitopsd.registry.versions import Registry

    return Registry(state_dir(ctx) / "registry.db", readonly=True)
