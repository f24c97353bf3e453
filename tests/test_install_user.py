"""`make install-user` and `make uninstall-user`: gitopsd for one user, without root, into a temporary HOME.

The install is real: `make install-user` builds this checkout and its backend plugins into a fresh venv under
HOME and the venv's own `gitopsd` answers. To keep it to seconds and off the network, the venv is made first
(where make would make it; make keeps an existing one) with a .pth line onto the project venv's site-packages,
and pip is given --no-deps: gitopsd's dependencies come from the project venv, gitopsd itself, its plugins and
its console script from this checkout. No systemd runs here, so the unit is installed but never started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("XDG_", "GITOPSD_", "PYTHON", "VIRTUAL_ENV", "MAKE"))}  # fmt: skip
    env.update(HOME=str(home), PIP_FLAGS="--no-deps", PY=sys.executable)
    return env


@pytest.fixture
def home(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    home = tmp_path / "home"
    venv = home / ".local" / "share" / "gitopsd" / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "zz-project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return home


def make(home: Path, target: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["make", "-C", str(ROOT), target], env=_env(home), capture_output=True, text=True,
                          cwd=home)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_install_user_installs_a_working_gitopsd_config_and_unit_and_uninstall_keeps_your_data(home: Path) -> None:
    done = make(home, "install-user")
    venv = home / ".local" / "share" / "gitopsd" / "venv"
    gitopsd = venv / "bin" / "gitopsd"
    helped = subprocess.run([str(gitopsd), "--help"], capture_output=True, text=True, cwd=home, env=_env(home))
    assert helped.returncode == 0 and "doctor" in helped.stdout, helped.stderr
    # Installed from this checkout into the venv (not an editable link back to it), plugins included.
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import gitopsd, gitopsd_slurm, gitopsd_nvidia; "
                            "from importlib.metadata import entry_points as e; print(gitopsd.__file__); "
                            "print(sorted(p.name for p in e(group='gitopsd.backends')))"],
                           capture_output=True, text=True, cwd=home, env=_env(home), check=True)  # fmt: skip
    module, backends = where.stdout.splitlines()
    assert module.startswith(str(venv)) and backends == "['local', 'nvidia', 'slurm']"
    assert (home / ".local" / "bin" / "gitopsd").resolve() == gitopsd.resolve()
    assert not (ROOT / "build").exists(), "the build must not leave build/ in the checkout"

    config = home / ".config" / "gitopsd" / "config.toml"
    state = home / ".local" / "state" / "gitopsd"
    assert f'state_dir = "{state}"' in config.read_text() and state.is_dir()
    checked = subprocess.run([str(gitopsd), "status", "--config", str(config)], capture_output=True, text=True,
                             cwd=home, env=_env(home))  # fmt: skip
    assert "invalid" not in checked.stderr and "Traceback" not in checked.stderr, checked.stderr  # the skeleton parses
    unit = (home / ".config" / "systemd" / "user" / "gitopsd.service").read_text()
    assert f"ExecStart={gitopsd} run --config {config}" in unit
    assert "no systemd user manager answers here" in done.stdout  # said, not hidden: nothing was started

    config.write_text(config.read_text() + "# mine\n")
    again = make(home, "install-user")
    assert config.read_text().endswith("# mine\n") and "kept the existing configuration" in again.stdout

    make(home, "uninstall-user")
    assert not venv.exists() and not (home / ".config" / "systemd" / "user" / "gitopsd.service").exists()
    assert not (home / ".local" / "bin" / "gitopsd").exists()
    assert config.read_text().endswith("# mine\n") and state.is_dir()
