"""Per-requirements virtualenvs for local runs, built once and shared by every run that asks for them.

A model spec may pin its Python dependencies in a requirements file. The local backend then runs the training
in a virtualenv keyed by the file's content, `state_dir/local/venvs/<first 16 hex of sha256>`, so two runs
with the same requirements share one environment and a changed file gets a new one. The supervisor (never the
daemon: submit stays fast) calls `ensure_venv`, which builds under an flock so that two runs never build the
same environment at once, and publishes it atomically: the environment is built in `venvs/.builds/<key>-<pid>`
and the symlink `venvs/<key>` is swapped in only once `python -m venv`, `pip install -r` and a sanity check
have all succeeded. (A virtualenv cannot be moved once built, because pip writes its absolute path into script
shebangs; a symlink renamed into place gives the same all-or-nothing publication without moving it.) Standard
library only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gitopsd.errors import PermanentError

MARKER = "gitopsd-venv.json"
KEY_HEX = 16
POLL_S = 0.1
STOP_GRACE_S = 5.0


class VenvBuildError(PermanentError):
    """The environment for a requirements file could not be built; the run fails with this message."""


@dataclass(frozen=True, kw_only=True)
class Venv:
    """A published environment: its stable path (the symlink) and the `sys.version` of its interpreter."""

    path: Path
    python_version: str
    built_at: float

    @property
    def bin_dir(self) -> Path:
        return self.path / "bin"


def venv_key(requirements: bytes) -> str:
    """The content key of a requirements file: the first 16 hex digits of its sha256."""
    return hashlib.sha256(requirements).hexdigest()[:KEY_HEX]


def load_venv(path: Path) -> Venv | None:
    """The published environment at `path`, or None when there is none (or only a half-built one)."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return Venv(path=path, python_version=str(marker["python_version"]), built_at=float(marker["built_at"]))


def ensure_venv(
    requirements: Path,
    *,
    venvs_dir: Path,
    python: str,
    env: Mapping[str, str],
    log: BinaryIO,
    should_stop: Callable[[], bool],
) -> Venv:
    """Return the environment for `requirements`, building it first if no run has yet.

    `python` creates the environment, `env` is the (clean) environment the build commands run in, and build
    output goes to `log`. `should_stop` is polled while waiting, so a cancelled run stops promptly.
    """
    try:
        content = requirements.read_bytes()
    except OSError as exc:
        raise VenvBuildError(f"cannot read the requirements file {requirements}: {exc.strerror}") from exc
    key = venv_key(content)
    path = venvs_dir / key
    found = load_venv(path)
    if found is not None:
        return found
    venvs_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(venvs_dir / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _lock(lock_fd, path, log, should_stop)
        found = load_venv(path)  # another run may have finished it while we waited
        if found is not None:
            return found
        return _build(requirements, key=key, venvs_dir=venvs_dir, python=python, env=env, log=log, stop=should_stop)
    finally:
        os.close(lock_fd)


def _say(log: BinaryIO, message: str) -> None:
    log.write(f"[gitopsd local] {message}\n".encode())
    log.flush()


def _lock(fd: int, path: Path, log: BinaryIO, should_stop: Callable[[], bool]) -> None:
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not announced:
            announced = True
            _say(log, f"waiting for another run that is building the Python environment {path}")
        if should_stop():
            raise VenvBuildError(f"stopped while waiting for the Python environment {path} to be built")
        time.sleep(POLL_S)


def _build(
    requirements: Path,
    *,
    key: str,
    venvs_dir: Path,
    python: str,
    env: Mapping[str, str],
    log: BinaryIO,
    stop: Callable[[], bool],
) -> Venv:
    builds = venvs_dir / ".builds"
    builds.mkdir(exist_ok=True)
    for stale in builds.glob(f"{key}-*"):  # left by a build that crashed; we hold the lock, so none is live
        shutil.rmtree(stale, ignore_errors=True)
    build_dir = builds / f"{key}-{os.getpid()}"
    path = venvs_dir / key
    _say(log, f"building the Python environment {path} from {requirements}")
    venv_python = str(build_dir / "bin" / "python")
    steps = [
        ("python -m venv", [python, "-m", "venv", str(build_dir)]),
        (
            "pip install -r",
            [
                venv_python,
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
                str(requirements),
            ],
        ),
    ]
    for what, argv in steps:
        code = _run_step(argv, env=env, log=log, stop=stop)
        if code != 0:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise VenvBuildError(
                f"building the Python environment for {requirements} failed: `{what}` exited with code {code}"
                " (its output is in the run's log)"
            )
    version = subprocess.run(
        [venv_python, "-c", "import sys; print(sys.version)"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if version.returncode != 0:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise VenvBuildError(f"the new Python environment for {requirements} does not start: {version.stderr}")
    built_at = time.time()
    python_version = version.stdout.strip()
    marker = {"python_version": python_version, "built_at": built_at, "requirements_sha256_16": key}
    (build_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    link_tmp = venvs_dir / f".{key}.link-{os.getpid()}"
    link_tmp.unlink(missing_ok=True)
    link_tmp.symlink_to(Path(".builds") / build_dir.name)
    os.replace(link_tmp, path)
    _say(log, f"Python environment {path} is ready (Python {python_version.split()[0]})")
    return Venv(path=path, python_version=python_version, built_at=built_at)


def _run_step(argv: list[str], *, env: Mapping[str, str], log: BinaryIO, stop: Callable[[], bool]) -> int:
    """Run one build command with its output in the log; terminate it if the run is stopped meanwhile."""
    log.flush()
    proc = subprocess.Popen(argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    while True:
        try:
            return proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        if stop():
            proc.terminate()
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise VenvBuildError(f"stopped while building the Python environment (`{argv[0]} {argv[1]}`)")
