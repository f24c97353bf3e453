"""Validating a working tree on disk, the way `gitopsd validate` does in a pull request's CI.

It applies the same parsers and cross-file checks as the reconciler does to a commit, plus the checks that need
the files themselves (the workdir and requirements a spec names must exist), and reports every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gitopsd.errors import SpecError, SpecProblem
from gitopsd.spec.layout import REPO_SPEC, SPEC_DIR
from gitopsd.spec.load import check_models, load_model
from gitopsd.spec.operator import Operator
from gitopsd.spec.resolve import load_repository_for
from gitopsd.spec.schema import ModelSpec, RepositorySpec, resolve_train


@dataclass(frozen=True, kw_only=True)
class TreeSpecs:
    repo: RepositorySpec
    models: dict[str, ModelSpec]


def load_tree(root: Path, operator: Operator | None = None) -> TreeSpecs:
    """Parse and check every spec file under `root` against the operator's configuration (default: one local
    backend); raise one SpecError naming every problem."""
    operator = operator or Operator()
    if not root.is_dir():
        raise SpecError([SpecProblem(file=str(root), line=None, field="", message="not a directory")])
    problems: list[SpecProblem] = []
    repo_file = root / REPO_SPEC
    try:
        repo = load_repository_for(operator, repo_file.read_text() if repo_file.is_file() else None, REPO_SPEC)
    except SpecError as exc:
        problems.extend(exc.problems)
        repo = RepositorySpec.default()
    models: dict[str, ModelSpec] = {}
    spec_dir = root / SPEC_DIR
    paths = (
        sorted(p for p in spec_dir.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        if spec_dir.is_dir()
        else []
    )
    for path in paths:
        rel = path.relative_to(root).as_posix()
        try:
            models[rel] = load_model(path.read_text(), rel)
        except SpecError as exc:
            problems.extend(exc.problems)
    if not problems:
        try:
            check_models(models, repo)
        except SpecError as exc:
            problems.extend(exc.problems)
    if not problems:
        for rel, model in models.items():
            train = resolve_train(model, repo, file=rel)
            if not (root / train.workdir).is_dir():
                problems.append(
                    SpecProblem(
                        file=rel,
                        line=None,
                        field="spec.train.workdir",
                        message=f"directory {train.workdir!r} does not exist",
                    )
                )
            if train.requirements and not (root / train.requirements).is_file():
                problems.append(
                    SpecProblem(
                        file=rel,
                        line=None,
                        field="spec.train.python.requirements",
                        message=f"file {train.requirements!r} does not exist",
                    )
                )
    if problems:
        raise SpecError(problems)
    return TreeSpecs(repo=repo, models=models)
