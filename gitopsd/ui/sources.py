"""Which repositories `gitopsd ui --state-dir DIR` shows: DIR itself, or every repository directory in it.

A daemon knows its repositories by name (`{repo.name: config.state_dir_of(repo)}`); the command line, without a
daemon, only has a directory. A directory holding `state.db` is one repository's state, named after the last
path component of the URL it tracks (`models.git` -> `models`); otherwise each direct child holding a
`state.db` is one (the layout a daemon's `state_dir` has), named after the child. The source URL is read
read-only, and the name is reduced to what is safe in a URL path segment.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

STATE_DB = "state.db"
FALLBACK_NAME = "default"
MAX_CHILDREN = 10_000
"""Most entries of a directory looked at for repository state directories."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def discover(state_dir: Path) -> dict[str, Path]:
    """Repository name -> its state directory, in name order; {} when DIR holds no gitopsd state."""
    if (state_dir / STATE_DB).is_file():
        return {repository_name(source_url(state_dir)): state_dir}
    found: dict[str, Path] = {}
    try:
        children = sorted(state_dir.iterdir())[:MAX_CHILDREN]
    except OSError:
        return {}
    for child in children:
        if child.is_dir() and (child / STATE_DB).is_file():
            found[child.name] = child
    return found


def source_url(state_dir: Path) -> str | None:
    """The URL the state directory tracks (`sources` row), or None when it cannot be read."""
    try:
        conn = sqlite3.connect(f"{(state_dir / STATE_DB).absolute().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT url FROM sources WHERE id = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row and row[0] else None


def repository_name(url: str | None) -> str:
    """`https://host/org/models.git` -> `models`; a local path works the same; `default` when nothing is left."""
    if not url:
        return FALLBACK_NAME
    tail = re.split(r"[/:\\]", url.split("?", 1)[0].split("#", 1)[0].rstrip("/"))[-1]
    tail = tail.removesuffix(".git")
    name = _UNSAFE.sub("-", tail).strip(".-")
    return name[:100] or FALLBACK_NAME
