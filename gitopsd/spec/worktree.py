"""Validating a working tree on disk, the way `gitopsd validate` does in a pull request's CI.

It applies the same parsers and cross-file checks as the reconciler does to a commit, plus the checks that need
the files themselves (the workdir and requirements a spec names must exist), and reports every problem at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gitopsd.errors import SpecError, SpecProblem
from gitopsd.spec.layout import REPO_SPEC, SPEC_DIR
from gitopsd.spec.load import check_models, load_model
from gitopsd.spec.operator import Operator
from gitopsd.spec.resolve import data_problems, load_repository_for
from gitopsd.spec.schema import ModelSpec, RepositorySpec, resolve_train


def _leaves(root: Path, rel: str) -> bool:
    """Whether `rel` resolves, through symbolic links, to a place outside `root`."""
    real = Path(os.path.realpath(root / rel))
    return not real.is_relative_to(Path(os.path.realpath(root)))


def _read(root: Path, rel: str) -> str:
    """A spec file's text; a spec file that is a symbolic link out of the tree is refused, never read."""
    if _leaves(root, rel):
        raise SpecError([SpecProblem(file=rel, line=None, field="", message=(
            "a symbolic link that leads outside the repository: refused, not read"))])  # fmt: skip
    return (root / rel).read_text()


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
        repo = load_repository_for(operator, _read(root, REPO_SPEC) if repo_file.is_file() else None, REPO_SPEC)
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
            models[rel] = load_model(_read(root, rel), rel)
        except SpecError as exc:
            problems.extend(exc.problems)
    if not problems:
        try:
            check_models(models, repo)
        except SpecError as exc:
            problems.extend(exc.problems)
        problems.extend(data_problems(models, operator))
    if not problems:
        for rel, model in models.items():
            train = resolve_train(model, repo, file=rel)
            inputs = [("spec.train.workdir", train.workdir)]
            inputs += [("spec.train.python.requirements", train.requirements)] if train.requirements else []
            inputs += [(f"spec.data[{i}].uri", d.uri) for i, d in enumerate(model.spec.data) if "://" not in d.uri]
            for field, where in inputs:
                if _leaves(root, where):
                    message = f"{where!r} leads outside the repository through a symbolic link: refused"
                    problems.append(SpecProblem(file=rel, line=None, field=field, message=message))
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
