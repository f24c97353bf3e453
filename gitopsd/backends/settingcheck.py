"""What each installed backend plugin says of the settings a repository's `gitops.yaml` gives it.

A bad setting is a problem of the commit (or of the working tree `gitopsd validate` checks), named with its
field, rather than a surprise when a run is submitted. Kept apart from the loader of desired state so that
`gitopsd validate` asks it without importing what a reconcile pass needs (the mirror, pygit2, the parse cache).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gitopsd.backends.protocol import check_settings
from gitopsd.errors import PermanentError, SpecProblem
from gitopsd.spec.layout import REPO_SPEC

if TYPE_CHECKING:
    from gitopsd.spec.schema import RepositorySpec

__all__ = ["backend_setting_problems"]

log = logging.getLogger("gitopsd")


def backend_setting_problems(repo: RepositorySpec, file: str = REPO_SPEC) -> list[SpecProblem]:
    """What each installed backend plugin says is wrong with its settings in `repo` (nothing for plugins that
    are not installed here or have no settings check)."""
    problems: list[SpecProblem] = []
    for name, config in sorted(repo.backends.items()):
        try:
            check_settings(repo.backend_type(name), name=name, settings=config.settings)
        except PermanentError as exc:
            problems.append(SpecProblem(file=file, line=None, field=f"backends.{name}.settings", message=str(exc)))
        except Exception as exc:  # a plugin's bug must not reject a commit; constructing it will say more
            log.warning("backend %s: settings check failed: %s", name, exc)
    return problems
