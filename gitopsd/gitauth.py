"""Credentials for fetching (and pushing tags to) private Git remotes, from the environment only.

The daemon's configuration exports them by reference (`[environment]` with `file:`/`credential:` values), so no
secret is in the GitOps repository or the config file:
- HTTPS: `GITOPSD_GIT_TOKEN` (a forge token or password) and `GITOPSD_GIT_USERNAME` (default `git`; GitHub
  accepts any name with a token, GitLab wants `oauth2`);
- SSH: `GITOPSD_GIT_SSH_KEY` (a private key file; `GITOPSD_GIT_SSH_PASSPHRASE` if it has one), else the
  ssh-agent at `$SSH_AUTH_SOCK`.
libgit2 asks for credentials only when the server demands them; asking twice for the same URL means they were
refused, and the fetch then fails with a clear error instead of looping.
"""

from __future__ import annotations

import os
from typing import Any

import pygit2
from pygit2.enums import CredentialType


class EnvCredentials(pygit2.RemoteCallbacks):
    def __init__(self) -> None:
        super().__init__()
        self._asked: set[str] = set()

    def credentials(self, url: str, username_from_url: str | None, allowed_types: CredentialType) -> Any:
        if url in self._asked:
            raise pygit2.GitError(f"the credentials for {url} were refused")
        self._asked.add(url)
        if allowed_types & CredentialType.USERPASS_PLAINTEXT:
            token = os.environ.get("GITOPSD_GIT_TOKEN")
            if token:
                return pygit2.UserPass(os.environ.get("GITOPSD_GIT_USERNAME") or username_from_url or "git", token)
        if allowed_types & CredentialType.SSH_KEY:
            user = username_from_url or "git"
            key = os.environ.get("GITOPSD_GIT_SSH_KEY")
            if key:
                passphrase = os.environ.get("GITOPSD_GIT_SSH_PASSPHRASE", "")
                return pygit2.Keypair(user, f"{key}.pub" if os.path.exists(f"{key}.pub") else None, key, passphrase)
            if os.environ.get("SSH_AUTH_SOCK"):
                return pygit2.KeypairFromAgent(user)
        raise pygit2.GitError(
            f"{url} needs credentials: set GITOPSD_GIT_TOKEN (HTTPS) or GITOPSD_GIT_SSH_KEY / an ssh-agent (SSH)"
        )
