"""The service unit: valid for systemd, hardened, and still usable for Slurm (munge) and NVIDIA devices."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "gitopsd.service"


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        message = "systemd-analyze not installed: apt-get install systemd (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    copy = tmp_path / "gitopsd.service"  # verify checks that ExecStart exists: point it at this gitopsd
    gitopsd = Path(sys.executable).parent / "gitopsd"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/gitopsd", str(gitopsd)))
    return copy


def test_systemd_analyze_verify_has_nothing_to_say(unit: Path) -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_security_exposure_is_2_or_better(unit: Path) -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                          text=True)  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0


def test_the_unit_keeps_munge_and_nvidia_usable() -> None:
    text = UNIT.read_text()
    families = re.search(r"^RestrictAddressFamilies=(.*)$", text, re.M)
    assert families and "AF_UNIX" in families.group(1).split()
    assert "/run/munge" in text and "PrivateDevices=yes" not in text
    assert "DeviceAllow=/dev/nvidiactl rw" in text and "DeviceAllow=char-nvidia-frontend rw" in text
    assert re.search(r"^Type=notify$", text, re.M) and re.search(r"^WatchdogSec=", text, re.M)


def test_trainings_under_the_unit_may_bind_cpus_and_set_rlimits(unit: Path) -> None:
    # The nvidia backend's NUMA binding (sched_setaffinity), OpenMP affinity and rlimit changes in trainings all
    # need @resources: the unit's system-call filter must not take it away.
    allowed = subprocess.run(["systemd-analyze", "syscall-filter", "@resources"], capture_output=True, text=True)
    resources = {line.strip() for line in allowed.stdout.splitlines()[1:] if line.strip() and "#" not in line}
    assert {"sched_setaffinity", "setrlimit", "set_mempolicy"} <= resources
    denied = " ".join(re.findall(r"^SystemCallFilter=~(.*)$", unit.read_text(), re.M)).split()
    assert "@resources" not in denied and not resources & set(denied)


# -- the systemd --user unit of `make install-user` (systemd/gitopsd-user.service.in) ------------------------

ROOT = UNIT.parent.parent
INSTALL_USER = ROOT / "tools" / "install-user"
#: What a user manager cannot apply: it has no capabilities to drop or grant, no cgroup device or IP firewall
#: (BPF) programs, no other user to run as, and its StateDirectory= moved between systemd releases.
SYSTEM_ONLY = ("User=", "Group=", "CapabilityBoundingSet=", "AmbientCapabilities=", "DevicePolicy=",
               "DeviceAllow=", "IPAddressDeny=", "RemoveIPC=", "StateDirectory=", "ConfigurationDirectory=",
               "BindReadOnlyPaths=")  # fmt: skip
NAMESPACED = ("ProtectSystem=", "ProtectHome=", "PrivateTmp=", "ReadWritePaths=", "ProtectKernelTunables=",
              "ProtectKernelModules=", "ProtectKernelLogs=", "ProtectControlGroups=", "ProtectHostname=",
              "ProtectProc=", "ProcSubset=")  # fmt: skip


def render_user_unit(home: Path, sandbox: str) -> str:
    """The unit `make install-user` writes for a user whose home is `home` (the same script renders it)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("XDG_")}
    env.update(HOME=str(home), USER_SANDBOX=sandbox)
    done = subprocess.run([str(INSTALL_USER), "unit"], env=env, capture_output=True, text=True, check=True)
    return done.stdout


def settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(("#", "["))]


@pytest.fixture(params=["yes", "no"])
def user_unit(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed: apt-get install systemd (make test does)")
    home = tmp_path / "home"
    venv_bin = home / ".local" / "share" / "gitopsd" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "gitopsd").symlink_to(Path(sys.executable).parent / "gitopsd")  # verify wants ExecStart to exist
    unit = tmp_path / "gitopsd.service"
    unit.write_text(render_user_unit(home, str(request.param)))
    return unit


def test_systemd_analyze_verify_user_has_nothing_to_say(user_unit: Path, tmp_path: Path) -> None:
    # No user manager runs in a container, but `verify --user` needs only a runtime directory to load the unit.
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    done = subprocess.run(["systemd-analyze", "verify", "--user", str(user_unit)], capture_output=True, text=True,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_the_user_unit_keeps_every_hardening_that_needs_no_privilege(tmp_path: Path) -> None:
    system = set(settings(UNIT.read_text()))
    user = set(settings(render_user_unit(tmp_path, "no")))
    kept = {line for line in system if line.startswith(("SystemCallFilter=", "SystemCallErrorNumber=",
            "SystemCallArchitectures=", "RestrictAddressFamilies=", "RestrictNamespaces=", "RestrictRealtime=",
            "RestrictSUIDSGID=", "LockPersonality=", "MemoryDenyWriteExecute=", "NoNewPrivileges=", "UMask=",
            "KeyringMode=", "Type=", "WatchdogSec=", "Restart="))}  # fmt: skip
    assert kept and kept <= user
    assert not [line for line in user if line.startswith(SYSTEM_ONLY)]
    assert not [line for line in user if line.startswith(NAMESPACED)], "without the sandbox: no namespace options"
    assert "WantedBy=default.target" in user


def test_the_user_unit_sandbox_comes_with_its_user_namespace_and_the_state_dir(tmp_path: Path) -> None:
    user = settings(render_user_unit(tmp_path, "yes"))
    assert "PrivateUsers=yes" in user  # systemd 252 (Debian 12) ignores the rest in a user unit without it
    for option in NAMESPACED:
        assert any(line.startswith(option) for line in user), option
    state = tmp_path / ".local" / "state" / "gitopsd"
    assert f"ReadWritePaths={state}" in user and f"Environment=GITOPSD_STATE_DIR={state}" in user
    config = tmp_path / ".config" / "gitopsd" / "config.toml"
    assert f"ExecStart={tmp_path}/.local/share/gitopsd/venv/bin/gitopsd run --config {config}" in user
    assert "ProtectSystem=strict" in user and "ProtectHome=read-only" in user
