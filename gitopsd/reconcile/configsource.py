"""The operator's configuration file as the settled-pass record knows it: by its source, not by its parse.

A settled-pass record (`settled.py`) holds a fingerprint of the operator's setup. Without a configuration that is
`settled.DEFAULT_SETUP`; with one it is `setup_of` the file: a digest of its resolved path, its text and the
repository entry that serves the state directory. Whoever loads the configuration computes it from the very
text it parsed (`gitopsd.daemon.config.load_config`, then `DaemonConfig.settled_setup`) and hands it to the
`Reconciler`; the quick path of `gitopsd reconcile --once` (`quickpass.py`) computes the same string from the
file with `tomllib` alone. Same path, same text and same repository entry give the same parse, hence the same
backends, store, data roots, policies and output limits.

What the digest cannot show equal is left to the full pass: `plain` returns None (the full pass runs, and
reports any error itself) when the file cannot be read or is not TOML, or when it holds
- `[standby]`: a command must refuse to act beside the active daemon (`refuse_beside_a_lease`), and a standby
  daemon adopts on every pass;
- `[environment]`: its values (and the secrets they name) are exported for the backends, and can change without
  the file changing;
- a secret reference (`file:`, `env:`, `credential:`) in any value other than an artifact store's URI: what it
  names can change without the file changing;
- a backend that is not of the built-in `local` type (only the full pass looks plugins up), or any `runs_dir`
  setting (the full pass checks that the directory exists and takes new runs, `check_runs_dirs`);
- `verify` on any repository: a signature policy is checked by the full pass only;
- a relative `state_dir`: which repository serves a state directory would depend on the working directory;
- an artifact store that is not a `file://` one (the default store is in the state directory): only a local
  store's unfinished uploads can be swept here.
The caller also refuses when the repository entry that serves the state directory names another URL or branch
than the tracked source (`Plain.repository`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SECRET_REF", "Plain", "names_state_dir", "plain", "setup_of"]

#: A value that names a secret instead of holding it.
SECRET_REF = r"^(file:|env:|credential:).+"
#: Keys whose values are artifact store URIs (a `file://` URI is not a secret reference).
_STORE_KEYS = frozenset({"artifacts"})


def setup_of(path: Path, text: str, repository: str | None) -> str:
    """The operator part of a settled-pass fingerprint for the configuration at `path` whose text is `text`, as
    it applies to the state directory of `repository` (None: no repository entry serves it)."""
    source = [os.path.realpath(path), hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest(), repository]
    return "configuration " + hashlib.sha256(json.dumps(source).encode()).hexdigest()


@dataclass(frozen=True)
class Plain:
    """A configuration the digest covers: its setup string, the URI of the artifact store of the state directory
    (None: the default one in it), and the (url, branch) of the repository entry that serves it, if any."""

    setup: str
    store: str | None
    repository: tuple[str, str | None] | None


def plain(path: Path, state_dir: Path) -> Plain | None:
    """The configuration at `path` as it applies to `state_dir`, when nothing in it is refused (see the module
    docstring); None otherwise."""
    import tomllib  # here, not above: a settled pass with no configuration file never needs it

    try:
        text = path.read_text()
        doc = tomllib.loads(text)
    except (OSError, ValueError):  # unreadable, not text, not TOML: the full pass says what is wrong
        return None
    if "standby" in doc or "environment" in doc or _names_a_secret(doc):
        return None
    backends = doc.get("backends", {})
    repositories = doc.get("repositories", [])
    registry = doc.get("registry", {})
    if not (isinstance(backends, dict) and isinstance(repositories, list) and isinstance(registry, dict)):
        return None
    for name, backend in backends.items():
        if not isinstance(backend, dict) or backend.get("type", name) != "local":
            return None
        settings = backend.get("settings", {})
        if not isinstance(settings, dict) or "runs_dir" in settings:
            return None
    if not all(isinstance(r, dict) and "verify" not in r for r in repositories):
        return None
    try:
        mine = _serving(doc.get("state_dir"), repositories, state_dir)
        store = _store(registry.get("artifacts"), mine)
    except _Refused:
        return None
    name = None if mine is None else str(mine.get("name"))
    repository = None if mine is None else (str(mine.get("url")), mine.get("branch"))
    return Plain(setup=setup_of(path, text, name), store=store, repository=repository)


def names_state_dir(path: Path, state_dir: Path) -> bool | None:
    """Whether the configuration at `path` has a repository entry whose state directory is `state_dir`, read
    with `tomllib` alone (its schema would cost a settled `plan` 100 ms of imports); None when that cannot be
    told here (unreadable, not TOML, a relative `state_dir`): whoever loads it then says what is wrong."""
    import tomllib

    try:
        doc = tomllib.loads(path.read_text())
        repositories = doc.get("repositories", [])
        if not isinstance(repositories, list):
            return None
        return _serving(doc.get("state_dir"), [r for r in repositories if isinstance(r, dict)], state_dir) is not None
    except (OSError, ValueError, _Refused):
        return None


class _Refused(Exception):
    """Something the digest cannot show equal: the full pass decides."""


def _names_a_secret(value: Any, key: str = "") -> bool:
    if isinstance(value, str):
        return key not in _STORE_KEYS and re.match(SECRET_REF, value) is not None
    if isinstance(value, dict):
        return any(_names_a_secret(v, str(k)) for k, v in value.items())
    if isinstance(value, list):
        return any(_names_a_secret(v, key) for v in value)
    return False


def _serving(root: Any, repositories: list[dict[str, Any]], state_dir: Path) -> dict[str, Any] | None:
    """The repository entry whose state directory is `state_dir` (as `gitopsd.cli.common` finds it), None when
    none is; `_Refused` when that cannot be told here."""
    if root is None:
        return None
    if not isinstance(root, str) or not root.startswith("/"):
        raise _Refused
    mine = [r for r in repositories if (Path(root) / str(r.get("name"))).absolute() == state_dir]
    return mine[0] if mine else None


def _store(shared: Any, mine: dict[str, Any] | None) -> str | None:
    """The artifact store URI of the state directory (as `DaemonConfig.operator_for` makes it), None for the
    default one; `_Refused` when it is not a local one."""
    uri = shared if mine is None else mine.get("artifacts")
    if uri is not None:
        return _file_uri(uri)
    if mine is not None and shared is not None:
        return _file_uri(shared).rstrip("/") + "/" + str(mine.get("name"))
    return None


def _file_uri(uri: Any) -> str:
    """A `file:///abs/dir` URI normalised as the configuration's validation does it (`gitopsd.spec.fields`);
    `_Refused` for anything else."""
    if not isinstance(uri, str) or not uri.startswith("file:///"):
        raise _Refused
    return "file://" + posixpath.normpath(uri.removeprefix("file://")).replace("//", "/")
