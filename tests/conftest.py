"""Shared fixtures: a real demo Git repository, committed to with the `git` CLI like a user would."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitopsd.cli.scaffold import init_demo
from gitopsd.reconcile.reconciler import Reconciler
from tests import fdwatch

# The S3 server's fixtures, declared once for the whole suite: a session fixture imported into two test modules
# is two fixtures, and started two servers whose credentials took turns in the environment.
from tests.s3server import s3_bucket, s3_endpoint, s3_server  # noqa: F401

# A descriptor closed twice names its culprit in the report of whatever fails on it later (tests/fdwatch.py).
fdwatch.install()

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test User",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test User",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


@dataclass
class GitRepo:
    """A working tree whose commits gitopsd reconciles."""

    path: Path

    def git(self, *args: str) -> str:
        env = {**os.environ, **GIT_ENV}
        done = subprocess.run(["git", *args], cwd=self.path, env=env, check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def write(self, rel: str, text: str) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def read(self, rel: str) -> str:
        return (self.path / rel).read_text()

    def edit(self, rel: str, old: str, new: str) -> None:
        text = self.read(rel)
        assert old in text, f"{old!r} not in {rel}"
        self.write(rel, text.replace(old, new, 1))

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def demo_repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    init_demo(repo.path)
    return repo


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def reconciler(demo_repo: GitRepo, state_dir: Path) -> Iterator[Reconciler]:
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    yield rec
    rec.close()


def gitopsd(state_dir: Path, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `gitopsd` command line in a subprocess."""
    env = {**os.environ, "GITOPSD_STATE_DIR": str(state_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "gitopsd", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(f"gitopsd {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def on_a_terminal(state_dir: Path, *args: str, code: int = 0) -> str:
    """Run the real `gitopsd` with its stdout on a pseudo-terminal; what it wrote there (it must exit `code`)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "GITOPSD_STATE_DIR": str(state_dir)}
    done = subprocess.Popen([sys.executable, "-m", "gitopsd", *args], stdout=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert done.wait(timeout=120) == code
    return b"".join(chunks).decode().replace("\r\n", "\n")
