"""A virtualenv of their own for the third-party tools an optional benchmark compares gitopsd with.

`bench/peers.py` (MLflow, DVC) and `bench/yamlalt.py` (Rust YAML libraries) install what they compare against
into a folder under bench/out, never into gitopsd's own environment, and go on without it when it cannot be
installed (no network, no wheel for this Python).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def venv_python(venv: Path, packages: Sequence[str], modules: Sequence[str], *, install: bool) -> Path | None:
    """The interpreter of `venv` once `modules` import there, installing `packages` (pip names) first if they do
    not and `install` is true; None when they cannot be had."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import " + ", ".join(modules)]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    if not install:
        return None
    print(f"installing {', '.join(packages)} into {venv} (once)", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], capture_output=True, text=True)
    if done.returncode != 0 or subprocess.run(probe, capture_output=True).returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr, flush=True)
        return None
    return python
