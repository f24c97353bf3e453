"""The local backend lists a Python's packages once per environment: a second run in the same environment starts
no process and reads no metadata, a changed environment is listed again, and a cache file that is missing,
corrupt or someone else's is ignored and rewritten. What it answers is what it answered before, uncached."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gitopsd.backends.local import pyenv
from gitopsd.backends.local.pyenv import python_environment


@dataclass
class Venv:
    root: Path
    site: Path

    def install(self, name: str, version: str) -> None:
        dist = self.site / f"{name}-{version}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def venv(tmp_path: Path) -> Venv:
    root = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    sites = sorted(root.glob("lib/python*/site-packages"))
    assert len(sites) == 1
    made = Venv(root=root, site=sites[0])
    made.install("numpy", "2.0.1")
    return made


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every time the host's `python3` is started (the one boundary where lineage starts a process)."""
    calls: list[str] = []
    real = pyenv.ask_interpreter

    def counting(search: str) -> dict[str, Any] | None:
        calls.append(search)
        return real(search)

    monkeypatch.setattr(pyenv, "ask_interpreter", counting)
    return calls


@pytest.fixture
def on_path(venv: Venv, monkeypatch: pytest.MonkeyPatch) -> Venv:
    """The venv's `python3` (a link to a real interpreter binary) first on PATH: the host's python3."""
    assert not (venv.root / "bin" / "python3").resolve().read_bytes().startswith(b"#!")
    monkeypatch.setenv("PATH", f"{venv.root / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return venv


def test_a_second_run_in_the_same_environment_starts_no_process(
    on_path: Venv, asked: list[str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    uncached = python_environment(None)
    assert uncached["packages"]["numpy"] == "2.0.1"
    assert uncached["python"] == sys.version.split()[0]
    asked.clear()
    assert python_environment(None, cache) == uncached
    assert len(asked) == 1
    for _ in range(3):
        assert python_environment(None, cache) == uncached, "the same packages as before"
    assert len(asked) == 1, "no process for a run in an environment already listed"


def test_an_installed_upgraded_or_removed_package_is_listed_again(
    on_path: Venv, asked: list[str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    python_environment(None, cache)
    on_path.install("scipy", "1.14.0")
    assert python_environment(None, cache)["packages"]["scipy"] == "1.14.0"
    assert len(asked) == 2
    (on_path.site / "numpy-2.0.1.dist-info").rename(on_path.site / "numpy-2.0.2.dist-info")
    (on_path.site / "numpy-2.0.2.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: numpy\nVersion: 2.0.2\n"
    )
    assert python_environment(None, cache)["packages"]["numpy"] == "2.0.2"
    for name in ("numpy-2.0.2.dist-info", "scipy-1.14.0.dist-info"):
        for child in (on_path.site / name).iterdir():
            child.unlink()
        (on_path.site / name).rmdir()
    found = python_environment(None, cache)
    assert "numpy" not in found["packages"] and "scipy" not in found["packages"]
    assert len(asked) == 4
    assert python_environment(None, cache) == found and len(asked) == 4


def test_another_interpreter_on_path_is_listed_on_its_own(
    on_path: Venv, asked: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    python_environment(None, cache)
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(other)], check=True, timeout=120)
    monkeypatch.setenv("PATH", f"{other / 'bin'}:{os.environ['PATH']}")
    assert "numpy" not in python_environment(None, cache)["packages"]
    assert len(asked) == 2
    assert len(list(cache.iterdir())) == 2


def test_a_launcher_script_is_asked_every_time(venv: Venv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `#!` python3 (a pyenv shim, a wrapper) can start another interpreter without changing itself."""
    log = tmp_path / "calls.log"
    wrapper = tmp_path / "bin" / "python3"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {venv.root / "bin" / "python3"} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    cache = tmp_path / "cache"
    first = python_environment(None, cache)
    assert first["packages"]["numpy"] == "2.0.1"
    assert python_environment(None, cache) == first
    assert len(log.read_text().splitlines()) == 2
    assert not cache.exists()


def test_no_python3_on_path_gives_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert python_environment(None, tmp_path / "cache") == {}
    assert not (tmp_path / "cache").exists()


def _only_file(cache: Path) -> Path:
    (found,) = list(cache.iterdir())
    return found


def _corruptions(good: dict[str, Any]) -> list[Any]:
    return [
        b"",
        b"not json",
        b"[" * 100_000,
        b"[]",
        json.dumps({**good, "version": 99}).encode(),
        json.dumps({**good, "identity": ["host", "/elsewhere"]}).encode(),
        json.dumps({**good, "listing": "0" * 64}).encode(),
        json.dumps({**good, "packages": {"evil": 1}}).encode(),
        json.dumps({**good, "packages": ["evil"]}).encode(),
        json.dumps({**good, "python": 3}).encode(),
        json.dumps({**good, "dirs": "/"}).encode(),
        json.dumps({**good, "dirs": [7]}).encode(),
        json.dumps({**good, "packages": {f"p{i}": "1" for i in range(pyenv.MOST_PACKAGES + 1)}}).encode(),
        b" " * (2 << 20),
    ]


def test_a_corrupt_or_foreign_cache_file_is_ignored_and_rewritten(
    on_path: Venv, asked: list[str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    truth = python_environment(None, cache)
    path = _only_file(cache)
    good = json.loads(path.read_text())
    for number, bad in enumerate(_corruptions(good), start=2):
        path.write_bytes(bad)
        assert python_environment(None, cache) == truth
        assert len(asked) == number, f"corruption {number - 2} was trusted"
        assert json.loads(path.read_text()) == good, "rewritten"
    path.unlink()
    path.symlink_to(tmp_path / "planted.json")
    (tmp_path / "planted.json").write_text(json.dumps(good))
    assert python_environment(None, cache) == truth
    assert not path.is_symlink(), "a planted link is replaced, never read"
    path.unlink()
    os.mkfifo(path)
    assert python_environment(None, cache) == truth, "a FIFO does not hang it"


def test_a_cache_that_cannot_be_written_costs_only_the_question(
    on_path: Venv, asked: list[str], tmp_path: Path
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    first = python_environment(None, blocked / "cache")
    assert first["packages"]["numpy"] == "2.0.1"
    assert python_environment(None, blocked / "cache") == first
    assert len(asked) == 2


def test_a_venv_is_read_once_until_its_packages_change(
    venv: Venv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[object] = []
    real = importlib.metadata.distributions

    def counting(**kwargs: Any) -> Any:
        reads.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "distributions", counting)
    cache = tmp_path / "cache"
    uncached = python_environment(str(venv.root))
    assert uncached["packages"] == {"numpy": "2.0.1"}
    assert python_environment(str(venv.root), cache) == uncached
    assert python_environment(str(venv.root), cache) == uncached
    assert len(reads) == 2, "the second listing came from the cache"
    venv.install("scipy", "1.14.0")
    assert python_environment(str(venv.root), cache)["packages"] == {"numpy": "2.0.1", "scipy": "1.14.0"}
    assert len(reads) == 3
    config = venv.root / "pyvenv.cfg"
    config.write_text("".join(f"{line}\n" for line in config.read_text().splitlines() if "version" not in line)
                      + "version = 9.9\n")  # fmt: skip
    assert python_environment(str(venv.root), cache)["python"] == "9.9", "another pyvenv.cfg: another environment"
