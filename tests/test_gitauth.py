"""Fetching a private repository over real smart HTTP (git http-backend behind basic auth) with a token."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gitopsd.cli.scaffold import init_demo
from gitopsd.errors import SourceUnavailable
from gitopsd.source.mirror import Source

TOKEN = "glpat-test-token"
BACKEND = Path(subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip())


def _git_http(root: Path) -> Any:
    """A WSGI app serving the repositories under `root` through `git http-backend`, for user oauth2:TOKEN only."""
    expected = "Basic " + base64.b64encode(f"oauth2:{TOKEN}".encode()).decode()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Length", "0")])
            return [b""]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        env = {
            "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": environ["PATH_INFO"],
            "REQUEST_METHOD": environ["REQUEST_METHOD"], "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""), "REMOTE_USER": "oauth2", "PATH": os.environ["PATH"],
        }  # fmt: skip
        out = subprocess.run([str(BACKEND / "git-http-backend")], input=body, env=env, capture_output=True,
                             check=True).stdout  # fmt: skip
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = [tuple(line.decode().split(": ", 1)) for line in head.split(b"\r\n") if b": " in line]
        status = next((v for k, v in headers if k.lower() == "status"), "200 OK")
        start_response(status, [(k, v) for k, v in headers if k.lower() != "status"])
        return [payload]

    return app


@pytest.fixture
def private_url(tmp_path: Path) -> Iterator[str]:
    from waitress.server import create_server

    init_demo(tmp_path / "work")
    (tmp_path / "srv").mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "work"), str(tmp_path / "srv" / "ml.git")],
                   check=True)  # fmt: skip
    server = create_server(_git_http(tmp_path / "srv"), host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}/ml.git"
    server.close()


def test_a_private_repository_is_fetched_with_the_token_from_the_environment(
    private_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITOPSD_GIT_USERNAME", "oauth2")
    monkeypatch.setenv("GITOPSD_GIT_TOKEN", TOKEN)
    source = Source(private_url, tmp_path / "mirror.git")
    source.fetch()
    commit = source.resolve(None)
    assert "models/blobs.yaml" in source.spec_files(commit)


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_missing_or_wrong_credentials_are_a_clear_source_error(
    private_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str | None
) -> None:
    monkeypatch.setenv("GITOPSD_GIT_USERNAME", "oauth2")
    if token is None:
        monkeypatch.delenv("GITOPSD_GIT_TOKEN", raising=False)
    else:
        monkeypatch.setenv("GITOPSD_GIT_TOKEN", token)
    with pytest.raises(SourceUnavailable, match=r"needs credentials|were refused") as raised:
        Source(private_url, tmp_path / "mirror.git").fetch()
    assert "wrong-token" not in str(raised.value)
