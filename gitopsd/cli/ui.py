"""`gitopsd ui`: the dashboard of a state directory without a daemon, for a user on a login node.

It serves the same application as the daemon's /ui (`gitopsd.ui.app`) with waitress, reading the state
directory (one repository's, or a daemon's with one directory per repository) read-only, so it can run beside
the daemon that writes it. On loopback it needs no token, like the daemon's `local_listen`; an address other
hosts can reach needs `--token-file`, checked like `http.token`. It prints the URL to open and the SSH tunnel
that brings it to a laptop, and runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gitopsd.cli.args import Context, UsageError, command, opt, path_arg
from gitopsd.cli.common import DEFAULT_CONFIG, fail, state_dir
from gitopsd.cli.console import echo

if TYPE_CHECKING:
    from types import FrameType

    from gitopsd.daemon.config import DaemonConfig
    from gitopsd.daemon.httpapi import HttpServer
    from gitopsd.ui.views import UiContext

DEFAULT_LISTEN = "127.0.0.1:8089"


@command(
    "ui",
    opt(
        "--state-dir",
        dest="ui_state_dir",
        metavar="DIRECTORY",
        type=path_arg(file_okay=False),
        help="The state directory to show (one repository's, or a daemon's state_dir); default: gitopsd's own "
        "--state-dir.",
    ),
    opt("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT to serve on (port 0: any)."),
    opt(
        "--token-file",
        metavar="FILE",
        type=path_arg(dir_okay=False),
        help="A file holding the token a browser logs in with (at least 16 random characters); needed when --listen "
        "is reachable from other hosts.",
    ),
    opt(
        "--open-browser",
        choices=["yes", "no"],
        default="no",
        show_default=True,
        help="Open the dashboard in this host's web browser.",
    ),
)
def ui(ctx: Context, ui_state_dir: Path | None, listen: str, token_file: Path | None, open_browser: str) -> None:
    """The read-only web dashboard of the state directory, served until Ctrl-C."""
    if ui_state_dir is not None:
        ctx.state_dir = ui_state_dir.expanduser().absolute()
    from gitopsd.daemon.apiauth import check_token, listen_problem
    from gitopsd.daemon.config import LISTEN
    from gitopsd.daemon.httpapi import HttpServer
    from gitopsd.errors import PermanentError
    from gitopsd.ui.app import UiApp

    if not re.fullmatch(LISTEN, listen):
        raise UsageError(f"{listen!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}", option="--listen")
    token: bytes | None = None
    if token_file is not None:
        try:
            token = check_token(token_file.read_bytes().strip(), f"--token-file {token_file}")
        except OSError as exc:
            fail(f"--token-file {token_file}: cannot read: {exc.strerror}")
        except PermanentError as exc:
            fail(str(exc).removeprefix("http.token "))
    if listen_problem(listen, has_token=token is not None):
        fail(f"--listen {listen} is reachable from other hosts, so the dashboard needs a token: give --token-file "
             "FILE (at least 16 random characters, e.g. `openssl rand -hex 32 > FILE; chmod 600 FILE`), or "
             f"listen on 127.0.0.1 and reach it through an SSH tunnel")  # fmt: skip
    context = _context(ctx)
    guarded = token is not None
    app = UiApp(lambda: context, token=lambda: token)
    host, _, port = listen.rpartition(":")
    try:
        server = HttpServer(app if guarded else app.local, host.strip("[]"), int(port))
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror or exc}; choose another port with --listen 127.0.0.1:PORT")
    url = f"http://{_shown_host(host)}:{server.port}/ui/"
    names = ", ".join(sorted(context.sources))
    echo(f"gitopsd ui: {len(context.sources)} repository(ies) ({names}) from {state_dir(ctx)}, read-only")
    echo(f"open {url}" + (" and log in with the token of --token-file" if guarded else ""))
    if not guarded:
        echo("note: without --token-file every user of this host can open it; on a shared login node give "
                   "--token-file FILE")  # fmt: skip
    echo(f"from a laptop: ssh -L {server.port}:127.0.0.1:{server.port} <login-node>, then open "
               f"http://127.0.0.1:{server.port}/ui/")  # fmt: skip
    echo("Ctrl-C stops it")
    _serve(server, url if open_browser == "yes" else None)


def _context(ctx: Context) -> UiContext:
    """Where the data is: the repositories found in the state directory; commit links, backends and the GPU lease
    book from the operator's configuration (--config, else the default one if it exists)."""
    from gitopsd.backends.protocol import SHARED_STATE_ENV
    from gitopsd.ui.sources import discover
    from gitopsd.ui.views import UiContext

    directory = state_dir(ctx)
    sources = discover(directory)
    if not sources:
        fail(f"no state.db in {directory} nor in a directory directly under it: nothing was reconciled there "
             "yet (`gitopsd reconcile --repo URL`), or give --state-dir (a daemon's state_dir works too)")  # fmt: skip
    config = _config(ctx)
    commit_urls: dict[str, str] = {}
    if config is not None and config.state_dir is not None:
        by_dir = {(config.state_dir / r.name).absolute(): r.commit_url for r in config.repositories if r.commit_url}
        commit_urls = {name: by_dir[path.absolute()] for name, path in sources.items() if path.absolute() in by_dir}
    shared = os.environ.get(SHARED_STATE_ENV) or (config.state_dir if config and config.state_dir else None)
    return UiContext(
        sources=sources,
        commit_urls=commit_urls,
        # without a configuration: the backends the models name (views.cluster), the lease book beside the state
        backends=tuple({"name": n, "type": b.type or n} for n, b in config.backends.items()) if config else (),
        lease_book=Path(shared) / "nvidia" / "leases.db" if shared else None,
        started_at=time.time(),
    )


def _config(ctx: Context) -> DaemonConfig | None:
    from gitopsd.daemon.config import load_config
    from gitopsd.errors import GitopsdError

    path = ctx.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is None:
        return None
    try:
        return load_config(path)
    except GitopsdError as exc:
        fail(str(exc))


def _shown_host(host: str) -> str:
    """The host to put in the URL: an any-address (0.0.0.0, [::]) is shown as this host's name."""
    import socket

    return socket.getfqdn() if host.strip("[]") in ("0.0.0.0", "::") else host


def _serve(server: HttpServer, open_url: str | None) -> None:
    """Run `server` until SIGINT or SIGTERM, then close it."""
    import signal
    import threading

    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    if open_url is not None:
        import webbrowser

        webbrowser.open(open_url)
    while not stop.wait(1.0):
        pass
    server.stop()
    echo("gitopsd ui stopped")
