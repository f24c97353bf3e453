"""`gitopsd init DIR`: a small GitOps repository to try gitopsd on, with one commit.

The demo trains in about a second on data generated here (two Gaussian blobs, seeded, so the file and its
SHA-256 are the same on every machine); nothing is downloaded. The commit is made with libgit2, so it works
without a configured `git` identity.
"""

from __future__ import annotations

import hashlib
import random
from importlib.resources import files
from pathlib import Path

import pygit2

DEMO = files("gitopsd.cli") / "demo"
_TEMPLATES = ("gitops.yaml", "README.md", "models/blobs.yaml", "src/train.py")


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
