"""`gitopsd promote NAME@N --alias A`: move an alias the GitOps way, by a commit in a local clone.

The spec file is edited with a round-trip YAML parser, so comments, key order and quoting survive, and the
change is committed (never pushed: review and push are the team's). The daemon then moves the alias when it
applies the commit, and refuses it with a reason if the version does not exist.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pygit2
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from gitopsd.errors import PermanentError
from gitopsd.spec.worktree import load_tree


def promote(clone: Path, model: str, number: int, alias: str) -> tuple[str, str]:
    """Set `spec.aliases[alias] = number` in MODEL's spec file and commit that file alone; return (spec path,
    commit id). Nothing is left behind when it fails: a spec gitopsd would reject is put back as it was, and
    whatever else the clone has staged stays staged, out of the commit."""
    specs = load_tree(clone)
    path = next((p for p, m in specs.models.items() if m.name == model), None)
    if path is None:
        known = ", ".join(sorted(m.name for m in specs.models.values())) or "none"
        raise PermanentError(f"no model {model!r} in {clone} (models: {known})")
    repo = pygit2.Repository(str(clone), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    if repo.status_file(path) != pygit2.enums.FileStatus.CURRENT:
        raise PermanentError(f"{path} has changes not committed in {clone}: commit or stash them first")
    target = clone / path
    before = target.read_text()
    yaml = YAML()
    yaml.preserve_quotes = True
    if _indented_lists(before):
        yaml.indent(mapping=2, sequence=4, offset=2)
    document = yaml.load(before)
    body = document["spec"]
    aliases = body.get("aliases")
    if aliases is None:
        aliases = CommentedMap()
        body.insert(0, "aliases", aliases)
    if aliases.get(alias) == number:
        raise PermanentError(f"{alias} already points at {model}@{number} in {path}")
    aliases[alias] = number
    out = io.StringIO()
    yaml.dump(document, out)
    target.write_text(out.getvalue())
    try:
        load_tree(clone)  # never commit a spec gitopsd would reject
    except BaseException:
        target.write_text(before)
        raise
    return path, _commit(repo, path, f"Promote {model}@{number} to {alias}")


def _indented_lists(text: str) -> bool:
    """Whether the file indents a list under its key (`key:` then `  - item`), which the writer must keep."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for parent, item in itertools.pairwise(lines):
        if item.lstrip().startswith("- ") and parent.rstrip().endswith(":"):
            return len(item) - len(item.lstrip()) > len(parent) - len(parent.lstrip())
    return False


def _commit(repo: pygit2.Repository, path: str, message: str) -> str:
    """Commit `path` as it is in the working tree on top of HEAD, and nothing else the index holds."""
    repo.index.add(path)
    repo.index.write()
    entry = repo.index[path]
    tree = pygit2.Index()
    if not repo.head_is_unborn:
        tree.read_tree(repo.head.peel(pygit2.Commit).tree)
    tree.add(pygit2.IndexEntry(path, entry.id, entry.mode))
    try:
        author = repo.default_signature
    except (KeyError, pygit2.GitError):
        author = pygit2.Signature("gitopsd", "gitopsd@localhost")
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", author, author, message, tree.write_tree(repo), parents))
