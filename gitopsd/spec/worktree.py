"""Validating a working tree on disk, the way `gitopsd validate` does in a pull request's CI.

It applies the same parsers, bounds and cross-file checks as the reconciler does to a commit, plus the checks
that need the files themselves (the workdir and requirements a spec names must exist), and reports every
problem at once. Sizes are taken from the file system before a file is read, and no file is read past its bound.
"""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from gitopsd.errors import SpecError, SpecProblem
from gitopsd.spec import prebuild
from gitopsd.spec.bounds import (
    DATA_HASH_BYTES,
    SpecLimits,
    decode_spec,
    size_problems,
    too_many_entries,
    too_many_files,
)
from gitopsd.spec.layout import REPO_SPEC, SPEC_DIR
from gitopsd.spec.load import check_models, load_model, model_of_plain
from gitopsd.spec.operator import Operator
from gitopsd.spec.resolve import data_problems, load_repository_for, repository_data_problems
from gitopsd.spec.schema import ModelSpec, RepositorySpec, ResolvedTrain, TrainResolver, repository_paths
from gitopsd.spec.yamlplain import Plain


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


def _spec_paths(root: Path, limits: SpecLimits) -> tuple[list[str], set[str]]:
    """gitops.yaml and the model files, as paths relative to `root` in order (by path components), and those of
    them with a symbolic link on the way (the file itself, or models/): only those can lead outside the tree, as
    the walk never enters a linked directory. A SpecError past `limits.max_files` spec files or
    `limits.max_entries` files and directories under models/."""
    found: list[str] = [REPO_SPEC] if (root / REPO_SPEC).is_file() else []
    linked = {REPO_SPEC} if found and os.path.islink(root / REPO_SPEC) else set()
    spec_dir = root / SPEC_DIR
    if not spec_dir.is_dir():
        return found, linked
    spec_dir_linked = os.path.islink(spec_dir)
    models: list[str] = []
    walked = 0
    stack = [SPEC_DIR]
    while stack:
        here = stack.pop()
        try:
            listing = os.scandir(root / here)
        except PermissionError:  # as pathlib's walk did: a directory nobody may list holds no spec for anyone
            continue
        with listing as entries:
            for entry in entries:
                walked += 1
                if walked > limits.max_entries:
                    raise too_many_entries(limits)
                rel = f"{here}/{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append(rel)
                elif os.path.splitext(entry.name)[1] in (".yaml", ".yml") and entry.is_file():
                    models.append(rel)
                    if entry.is_symlink() or spec_dir_linked:
                        linked.add(rel)
                    if len(models) >= limits.max_files:
                        raise too_many_files(limits)
    return found + sorted(models, key=lambda rel: rel.split("/")), linked


def _read(root: Path, rel: str, limits: SpecLimits, *, linked: bool = True) -> str:
    """A spec file's text, never read past its bound; one that is a symbolic link out of the tree is refused
    and never read (`linked`: whether a link may be on its way, see `_spec_paths`)."""
    if linked and _leaves(root, rel):
        raise SpecError([SpecProblem(file=rel, line=None, field="", message=(
            "a symbolic link that leads outside the repository: refused, not read"))])  # fmt: skip
    with (root / rel).open("rb") as handle:  # never more than the bound, even if the file grows meanwhile
        data = handle.read(limits.max_file_bytes + 1)
    problems = size_problems({rel: len(data)}, limits)
    if problems:
        raise SpecError(problems)
    return decode_spec(data, rel)


def _sha256(path: Path) -> str | None:
    """The sha256 of a file of at most `DATA_HASH_BYTES`, read in blocks; None for a larger or unreadable one (its
    run's submission checks it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put there meanwhile must not hang the check
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        facts = os.fstat(fd)
        if not stat.S_ISREG(facts.st_mode) or facts.st_size > DATA_HASH_BYTES:
            return None
        try:
            return hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError:
            return None


class _Paths:
    """What the checks of the repository paths models name ask of the file system, asked once per path: ten
    thousand models name the same few workdirs."""

    def __init__(self, root: Path) -> None:
        declared = _submodules(root)
        self.leaves = functools.cache(lambda rel: _leaves(root, rel))
        self.submodule = functools.cache(lambda rel: _submodule(root, rel, declared))
        self.is_dir = functools.cache(lambda rel: (root / rel).is_dir())
        self.is_file = functools.cache(lambda rel: (root / rel).is_file())
        self.sha256 = functools.cache(lambda rel: _sha256(root / rel))

    def problems(self, rel: str, train: ResolvedTrain, model: ModelSpec) -> list[SpecProblem]:
        """What is wrong with the repository paths a model names: links out, submodules, a missing workdir or
        requirements file."""
        problems: list[SpecProblem] = []
        flagged: set[str] = set()
        for field, where in repository_paths(model, train):
            if self.leaves(where):
                message = f"{where!r} leads outside the repository through a symbolic link: refused"
            elif (sub := self.submodule(where)) is not None:
                message = f"{sub!r} is a Git submodule, which gitopsd does not check out (commit its files instead)"
            else:
                continue
            problems.append(SpecProblem(file=rel, line=None, field=field, message=message))
            flagged.add(field)
        if "spec.train.workdir" not in flagged and not self.is_dir(train.workdir):
            message = f"directory {train.workdir!r} does not exist"
            problems.append(SpecProblem(file=rel, line=None, field="spec.train.workdir", message=message))
        requirements = train.requirements
        if requirements and "spec.train.python.requirements" not in flagged and not self.is_file(requirements):
            message = f"file {requirements!r} does not exist"
            problems.append(SpecProblem(file=rel, line=None, field="spec.train.python.requirements", message=message))
        return problems + repository_data_problems(rel, model, self.is_file, self.sha256, skip=flagged)


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
    paths, linked = _spec_paths(root, limits)
    sizes = {rel: os.stat(root / rel).st_size for rel in paths}
    problems = size_problems(sizes, limits)
    refused = {p.file for p in problems}
    if any(p.file not in sizes for p in problems):  # the whole set is over a bound: read none of it
        raise SpecError(problems)
    repo = RepositorySpec.default()
    repo_text: str | None = None
    models: dict[str, ModelSpec] = {}

    def read(rel: str) -> str:
        return _read(root, rel, limits, linked=rel in linked)

    def load(rel: str, plain: Plain | None) -> None:  # `plain`: what the helper built of the file, if it did
        try:
            model = model_of_plain(plain)
            models[rel] = model if model is not None else load_model(read(rel), rel, plain)
        except SpecError as exc:
            problems.extend(exc.problems)

    readable = [rel for rel in paths if rel not in refused]
    if REPO_SPEC in readable:
        try:
            repo_text = read(REPO_SPEC)
        except SpecError as exc:
            problems.extend(exc.problems)
    # A second core builds a large tree's files from the last one backwards until it meets this process
    # (`spec.prebuild`); every model is validated here, and the models keep the order of their paths.
    files = [rel for rel in readable if rel != REPO_SPEC]
    with prebuild.helper(files, read) as helper:
        for rel in helper.mine():
            load(rel, None)
        built = helper.results()
    for rel in files[helper.taken :]:
        load(rel, built.get(rel))
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
        checked, resolver = _Paths(root), TrainResolver(repo)
        for rel, model in models.items():
            problems.extend(checked.problems(rel, resolver.resolve(model, file=rel), model))
    if problems:
        raise SpecError(problems)
    return TreeSpecs(repo=repo, models=models)
