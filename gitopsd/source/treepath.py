"""Whether a path of a commit stays in the repository once its symbolic links are followed. Pure.

Git stores a symbolic link as a blob holding its target. Exported into a run directory, a link named
`data/train.csv` pointing at `/var/lib/gitopsd/state.db` (or `../../../etc/shadow`) would make gitopsd hash, and
a training read, a file outside the repository. A data file, a requirements file or a workdir must therefore
resolve inside the tree; links that stay inside are followed like the kernel would, up to 40 of them. Nor may
it lead into a Git submodule: a submodule is a commit of another repository, which gitopsd neither fetches nor
exports, so a run would find an empty directory there.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

MAX_LINKS = 40

#: For a repository-relative path: its link target if it is a symbolic link, "" if it is anything else, None if
#: nothing is there.
LinkLookup = Callable[[str], str | None]


#: For a repository-relative path: whether it is a Git submodule (a gitlink entry).
SubmoduleLookup = Callable[[str], bool]


def _no_submodules(_: str) -> bool:
    return False


def escape(path: str, link_target: LinkLookup, submodule: SubmoduleLookup = _no_submodules) -> str | None:
    """Why `path` leads outside the repository (or into a submodule, or cannot be resolved), or None when it
    stays inside."""
    pending = [part for part in path.split("/") if part not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not resolved:
                return f"{path!r} leads outside the repository"
            resolved.pop()
            continue
        here = "/".join([*resolved, part])
        if submodule(here):
            return f"{here!r} is a Git submodule, which gitopsd does not check out (commit its files instead)"
        target = link_target(here)
        if not target:  # a file, a directory, or nothing: the caller reports a missing path itself
            resolved.append(part)
            continue
        hops += 1
        if hops > MAX_LINKS:
            return f"{path!r}: too many levels of symbolic links"
        if target.startswith("/"):
            return f"{here!r} is a symbolic link to {target!r}, outside the repository"
        normal = posixpath.normpath(posixpath.join(posixpath.dirname(here), target))
        if normal == ".." or normal.startswith("../"):
            return f"{here!r} is a symbolic link to {target!r}, outside the repository"
        pending = [p for p in normal.split("/") if p not in ("", ".")] + pending
        resolved = []
    return None
