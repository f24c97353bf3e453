"""The Git source: a bare mirror of the tracked repository inside the state directory.

Everything gitopsd knows about desired state comes from here. The mirror is fetched with libgit2 (pygit2), or
with git and OpenSSH for SSH remotes (see `gitssh`: libgit2 would not check the host key), read by commit
without any checkout, and a commit's tree is exported into a run directory only when a run needs it.
A fetch first lists the remote heads and skips the transfer when nothing moved, so an idle pass costs one
round-trip.

The repository's content is untrusted, so reading it is bounded: spec files are listed with their sizes (from
the object header, without reading them) so that the loader can refuse oversized ones unread, and an export
streams every blob larger than `STREAM_ABOVE` bytes from `git cat-file` straight into its file, so a 1 GiB file
in a workdir costs the daemon no more memory than a small one (a local repository is fetched by git for the
same reason). Tree entries that could leave the export's
directory (`..`, `.`, names with `/`) are refused, and so is an export that would write more than
`MAX_EXPORT_ENTRIES` files or `MAX_EXPORT_BYTES` bytes (weighed from the trees before anything is written).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pygit2

from gitopsd.errors import PermanentError, SourceUnavailable, printable
from gitopsd.source.credentials import EnvCredentials
from gitopsd.source.redact import redact_text, redact_url
from gitopsd.source.specfiles import spec_blobs
from gitopsd.source.ssh import SshGitError, is_ssh_url, list_heads, run_git
from gitopsd.source.treepath import escape
from gitopsd.source.urls import is_git_repository as _is_git_repository

# re-exported: callers import them from here, as before they moved to `urls`
from gitopsd.source.urls import is_local_url as is_local_url  # noqa: PLC0414
from gitopsd.source.urls import local_path as local_path  # noqa: PLC0414
from gitopsd.source.urls import normalise_url as normalise_url  # noqa: PLC0414
from gitopsd.spec.bounds import SpecLimits
from gitopsd.spec.layout import is_spec_path
from gitopsd.units import format_size

_FILE = 0o100644
_EXECUTABLE = 0o100755
_LINK = 0o120000
_TREE = 0o040000
_COMMIT = 0o160000
_BLOB_OBJECT = int(pygit2.enums.ObjectType.BLOB)
#: Blobs larger than this are streamed into their file by `git cat-file`, never held in memory.
STREAM_ABOVE = 1024 * 1024
#: The longest symbolic link target exported (PATH_MAX).
_MAX_LINK = 4096
#: The most files and directories, and bytes, one export may write: far above a real workdir, and checked from
#: the trees and object headers before anything is written. Trees can name one subtree many times over, so a
#: commit of a few objects could otherwise fill the run directory's disk.
#: The most characters of a commit's subject or author that lineage keeps.
MAX_COMMIT_TEXT = 200
MAX_EXPORT_ENTRIES = 1_000_000
MAX_EXPORT_BYTES = 100 * 1024**3


def remote_heads(url: str) -> dict[str, str]:
    """The branches of a remote (`refs/heads/NAME` -> commit) as `git ls-remote` lists them, with the daemon's
    credentials and transports, without a clone or a mirror (`gitopsd doctor`). SourceUnavailable says why not."""
    url = normalise_url(url)
    shown = redact_url(url)
    if is_ssh_url(url):
        try:
            return list_heads(url).heads
        except SshGitError as exc:
            raise SourceUnavailable(f"cannot list {shown}: {redact_text(str(exc))}") from exc
    path = local_path(url)
    if path is not None and not _is_git_repository(path):
        raise SourceUnavailable(f"repository {path} does not exist (or is not a git repository)")
    with tempfile.TemporaryDirectory(prefix="gitopsd-ls-remote-") as scratch:
        remote = pygit2.init_repository(scratch, bare=True).remotes.create_anonymous(url)
        try:
            heads = remote.list_heads(callbacks=EnvCredentials())
        except (pygit2.GitError, KeyError, ValueError) as exc:
            raise SourceUnavailable(f"cannot list {shown}: {redact_text(str(exc))}") from exc
    return {h.name: str(h.oid) for h in heads if h.name and h.name.startswith("refs/heads/")}


def _shown(text: str) -> str:
    """Commit text as lineage keeps it: printable, at most `MAX_COMMIT_TEXT` characters (then an ellipsis)."""
    text = printable(text)
    return text if len(text) <= MAX_COMMIT_TEXT else text[: MAX_COMMIT_TEXT - 1] + "…"


class Source:
    """A bare mirror of one repository, refreshed by `fetch` and read by commit id."""

    def __init__(self, url: str, mirror_dir: Path) -> None:
        self.url = normalise_url(url)
        self.shown = redact_url(self.url)  # the URL as every message shows it: without its credentials
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
            if wanted != have and is_local_url(self.url):
                self._fetch_local()
            elif wanted != have:
                remote.fetch(prune=pygit2.enums.FetchPrune.PRUNE, callbacks=EnvCredentials())
            head = next((h for h in heads if h.name == "HEAD"), None)
            if head is not None and head.symref_target:
                self.repo.set_head(head.symref_target)
        except (pygit2.GitError, KeyError, ValueError) as exc:
            self._check_local()
            raise SourceUnavailable(f"cannot fetch {self.shown}: {redact_text(str(exc))}") from exc

    def _check_local(self) -> None:
        """For a local repository that is not there, the one clear message (libgit2 would say "unsupported URL
        protocol" or "could not find repository"). Transient: the path may be mounted or created later."""
        path = local_path(self.url)
        if path is not None and not _is_git_repository(path):
            raise SourceUnavailable(
                f"repository {path} does not exist (or is not a git repository): create it, or fix the repository's url"
            )

    def _fetch_local(self) -> None:
        """A local repository is fetched by git: libgit2's local transport packs every new object in memory
        first, so a 1 GiB file pushed to the repository would cost the daemon more than 1 GiB."""
        try:
            done = subprocess.run(
                ["git", "--git-dir", str(self.mirror_dir), "fetch", "--quiet", "--prune", "origin"],
                capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        except OSError as exc:
            raise SourceUnavailable(f"cannot fetch {self.shown}: git cannot be started: {exc}") from exc
        if done.returncode != 0:
            self._check_local()
            raise SourceUnavailable(f"cannot fetch {self.shown}: {redact_text(done.stderr.strip()[:400])}")

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
            raise SourceUnavailable(f"cannot fetch {self.shown}: {redact_text(str(exc))}") from exc
        except (pygit2.GitError, KeyError, ValueError) as exc:
            raise SourceUnavailable(f"cannot fetch {self.shown}: {redact_text(str(exc))}") from exc

    def _local_heads(self) -> Iterator[str]:
        return (name for name in self.repo.references if name.startswith("refs/heads/"))

    def resolve(self, branch: str | None) -> str:
        """The commit id at the tip of `branch` (default: the remote's default branch)."""
        ref = f"refs/heads/{branch}" if branch else self.repo.references["HEAD"].target
        try:
            target = self.repo.references[str(ref)].resolve().target
        except (KeyError, pygit2.InvalidSpecError) as exc:
            known = ", ".join(n.removeprefix("refs/heads/") for n in self._local_heads())
            if not known:
                raise SourceUnavailable(f"{self.shown} has no commits yet: commit and push a first one") from exc
            if branch is None:
                default = str(ref).removeprefix("refs/heads/")
                raise SourceUnavailable(
                    f"the default branch of {self.shown} ({default}) has no commits: give --branch (branches: {known})"
                ) from exc
            raise SourceUnavailable(f"branch {branch!r} not found in {self.shown} (branches: {known})") from exc
        return str(target)

    def _tree(self, commit: str) -> pygit2.Tree:
        obj = self.repo.get(commit)
        if not isinstance(obj, pygit2.Commit):
            raise SourceUnavailable(f"commit {commit} is not in the mirror of {self.shown}")
        return obj.tree

    def commit_info(self, commit: str) -> dict[str, str | int]:
        """Author, time and subject of a commit, for lineage and status: whoever pushed wrote them, so control
        characters are escaped (an escape sequence would reach an operator's terminal through `history`) and
        each is cut to `MAX_COMMIT_TEXT` characters (it is kept in every version's lineage and alias move)."""
        obj = self.repo.get(commit)
        assert isinstance(obj, pygit2.Commit)
        subject = obj.message[: MAX_COMMIT_TEXT * 4].splitlines()[0] if obj.message else ""
        return {
            "commit": commit,
            "author": _shown(f"{obj.author.name} <{obj.author.email}>"),
            "time": obj.commit_time,
            "subject": _shown(subject),
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

        def submodule(rel: str) -> bool:
            try:
                return bool(tree[rel].filemode == _COMMIT)
            except KeyError:
                return False

        return escape(path, link_target, submodule)

    def read(self, commit: str, path: str) -> bytes | None:
        tree = self._tree(commit)
        try:
            obj = tree[path]
        except KeyError:
            return None
        return obj.data if isinstance(obj, pygit2.Blob) else None

    def spec_files(self, commit: str, limits: SpecLimits | None = None) -> dict[str, str]:
        """Spec file path -> blob id for `gitops.yaml` and every `models/**/*.y(a)ml` blob in the commit
        (`spec_blobs`)."""
        return spec_blobs(self.repo, self._tree(commit), limits or SpecLimits())

    def blob_size(self, blob_id: str) -> int:
        """The size of a blob in bytes, from its header: the content is not read."""
        _, size = self.repo.odb.read_header(pygit2.Oid(hex=blob_id))
        return int(size)

    def file_blob(self, commit: str, path: str) -> str | None:
        """The blob id of `path` in `commit` when it is a plain file (not a directory, a symbolic link or a
        submodule), else None."""
        try:
            entry = self._tree(commit)[path]
        except KeyError:
            return None
        return str(entry.id) if entry.filemode in (_FILE, _EXECUTABLE) else None

    def blob_sha256(self, blob_id: str, most: int) -> str | None:
        """The sha256 of the content of a blob of at most `most` bytes; None for a larger one."""
        if self.blob_size(blob_id) > most:
            return None
        import hashlib

        return hashlib.sha256(self.blob_bytes(blob_id)).hexdigest()

    def blob_bytes(self, blob_id: str) -> bytes:
        """The whole content of a blob (check `blob_size` first: this reads it all into memory).

        Read from the object database without making a `pygit2.Blob` (less than half the time of
        `repo.get(id).data`: a cold load reads every spec file)."""
        try:
            kind, data = self.repo.odb.read(pygit2.Oid(hex=blob_id))
        except (KeyError, ValueError, pygit2.GitError):
            kind, data = None, b""
        if kind != _BLOB_OBJECT:
            raise SourceUnavailable(f"object {blob_id} is not a blob in the mirror of {self.shown}")
        return bytes(data)

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
                raise SourceUnavailable(f"cannot push tags to {self.shown}: {redact_text(str(exc))}") from exc
            return
        try:
            self.repo.remotes["origin"].push(specs, callbacks=EnvCredentials())
        except pygit2.GitError as exc:
            if "non-bare" not in str(exc):
                raise SourceUnavailable(f"cannot push tags to {self.shown}: {redact_text(str(exc))}") from exc
            # libgit2 cannot push into a local non-bare repository (a working clone); git can, for tags.
            done = subprocess.run(
                ["git", "--git-dir", str(self.mirror_dir), "push", "--quiet", "origin", *specs],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise SourceUnavailable(
                    f"cannot push tags to {self.shown}: {redact_text(done.stderr.strip())}"
                ) from exc
        except (KeyError, ValueError) as exc:
            raise SourceUnavailable(f"cannot push tags to {self.shown}: {redact_text(str(exc))}") from exc

    def tags(self, prefix: str = "") -> list[str]:
        return sorted(r.removeprefix("refs/tags/") for r in self.repo.references if r.startswith(f"refs/tags/{prefix}"))

    def export(self, commit: str, dest: Path, paths: Iterable[str] = (".",)) -> None:
        """Write `paths` (directories or files; "." for all) of `commit` into `dest`, at the same relative places.

        Existing files are replaced. A path missing from the commit is an error, and so is a tree entry whose
        name could lead outside `dest`. Large blobs are streamed (see the module docstring).
        """
        root = self._tree(commit)
        self._check_weight(root, sorted(set(paths)), commit)
        dest.mkdir(parents=True, exist_ok=True)
        for path in sorted(set(paths)):
            if path in ("", "."):
                self._export_tree(root, dest, commit)
                continue
            try:
                obj = root[path]
            except KeyError:
                raise PermanentError(f"{path!r} does not exist at commit {commit[:12]}") from None
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if root[path].filemode == _COMMIT:
                raise PermanentError(f"{path!r} is a Git submodule at commit {commit[:12]}, which gitopsd does not "
                                     "check out: commit its files instead")  # fmt: skip
            if isinstance(obj, pygit2.Tree):
                target.mkdir(exist_ok=True)
                self._export_tree(obj, target, commit)
            else:
                self._write_blob(obj.id, root[path].filemode, target)

    def _check_weight(self, root: pygit2.Tree, paths: list[str], commit: str) -> None:
        """Refuse (PermanentError) an export of `paths` that would write more than `MAX_EXPORT_ENTRIES` files and
        directories or `MAX_EXPORT_BYTES` bytes, from the trees and object headers alone."""
        weights: dict[pygit2.Oid, tuple[int, int]] = {}
        entries = size = 0
        for path in paths:
            try:
                obj = root if path in ("", ".") else root[path]
            except KeyError:
                continue  # missing: `export` says so
            if isinstance(obj, pygit2.Tree):
                more, grown = self._weigh(obj.id, weights)
            elif isinstance(obj, pygit2.Blob):
                more, grown = 1, self.repo.odb.read_header(obj.id)[1]
            else:
                continue  # a submodule: `export` says so
            entries, size = entries + more, size + grown
        if entries > MAX_EXPORT_ENTRIES or size > MAX_EXPORT_BYTES:
            raise PermanentError(
                f"commit {commit[:12]}: exporting {', '.join(paths)} would write {entries:,} files and directories "
                f"({format_size(size)}); a run's tree may have at most {MAX_EXPORT_ENTRIES:,} "
                f"({format_size(MAX_EXPORT_BYTES)})"
            )

    def _weigh(self, top: pygit2.Oid, weights: dict[pygit2.Oid, tuple[int, int]]) -> tuple[int, int]:
        """Files and directories below the tree `top`, and their bytes: each distinct tree weighed once, however
        many times the trees above name it."""
        stack: list[tuple[pygit2.Oid, bool]] = [(top, False)]
        while stack:
            oid, children_done = stack.pop()
            if oid in weights:
                continue
            tree = self.repo[oid]
            assert isinstance(tree, pygit2.Tree)
            if not children_done:
                stack.append((oid, True))
                stack.extend((e.id, False) for e in tree if e.filemode == _TREE and e.id not in weights)
                continue
            entries = size = 0
            for entry in tree:
                entries += 1
                if entry.filemode == _TREE:
                    below = weights[entry.id]
                    entries, size = entries + below[0], size + below[1]
                elif entry.filemode != _COMMIT:
                    size += self.repo.odb.read_header(entry.id)[1]
            weights[oid] = (entries, size)
        return weights[top]

    def _export_tree(self, tree: pygit2.Tree, dest: Path, commit: str) -> None:
        stack: list[tuple[pygit2.Tree, Path]] = [(tree, dest)]
        while stack:
            current, where = stack.pop()
            for entry in current:
                name = str(entry.name)
                if name in ("", ".", "..") or "/" in name or "\0" in name:
                    raise PermanentError(
                        f"commit {commit[:12]} holds a tree entry named {name!r}; refusing to export it"
                    )
                target = where / name
                if entry.filemode == _TREE:
                    target.mkdir(exist_ok=True)
                    stack.append((self.repo[entry.id], target))  # type: ignore[arg-type]
                elif entry.filemode == _COMMIT:
                    target.mkdir(exist_ok=True)  # submodules are not exported, only their mount point
                else:
                    self._write_blob(entry.id, entry.filemode, target)

    def _write_blob(self, oid: pygit2.Oid, mode: int, target: Path) -> None:
        _, size = self.repo.odb.read_header(oid)
        if target.is_symlink() or target.exists():
            target.unlink()
        if mode == _LINK:
            if size > _MAX_LINK:
                raise PermanentError(f"symbolic link {target.name!r} has a {size}-byte target; the most is {_MAX_LINK}")
            os.symlink(self.blob_bytes(str(oid)), target)
            return
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755 if mode == _EXECUTABLE else 0o644)
        with os.fdopen(fd, "wb") as handle:
            if size <= STREAM_ABOVE:
                handle.write(self.blob_bytes(str(oid)))
            else:
                self._stream_blob(str(oid), handle.fileno())

    def _stream_blob(self, blob_id: str, fd: int) -> None:
        """Copy a blob into the open file `fd` through `git cat-file`, which streams it (it has no filters)."""
        try:
            done = subprocess.run(
                ["git", "-c", f"core.bigFileThreshold={STREAM_ABOVE}", "--git-dir", str(self.mirror_dir),
                 "cat-file", "blob", blob_id],
                stdout=fd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        except OSError as exc:
            raise SourceUnavailable(f"cannot export blob {blob_id}: git cannot be started: {exc}") from exc
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip()[:400]
            raise SourceUnavailable(
                f"cannot export blob {blob_id} from the mirror of {self.shown}: {redact_text(error)}"
            )
