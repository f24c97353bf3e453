"""Credentials for fetching (and pushing tags to) private Git remotes over HTTPS, from the environment only.

The daemon's configuration exports them by reference (`[environment]` with `file:`/`credential:` values), so no
secret is in the GitOps repository or the config file: `GITOPSD_GIT_TOKEN` (a forge token or password) and
`GITOPSD_GIT_USERNAME` (default `git`; GitHub accepts any name with a token, GitLab wants `oauth2`). SSH remotes
do not come here: they go through OpenSSH (see `gitssh`), which checks host keys.
libgit2 asks for credentials only when the server demands them; asking twice for the same URL means they were
refused, and the fetch then fails with a clear error instead of looping.
"""

from __future__ import annotations

import os
from typing import Any

import pygit2
from pygit2.enums import CredentialType

from gitopsd.source.redact import redact_url


class EnvCredentials(pygit2.RemoteCallbacks):
    def __init__(self) -> None:
        super().__init__()
        self._asked: set[str] = set()

    def credentials(self, url: str, username_from_url: str | None, allowed_types: CredentialType) -> Any:
        if url in self._asked:
            raise pygit2.GitError(f"the credentials for {redact_url(url)} were refused")
        self._asked.add(url)
        if allowed_types & CredentialType.USERPASS_PLAINTEXT:
            token = os.environ.get("GITOPSD_GIT_TOKEN")
            if token:
                return pygit2.UserPass(os.environ.get("GITOPSD_GIT_USERNAME") or username_from_url or "git", token)
        shown = redact_url(url)
        if shown != url:  # libgit2 tried the URL's own credentials first: the server refused them
            raise pygit2.GitError(f"{shown} refused the credentials in its URL (or set GITOPSD_GIT_TOKEN instead)")
        raise pygit2.GitError(f"{shown} needs credentials: set GITOPSD_GIT_TOKEN (and GITOPSD_GIT_USERNAME)")
