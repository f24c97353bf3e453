"""The verdicts of `gitopsd doctor`: each check decides pass, fail, warn or skip from facts, and names the fix.

Pure: `gitopsd.cli.doctor` gathers the facts (asks Git, Slurm, the store, NVML, the file system) and hands them
here, so every verdict and every message is tested without a cluster. A check is one line an admin reads; a
failing one says what to change, where.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"


@dataclass(frozen=True, kw_only=True)
class Check:
    """One line of the report: what was checked (`name`), the verdict, what was found, and how to fix it."""

    name: str
    verdict: Verdict
    message: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "verdict": str(self.verdict), "message": self.message, "fix": self.fix}


def passed(name: str, message: str) -> Check:
    return Check(name=name, verdict=Verdict.PASS, message=message)


def failed(name: str, message: str, fix: str) -> Check:
    return Check(name=name, verdict=Verdict.FAIL, message=message, fix=fix)


def exit_code(checks: Sequence[Check]) -> int:
    """0 when nothing failed (warnings and skips are told, not failed), else 1."""
    return 1 if any(c.verdict is Verdict.FAIL for c in checks) else 0


def render(checks: Sequence[Check]) -> str:
    """The report for a terminal: one line per check, the fix indented under a failure or warning, a tally."""
    lines = []
    for check in checks:
        lines.append(f"{check.verdict.upper():4}  {check.name}: {check.message}")
        if check.fix and check.verdict in (Verdict.FAIL, Verdict.WARN):
            lines.append(f"      fix: {check.fix}")
    counts = {v: sum(c.verdict is v for c in checks) for v in Verdict}
    lines.append(f"{len(checks)} checks: {counts[Verdict.PASS]} passed, {counts[Verdict.FAIL]} failed, "
                 f"{counts[Verdict.WARN]} warning{'' if counts[Verdict.WARN] == 1 else 's'}, "
                 f"{counts[Verdict.SKIP]} skipped")  # fmt: skip
    return "\n".join(lines)


# -- Git --------------------------------------------------------------------------------------------------------


def git_verdict(repo: str, url: str, branch: str | None, heads: Mapping[str, str] | None, error: str | None) -> Check:
    """The remote of repository `repo` answered with `heads` (refs/heads/NAME -> commit), or failed with `error`."""
    name = f"git {repo}"
    if heads is None:
        said = error if error and url in error else f"{url}: {error}"
        return failed(
            name,
            f"cannot list the remote's branches: {said}",
            "check the url in [[repositories]], the network, and the credentials in [environment] "
            "(GITOPSD_GIT_TOKEN for HTTPS, GITOPSD_GIT_SSH_KEY and GITOPSD_GIT_KNOWN_HOSTS for SSH)",
        )
    if not heads:
        return failed(name, f"{url} answers but has no branches", "push a branch to it, or fix the url")
    if branch is not None:
        tip = heads.get(f"refs/heads/{branch}")
        if tip is None:
            known = ", ".join(sorted(h.removeprefix("refs/heads/") for h in heads))
            return failed(name, f"{url} has no branch {branch!r} (branches: {known})",
                          "fix branch in [[repositories]], or push the branch")  # fmt: skip
        return passed(name, f"{url} reachable, branch {branch} at {tip[:12]}")
    return passed(name, f"{url} reachable, {len(heads)} branch(es)")


# -- directories --------------------------------------------------------------------------------------------------


def writable_verdict(name: str, path: str, setting: str, error: str | None) -> Check:
    """Directory `path` (from `setting`) took a probe file, or refused it with `error`."""
    if error is None:
        return passed(name, f"{path} is writable")
    return failed(name, f"{path} is not writable: {error}",
                  f"create it and make it writable by the daemon's user, or change {setting}")  # fmt: skip


# -- Slurm --------------------------------------------------------------------------------------------------------


def controller_verdict(backend: str, transport: str, error: str | None) -> Check:
    name = f"slurm {backend} controller"
    if error is None:
        return passed(name, f"the controller answers ({transport} transport)")
    fix = "start slurmctld, or fix slurm_conf in the backend's settings"
    if transport == "rest":
        fix = (
            "check rest.url, and that the token (rest.token_file, rest.token_env, else `scontrol token`) is "
            "current and belongs to rest.user: slurmrestd answers a wrong or expired token like a down controller"
        )
    return failed(name, error, fix)


ACCOUNTING_OFF = ("not running a supported accounting_storage plugin", "accounting_storage/none",
                  "slurmdbd: no such", "accounting storage is disabled")  # fmt: skip


def association_verdict(backend: str, user: str, account: str | None, returncode: int, stdout: str,
                        stderr: str) -> Check:  # fmt: skip
    """What `sacctmgr -n -P show assoc user=USER format=cluster,account,partition,qos` said."""
    name = f"slurm {backend} association"
    said = (stderr.strip() or stdout.strip()).replace("\n", " | ")
    if returncode == 127:
        return Check(name=name, verdict=Verdict.SKIP, message=f"sacctmgr is not installed on this host: {said}")
    if returncode != 0:
        if any(marker in said.lower() for marker in ACCOUNTING_OFF):
            return Check(name=name, verdict=Verdict.WARN,
                         message=f"this cluster keeps no accounting (slurmdbd), so associations are not enforced "
                                 f"and cannot be checked: {said}",
                         fix="nothing to do unless your site expects accounting: then AccountingStorageType="
                             "accounting_storage/slurmdbd")  # fmt: skip
        if "configuration source" in said:
            return Check(name=name, verdict=Verdict.WARN,
                         message=f"cannot check: sacctmgr finds no Slurm configuration on this host: {said}",
                         fix="set slurm_conf in the backend's settings (or SLURM_CONF in [environment])")  # fmt: skip
        return failed(name, f"sacctmgr failed: {said}", "is slurmdbd reachable from this host?")
    rows = [line.split("|") for line in stdout.splitlines() if line.strip()]
    accounts = sorted({row[1] for row in rows if len(row) > 1 and row[1]})
    if not rows:
        return failed(name, f"user {user} has no association: Slurm refuses their jobs where associations are enforced",
                      f"ask the Slurm admin: sacctmgr add user {user} account=ACCOUNT")  # fmt: skip
    if account is not None and account not in accounts:
        return failed(name, f"user {user} has no association with account {account} (has: {', '.join(accounts)})",
                      f"ask the Slurm admin: sacctmgr add user {user} account={account}, or change the backend's "
                      "account setting")  # fmt: skip
    return passed(name, f"user {user} has association(s) with account(s) {', '.join(accounts) or '(default)'}")


@dataclass(frozen=True, kw_only=True)
class ProbeFacts:
    """What one probe job did: where it should have written, what came back, and how it ended."""

    backend: str
    partition: str | None
    run_root: str
    job_id: str | None
    submit_error: str | None = None
    #: the job's last state (PENDING, RUNNING, SUCCEEDED, FAILED, ...); None if it was never seen
    state: str | None = None
    pending_reason: str = ""
    #: gave up waiting for it to start (then it was cancelled)
    never_started: bool = False
    wait_s: float = 0.0
    #: the probe file as read back on this host, or None if it is not there
    readback: str | None = None
    token: str = ""
    node: str = ""
    modules_init: str | None = None


def probe_name(facts: ProbeFacts) -> str:
    return f"slurm {facts.backend} probe" + (f" on {facts.partition}" if facts.partition else "")


def probe_lines(readback: str) -> dict[str, str]:
    """`key=value` lines the probe job wrote."""
    return dict(line.split("=", 1) for line in readback.splitlines() if "=" in line)


def probe_verdict(facts: ProbeFacts) -> Check:
    """Whether a job on the partition ran and could write the run root where this host reads it back."""
    name = probe_name(facts)
    where = f"partition {facts.partition}" if facts.partition else "the default partition"
    if facts.submit_error is not None:
        return failed(
            name,
            f"the probe job was refused: {facts.submit_error}",
            "check partition, account and qos in the backend's settings (sinfo, sacctmgr show assoc)",
        )
    if facts.never_started:
        why = f" (pending: {facts.pending_reason})" if facts.pending_reason else ""
        return failed(name, f"probe job {facts.job_id} did not start on {where} within {facts.wait_s:g} s{why}; "
                            "it was cancelled",
                      "check the partition's state (sinfo -p), its limits and your association; a busy cluster: "
                      "raise --probe-wait")  # fmt: skip
    seen = probe_lines(facts.readback) if facts.readback is not None else {}
    node = seen.get("host") or facts.node or "its node"
    if seen.get("token") != facts.token:
        return failed(name, f"probe job {facts.job_id} ended {facts.state or 'unseen'} on {node}, but its file in "
                            f"{facts.run_root} never reached this host: the compute node does not see the run root",
                      f"put the run root on a file system the compute nodes mount at the same path (runs_dir in the "
                      f"backend's settings), or mount {facts.run_root} on {node}")  # fmt: skip
    if facts.modules_init is not None and seen.get("module") != "yes":
        return failed(name, f"probe job {facts.job_id} ran on {node} but `module` is not a function there after "
                            f"sourcing {facts.modules_init}: {seen.get('module_error', 'no module function')}",
                      "fix modules_init in the backend's settings (the init script of Lmod or Environment Modules "
                      "as the compute nodes have it)")  # fmt: skip
    modules = ""
    if facts.modules_init is not None:
        modules = f"; the module function is there ({facts.modules_init})"
    return passed(name, f"job {facts.job_id} ran on {node} and wrote {facts.run_root}, read back here{modules}")


# -- store, NVML ----------------------------------------------------------------------------------------------------


def store_verdict(repo: str, uri: str, error: str | None) -> Check:
    name = f"store {repo}"
    if error is None:
        return passed(name, f"{uri}: a probe object was written and deleted")
    return failed(name, f"{uri}: {error}",
                  "fix [registry] artifacts (or the repository's artifacts), the directory's permissions or the "
                  "bucket's credentials (AWS_* in [environment])")  # fmt: skip


def nvml_verdict(backend: str, gpus: int | None, driver: str, error: str | None) -> Check:
    name = f"nvidia {backend} NVML"
    if error is not None:
        return failed(name, f"no NVML: {error.removeprefix('NVML not available: ')}",
                      "run the daemon on a host with the NVIDIA driver (libnvidia-ml.so.1) and nvidia-ml-py, or "
                      "remove this nvidia backend")  # fmt: skip
    return passed(name, f"NVML {driver}: {gpus} GPU(s)")


# -- the systemd unit ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class UnitFacts:
    """What a unit file (with its drop-ins, in order) sets, as far as where the daemon may write."""

    path: str
    text: str
    home: str
    user_unit: bool


def unit_settings(texts: Iterable[str]) -> dict[str, list[str]]:
    """The [Service] settings of a unit and its drop-ins, in order; an empty assignment resets a list."""
    found: dict[str, list[str]] = {}
    for text in texts:
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
                continue
            if section != "[Service]" or "=" not in line:
                continue
            key, _, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if value == "":
                found[key] = []
            else:
                found.setdefault(key, []).append(value)
    return found


def _expand(path: str, home: str) -> str:
    return posixpath.normpath(path.replace("%h", home).lstrip("-+"))


def writable_roots(settings: Mapping[str, list[str]], home: str, user_unit: bool) -> list[str] | None:
    """The directories a service may write under these settings; None when the unit does not restrict writes."""
    protect_system = (settings.get("ProtectSystem") or ["no"])[-1]
    protect_home = (settings.get("ProtectHome") or ["no"])[-1]
    if user_unit and (settings.get("PrivateUsers") or ["no"])[-1] not in ("yes", "true", "self", "identity"):
        return None  # systemd before 253 ignores the sandbox of a user unit without PrivateUsers=
    if protect_system != "strict" and protect_home in ("no", "false"):
        return None
    roots = [_expand(p, home) for value in settings.get("ReadWritePaths", []) for p in value.split()]
    base = "%S" if user_unit else "/var/lib"
    roots += [posixpath.join(base, d) for value in settings.get("StateDirectory", []) for d in value.split()]
    if protect_system != "strict":
        roots.append("/")  # then only /usr, /boot, /efi, /etc (and with it home) are read-only
    return roots


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def unit_verdict(facts: UnitFacts, drop_ins: Sequence[str], needed: Mapping[str, str]) -> Check:
    """Whether the unit lets the daemon write every path in `needed` (path -> the setting it comes from)."""
    name = f"systemd unit {facts.path}"
    settings = unit_settings([facts.text, *drop_ins])
    roots = writable_roots(settings, facts.home, facts.user_unit)
    if roots is None:
        return passed(name, "does not restrict where the daemon writes")
    home_hidden = (settings.get("ProtectHome") or ["no"])[-1] not in ("no", "false")
    homes = ("/home", "/root", "/run/user", facts.home)
    missing = []
    for raw, setting in needed.items():
        path = posixpath.normpath(raw)
        if any(_under(path, root) for root in roots if root != "/"):
            continue
        if "/" in roots and not (home_hidden and any(_under(path, h) for h in homes)):
            continue
        missing.append((path, setting))
    if not missing:
        return passed(name, "ReadWritePaths covers " + ", ".join(sorted(needed)))
    lines = " ".join(f"ReadWritePaths={p}" for p, _ in missing)
    what = ", ".join(f"{p} ({s})" for p, s in missing)
    edit = "systemctl --user edit gitopsd" if facts.user_unit else "systemctl edit gitopsd"
    return failed(name, f"the daemon may not write {what}: the unit makes it read-only",
                  f"{edit}, add under [Service]: {lines}")  # fmt: skip


def unit_config(settings: Mapping[str, list[str]]) -> str | None:
    """The --config file the unit's ExecStart gives `gitopsd run`, if any."""
    for command in settings.get("ExecStart", []):
        found = re.search(r"--config[= ](\S+)", command)
        if found:
            return found.group(1)
    return None


def skipped(name: str, why: str) -> Check:
    return Check(name=name, verdict=Verdict.SKIP, message=why)


def as_json(checks: Sequence[Check]) -> dict[str, Any]:
    return {"ok": exit_code(checks) == 0, "checks": [c.as_json() for c in checks]}
