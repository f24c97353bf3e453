"""Fetching a private repository over real smart HTTP (git http-backend behind basic auth) with a token."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitopsd.cli.scaffold import init_demo
from gitopsd.errors import SourceUnavailable
from gitopsd.source.mirror import Source
from tests.githttp import git_http_server

TOKEN = "glpat-test-token"


@pytest.fixture
def private_url(tmp_path: Path) -> Iterator[str]:
    init_demo(tmp_path / "work")
    (tmp_path / "srv").mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "work"), str(tmp_path / "srv" / "ml.git")],
                   check=True)  # fmt: skip
    with git_http_server(tmp_path / "srv", user="oauth2", password=TOKEN) as server:
        yield server.url("ml.git", userinfo="")


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
