"""The facts behind `gitopsd doctor`: it asks Git, Slurm, the artifact stores, NVML and the file system, and hands
what it finds to `gitopsd.cli.doctorcore` (pure) for the verdicts.

The checks: every repository's Git remote answers with the daemon's credentials (listed, never cloned); the
state directory and each Slurm backend's run root take a file; each Slurm controller answers (the backend's
own `check`, so a wrong REST token fails here); the daemon's user has a Slurm association (a warning where the
cluster keeps no accounting); a tiny probe job on each configured partition writes a file in the run root with
its node's name, read back here (proof that the compute nodes see the run root), and finds the module system
when the backend names one; each artifact store takes and gives back a probe object; NVML answers where an
nvidia backend is declared; and an installed systemd unit lets the daemon write the state directory and every
run root. Apart from the command (`gitopsd.cli.doctor`), so that loading the command line for `--help` or
`status` loads none of this.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitopsd.cli.common import xdg_dir
from gitopsd.cli.doctorcore import (
    Check,
    ProbeFacts,
    UnitFacts,
    association_verdict,
    controller_verdict,
    failed,
    git_verdict,
    nvml_verdict,
    probe_verdict,
    skipped,
    store_verdict,
    unit_config,
    unit_settings,
    unit_verdict,
    writable_verdict,
)

if TYPE_CHECKING:
    from gitopsd.daemon.config import DaemonConfig

SYSTEM_UNIT = Path("/etc/systemd/system/gitopsd.service")
#: Where the module system's shell initialisation usually is, tried in order when a backend names none.
MODULES_INIT_PROBES = ("/etc/profile.d/lmod.sh", "/usr/share/lmod/lmod/init/bash", "/etc/profile.d/modules.sh")
PROBE_DIR = ".gitopsd-doctor"


def _config_home() -> Path:
    return xdg_dir("XDG_CONFIG_HOME", Path.home() / ".config")


def default_config() -> Path | None:
    """The user's daemon configuration (`make install-user`), else the system one, if either exists."""
    for path in (_config_home() / "gitopsd" / "config.toml", Path("/etc/gitopsd/gitopsd.toml")):
        if path.is_file():
            return path
    return None


def gather(config: DaemonConfig, path: Path, *, probe_wait: float | None, units: tuple[Path, ...]) -> Iterator[Check]:
    from gitopsd.daemon.config import apply_environment
    from gitopsd.errors import GitopsdError

    try:
        apply_environment(config)  # the daemon's credentials (GITOPSD_GIT_TOKEN, AWS_*, SLURM_CONF, ...)
    except GitopsdError as exc:
        yield failed("environment", str(exc), "fix the reference in [environment]")
    needed: dict[str, str] = {}
    if config.state_dir is None:
        yield failed("state_dir", "not set: `gitopsd run` needs it", f"set state_dir in {path}")
    else:
        yield writable_verdict("state_dir", str(config.state_dir), "state_dir", _write_problem(config.state_dir))
        needed[str(config.state_dir)] = "state_dir"
    if config.standby is not None:  # the lease is claimed and renewed by writing there
        lease_dir = Path(config.standby.lease_dir)
        problem = _write_problem(lease_dir, created=False)
        yield writable_verdict("standby lease_dir", str(lease_dir), "[standby] lease_dir", problem)
        needed[str(lease_dir)] = "[standby] lease_dir"
    for repo in config.repositories:
        yield _git_check(repo.name, repo.url, repo.branch)
    for name, backend in sorted(config.backends.items()):
        plugin = backend.plugin(name)
        if plugin == "slurm":
            yield from _slurm_checks(config, name, backend.settings, backend.allow, probe_wait, needed)
        elif plugin == "nvidia":
            yield _nvml_check(name)
    if not any(b.plugin(n) == "nvidia" for n, b in config.backends.items()):
        yield skipped("nvidia NVML", "no nvidia backend is declared")
    for repo in config.repositories:
        yield _store_check(config, repo.name)
    yield from _unit_checks(units, path, needed)


# -- Git, directories -----------------------------------------------------------------------------------------------


def _git_check(repo: str, url: str, branch: str | None) -> Check:
    from gitopsd.errors import GitopsdError
    from gitopsd.source.mirror import remote_heads
    from gitopsd.source.redact import redact_url

    try:
        heads: dict[str, str] | None = remote_heads(url)
        error = None
    except GitopsdError as exc:
        heads, error = None, str(exc)
    return git_verdict(repo, redact_url(url), branch, heads, error)


def _write_problem(directory: Path, *, created: bool = True) -> str | None:
    """Why this process cannot create a file in `directory` (or, if it does not exist yet and the daemon creates
    it, in the nearest parent that does), or None. A real write: access() lies on root-squashed NFS. Shared
    directories (a run root, the lease directory) are never created by the daemon, so they must exist."""
    if not created and not directory.is_dir():
        return "it does not exist or is not a directory (gitopsd never creates a shared directory)"
    target = directory
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        return f"{target} is not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".gitopsd-doctor-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"{exc.strerror or exc} (uid {os.geteuid()})" + (f", in {target}" if target != directory else "")
    return None


