"""`gitopsd init DIR`: a small GitOps repository to try gitopsd on, with one commit and its CI files.

The demo trains in about a second on data generated here (two Gaussian blobs, seeded, so the file and its
SHA-256 are the same on every machine); nothing is downloaded. The commit is made with libgit2, so it works
without a configured `git` identity.

The CI files (`write_ci_files`, also run alone on an existing repository by `gitopsd init --ci-only`) run
`gitopsd validate` and `gitopsd plan` on every pull/merge request and post the plan with `gitopsd comment`. They
are package data (gitopsd/cli/ci/), stamped with the version of gitopsd that wrote them.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from pathlib import Path

import pygit2

DEMO = files("gitopsd.cli") / "demo"
CI = files("gitopsd.cli") / "ci"
_TEMPLATES = ("gitops.yaml", "README.md", "models/blobs.yaml", "src/train.py")
# Where each forge looks for its CI file, and the template that goes there.
CI_FILES = {".github/workflows/gitopsd.yml": "github-workflow.yml", ".gitlab-ci.yml": "gitlab-ci.yml"}


@dataclass(frozen=True, kw_only=True)
class CiFiles:
    """What `write_ci_files` did: the files it wrote and the ones it left alone because they existed."""

    written: tuple[str, ...]
    skipped: tuple[str, ...]


def gitopsd_version() -> str:
    """The installed gitopsd's version: the one the CI templates install by default."""
    try:
        return version("gitopsd")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
        return "0.1.0"


def ci_file(path: str) -> str:
    """The text of one CI file (a key of CI_FILES), stamped with this gitopsd's version."""
    return (CI / CI_FILES[path]).read_text().replace("@GITOPSD_VERSION@", gitopsd_version())


def write_ci_files(target: Path) -> CiFiles:
    """Write the CI files into the working tree `target`, never over an existing file."""
    if not target.is_dir():
        raise FileNotFoundError(f"{target} is not a directory")
    written, skipped = [], []
    for rel in CI_FILES:
        path = target / rel
        if path.exists() or path.is_symlink():
            skipped.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x") as handle:  # exclusive: never over a file that appeared meanwhile
            handle.write(ci_file(rel))
        written.append(rel)
    return CiFiles(written=tuple(written), skipped=tuple(skipped))


def blobs_csv(points: int = 200, seed: int = 42) -> str:
    """Two labelled clusters in the plane, as CSV text."""
    rng = random.Random(seed)
    lines = ["x1,x2,label"]
    for i in range(points):
        label = i % 2
        centre = (1.5, 1.5) if label else (-1.5, -1.0)
        lines.append(f"{rng.gauss(centre[0], 1.0):.5f},{rng.gauss(centre[1], 1.0):.5f},{label}")
    return "\n".join(lines) + "\n"


def init_demo(target: Path) -> str:
    """Write the demo repository into `target` (which must be empty or absent) and commit it."""
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty")
    data = blobs_csv()
    digest = hashlib.sha256(data.encode()).hexdigest()
    (target / "data").mkdir(parents=True, exist_ok=True)
    (target / "data" / "blobs.csv").write_text(data)
    for name in _TEMPLATES:
        text = (DEMO / name).read_text().replace("{{DATA_SHA256}}", digest)
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    write_ci_files(target)
    return commit_all(target, "Declare the blobs model")


def commit_all(workdir: Path, message: str) -> str:
    """Stage every file of a working tree and commit it on the current branch (creating the repo if needed)."""
    if (workdir / ".git").exists():
        repo = pygit2.Repository(str(workdir), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    else:  # never discover (and commit into) a repository that merely encloses `workdir`
        repo = pygit2.init_repository(str(workdir), initial_head="main")
    repo.index.add_all()
    repo.index.write()
    tree = repo.index.write_tree()
    author = pygit2.Signature("gitopsd", "gitopsd@localhost")
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", author, author, message, tree, parents))
