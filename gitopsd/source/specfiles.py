"""Which blobs of a commit are spec files: `gitops.yaml` and every `models/**/*.y(a)ml`, found by a bounded walk of
the commit's tree.

The mirror lists them for every load, and `gitopsd plan` lists them before it imports anything heavy, to start the
cold load's helper (`gitopsd.spec.prebuild`) early; so the walk lives here, beside nothing but pygit2.
"""

from __future__ import annotations

import pygit2

from gitopsd.spec.bounds import SpecLimits, too_many_entries, too_many_files
from gitopsd.spec.layout import REPO_SPEC, SPEC_DIR, is_spec_path

__all__ = ["spec_blobs"]

_TREE = 0o040000
_COMMIT = 0o160000


def spec_blobs(repo: pygit2.Repository, tree: pygit2.Tree, limits: SpecLimits) -> dict[str, str]:
    """Spec file path -> blob id for `gitops.yaml` and every `models/**/*.y(a)ml` blob in `tree`, a commit's tree.

    A SpecError as soon as there are more than `limits.max_files`, or the walk has met more than
    `limits.max_entries` files and directories (it stops there).
    """
    most, walked = limits.max_files, 0
    found: dict[str, str] = {}
    if REPO_SPEC in tree and isinstance(tree[REPO_SPEC], pygit2.Blob):
        found[REPO_SPEC] = str(tree[REPO_SPEC].id)
    if SPEC_DIR not in tree or not isinstance(tree[SPEC_DIR], pygit2.Tree):
        return found
    stack: list[tuple[pygit2.Tree, str]] = [(tree[SPEC_DIR], SPEC_DIR)]  # type: ignore[list-item]
    while stack:
        current, prefix = stack.pop()
        walked += len(current)
        if walked > limits.max_entries:
            raise too_many_entries(limits)
        for entry in current:
            path = f"{prefix}/{entry.name}"
            if entry.filemode == _TREE:
                stack.append((repo[entry.id], path))  # type: ignore[arg-type]
            elif entry.filemode != _COMMIT and is_spec_path(path):
                found[path] = str(entry.id)
                if len(found) > most:
                    raise too_many_files(limits)
    return found
