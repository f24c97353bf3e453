"""Lineage asks a run's virtualenv which packages it holds; a package the repository installed must not get to
run code there with the daemon's environment (a `.pth` file runs at interpreter start)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from gitopsd.backends.local.pyenv import python_environment
from tests.security.conftest import Canary


def test_listing_a_venvs_packages_runs_none_of_its_code_and_passes_no_secret(tmp_path: Path, canary: Canary) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()
    )  # fmt: skip
    leak = tmp_path / "leaked.txt"
    (site / "evil.pth").write_text(
        f"import os; open({str(leak)!r}, 'w').write(os.environ.get('GITOPSD_GIT_TOKEN', 'ran'))\n"
    )
    dist = site / "evil-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
    found = python_environment(str(venv))
    assert found["packages"] == {"evil": "1.0"}, "the packages are still listed"
    assert found["python"] == sysconfig.get_python_version() or found["python"].startswith("3.")
    assert not leak.exists(), "a .pth file of the venv ran with the daemon's environment"
    with pytest.raises(AssertionError):
        canary.assert_not_in(canary.token)  # the check itself works
