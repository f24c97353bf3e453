"""A Git smart-HTTP server on 127.0.0.1 that wants a username and password, for remotes with credentials.

`git http-backend` (the CGI program that ships with git) behind a small WSGI shim on waitress (which, unlike
the standard library's server, reads the chunked bodies libgit2 pushes): fetches and pushes work as against a
forge, but only with HTTP Basic credentials `user:password`; anything else gets 401 and a challenge, like a
private repository. Every request's path is recorded.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitopsd.daemon.httpapi import HttpServer


@dataclass
class GitHttpServer:
    root: Path
    user: str
    password: str
    port: int = 0
    requests: list[str] = field(default_factory=list)

    def url(self, repo: str, userinfo: str | None = None) -> str:
        """http://[USERINFO@]127.0.0.1:PORT/REPO (USERINFO default: the credentials the server wants)."""
        userinfo = f"{self.user}:{self.password}" if userinfo is None else userinfo
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}/{repo}"

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.requests.append(environ.get("PATH_INFO", ""))
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Length", "0")])
            return [b""]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": self.user,  # lets git http-backend accept pushes
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "PATH_INFO": environ.get("PATH_INFO", ""),
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)),
        }
        if environ.get("HTTP_CONTENT_ENCODING"):
            cgi["HTTP_CONTENT_ENCODING"] = environ["HTTP_CONTENT_ENCODING"]
        if environ.get("HTTP_GIT_PROTOCOL"):
            cgi["GIT_PROTOCOL"] = environ["HTTP_GIT_PROTOCOL"]
        out = subprocess.run(["git", "http-backend"], input=body, env=cgi, capture_output=True, check=False).stdout
        head, _, rest = out.partition(b"\r\n\r\n")
        status, headers = "200 OK", []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name, value.strip()))
        start_response(status, headers)
        return [rest]


@contextmanager
def git_http_server(root: Path, *, user: str, password: str) -> Iterator[GitHttpServer]:
    """Serve the bare repositories under `root` until the block ends (and every request is answered).

    gitopsd's own `HttpServer` runs it: it closes waitress from the loop's own thread. waitress's `close()` from
    this thread would race the loop's `select` (EBADF in the loop thread) and could close descriptor numbers a
    later test's server already reuses."""
    app = GitHttpServer(root=root, user=user, password=password)
    server = HttpServer(app, "127.0.0.1", 0, max_body=1 << 30)
    app.port = server.port
    server.start()
    try:
        yield app
    finally:
        server.stop(timeout_s=10)  # every request answered, then closed from the loop's thread
