"""Wheels of gitopsd's runtime dependencies, repacked from the environment the tests run in, so that pip can
install gitopsd with no network (PIP_NO_INDEX, PIP_FIND_LINKS): the pre-commit test installs the hook's
environment from them.

A wheel is a zip of an installed distribution's files and its .dist-info (with a fresh RECORD); scripts
outside site-packages are left out (pip writes console scripts again from entry_points.txt). The build backend
pyproject.toml asks for (setuptools) comes from virtualenv's embedded wheels.
"""

from __future__ import annotations

import base64
import hashlib
import re
import tomllib
import zipfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import sys_tags


def runtime_closure(pyproject: Path) -> list[Distribution]:
    """The installed distributions gitopsd's `dependencies` need, transitively (markers evaluated here)."""
    wanted = [Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    found: dict[str, Distribution] = {}
    while wanted:
        req = wanted.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # only gitopsd's own dependencies carry markers here; their children are filtered below
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key in found:
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            raise AssertionError(f"{req.name} is not installed: the wheelhouse cannot hold it") from None
        found[key] = dist
        envs = [{"extra": extra} for extra in (req.extras or {""})]
        for sub in dist.requires or []:
            child = Requirement(sub)
            if child.marker is None or any(child.marker.evaluate(env) for env in envs):
                extras = f"[{','.join(sorted(child.extras))}]" if child.extras else ""
                wanted.append(Requirement(child.name + extras))
    return list(found.values())


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack(dist: Distribution, out: Path) -> Path:
    """One installed distribution as a wheel in `out`."""
    wheel_meta = dist.read_text("WHEEL") or "Tag: py3-none-any\n"
    supported = {str(t) for t in sys_tags()}
    tags = re.findall(r"^Tag: (\S+)$", wheel_meta, re.M)
    tag = next((t for t in tags if t in supported), tags[0])  # py2.py3 wheels list both: name the one pip takes
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    target = out / f"{name}-{dist.version}-{tag}.whl"
    root = Path(str(dist.locate_file("")))
    records = []
    info_dir = None
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as wheel:
        for file in dist.files or []:
            rel = file.as_posix()
            parts = file.parts
            if parts[0] == ".." or "__pycache__" in parts or rel.endswith(".pyc"):
                continue
            if parts[0].endswith(".dist-info"):
                info_dir = parts[0]
                if parts[-1] in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                    continue
            path = root / rel
            if not path.is_file():
                continue
            data = path.read_bytes()
            wheel.writestr(rel, data)
            records.append(_record_line(rel, data))
        assert info_dir is not None, f"{dist.metadata['Name']} has no .dist-info in its RECORD"
        records.append(f"{info_dir}/RECORD,,")
        wheel.writestr(f"{info_dir}/RECORD", "\n".join(records) + "\n")
    return target


def build_wheelhouse(pyproject: Path, out: Path) -> Path:
    """Every runtime dependency of gitopsd as a wheel in `out`, with the setuptools its build needs."""
    import virtualenv

    out.mkdir(parents=True, exist_ok=True)
    for dist in runtime_closure(pyproject):
        repack(dist, out)
    embedded = Path(virtualenv.__file__).parent / "seed" / "wheels" / "embed"
    newest = sorted(embedded.glob("setuptools-*.whl"), key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)])
    (out / newest[-1].name).write_bytes(newest[-1].read_bytes())
    return out