# -- Slurm ------------------------------------------------------------------------------------------------------------


def _slurm_checks(config: DaemonConfig, name: str, settings: Mapping[str, Any], allow: Mapping[str, Any],
                  probe_wait: float | None, needed: dict[str, str]) -> Iterator[Check]:  # fmt: skip
    from gitopsd.errors import GitopsdError

    try:
        from gitopsd_slurm.backend import SlurmBackend
    except ImportError:
        yield failed(f"slurm {name}", "the Slurm backend plugin is not installed", "pip install backends/slurm")
        return
    state = (config.state_dir or Path(tempfile.gettempdir())) / ".doctor"
    try:
        backend = SlurmBackend(name=name, settings=settings, state_dir=state)
    except GitopsdError as exc:
        yield failed(f"slurm {name} settings", str(exc), f"fix [backends.{name}] settings")
        return
    runs_dir = getattr(backend.settings, "runs_dir", None) or settings.get("runs_dir")
    if runs_dir is not None:
        yield writable_verdict(f"slurm {name} runs_dir", str(runs_dir), f"[backends.{name}] settings.runs_dir",
                               _write_problem(Path(runs_dir), created=False))  # fmt: skip
        needed[str(runs_dir)] = f"[backends.{name}] settings.runs_dir"
        run_root = Path(runs_dir)
    else:  # each repository's run directories are in its own state directory
        users = [r for r in config.repositories if r.backends is None or name in r.backends]
        base = config.state_dir or Path(tempfile.gettempdir())
        run_root = (base / users[0].name if users else base) / "runs"
    transport = backend.settings.transport
    try:
        backend.transport.ping()
        down = None
    except GitopsdError as exc:
        down = str(exc)
    yield controller_verdict(name, transport, down)
    yield _association(name, backend)
    if down is not None:
        yield skipped(f"slurm {name} probe", "the controller does not answer")
        return
    if probe_wait is None:
        yield skipped(f"slurm {name} probe", "--no-probe")
        return
    for partition in _partitions(backend.settings.partition, allow.get("partition")):
        yield probe_verdict(_probe(name, settings, partition, run_root, probe_wait, state))


def _partitions(configured: str | None, allowed: Any) -> list[str | None]:
    """The partitions a job of this backend may land on: its setting and those a repository may choose."""
    found: list[str | None] = [configured]
    if isinstance(allowed, list):
        found += [p for p in allowed if isinstance(p, str) and p not in found]
    return found


def _association(name: str, backend: Any) -> Check:
    settings = backend.settings
    user = (settings.rest.user if settings.rest is not None else None) or getpass.getuser()
    argv = ["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=cluster,account,partition,qos"]
    result = backend.runner(argv, timeout_s=settings.command_timeout_s)
    return association_verdict(name, user, settings.account, result.returncode, result.stdout, result.stderr)


_PROBE_SCRIPT = """\
#!/bin/bash
# gitopsd doctor's probe: proves this node sees the run root (and, when asked, the module system).
out={out}
{{
  echo "token={token}"
  echo "host=$(hostname)"
  for init in {inits}; do
    [ -r "$init" ] || continue
    echo "module_init=$init"
    if . "$init" >/dev/null 2>&1 && type module >/dev/null 2>&1; then echo module=yes; break; fi
    echo module=no
    echo "module_error=sourcing $init defines no module function"
  done
}} >"$out.tmp" && mv "$out.tmp" "$out"
"""


