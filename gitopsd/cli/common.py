"""What the `gitopsd` subcommand modules share: the state directory, the operator's configuration, failing with
exit 1, the registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from gitopsd.registry.versions import Registry
    from gitopsd.spec.operator import Operator

DEFAULT_STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "gitopsd"
DEFAULT_CONFIG = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "gitopsd" / "config.toml"


def state_dir(ctx: click.Context) -> Path:
    path: Path = ctx.obj["state_dir"]
    return path


def operator(ctx: click.Context) -> Operator:
    """The operator's backends and store for this state directory: from `--config` (or $GITOPSD_CONFIG, else
    $XDG_CONFIG_HOME/gitopsd/config.toml if it exists), else the built-in default (one `local` backend, a file
    store in the state directory). A daemon configuration whose repository lives in this state directory gives
    that repository's backends and store. The file's `[environment]` is exported for the backends."""
    from gitopsd.daemon.config import apply_environment, load_config
    from gitopsd.errors import GitopsdError
    from gitopsd.spec.operator import Operator

    path: Path | None = ctx.obj.get("config")
    if path is None:
        if not DEFAULT_CONFIG.is_file():
            return Operator()
        path = DEFAULT_CONFIG
    try:
        config = load_config(path)
        apply_environment(config)
    except GitopsdError as exc:
        fail(str(exc))
    here = state_dir(ctx)
    for repo in config.repositories:
        if config.state_dir is not None and config.state_dir_of(repo).absolute() == here:
            return config.operator_for(repo)
    return config.operator()


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(1)


def open_registry(ctx: click.Context) -> Registry:
    from gitopsd.registry.versions import Registry

    return Registry(state_dir(ctx) / "registry.db", readonly=True)
