"""What the `gitopsd` subcommand modules share: the state directory, the operator's configuration, failing with
exit 1, the registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from gitopsd.cli.args import Context
    from gitopsd.daemon.config import DaemonConfig, RepositoryConfig
    from gitopsd.reconcile.outputs import OutputLimits
    from gitopsd.registry.versions import Registry
    from gitopsd.source.verify import VerifyPolicy
    from gitopsd.spec.operator import Operator


def xdg_dir(variable: str, default: Path) -> Path:
    """An XDG base directory: the variable's value when it is an absolute path, else `default` (the XDG spec
    treats an empty value as unset and tells programs to ignore a relative one)."""
    value = os.environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else default


DEFAULT_STATE_DIR = xdg_dir("XDG_STATE_HOME", Path.home() / ".local" / "state") / "gitopsd"
DEFAULT_CONFIG = xdg_dir("XDG_CONFIG_HOME", Path.home() / ".config") / "gitopsd" / "config.toml"


def state_dir(ctx: Context) -> Path:
    """The state directory the command works in; an error naming it when a file stands where it, or a folder
    above it, must be (the command would otherwise fail somewhere less clear)."""
    path = ctx.state_dir
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "it" if existing == path else str(existing)
        fail(f"state directory {path}: {where} is a file, not a directory (--state-dir or GITOPSD_STATE_DIR)")
    return path


def operator(ctx: Context) -> Operator:
    """The operator's backends and store for this state directory: from `--config` (or $GITOPSD_CONFIG, else
    $XDG_CONFIG_HOME/gitopsd/config.toml if it exists), else the built-in default (one `local` backend, a file
    store in the state directory). A daemon configuration whose repository lives in this state directory gives
    that repository's backends and store. The file's `[environment]` is exported for the backends."""
    from gitopsd.spec.operator import Operator

    config, repo = _configuration(ctx)
    if config is None:
        return Operator()
    return config.operator_for(repo) if repo is not None else config.operator()


def output_limits(ctx: Context) -> OutputLimits | None:
    """The caps on a training's outputs from the operator's configuration, if there is one."""
    config, _ = _configuration(ctx)
    return config.output_limits.limits() if config is not None else None


def verify_policy(ctx: Context) -> VerifyPolicy | None:
    """The signed-commit policy the operator's configuration sets for the repository of this state directory."""
    _, repo = _configuration(ctx)
    return repo.verify.policy() if repo is not None and repo.verify is not None else None


def configuration_path(ctx: Context) -> Path | None:
    """The operator's configuration file in force: `--config` (or $GITOPSD_CONFIG), else
    $XDG_CONFIG_HOME/gitopsd/config.toml if it exists; None: the built-in default."""
    if ctx.config is not None:
        return ctx.config
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def settled_setup(ctx: Context) -> str | None:
    """The operator part of a settled-pass record (`gitopsd.reconcile.configsource`) for the configuration in
    force, as it applies to this state directory; None without one."""
    config, repo = _configuration(ctx)
    return config.settled_setup(repo) if config is not None else None


def _configuration(ctx: Context) -> tuple[DaemonConfig | None, RepositoryConfig | None]:
    """The operator's configuration file (loaded once, its [environment] exported), and its repository whose
    state directory this is, if any."""
    if ctx.loaded_config is not None:
        return ctx.loaded_config
    path = configuration_path(ctx)
    found: tuple[DaemonConfig | None, RepositoryConfig | None] = (None, None)
    if path is not None:  # the configuration's schema is imported only for a file (20 ms of every command)
        from gitopsd.daemon.config import apply_environment, load_config
        from gitopsd.errors import GitopsdError

        try:
            config = load_config(path)
            apply_environment(config)
        except GitopsdError as exc:
            fail(str(exc))
        here = state_dir(ctx)
        mine = [r for r in config.repositories if config.state_dir and config.state_dir_of(r).absolute() == here]
        found = (config, mine[0] if mine else None)
    ctx.loaded_config = found
    return found


def refuse_beside_a_lease(ctx: Context, command: str) -> None:
    """Refuse a command that would act on a repository whose daemons share a lease (`[standby]`): it would act
    beside the active daemon, which alone may submit, cancel and register."""
    config, repo = _configuration(ctx)
    if config is not None and config.standby is not None and repo is not None:
        fail(f"repository {repo.name} is served by daemons that share a lease ([standby] in the configuration): "
             f"`gitopsd {command}` would act beside the active one; use `gitopsd trigger` or the daemon's API, and "
             "`gitopsd status` to see which host is active")  # fmt: skip


def refuse_without_the_daemons_configuration(ctx: Context, command: str) -> None:
    """Refuse a command that would pass (or plan a pass) in a repository's state directory that a running daemon
    serves, when it was not given the configuration that names that directory: its backends, store and limits
    would not be the daemon's, so it would judge the daemon's commit invalid for asking for backends it does not
    know (a `reconcile` would say so in the status until the daemon's next pass), or register elsewhere."""
    from gitopsd.daemon.instance import serving_daemon

    directory = state_dir(ctx)
    pid = serving_daemon(directory.parent)
    if pid is None:
        return
    path = configuration_path(ctx)
    if path is not None:
        from gitopsd.reconcile.configsource import names_state_dir

        if names_state_dir(path, directory) is not False:
            return
    who = f"the running daemon (pid {pid})" if pid else "a running daemon"
    instead = "use `gitopsd trigger` to ask it for a pass now, or " if command == "reconcile" else ""
    fail(
        f"{directory} is a repository of {who}, which reconciles it with its own configuration: {instead}give "
        f"`gitopsd {command}` that configuration (`gitopsd --config FILE {command}`, or GITOPSD_CONFIG)"
    )


def fail(message: str) -> NoReturn:
    """Print `message` (any URL in it without credentials) and exit 1."""
    from gitopsd.cli.console import echo
    from gitopsd.source.redact import redact_text

    echo(f"error: {redact_text(message)}", err=True)
    raise SystemExit(1)


def open_registry(ctx: Context) -> Registry:
    from gitopsd.registry.versions import Registry

    return Registry(state_dir(ctx) / "registry.db", readonly=True)
