"""`gitopsd promote NAME@N --alias A`: move an alias the GitOps way, by a commit in a local clone.

The spec file is edited with a round-trip YAML parser, so comments, key order and quoting survive, and the
change is committed (never pushed: review and push are the team's). The daemon then moves the alias when it
applies the commit, and refuses it with a reason if the version does not exist.
"""

from __future__ import annotations

import io
from pathlib import Path

import pygit2
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from gitopsd.errors import PermanentError
from gitopsd.spec.worktree import load_tree


def promote(clone: Path, model: str, number: int, alias: str) -> tuple[str, str]:
    """Set `spec.aliases[alias] = number` in MODEL's spec file and commit it; return (spec path, commit id)."""
    specs = load_tree(clone)
    path = next((p for p, m in specs.models.items() if m.name == model), None)
    if path is None:
        known = ", ".join(sorted(m.name for m in specs.models.values())) or "none"
        raise PermanentError(f"no model {model!r} in {clone} (models: {known})")
    target = clone / path
    yaml = YAML()
    yaml.preserve_quotes = True
    document = yaml.load(target.read_text())
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
    load_tree(clone)  # never commit a spec gitopsd would reject
    return path, _commit(clone, path, f"Promote {model}@{number} to {alias}")


def _commit(clone: Path, path: str, message: str) -> str:
    repo = pygit2.Repository(str(clone), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    repo.index.add(path)
    repo.index.write()
    try:
        author = repo.default_signature
    except (KeyError, pygit2.GitError):
        author = pygit2.Signature("gitopsd", "gitopsd@localhost")
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", author, author, message, repo.index.write_tree(), parents))
