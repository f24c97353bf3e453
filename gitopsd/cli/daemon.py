"""`gitopsd run`, `trigger` and `gpus`: the daemon and what talks to it or to the host's GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gitopsd.cli.args import Context, command, config_opt, opt, path_arg
from gitopsd.cli.common import fail, state_dir
from gitopsd.cli.console import echo


@command(
    "run",
    opt(
        "--config",
        dest="config_path",
        metavar="FILE",
        type=path_arg(dir_okay=False),
        required=True,
        envvar="GITOPSD_CONFIG",
        help="The daemon's TOML configuration [env: GITOPSD_CONFIG].",
    ),
    opt("--listen", metavar="TEXT", help="Override http.listen, e.g. 127.0.0.1:0 for any free port."),
)
def run(ctx: Context, config_path: Path, listen: str | None) -> None:
    """Run the daemon: poll, watch and webhooks trigger reconcile passes; systemd notify; HTTP API."""
    from gitopsd.daemon.service import Daemon
    from gitopsd.errors import GitopsdError

    try:
        daemon = Daemon(config_path, listen=listen)
    except GitopsdError as exc:
        fail(str(exc))
        raise
    raise SystemExit(daemon.run())


@command(
    "trigger",
    opt("--repo", dest="repo_name", metavar="TEXT", help="Only this repository (default: all)."),
    config_opt(
        "Find the daemon's address (http.local_listen, else http.listen) and its API token (http.token) in "
        "this configuration [env: GITOPSD_CONFIG].",
        envvar="GITOPSD_CONFIG",
    ),
    opt("--url", metavar="TEXT", help="The daemon's base URL (default: from --config, else http://127.0.0.1:9090)."),
)
def trigger(ctx: Context, repo_name: str | None, config_path: Path | None, url: str | None) -> None:
    """Ask the running daemon for a reconcile pass now.

    The API wants the daemon's bearer token: from $GITOPSD_API_TOKEN, else read through --config's http.token
    reference. A daemon with http.local_listen is asked there, on loopback, without a token.
    """
    import json
    import os
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    from gitopsd.source.redact import redact_url

    token = os.environ.get("GITOPSD_API_TOKEN", "").strip() or None
    if config_path is not None:
        from gitopsd.daemon.config import load_config, resolve_secret
        from gitopsd.errors import GitopsdError

        try:
            http = load_config(config_path).http
        except GitopsdError as exc:
            fail(str(exc))
            raise
        local = url is None and http.local_listen is not None
        if url is None:
            url = _base_url(http.local_listen or http.listen)
        if token is None and http.token is not None and not local:
            try:
                token = resolve_secret(http.token).decode()
            except GitopsdError as exc:
                fail(f"cannot read the API token: {exc} (or set GITOPSD_API_TOKEN, or http.local_listen)")
                raise
    url = (url or "http://127.0.0.1:9090").rstrip("/")
    target = f"{url}/api/v1/trigger" + (f"?repo={quote(repo_name)}" if repo_name else "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        """A redirect would carry the token to wherever it points: answer it as the error it is instead."""

        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    try:
        request = urllib.request.Request(target, method="POST", headers=headers)
        with urllib.request.build_opener(NoRedirect()).open(request, timeout=10) as answer:
            doc = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        said = _said(exc.read(4096))
        hint = ""
        if exc.code == 401:
            hint = (" (set GITOPSD_API_TOKEN to the daemon's http.token, or give --config of a daemon with "
                    "http.token or http.local_listen)")  # fmt: skip
        fail(f"{redact_url(target)}: {exc.code} {said}{hint}")
        raise
    except OSError as exc:
        fail(f"cannot reach the daemon at {redact_url(url)}: {_why(exc)} (is `gitopsd run` running, listening there?)")
        raise
    echo("triggered: " + ", ".join(doc["triggered"]))


def _said(body: bytes) -> str:
    """What the API's error answer says: its {"error": "..."}, else the text, escaped for a terminal."""
    import contextlib
    import json

    from gitopsd.errors import printable

    said = body.decode(errors="replace").strip()
    with contextlib.suppress(ValueError, KeyError, TypeError):
        said = str(json.loads(said)["error"])
    return printable(said)


def _why(exc: OSError) -> object:
    """Why a request never got an answer, in words ("Connection refused", not "<urlopen error [Errno 111]...>")."""
    import urllib.error

    why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return why.strerror if isinstance(why, OSError) and why.strerror else why


def _base_url(listen: str) -> str:
    """http://HOST:PORT of a listen address; an any-address (0.0.0.0, ::) is reached on loopback."""
    host, _, port = listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    return f"http://{host}:{port}"


@command(
    "gpus",
    opt("--json", dest="as_json", flag=True, help="Machine-readable output."),
    config_opt(
        "Show the GPU leases of this daemon configuration's runs (default: those of GITOPSD_STATE_DIR).",
    ),
)
def gpus(ctx: Context, as_json: bool, config_path: Path | None) -> None:
    """This host's NVIDIA GPUs and MIG instances as the nvidia backend sees them (NVML), and the run that
    holds each one."""
    import json
    import sqlite3

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
        echo(json.dumps(inventory_json(inventory, leased), indent=2))
    else:
        echo(render_table(inventory, leased), nl=False)
