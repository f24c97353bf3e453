"""Validating a working tree on disk, the way `gitopsd validate` does in a pull request's CI.

It applies the same parsers, bounds and cross-file checks as the reconciler does to a commit, plus the checks
that need the files themselves (the workdir and requirements a spec names must exist), and reports every
problem at once. Sizes are taken from the file system before a file is read, and no file is read past its bound.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gitopsd.errors import SpecError, SpecProblem
from gitopsd.spec.bounds import SpecLimits, decode_spec, size_problems, too_many_entries, too_many_files
from gitopsd.spec.layout import REPO_SPEC, SPEC_DIR
from gitopsd.spec.load import check_models, load_model
from gitopsd.spec.operator import Operator
from gitopsd.spec.resolve import data_problems, load_repository_for
from gitopsd.spec.schema import ModelSpec, RepositorySpec, ResolvedTrain, repository_paths, resolve_train


def _leaves(root: Path, rel: str) -> bool:
    """Whether `rel` resolves, through symbolic links, to a place outside `root`."""
    real = Path(os.path.realpath(root / rel))
    return not real.is_relative_to(Path(os.path.realpath(root)))


#: The most of .gitmodules that is read to learn where the submodules are.
_MAX_GITMODULES_BYTES = 1024 * 1024
_SUBMODULE_PATH = re.compile(r"^\s*path\s*=\s*(.*?)\s*$", re.MULTILINE)


def _submodules(root: Path) -> set[str]:
    """The paths .gitmodules declares (a clone without --recurse-submodules leaves them empty directories)."""
    if not (root / ".gitmodules").is_file() or _leaves(root, ".gitmodules"):
        return set()
    with (root / ".gitmodules").open("rb") as handle:
        text = handle.read(_MAX_GITMODULES_BYTES).decode("utf-8", errors="replace")
    return {posixpath.normpath(found.strip('"')) for found in _SUBMODULE_PATH.findall(text)}


def _submodule(root: Path, rel: str, declared: set[str]) -> str | None:
    """The submodule `rel` is or lies in (a directory with its own .git, or one .gitmodules declares), or None."""
    parts = [part for part in posixpath.normpath(rel).split("/") if part not in ("", ".")]
    for end in range(1, len(parts) + 1):
        here = "/".join(parts[:end])
        if here in declared or os.path.lexists(root / here / ".git"):
            return here
    return None


def _spec_paths(root: Path, limits: SpecLimits) -> Iterator[Path]:
    """gitops.yaml and the model files, in order; stops with a SpecError past `limits.max_files` spec files or
    `limits.max_entries` files and directories under models/."""
    if (root / REPO_SPEC).is_file():
        yield root / REPO_SPEC
    spec_dir = root / SPEC_DIR
    if not spec_dir.is_dir():
        return
    found: list[Path] = []
    for walked, path in enumerate(spec_dir.rglob("*"), start=1):
        if walked > limits.max_entries:
            raise too_many_entries(limits)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            found.append(path)
            if len(found) >= limits.max_files:
                raise too_many_files(limits)
    yield from sorted(found)


def _read(root: Path, rel: str, limits: SpecLimits) -> str:
    """A spec file's text, never read past its bound; one that is a symbolic link out of the tree is refused
    and never read."""
    if _leaves(root, rel):
        raise SpecError([SpecProblem(file=rel, line=None, field="", message=(
            "a symbolic link that leads outside the repository: refused, not read"))])  # fmt: skip
    with (root / rel).open("rb") as handle:  # never more than the bound, even if the file grows meanwhile
        data = handle.read(limits.max_file_bytes + 1)
    problems = size_problems({rel: len(data)}, limits)
    if problems:
        raise SpecError(problems)
    return decode_spec(data, rel)


def _path_problems(
    root: Path, rel: str, train: ResolvedTrain, model: ModelSpec, declared: set[str]
) -> list[SpecProblem]:
    """What is wrong with the repository paths a model names: links out, submodules, a missing workdir or
    requirements file."""
    problems: list[SpecProblem] = []
    flagged: set[str] = set()
    for field, where in repository_paths(model, train):
        if _leaves(root, where):
            message = f"{where!r} leads outside the repository through a symbolic link: refused"
        elif (sub := _submodule(root, where, declared)) is not None:
            message = f"{sub!r} is a Git submodule, which gitopsd does not check out (commit its files instead)"
        else:
            continue
        problems.append(SpecProblem(file=rel, line=None, field=field, message=message))
        flagged.add(field)
    if "spec.train.workdir" not in flagged and not (root / train.workdir).is_dir():
        message = f"directory {train.workdir!r} does not exist"
        problems.append(SpecProblem(file=rel, line=None, field="spec.train.workdir", message=message))
    requirements = train.requirements
    if requirements and "spec.train.python.requirements" not in flagged and not (root / requirements).is_file():
        message = f"file {requirements!r} does not exist"
        problems.append(SpecProblem(file=rel, line=None, field="spec.train.python.requirements", message=message))
    return problems


@dataclass(frozen=True, kw_only=True)
class TreeSpecs:
    repo: RepositorySpec
    models: dict[str, ModelSpec]


def load_tree(root: Path, operator: Operator | None = None, limits: SpecLimits | None = None) -> TreeSpecs:
    """Parse and check every spec file under `root` against the operator's configuration (default: one local
    backend); raise one SpecError naming every problem."""
    operator = operator or Operator()
    limits = limits or SpecLimits()
    if not root.is_dir():
        raise SpecError([SpecProblem(file=str(root), line=None, field="", message="not a directory")])
    paths = list(_spec_paths(root, limits))
    sizes = {path.relative_to(root).as_posix(): path.stat().st_size for path in paths}
    problems = size_problems(sizes, limits)
    refused = {p.file for p in problems}
    if any(p.file not in sizes for p in problems):  # the whole set is over a bound: read none of it
        raise SpecError(problems)
    repo = RepositorySpec.default()
    repo_text: str | None = None
    models: dict[str, ModelSpec] = {}
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if rel in refused:
            continue
        try:
            text = _read(root, rel, limits)
            if rel == REPO_SPEC:
                repo_text = text
            else:
                models[rel] = load_model(text, rel)
        except SpecError as exc:
            problems.extend(exc.problems)
    if REPO_SPEC not in refused and not any(p.file == REPO_SPEC for p in problems):
        try:
            repo = load_repository_for(operator, repo_text, REPO_SPEC)
        except SpecError as exc:
            problems.extend(exc.problems)
    if not problems:
        try:
            check_models(models, repo)
        except SpecError as exc:
            problems.extend(exc.problems)
        problems.extend(data_problems(models, operator))
    if not problems:
        declared = _submodules(root)
        for rel, model in models.items():
            problems.extend(_path_problems(root, rel, resolve_train(model, repo, file=rel), model, declared))
    if problems:
        raise SpecError(problems)
    return TreeSpecs(repo=repo, models=models)
