"""A repository's gitops.yaml resolved against the operator's configuration: the backends it may use, with the
settings the operator gave them and the few values the repository may choose on top.

Everything downstream (the run key, the planner, the backends) sees only the resolved repository, so a value the
operator did not allow can never reach a backend. A refusal is a SpecError with the line of gitops.yaml that
set the value, like any other problem in the file, and the whole commit is rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from gitopsd.errors import SpecError, SpecProblem
from gitopsd.spec.load import lines_in, load_repository
from gitopsd.spec.operator import OPERATOR_FILE, Operator, effective_backends, refusals
from gitopsd.spec.schema import BackendConfig, ModelSpec, RepositorySpec


def load_repository_for(operator: Operator, text: str | None, file: str = "gitops.yaml") -> RepositorySpec:
    """Parse gitops.yaml (None: the repository has none) and resolve it against the operator's configuration."""
    repo = RepositorySpec.default() if text is None else load_repository(text, file)
    return resolve_repository(repo, operator, file=file, text=text)


def resolve_repository(
    repo: RepositorySpec, operator: Operator, *, file: str = "gitops.yaml", text: str | None = None
) -> RepositorySpec:
    """`repo` with its backends replaced by the ones the operator lets it use; SpecError naming each refusal."""
    line_of = lines_in(text)
    problems = [
        SpecProblem(file=file, line=line_of(r.field), field=r.field, message=r.message)
        for r in refusals(repo.backends, operator)
    ]
    backends = {} if problems else effective_backends(repo.backends, operator)
    chosen = repo.defaults.backend
    if chosen is not None and not problems and chosen not in backends:
        offered = ", ".join(sorted(backends)) or "none"
        where = "declared in gitops.yaml" if repo.backends else f"offered by {OPERATOR_FILE}"
        problems.append(SpecProblem(file=file, line=line_of("defaults.backend"), field="defaults.backend",
                                    message=f"backend {chosen!r} is not {where} (available: {offered})"))  # fmt: skip
    if not backends and not problems:
        problems.append(SpecProblem(file=file, line=None, field="backends",
                                    message=f"no backend is available: {OPERATOR_FILE} offers none"))  # fmt: skip
    if problems:
        raise SpecError(problems)
    resolved = repo.model_copy(
        update={"backends": {name: BackendConfig(type=t, settings=s) for name, (t, s) in backends.items()}}
    )
    resolved._keyed = {name: _keyed(name, settings, operator) for name, (_, settings) in backends.items()}
    return resolved


def data_problems(models: Mapping[str, ModelSpec], operator: Operator) -> list[SpecProblem]:
    """file:// data outside the directories the operator allows: reading it would hash, and hand a training, any
    file the daemon's account can read (its own state database, a credential)."""
    roots = ", ".join(operator.data_roots) or "none"
    problems = []
    for path in sorted(models):
        for i, item in enumerate(models[path].spec.data):
            location = item.uri.removeprefix("file://")
            if item.uri.startswith("file://") and not operator.allows_data(location):
                problems.append(SpecProblem(file=path, line=None, field=f"spec.data[{i}].uri", message=(
                    f"{item.uri} is outside the data directories the operator allows ({roots}): set data_roots "
                    "in the operator's configuration, or keep the file in the repository")))  # fmt: skip
    return problems


def repository_data_problems(
    file: str,
    model: ModelSpec,
    exists: Callable[[str], bool],
    digest: Callable[[str], str | None],
    *,
    where: str = "",
    skip: Collection[str] = (),
) -> list[SpecProblem]:
    """Repository data `model` (of spec file `file`) names that does not exist, or whose content has another
    sha256 than its spec pins: said when a change is reviewed, not when its run is submitted. `exists` and
    `digest` look at a working tree or a commit (`where` says which in the message); `digest` is None for a file
    not hashed there (too large, behind a link), which its run's submission checks. `skip`: fields already
    refused for another reason."""
    problems = []
    for i, item in enumerate(model.spec.data):
        field = f"spec.data[{i}].uri"
        if "://" in item.uri or field in skip:
            continue
        if not exists(item.uri):
            problems.append(SpecProblem(file=file, line=None, field=field,
                                        message=f"file {item.uri!r} does not exist{where}"))  # fmt: skip
        elif (actual := digest(item.uri)) is not None and actual != item.sha256:
            message = f"{item.uri} has sha256 {actual}, but the spec says {item.sha256}"
            problems.append(SpecProblem(file=file, line=None, field=f"spec.data[{i}].sha256", message=message))
    return problems


def _keyed(name: str, settings: dict[str, Any], operator: Operator) -> dict[str, Any]:
    """The settings that enter the run key: those a repository may choose. The operator's own (hosts, token
    sources, lease files) do not, so rotating a credential or moving slurmrestd retrains nothing."""
    allowed = operator.backends[name].allow
    return {key: value for key, value in settings.items() if key in allowed}
