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
