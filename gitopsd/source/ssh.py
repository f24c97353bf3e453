"""Fetching and pushing over SSH with git and OpenSSH, so that the server's host key is always verified.

libgit2 as pygit2 ships it accepts any SSH host key: pygit2 cannot show the key to Python and lets every SSH
certificate check pass. A daemon that trains whatever the remote serves cannot afford that, so SSH remotes
(`ssh://...` and scp-like `user@host:path`) go through the `git` command and OpenSSH instead, with
`StrictHostKeyChecking=yes`: an unknown or changed host key refuses the fetch with a message that says how to
pin it. OpenSSH also brings what HPC users already rely on: `~/.ssh/config`, `ProxyJump` through a bastion,
certificates and agents.

Credentials and trust come from the environment, like the HTTPS token (see `gitauth`):
`GITOPSD_GIT_SSH_KEY` (a private key file; `GITOPSD_GIT_SSH_PASSPHRASE` if it is encrypted), else the
ssh-agent at `$SSH_AUTH_SOCK`; `GITOPSD_GIT_KNOWN_HOSTS`, the known_hosts file to trust (default: OpenSSH's
own, `~/.ssh/known_hosts` and `/etc/ssh/ssh_known_hosts`). No prompt is ever shown: a missing secret is an error.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

TIMEOUT_S = 300
_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?(?:\[[^\]/]+\]|[^@/:\[]+):(?!//)")
_ASKPASS = '#!/bin/sh\nprintf "%s\\n" "$GITOPSD_GIT_SSH_PASSPHRASE"\n'


class SshGitError(Exception):
    """git over SSH failed; the message says why and, where it can, what to do."""


def is_ssh_url(url: str) -> bool:
    """ssh://host/path, git+ssh://..., ssh+git://... and scp-like [user@]host:path (not a local path)."""
    scheme, sep, _ = url.partition("://")
    if sep:
        return scheme.lower() in ("ssh", "git+ssh", "ssh+git")
    return bool(_SCP_LIKE.match(url)) and not url.startswith(("/", "./", "../", "~"))


def ssh_command(env: dict[str, str]) -> str:
    """The GIT_SSH_COMMAND: host keys checked strictly, never a prompt, our key only when one is given."""
    args = ["ssh", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=15"]
    args += ["-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no"]
    known_hosts = env.get("GITOPSD_GIT_KNOWN_HOSTS")
    if known_hosts:
        args += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    key = env.get("GITOPSD_GIT_SSH_KEY")
    if key:
        args += ["-i", key, "-o", "IdentitiesOnly=yes"]
    if not env.get("GITOPSD_GIT_SSH_PASSPHRASE"):
        args += ["-o", "BatchMode=yes"]  # BatchMode would also refuse the askpass that gives the passphrase
    return shlex.join(args)


@contextmanager
def _environment() -> Iterator[dict[str, str]]:
    """The environment of one git call; with a passphrase, a private askpass script that prints it."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_SSH_VARIANT="ssh", LC_ALL="C")
    env["GIT_SSH_COMMAND"] = ssh_command(env)
    if not env.get("GITOPSD_GIT_SSH_PASSPHRASE"):
        yield env
        return
    import tempfile  # here: `source.urls` imports this module on every command's start, for `is_ssh_url`

    with tempfile.TemporaryDirectory(prefix="gitopsd-askpass-") as private:  # 0700
        askpass = os.path.join(private, "askpass")
        with open(askpass, "w", encoding="ascii") as fh:
            fh.write(_ASKPASS)
        os.chmod(askpass, 0o700)
        yield {**env, "SSH_ASKPASS": askpass, "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": env.get("DISPLAY", ":0")}


def _explain(url: str, stderr: str) -> str:
    text = " ".join(line.strip() for line in stderr.splitlines() if line.strip())
    known_hosts = os.environ.get("GITOPSD_GIT_KNOWN_HOSTS") or "~/.ssh/known_hosts"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return (
            f"the SSH host key of {url} has CHANGED since it was pinned in {known_hosts}: refusing to fetch "
            "(someone may be intercepting the connection; if the server was re-keyed, replace its line)"
        )
    if "Host key verification failed" in text or "host key is known" in text:
        return (
            f"the SSH host key of {url} is not known: check its fingerprint with the server's owner, then "
            f"add it to {known_hosts} (ssh-keyscan [-p PORT] HOST >> FILE) or point GITOPSD_GIT_KNOWN_HOSTS at "
            "a file that has it"
        )
    if "Permission denied" in text:
        return (
            f"the SSH server of {url} refused the key: set GITOPSD_GIT_SSH_KEY to a key it accepts (and "
            f"GITOPSD_GIT_SSH_PASSPHRASE if it is encrypted), or load one into the ssh-agent ({text})"
        )
    return text or "git exited without saying why"


def run_git(args: Sequence[str], *, url: str) -> str:
    """Run `git ARGS` over SSH for `url`; its stdout, or SshGitError with the reason explained."""
    with _environment() as env:
        try:
            done = subprocess.run(
                ["git", *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=TIMEOUT_S, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise SshGitError(f"git {args[0]} of {url} took longer than {TIMEOUT_S} s") from exc
        except OSError as exc:
            raise SshGitError(f"cannot run git for {url}: {exc}") from exc
    if done.returncode != 0:
        raise SshGitError(_explain(url, done.stderr))
    return done.stdout


@dataclass(frozen=True)
class RemoteHeads:
    """What `git ls-remote --symref` says: branch -> commit, and the branch HEAD points at."""

    heads: dict[str, str]
    head: str | None


def list_heads(url: str) -> RemoteHeads:
    heads: dict[str, str] = {}
    head = None
    for line in run_git(["ls-remote", "--symref", url], url=url).splitlines():
        left, _, name = line.partition("\t")
        if left.startswith("ref: ") and name == "HEAD":
            head = left.removeprefix("ref: ")
        elif name.startswith("refs/heads/"):
            heads[name] = left
    return RemoteHeads(heads=heads, head=head)
