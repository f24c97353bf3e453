"""What each installed backend plugin says of the settings a repository's `gitops.yaml`, or the operator's
configuration, gives it.

A bad setting is a problem of the commit (or of the working tree `gitopsd validate` checks), named with its
field, or of the operator's configuration, refused when the daemon starts or reloads, rather than a surprise when
a run is submitted. Kept apart from the loader of desired state so that
`gitopsd validate` asks it without importing what a reconcile pass needs (the mirror, pygit2, the parse cache).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from gitopsd.backends.protocol import check_settings
from gitopsd.errors import PermanentError, SpecProblem
from gitopsd.spec.layout import REPO_SPEC

if TYPE_CHECKING:
    from gitopsd.spec.schema import RepositorySpec

__all__ = ["backend_setting_problems", "setting_problems"]

log = logging.getLogger("gitopsd")


def backend_setting_problems(repo: RepositorySpec, file: str = REPO_SPEC) -> list[SpecProblem]:
    """What each installed backend plugin says is wrong with its settings in `repo` (nothing for plugins that
    are not installed here or have no settings check)."""
    declared = ((name, repo.backend_type(name), config.settings) for name, config in repo.backends.items())
    return [
        SpecProblem(file=file, line=None, field=f"backends.{name}.settings", message=message)
        for name, message in setting_problems(declared)
    ]


def setting_problems(backends: Iterable[tuple[str, str, Mapping[str, Any]]]) -> list[tuple[str, str]]:
    """(name, what is wrong) for each of `backends` (name, plugin type, settings) whose plugin refuses its
    settings, by name; a plugin's bug in its check is logged, not raised (constructing it will say more)."""
    problems: list[tuple[str, str]] = []
    for name, type_, settings in sorted(backends, key=lambda backend: backend[0]):
        try:
            check_settings(type_, name=name, settings=settings)
        except PermanentError as exc:
            problems.append((name, str(exc)))
        except Exception as exc:  # a plugin's bug must not reject a commit or a configuration
            log.warning("backend %s: settings check failed: %s", name, exc)
    return problems
