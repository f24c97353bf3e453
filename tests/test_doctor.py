"""`gitopsd doctor`: the pure verdicts from facts, and the real command on real repositories, stores and units.

The Slurm checks against the running test cluster are in tests/slurm/test_slurm_doctor.py.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gitopsd.cli.doctorcore import (
    Check,
    ProbeFacts,
    UnitFacts,
    Verdict,
    association_verdict,
    exit_code,
    git_verdict,
    probe_verdict,
    render,
    unit_settings,
    unit_verdict,
    writable_verdict,
)
from tests.conftest import GitRepo

ROOT = Path(__file__).resolve().parent.parent
HEADS = {"refs/heads/main": "a" * 40}


# -- pure verdicts ----------------------------------------------------------------------------------------------


def test_git_passes_on_the_branch_and_names_a_missing_one_or_the_error() -> None:
    assert git_verdict("ml", "https://h/r.git", "main", HEADS, None).verdict is Verdict.PASS
    missing = git_verdict("ml", "https://h/r.git", "prod", HEADS, None)
    assert missing.verdict is Verdict.FAIL and "no branch 'prod' (branches: main)" in missing.message
    down = git_verdict("ml", "https://h/r.git", None, None, "https://h/r.git: 401 refused")
    assert down.verdict is Verdict.FAIL and "401 refused" in down.message and "GITOPSD_GIT_TOKEN" in down.fix
    assert git_verdict("ml", "u", None, {}, None).verdict is Verdict.FAIL


def test_a_directory_that_refused_the_probe_file_fails_naming_the_setting() -> None:
    assert writable_verdict("state_dir", "/s", "state_dir", None).verdict is Verdict.PASS
    bad = writable_verdict("slurm hpc runs_dir", "/r", "[backends.hpc] settings.runs_dir", "Permission denied")
    assert bad.verdict is Verdict.FAIL and "Permission denied" in bad.message and "runs_dir" in bad.fix


def test_association_warns_without_accounting_and_fails_without_an_association() -> None:
    off = association_verdict("hpc", "ann", None, 1, "",
                              "You are not running a supported accounting_storage plugin\n")  # fmt: skip
    assert off.verdict is Verdict.WARN and "no accounting" in off.message
    none = association_verdict("hpc", "ann", None, 0, "", "")
    assert none.verdict is Verdict.FAIL and "sacctmgr add user ann" in none.fix
    other = association_verdict("hpc", "ann", "ml", 0, "c|physics||normal\n", "")
    assert other.verdict is Verdict.FAIL and "account ml" in other.message and "physics" in other.message
    good = association_verdict("hpc", "ann", "ml", 0, "c|ml||normal\nc|physics||normal\n", "")
    assert good.verdict is Verdict.PASS and "ml, physics" in good.message
    assert association_verdict("hpc", "ann", None, 127, "", "sacctmgr: not found").verdict is Verdict.SKIP
    assert association_verdict("hpc", "ann", None, 1, "", "Connection refused").verdict is Verdict.FAIL


def probe(**facts: object) -> Check:
    base: dict[str, object] = {"backend": "hpc", "partition": "gpu", "run_root": "/shared/runs", "job_id": "7",
                               "token": "t0k", "state": "Succeeded"}  # fmt: skip
    return probe_verdict(ProbeFacts(**{**base, **facts}))  # type: ignore[arg-type]


def test_probe_passes_when_the_node_wrote_the_run_root_and_this_host_reads_it_back() -> None:
    check = probe(readback="token=t0k\nhost=node3\n")
    assert check.verdict is Verdict.PASS and "node3" in check.message and check.name == "slurm hpc probe on gpu"


def test_probe_fails_when_the_file_never_reaches_this_host_the_run_root_is_not_shared() -> None:
    for readback in (None, "token=other\nhost=node3\n"):
        check = probe(readback=readback, state="Failed", node="node3")
        assert check.verdict is Verdict.FAIL
        assert "does not see the run root" in check.message and "node3" in check.message
        assert "runs_dir" in check.fix and "/shared/runs" in check.fix


def test_probe_that_never_starts_fails_with_the_pending_reason_and_a_refused_one_with_slurms_words() -> None:
    stuck = probe(never_started=True, wait_s=60, state="Pending", pending_reason="pending (Partition_Down)")
    assert stuck.verdict is Verdict.FAIL and "within 60 s" in stuck.message and "Partition_Down" in stuck.message
    assert "cancelled" in stuck.message
    refused = probe(job_id=None, submit_error="invalid partition name specified")
    assert refused.verdict is Verdict.FAIL and "invalid partition" in refused.message


def test_probe_requires_the_module_function_only_when_a_modules_init_is_configured() -> None:
    ran = "token=t0k\nhost=n1\nmodule_init=/etc/profile.d/lmod.sh\nmodule=no\n"
    assert probe(readback=ran).verdict is Verdict.PASS
    broken = probe(readback=ran, modules_init="/etc/profile.d/lmod.sh")
    assert broken.verdict is Verdict.FAIL and "module" in broken.message and "modules_init" in broken.fix
    fine = probe(readback="token=t0k\nhost=n1\nmodule=yes\n", modules_init="/etc/profile.d/lmod.sh")
    assert fine.verdict is Verdict.PASS and "module function" in fine.message


SYSTEM_UNIT = (ROOT / "systemd" / "gitopsd.service").read_text()


def unit(text: str, *drop_ins: str, user: bool = False, **needed: str) -> Check:
    facts = UnitFacts(path="/u/gitopsd.service", text=text, home="/home/ann", user_unit=user)
    return unit_verdict(facts, list(drop_ins), {path: setting for setting, path in needed.items()})


def test_the_system_unit_lets_the_daemon_write_its_state_directory_but_not_an_unlisted_runs_dir() -> None:
    assert unit(SYSTEM_UNIT, state_dir="/var/lib/gitopsd").verdict is Verdict.PASS
    bad = unit(SYSTEM_UNIT, state_dir="/var/lib/gitopsd", runs_dir="/shared/runs")
    assert bad.verdict is Verdict.FAIL and "/shared/runs (runs_dir)" in bad.message
    assert bad.fix == "systemctl edit gitopsd, add under [Service]: ReadWritePaths=/shared/runs"
    drop_in = "[Service]\nReadWritePaths=/shared\n"
    assert unit(SYSTEM_UNIT, drop_in, state_dir="/var/lib/gitopsd", runs_dir="/shared/runs").verdict is Verdict.PASS
    in_home = unit(SYSTEM_UNIT, state_dir="/home/ann/state")  # ProtectHome=read-only
    assert in_home.verdict is Verdict.FAIL


def test_a_user_unit_is_judged_by_its_sandbox_and_percent_h_is_the_home() -> None:
    text = "[Service]\nPrivateUsers=yes\nProtectSystem=strict\nProtectHome=read-only\nReadWritePaths=%h/state\n"
    assert unit(text, user=True, state_dir="/home/ann/state").verdict is Verdict.PASS
    assert unit(text, user=True, state_dir="/home/ann/other").verdict is Verdict.FAIL
    assert "systemctl --user edit" in unit(text, user=True, state_dir="/x").fix
    unsandboxed = "[Service]\nProtectSystem=strict\n"  # ignored by a user manager without PrivateUsers=
    assert unit(unsandboxed, user=True, state_dir="/anywhere").verdict is Verdict.PASS
    reset = unit(text, "[Service]\nReadWritePaths=\n", user=True, state_dir="/home/ann/state")
    assert reset.verdict is Verdict.FAIL  # an empty assignment empties the list
    assert unit_settings(["[Unit]\nReadWritePaths=/no\n[Service]\nReadWritePaths=/a /b\n"]) == {
        "ReadWritePaths": ["/a /b"]
    }


def test_exit_code_and_report_fail_only_on_a_failure() -> None:
    ok = Check(name="a", verdict=Verdict.PASS, message="fine")
    warn = Check(name="b", verdict=Verdict.WARN, message="hm", fix="do x")
    bad = Check(name="c", verdict=Verdict.FAIL, message="broken", fix="do y")
    assert exit_code([ok, warn]) == 0 and exit_code([ok, bad]) == 1
    text = render([ok, warn, bad])
    assert "PASS  a: fine" in text and "FAIL  c: broken\n      fix: do y" in text
    assert text.endswith("3 checks: 1 passed, 1 failed, 1 warning, 0 skipped")


# -- the command ------------------------------------------------------------------------------------------------


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    full.pop("GITOPSD_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "gitopsd", "doctor", *args], capture_output=True, text=True,
                          env=full, timeout=120)  # fmt: skip


def write_config(path: Path, state: Path, url: str, extra: str = "", repo_extra: str = "") -> Path:
    path.write_text(f'state_dir = "{state}"\n{extra}\n[[repositories]]\nname = "ml"\nurl = "{url}"\n'
                    f"{repo_extra}\n")  # fmt: skip
    return path


def test_doctor_passes_on_a_good_local_deployment(tmp_path: Path, demo_repo: GitRepo) -> None:
    repo = demo_repo
    config = write_config(tmp_path / "d.toml", tmp_path / "state", str(repo.path))
    done = doctor("--config", str(config), env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS  git ml:" in done.stdout and "PASS  store ml:" in done.stdout and "PASS  state_dir" in done.stdout
    assert not list((tmp_path / "state").rglob("*doctor*")), "the doctor leaves no probe behind"


def test_doctor_names_an_unreachable_remote_an_unwritable_store_and_no_nvml(tmp_path: Path) -> None:
    config = write_config(tmp_path / "d.toml", tmp_path / "state", "http://127.0.0.1:9/nothing.git",
                          extra='[backends.gpu]\ntype = "nvidia"\n',
                          repo_extra='artifacts = "file:///dev/null/store"\n')  # fmt: skip
    done = doctor("--config", str(config), "--json", env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    verdicts = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] is False
    assert verdicts["git ml"]["verdict"] == "fail" and "127.0.0.1:9" in verdicts["git ml"]["message"]
    assert verdicts["store ml"]["verdict"] == "fail" and "/dev/null" in verdicts["store ml"]["message"]
    if ctypes.util.find_library("nvidia-ml") is None:  # no GPU driver on this host: it must say so plainly
        nvml = verdicts["nvidia gpu NVML"]
        assert nvml["verdict"] == "fail" and nvml["message"].startswith("no NVML: ")


def test_doctor_reads_the_user_unit_and_names_the_read_write_path_to_add(tmp_path: Path, demo_repo: GitRepo) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    home = tmp_path / "home"
    unit_text = subprocess.run([str(ROOT / "tools" / "install-user"), "unit"], capture_output=True, text=True,
                               check=True, env={**env, "HOME": str(home), "USER_SANDBOX": "yes"}).stdout  # fmt: skip
    unit_path = home / ".config" / "systemd" / "user" / "gitopsd.service"
    unit_path.parent.mkdir(parents=True)
    unit_path.write_text(unit_text)
    config = home / ".config" / "gitopsd" / "config.toml"
    config.parent.mkdir(parents=True)
    repo = demo_repo
    elsewhere = tmp_path / "elsewhere"  # not the state directory the unit was rendered for
    write_config(config, elsewhere, str(repo.path))
    done = doctor(env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")})  # finds both by default
    assert done.returncode == 1
    assert f"FAIL  systemd unit {unit_path}" in done.stdout
    assert f"add under [Service]: ReadWritePaths={elsewhere}" in done.stdout
    write_config(config, home / ".local" / "state" / "gitopsd", str(repo.path))
    done = doctor(env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")})
    assert done.returncode == 0, done.stdout
    assert f"PASS  systemd unit {unit_path}" in done.stdout


def test_doctor_without_a_configuration_says_so_in_one_line(tmp_path: Path) -> None:
    done = doctor(env={"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)})
    if Path("/etc/gitopsd/gitopsd.toml").is_file():
        pytest.skip("this host has /etc/gitopsd/gitopsd.toml")
    assert done.returncode == 1 and done.stderr.strip().startswith("error: no configuration: give --config")
    assert "Traceback" not in done.stderr


def test_doctor_checks_the_standby_lease_directory(tmp_path: Path, demo_repo: GitRepo) -> None:
    leases = tmp_path / "leases"
    standby = f'[standby]\nlease_dir = "{leases}"\n'
    config = write_config(tmp_path / "d.toml", tmp_path / "state", str(demo_repo.path), extra=standby)
    done = doctor("--config", str(config), env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert done.returncode == 1, done.stdout
    assert f"FAIL  standby lease_dir: {leases} is not writable" in done.stdout
    assert "or change [standby] lease_dir" in done.stdout
    leases.mkdir()
    done = doctor("--config", str(config), env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert done.returncode == 0, done.stdout
    assert f"PASS  standby lease_dir: {leases} is writable" in done.stdout
