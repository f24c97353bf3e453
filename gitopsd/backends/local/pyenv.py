"""Which packages a training's Python holds, listed once per environment rather than once per run.

Lineage records the Python a training ran with and its installed packages. Finding them costs: the host's
`python3` (the operator's, used when the repository asks for no requirements) must be asked in a process of
its own, about 0.2 s; a venv the backend built is read, never run (a package's `.pth` file would run code at
interpreter start), one metadata file per package. Both answers are kept in `state_dir/local/environments/`,
one small JSON file per interpreter, and reused while the environment is the same:

- the same interpreter: the `python3` PATH finds (or the venv's directory), its resolved path, size and
  modification time, and the `pyvenv.cfg` that would make it a venv's;
- the same packages: the names of the package metadata (`*.dist-info`, `*.egg-info`, `*.egg-link`, `*.pth`,
  `*.egg`) in every directory the interpreter finds packages in (its `sys.path`, as it reported it). Installing,
  removing or upgrading a package adds, removes or renames such a name, so the listing changes and the packages
  are asked again.

A `python3` that is a script (a `#!` launcher such as a pyenv shim) may start a different interpreter each
time without changing itself, so it is asked every time, as before. The cache is an optimisation: a missing,
unreadable, corrupt or foreign file (one whose interpreter or listing is not the live one) is ignored and
rewritten, and a cache that cannot be written only costs the next run the same question again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeGuard

from gitopsd.backends.local.supervisor import read_json, write_json_atomic

_ASK = (
    "import importlib.metadata as m, json, sys; "
    "print(json.dumps({'python': sys.version.split()[0], 'path': sys.path, "
    "'packages': {d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}}))"
)

#: Names in a package directory that say which distributions it holds (or which more directories it adds).
_METADATA_SUFFIXES = (".dist-info", ".egg-info", ".egg-link", ".pth", ".egg")

#: The most packages and package directories a cache file may name: far above any real environment.
MOST_PACKAGES = 100_000
MOST_DIRS = 1_000

CACHE_VERSION = 1


def python_environment(venv: str | None, cache_dir: Path | None = None) -> dict[str, Any]:
    """The Python a training ran with (its venv's, else `python3` on PATH) and its installed packages.

    A venv built from a repository's requirements is read, not run: its version comes from `pyvenv.cfg` and
    its packages from their metadata. The host's `python3` is asked, in isolated mode and with none of the
    daemon's environment. An interpreter that cannot answer gives {}. With `cache_dir`, an environment already
    listed there and unchanged since is answered from it (see the module docstring).
    """
    if venv:
        return _venv_environment(Path(venv), cache_dir)
    return _host_environment(cache_dir)


def _host_environment(cache_dir: Path | None) -> dict[str, Any]:
    search = os.environ.get("PATH", "/usr/bin:/bin")
    found = shutil.which("python3", path=search)
    identity = None if found is None else _interpreter_identity(Path(found))
    cached = _cached(cache_dir, identity)
    if cached is not None:
        return cached
    answer = ask_interpreter(search)
    if answer is None:
        return {}
    dirs = [p for p in answer.get("path", []) if isinstance(p, str) and p][:MOST_DIRS]
    environment = {"python": answer.get("python"), "packages": dict(sorted(answer.get("packages", {}).items()))}
    _remember(cache_dir, identity, dirs, environment)
    return environment


def ask_interpreter(search: str) -> dict[str, Any] | None:
    """Run `python3` (found on `search`, the PATH) once: its version, `sys.path` and packages; None when it
    cannot answer. The one place a process is started for lineage."""
    try:
        done = subprocess.run(
            ["python3", "-I", "-c", _ASK], capture_output=True, text=True, timeout=20, check=True,
            env={"PATH": search, "LC_ALL": "C.UTF-8"},
        )  # fmt: skip
        data = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _interpreter_identity(found: Path) -> list[Any] | None:
    """What makes `found` the same interpreter as before; None when it is a script (or unreadable), which is
    never cached: a launcher can start another interpreter without changing itself."""
    try:
        real = found.resolve()
        with open(real, "rb") as handle:
            if handle.read(2) == b"#!":
                return None
        info = os.stat(real)
    except (OSError, RuntimeError):
        return None
    configs = [_stamp(found.parent / "pyvenv.cfg"), _stamp(found.parent.parent / "pyvenv.cfg")]
    return ["host", str(found.absolute()), str(real), info.st_size, info.st_mtime_ns, configs]


def _stamp(path: Path) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _venv_environment(venv: Path, cache_dir: Path | None) -> dict[str, Any]:
    try:
        config = (venv / "pyvenv.cfg").read_text(errors="replace")[:4096]
    except OSError:
        return {}
    sites = [str(p) for p in sorted(venv.glob("lib/python*/site-packages"))]
    identity = ["venv", str(venv.absolute()), config]
    cached = _cached(cache_dir, identity, sites)
    if cached is not None:
        return cached
    listing = package_listing(sites)  # before reading: a change while reading is seen next time
    version = next((v.strip() for k, _, v in (line.partition("=") for line in config.splitlines())
                    if k.strip() in ("version", "version_info")), None)  # fmt: skip
    import importlib.metadata  # ~25 ms, paid only when a venv's packages are read, not by every backend check

    packages = {
        d.metadata["Name"]: d.version for d in importlib.metadata.distributions(path=sites) if d.metadata["Name"]
    }
    environment = {"python": version, "packages": dict(sorted(packages.items()))}
    _remember(cache_dir, identity, sites, environment, listing)
    return environment


def package_listing(dirs: Iterable[str]) -> str:
    """A digest of the package metadata names in each directory (a file or missing path: its size and time)."""
    entries: list[Any] = []
    for directory in dirs:
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(_METADATA_SUFFIXES))
            entries.append([directory, names])
        except NotADirectoryError:
            entries.append([directory, _stamp(Path(directory))])
        except OSError:
            entries.append([directory, None])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _cache_file(cache_dir: Path, identity: list[Any]) -> Path:
    return cache_dir / (hashlib.sha256(json.dumps(identity).encode()).hexdigest() + ".json")


def _cached(cache_dir: Path | None, identity: list[Any] | None, dirs: list[str] | None = None) -> dict[str, Any] | None:
    """The environment the cache holds for `identity`, if its package listing is still the live one."""
    if cache_dir is None or identity is None:
        return None
    try:
        data = read_json(_cache_file(cache_dir, identity))
    except (OSError, ValueError):
        return None
    if data is None or data.get("version") != CACHE_VERSION or data.get("identity") != identity:
        return None
    recorded = data.get("dirs")
    if not _strings(recorded, MOST_DIRS) or (dirs is not None and recorded != dirs):
        return None
    python, packages = data.get("python"), data.get("packages")
    if not (python is None or isinstance(python, str)) or not isinstance(packages, dict):
        return None
    if len(packages) > MOST_PACKAGES or not _strings([*packages, *packages.values()], 2 * MOST_PACKAGES):
        return None
    if data.get("listing") != package_listing(recorded):
        return None
    return {"python": python, "packages": dict(sorted(packages.items()))}


def _strings(value: object, most: int) -> TypeGuard[list[str]]:
    return isinstance(value, list) and len(value) <= most and all(isinstance(v, str) for v in value)


def _remember(
    cache_dir: Path | None,
    identity: list[Any] | None,
    dirs: list[str],
    environment: dict[str, Any],
    listing: str | None = None,
) -> None:
    """Keep `environment` for `identity`; a cache that cannot be written is skipped (it is only a cache)."""
    if cache_dir is None or identity is None:
        return
    record = {"version": CACHE_VERSION, "identity": identity, "dirs": dirs,
              "listing": listing or package_listing(dirs), **environment}  # fmt: skip
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(_cache_file(cache_dir, identity), record)
    except (OSError, TypeError, ValueError):
        return
