"""`gitopsd run`, `trigger` and `gpus`: the daemon and what talks to it or to the host's GPUs."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import click

from gitopsd.cli.common import fail, state_dir


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    envvar="GITOPSD_CONFIG",
    help="The daemon's TOML configuration [env: GITOPSD_CONFIG].",
)
@click.option("--listen", help="Override http.listen, e.g. 127.0.0.1:0 for any free port.")
def run(config_path: Path, listen: str | None) -> None:
    """Run the daemon: poll, watch and webhooks trigger reconcile passes; systemd notify; HTTP API."""
    from gitopsd.daemon.service import Daemon
    from gitopsd.errors import GitopsdError

    try:
        daemon = Daemon(config_path, listen=listen)
    except GitopsdError as exc:
        fail(str(exc))
        raise
    raise SystemExit(daemon.run())


@click.command()
@click.option("--repo", "repo_name", help="Only this repository (default: all).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="GITOPSD_CONFIG",
    help="Find the daemon's address in this configuration [env: GITOPSD_CONFIG].",
)
@click.option("--url", help="The daemon's base URL (default: from --config, else http://127.0.0.1:9090).")
def trigger(repo_name: str | None, config_path: Path | None, url: str | None) -> None:
    """Ask the running daemon for a reconcile pass now."""
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    if url is None:
        url = "http://127.0.0.1:9090"
        if config_path is not None:
            from gitopsd.daemon.config import load_config
            from gitopsd.errors import GitopsdError

            try:
                host, port = load_config(config_path).http.address()
            except GitopsdError as exc:
                fail(str(exc))
                raise
            url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    target = f"{url.rstrip('/')}/api/v1/trigger" + (f"?repo={quote(repo_name)}" if repo_name else "")
    try:
        with urllib.request.urlopen(urllib.request.Request(target, method="POST"), timeout=10) as answer:
            doc = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        fail(f"{target}: {exc.code} {exc.read().decode(errors='replace').strip()}")
        raise
    except OSError as exc:
        fail(f"cannot reach the daemon at {url}: {exc}")
        raise
    click.echo("triggered: " + ", ".join(doc["triggered"]))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Show the GPU leases of this daemon configuration's runs (default: those of GITOPSD_STATE_DIR).",
)
@click.pass_context
def gpus(ctx: click.Context, as_json: bool, config_path: Path | None) -> None:
    """This host's NVIDIA GPUs and MIG instances as the nvidia backend sees them (NVML), and the run that
    holds each one."""
    from gitopsd.errors import GitopsdError

    try:
        from gitopsd_nvidia.inventory import as_json as inventory_json
        from gitopsd_nvidia.inventory import read_inventory, render_table
        from gitopsd_nvidia.leases import lease_file, leased_devices
    except ImportError:
        fail("the nvidia backend is not installed (pip install -e backends/nvidia)")
        raise
    try:
        shared = None
        if config_path is not None:
            from gitopsd.daemon.config import load_config

            shared = load_config(config_path).state_dir
        book = lease_file(state_dir(ctx), None, shared)
        inventory = read_inventory()
        leased = leased_devices(book)
    except GitopsdError as exc:
        fail(str(exc))
        raise
    except sqlite3.Error as exc:
        fail(f"cannot read the GPU leases in {book}: {exc}")
        raise
    if as_json:
        click.echo(json.dumps(inventory_json(inventory, leased), indent=2))
    else:
        click.echo(render_table(inventory, leased), nl=False)
