"""Shared by the dashboard's HTTP tests: a reconciled demo state directory, the dashboard served by real waitress
on an ephemeral port, and raw HTTP requests (http.client: the path goes out exactly as written, no redirect is
followed, nothing is normalised)."""

from __future__ import annotations

import gzip
import http.client
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gitopsd.daemon.httpapi import HttpServer
from gitopsd.ui.app import UiApp
from gitopsd.ui.sources import discover
from gitopsd.ui.views import UiContext
from tests.conftest import GIT_ENV


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # by lower-case name
    body: bytes  # as received (still gzipped if it was)

    def text(self) -> str:
        raw = gzip.decompress(self.body) if self.headers.get("content-encoding") == "gzip" else self.body
        return raw.decode()


def call(port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
         body: bytes | None = None) -> Reply:  # fmt: skip
    """One request to 127.0.0.1:`port`, the path sent as is."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return Reply(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        conn.close()


def reconciled_demo(root: Path) -> Path:
    """`gitopsd init` + `gitopsd reconcile --wait` in `root`: the state directory of the demo repository (blobs@1)."""
    env = {**os.environ, **GIT_ENV}
    state = root / "state"
    for args in (["init", str(root / "demo")], ["reconcile", "--repo", str(root / "demo"), "--wait"]):
        done = subprocess.run([sys.executable, "-m", "gitopsd", "--state-dir", str(state), *args], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    return state


@contextmanager
def serving(state: Path, *, token: bytes | None = None, guarded: bool | None = None) -> Iterator[int]:
    """The dashboard of `state` on an ephemeral port: guarded by `token` (by default when one is given), else
    the open application a loopback listener serves. Yields the port."""
    context = UiContext(sources=discover(state), started_at=1.0)
    app = UiApp(lambda: context, token=lambda: token)
    guard = token is not None if guarded is None else guarded
    server = HttpServer(app if guard else app.local, "127.0.0.1", 0)
    server.start()
    try:
        yield server.port
    finally:
        server.stop()
