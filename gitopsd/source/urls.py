"""What a repository URL names, without pygit2: a local path or file:// URL, or a remote; the absolute form.

`source.mirror` fetches with pygit2; `reconcile.quickpass` must tell a local repository and its absolute path
before importing it, so these few pure functions live here.
"""

from __future__ import annotations

from pathlib import Path

from gitopsd.source.ssh import is_ssh_url

__all__ = ["is_git_repository", "is_local_url", "local_path", "normalise_url"]


def is_local_url(url: str) -> bool:
    """A path or file:// URL: a repository on this host's file systems."""
    return url.startswith("file://") or ("://" not in url and not is_ssh_url(url))


def local_path(url: str) -> Path | None:
    """The directory of a local repository's URL (a path or file://[localhost]/path), None for a remote one."""
    if not is_local_url(url):
        return None
    if url.startswith("file://"):
        rest = url.removeprefix("file://")
        rest = rest.removeprefix("localhost") if rest.startswith("localhost/") else rest
        return Path(rest) if rest.startswith("/") else None
    return Path(url)


def is_git_repository(path: Path) -> bool:
    """Whether `path` is a repository git can fetch from: bare (HEAD and objects/) or with a .git."""
    try:
        return ((path / "HEAD").is_file() and (path / "objects").is_dir()) or (path / ".git").exists()
    except OSError:
        return False


def normalise_url(url: str) -> str:
    """Local paths become absolute so a mirror keeps working from any current directory."""
    if "://" in url or is_ssh_url(url):
        return url
    return str(Path(url).expanduser().resolve())