def _probe(name: str, settings: Mapping[str, Any], partition: str | None, run_root: Path, wait_s: float,
           state: Path) -> ProbeFacts:  # fmt: skip
    """Submit the probe job, wait for it (cancelled if it has not started within `wait_s`), read its file back."""
    from gitopsd_slurm.backend import SlurmBackend

    from gitopsd.errors import GitopsdError
    from gitopsd.model import Job, JobRef, JobState, Resources

    token = secrets.token_hex(8)
    run_id = f"doctor-{token}"
    run_dir = run_root / PROBE_DIR / run_id
    mine = dict(settings)
    if partition is not None:
        mine["partition"] = partition
    configured = mine.get("modules_init")
    inits = [configured] if isinstance(configured, str) else list(MODULES_INIT_PROBES)
    base = ProbeFacts(
        backend=name,
        partition=partition,
        run_root=str(run_root),
        job_id=None,
        token=token,
        modules_init=configured if isinstance(configured, str) else None,
    )
    backend = SlurmBackend(name=name, settings=mine, state_dir=state)
    out = run_dir / "out" / "probe.txt"
    try:
        (run_dir / "out").mkdir(parents=True)
        script = run_dir / "probe.sh"
        script.write_text(_PROBE_SCRIPT.format(out=shlex.quote(str(out)), token=token,
                                               inits=" ".join(shlex.quote(i) for i in inits)))  # fmt: skip
        job = Job(run_id=run_id, model="gitopsd-doctor", command=f"/bin/bash {shlex.quote(str(script))}",
                  run_dir=run_dir, tree_dir=run_dir, workdir=run_dir, output_dir=run_dir / "out",
                  metrics_file=run_dir / "out" / "metrics.jsonl", log_dir=run_dir / "logs",
                  resources=Resources(cpus=1), timeout_s=30)  # fmt: skip
        try:
            job_id = backend.submit(job)
        except GitopsdError as exc:
            return replace(base, job_id=None, submit_error=str(exc))
        ref = JobRef(run_id=run_id, job_id=job_id, run_dir=run_dir)
        started_by = time.monotonic() + wait_s
        finish_by = started_by + 120  # the job's own limit is 30 s; Slurm's is a few minutes
        status = None
        while True:
            try:
                status = backend.status([ref])[run_id]
            except GitopsdError:
                status = None
            if status is not None and status.state.finished:
                break
            now = time.monotonic()
            waiting = status is None or status.state is JobState.PENDING
            if (waiting and now > started_by) or now > finish_by:
                backend.cancel(ref)
                reason = status.message if status is not None else "not seen by the controller"
                return replace(base, job_id=job_id, state=str(status.state) if status else None, never_started=waiting,
                                  pending_reason=reason, wait_s=wait_s)  # fmt: skip
            time.sleep(1.0)
        described = backend.describe(ref)
        readback = out.read_text(errors="replace") if out.is_file() else None
        return replace(base, job_id=job_id, state=str(status.state), readback=readback,
                          node=str(described.get("host") or described.get("nodes") or ""))  # fmt: skip
    except OSError as exc:
        return replace(base, job_id=None, submit_error=f"cannot write the probe in {run_dir}: {exc.strerror or exc}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # the doctor's folder, unless another probe still uses it


# -- store, NVML, unit ----------------------------------------------------------------------------------------------


def _store_check(config: DaemonConfig, repo_name: str) -> Check:
    from gitopsd.errors import GitopsdError
    from gitopsd.registry.stores import open_store

    repo = next(r for r in config.repositories if r.name == repo_name)
    registry = config.operator_for(repo).registry
    default_root = config.state_dir_of(repo) / "artifacts" if config.state_dir else Path("artifacts")
    uri = registry.artifacts or default_root.as_uri()
    try:
        store = open_store(registry.artifacts, default_root, endpoint_url=registry.endpoint_url,
                           object_lock_days=registry.object_lock_days)  # fmt: skip
        store.probe_write()
        error = None
    except GitopsdError as exc:
        error = str(exc)
    except OSError as exc:  # a store's directories that cannot even be created
        error = f"{exc.strerror or exc}: {exc.filename or uri}"
    return store_verdict(repo_name, uri, error)


def _nvml_check(name: str) -> Check:
    from gitopsd.errors import GitopsdError

    try:
        from gitopsd_nvidia.nvml import Nvml
    except ImportError:
        return nvml_verdict(name, None, "", "the nvidia backend plugin is not installed (pip install backends/nvidia)")
    nvml = Nvml()
    try:
        nvml.start()
        return nvml_verdict(name, nvml.gpu_count(), nvml.driver_version(), None)
    except GitopsdError as exc:
        return nvml_verdict(name, None, "", str(exc))
    except Exception as exc:  # NvmlFailure and whatever a broken driver raises: still one line
        return nvml_verdict(name, None, "", f"{type(exc).__name__}: {exc}")


def _unit_checks(units: tuple[Path, ...], config: Path, needed: dict[str, str]) -> Iterator[Check]:
    user_unit = _config_home() / "systemd" / "user" / "gitopsd.service"
    found = list(units) or [p for p in (SYSTEM_UNIT, user_unit) if p.is_file()]
    if not found:
        yield skipped("systemd unit", f"none installed ({SYSTEM_UNIT}, {user_unit})")
        return
    for unit in found:
        try:
            text = unit.read_text()
            drop_ins = [p.read_text() for p in sorted(unit.parent.glob(f"{unit.name}.d/*.conf"))]
        except OSError as exc:
            yield failed(f"systemd unit {unit}", f"cannot read: {exc.strerror}", "check its permissions")
            continue
        runs = unit_config(unit_settings([text, *drop_ins]))
        if runs is not None and Path(runs).resolve() != config.resolve():
            yield skipped(f"systemd unit {unit}", f"runs --config {runs}, not {config}")
            continue
        facts = UnitFacts(path=str(unit), text=text, home=str(Path.home()), user_unit=unit != SYSTEM_UNIT
                          and "/systemd/user/" in str(unit))  # fmt: skip
        yield unit_verdict(facts, drop_ins, needed)
