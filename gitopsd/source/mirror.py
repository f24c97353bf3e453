"""The Git source: a bare mirror of the tracked repository inside the state directory.

Everything gitopsd knows about desired state comes from here. The mirror is fetched with libgit2 (pygit2), or
with git and OpenSSH for SSH remotes (see `gitssh`: libgit2 would not check the host key), read by commit
without any checkout, and a commit's tree is exported into a run directory only when a run needs it.
A fetch first lists the remote heads and skips the transfer when nothing moved, so an idle pass costs one
round-trip.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pygit2

from gitopsd.errors import PermanentError, SourceUnavailable
from gitopsd.source.credentials import EnvCredentials
from gitopsd.source.ssh import SshGitError, is_ssh_url, list_heads, run_git
from gitopsd.source.treepath import escape
from gitopsd.spec.layout import REPO_SPEC, SPEC_DIR, is_spec_path

_EXECUTABLE = 0o100755
_LINK = 0o120000
_TREE = 0o040000
_COMMIT = 0o160000


def normalise_url(url: str) -> str:
    """Local paths become absolute so a mirror keeps working from any current directory."""
    if "://" in url or is_ssh_url(url):
        return url
    return str(Path(url).expanduser().resolve())


class Source:
    """A bare mirror of one repository, refreshed by `fetch` and read by commit id."""

    def __init__(self, url: str, mirror_dir: Path) -> None:
        self.url = normalise_url(url)
        self.mirror_dir = mirror_dir
        self._repo: pygit2.Repository | None = None

    @property
    def repo(self) -> pygit2.Repository:
        if self._repo is None:
            if (self.mirror_dir / "HEAD").exists():
                self._repo = pygit2.Repository(str(self.mirror_dir))
            else:
                self.mirror_dir.parent.mkdir(parents=True, exist_ok=True)
                repo = pygit2.init_repository(str(self.mirror_dir), bare=True)
                repo.remotes.create("origin", self.url, "+refs/heads/*:refs/heads/*")
                self._repo = repo
        return self._repo

    def fetch(self) -> None:
        """Bring the mirror up to date with the remote; skip the transfer when no head moved."""
        remote = self.repo.remotes["origin"]
        if remote.url != self.url:
            self.repo.remotes.set_url("origin", self.url)
            remote = self.repo.remotes["origin"]
        if is_ssh_url(self.url):
            self._fetch_over_ssh()
            return
        try:
            heads = remote.list_heads(callbacks=EnvCredentials())
            wanted = {h.name: str(h.oid) for h in heads if h.name and h.name.startswith("refs/heads/")}
            have = {name: str(self.repo.references[name].target) for name in self._local_heads()}
            if wanted != have:
                remote.fetch(prune=pygit2.enums.FetchPrune.PRUNE, callbacks=EnvCredentials())
            head = next((h for h in heads if h.name == "HEAD"), None)
            if head is not None and head.symref_target:
                self.repo.set_head(head.symref_target)
        except (pygit2.GitError, KeyError, ValueError) as exc:
            if self.url.startswith("/") and not Path(self.url).exists():
                raise SourceUnavailable(f"cannot fetch {self.url}: no such directory") from exc
            raise SourceUnavailable(f"cannot fetch {self.url}: {exc}") from exc

    def _fetch_over_ssh(self) -> None:
        """The same, through git and OpenSSH, which check the server's host key (see `gitssh`)."""
        try:
            remote = list_heads(self.url)
            have = {name: str(self.repo.references[name].target) for name in self._local_heads()}
            if remote.heads != have:
                run_git(["--git-dir", str(self.mirror_dir), "fetch", "--quiet", "--prune", "origin"], url=self.url)
            if remote.head is not None:
                self.repo.set_head(remote.head)
        except SshGitError as exc:
            raise SourceUnavailable(f"cannot fetch {self.url}: {exc}") from exc
        except (pygit2.GitError, KeyError, ValueError) as exc:
            raise SourceUnavailable(f"cannot fetch {self.url}: {exc}") from exc

    def _local_heads(self) -> Iterator[str]:
        return (name for name in self.repo.references if name.startswith("refs/heads/"))

    def resolve(self, branch: str | None) -> str:
        """The commit id at the tip of `branch` (default: the remote's default branch)."""
        ref = f"refs/heads/{branch}" if branch else self.repo.references["HEAD"].target
        try:
            target = self.repo.references[str(ref)].resolve().target
        except (KeyError, pygit2.InvalidSpecError) as exc:
            known = ", ".join(n.removeprefix("refs/heads/") for n in self._local_heads()) or "none"
            raise SourceUnavailable(f"branch {branch!r} not found in {self.url} (branches: {known})") from exc
        return str(target)

    def _tree(self, commit: str) -> pygit2.Tree:
        obj = self.repo.get(commit)
        if not isinstance(obj, pygit2.Commit):
            raise SourceUnavailable(f"commit {commit} is not in the mirror of {self.url}")
        return obj.tree

    def commit_info(self, commit: str) -> dict[str, str | int]:
        """Author, time and subject of a commit, for lineage and status."""
        obj = self.repo.get(commit)
        assert isinstance(obj, pygit2.Commit)
        return {
            "commit": commit,
            "author": f"{obj.author.name} <{obj.author.email}>",
            "time": obj.commit_time,
            "subject": obj.message.splitlines()[0] if obj.message else "",
        }

    def object_id(self, commit: str, path: str) -> str | None:
        """The Git id of the tree or blob at `path` in `commit` (the root tree for '.'), or None."""
        tree = self._tree(commit)
        if path in ("", "."):
            return str(tree.id)
        try:
            return str(tree[path].id)
        except KeyError:
            return None

    def escape(self, commit: str, path: str) -> str | None:
        """Why `path` of `commit` leads outside the repository through a symbolic link, or None."""
        tree = self._tree(commit)

        def link_target(rel: str) -> str | None:
            try:
                entry = tree[rel]
            except KeyError:
                return None
            if entry.filemode != _LINK or not isinstance(entry, pygit2.Blob):
                return ""
            return entry.data.decode("utf-8", errors="replace")

        return escape(path, link_target)

    def read(self, commit: str, path: str) -> bytes | None:
        tree = self._tree(commit)
        try:
            obj = tree[path]
        except KeyError:
            return None
        return obj.data if isinstance(obj, pygit2.Blob) else None

    def spec_files(self, commit: str) -> dict[str, str]:
        """Spec file path -> blob id for `gitops.yaml` and every `models/**/*.y(a)ml` in the commit."""
        tree = self._tree(commit)
        found: dict[str, str] = {}
        if REPO_SPEC in tree and isinstance(tree[REPO_SPEC], pygit2.Blob):
            found[REPO_SPEC] = str(tree[REPO_SPEC].id)
        if SPEC_DIR in tree and isinstance(tree[SPEC_DIR], pygit2.Tree):
            self._walk(tree[SPEC_DIR], SPEC_DIR, found)
        return found

    def _walk(self, tree: pygit2.Object, prefix: str, found: dict[str, str]) -> None:
        assert isinstance(tree, pygit2.Tree)
        for entry in tree:
            path = f"{prefix}/{entry.name}"
            if isinstance(entry, pygit2.Tree):
                self._walk(entry, path, found)
            elif is_spec_path(path):
                found[path] = str(entry.id)

    def changed_spec_files(self, old: str, new: str) -> set[str]:
        """Spec paths added, modified or deleted between two commits, from a tree diff."""
        diff = self._tree(old).diff_to_tree(self._tree(new))
        changed: set[str] = set()
        for delta in diff.deltas:
            for path in (delta.old_file.path, delta.new_file.path):
                if path and is_spec_path(path):
                    changed.add(path)
        return changed

    def tag(self, name: str, commit: str, message: str) -> bool:
        """Create the annotated tag `refs/tags/NAME` on `commit` in the mirror; False if it already exists."""
        ref = f"refs/tags/{name}"
        if ref in self.repo.references:
            return False
        tagger = pygit2.Signature("gitopsd", "gitopsd@localhost")
        self.repo.create_tag(name, pygit2.Oid(hex=commit), pygit2.enums.ObjectType.COMMIT, tagger, message)
        return True

    def push_tags(self, names: Iterable[str]) -> None:
        """Push tags to the remote the mirror was cloned from."""
        specs = [f"refs/tags/{n}:refs/tags/{n}" for n in names]
        if not specs:
            return
        if is_ssh_url(self.url):
            try:
                run_git(["--git-dir", str(self.mirror_dir), "push", "--quiet", "origin", *specs], url=self.url)
            except SshGitError as exc:
                raise SourceUnavailable(f"cannot push tags to {self.url}: {exc}") from exc
            return
        try:
            self.repo.remotes["origin"].push(specs, callbacks=EnvCredentials())
        except pygit2.GitError as exc:
            if "non-bare" not in str(exc):
                raise SourceUnavailable(f"cannot push tags to {self.url}: {exc}") from exc
            # libgit2 cannot push into a local non-bare repository (a working clone); git can, for tags.
            done = subprocess.run(
                ["git", "--git-dir", str(self.mirror_dir), "push", "--quiet", "origin", *specs],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise SourceUnavailable(f"cannot push tags to {self.url}: {done.stderr.strip()}") from exc
        except (KeyError, ValueError) as exc:
            raise SourceUnavailable(f"cannot push tags to {self.url}: {exc}") from exc

    def tags(self, prefix: str = "") -> list[str]:
        return sorted(r.removeprefix("refs/tags/") for r in self.repo.references if r.startswith(f"refs/tags/{prefix}"))

    def blob_text(self, blob_id: str) -> str:
        blob = self.repo.get(blob_id)
        assert isinstance(blob, pygit2.Blob)
        return blob.data.decode("utf-8", errors="replace")

    def export(self, commit: str, dest: Path, paths: Iterable[str] = (".",)) -> None:
        """Write `paths` (directories or files; "." for all) of `commit` into `dest`, at the same relative places.

        Existing files are replaced. A path missing from the commit is an error.
        """
        dest.mkdir(parents=True, exist_ok=True)
        root = self._tree(commit)
        for path in sorted(set(paths)):
            if path in ("", "."):
                self._export_tree(root, dest)
                continue
            try:
                obj = root[path]
            except KeyError:
                raise PermanentError(f"{path!r} does not exist at commit {commit[:12]}") from None
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(obj, pygit2.Tree):
                target.mkdir(exist_ok=True)
                self._export_tree(obj, target)
            else:
                self._write_blob(obj, root[path].filemode, target)

    def _export_tree(self, tree: pygit2.Tree, dest: Path) -> None:
        for entry in tree:
            target = dest / str(entry.name)
            if entry.filemode == _TREE:
                target.mkdir(exist_ok=True)
                self._export_tree(self.repo[entry.id], target)  # type: ignore[arg-type]
            elif entry.filemode == _COMMIT:
                target.mkdir(exist_ok=True)  # submodules are not exported, only their mount point
            else:
                self._write_blob(self.repo[entry.id], entry.filemode, target)

    @staticmethod
    def _write_blob(blob: pygit2.Object, mode: int, target: Path) -> None:
        data: bytes = blob.data  # type: ignore[attr-defined]
        if target.is_symlink() or target.exists():
            target.unlink()
        if mode == _LINK:
            os.symlink(data, target)
            return
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755 if mode == _EXECUTABLE else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
