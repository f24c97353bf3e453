"""Trainings cannot read the daemon's secrets: each attack is a real hostile training on the local backend.

A training runs as the daemon's account, so before confinement it could read `state.db`, `registry.db`, the
credentials directory, other runs and any file that account can, and write anywhere it can. Each case below
starts a real supervisor and a real training that tries one of these, prints what happened to its log, and
carries on; the case asserts that every attempt was refused with EACCES or EPERM inside the training, that
nothing outside the run changed or appeared, and that no canary reached the log. A healthy training next to
them still reads its inputs and writes its artifact. The policy builder is tested on a made-up file system.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from gitopsd.backends.local import landlock, readiness
from gitopsd.backends.local.backend import LocalBackend
from gitopsd.backends.local.confine import (
    Access,
    ConfinementError,
    ConfineSettings,
    HostFacts,
    Policy,
    Probe,
    Rule,
    RunPaths,
    _minimal,
    build_policy,
    parse_settings,
    refusal,
    training_tmpdir,
)
from gitopsd.errors import BackendUnavailable
from gitopsd.model import Job, JobRef, JobState
from gitopsd.reconcile.reconciler import Reconciler
from tests.backend_contract import cancel_everything, log_text, new_job, submit, wait_finished
from tests.conftest import GitRepo, gitopsd
from tests.security.conftest import Canary

KERNEL = landlock.probe()
needs_landlock = pytest.mark.skipif(KERNEL.abi < 3, reason=f"needs Landlock ABI 3+: {KERNEL.reason}")

# The hostile training: it tries each attempt in attempts.json, prints what happened, and exits 0. SUPERVISOR
# in a target names its supervisor, the leader of its process group.
ATTACK = """
import errno, json, os, sys

def act(op, target):
    if op == "read":
        return open(target, "rb").read()
    if op == "list":
        return os.listdir(target)
    if op == "write":
        with open(target, "w") as handle:
            handle.write("pwned by the training")
    if op == "environ":
        return open(f"/proc/{target}/environ", "rb").read()
    if op == "signal":
        os.kill(int(target), 0)
    if op == "link":
        os.link(*target.split("|"))

for name, op, target in json.load(open("attempts.json")):
    try:
        result = act(op, target.replace("SUPERVISOR", str(os.getpgrp())))
    except OSError as exc:
        print(f"{name}: refused {errno.errorcode.get(exc.errno, exc.errno)}", flush=True)
    else:
        shown = result if isinstance(result, (bytes, list)) else b""
        print(f"{name}: ALLOWED {shown!r}", flush=True)
"""


@pytest.fixture
def daemon_state(tmp_path: Path) -> Path:
    """The backend's state directory, with the daemon's databases in it (each holding a secret)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_text("state-db-secret\n")
    (state / "registry.db").write_text("registry-db-secret\n")
    return state


@pytest.fixture
def backend(tmp_path: Path, daemon_state: Path) -> Iterator[LocalBackend]:
    local = LocalBackend(name="local", settings={"max_parallel": 4, "grace_s": 1.0}, state_dir=daemon_state)
    yield local
    cancel_everything(local, tmp_path)


def hostile_job(root: Path, attempts: list[tuple[str, str, str]], *, extra: str = "") -> Job:
    """A job whose training makes `attempts` (name, op, target; `{run}` in a target is its run directory)."""
    job = new_job(root, f"{sys.executable} attack.py")
    (job.tree_dir / "attack.py").write_text(ATTACK + extra)
    targets = [(name, op, target.replace("{run}", str(job.run_dir))) for name, op, target in attempts]
    (job.tree_dir / "attempts.json").write_text(json.dumps(targets))
    return job


def run_to_end(backend: LocalBackend, job: Job) -> tuple[JobRef, str]:
    ref = submit(backend, job)
    status = wait_finished(backend, ref)
    log = log_text(backend, ref)
    assert status.state is JobState.SUCCEEDED, (status, log)
    return ref, log


def assert_refused(log: str, *names: str, errors: str = "EACCES|EPERM") -> None:
    for name in names:
        assert re.search(rf"^{re.escape(name)}: refused ({errors})$", log, re.M), f"{name} was not refused:\n{log}"
    assert "ALLOWED" not in log, log


def files_in(*directories: Path) -> dict[Path, bytes]:
    """The files directly in `directories`, with their content."""
    return {p: p.read_bytes() for directory in directories for p in directory.iterdir() if p.is_file()}


# -- the attacks -------------------------------------------------------------------------------------------


@needs_landlock
def test_a_training_cannot_read_a_file_of_the_daemons_account_outside_its_run(
    backend: LocalBackend, tmp_path: Path, canary: Canary
) -> None:
    job = hostile_job(
        tmp_path, [("canary file", "read", str(canary.file)), ("canary dir", "list", str(canary.file.parent))]
    )
    _, log = run_to_end(backend, job)
    assert_refused(log, "canary file", "canary dir")
    canary.assert_not_in(log, *(p.read_bytes() for p in job.output_dir.rglob("*") if p.is_file()))
    canary.assert_untouched()


@needs_landlock
def test_a_training_cannot_read_the_state_and_registry_databases(
    backend: LocalBackend, tmp_path: Path, daemon_state: Path
) -> None:
    job = hostile_job(
        tmp_path,
        [
            ("state.db", "read", str(daemon_state / "state.db")),
            ("registry.db", "read", str(daemon_state / "registry.db")),
            ("state dir", "list", str(daemon_state)),
            ("venvs", "list", str(daemon_state / "local")),
        ],
    )
    _, log = run_to_end(backend, job)
    assert_refused(log, "state.db", "registry.db", "state dir", "venvs")
    assert "db-secret" not in log


@needs_landlock
def test_a_training_cannot_read_another_runs_directory(backend: LocalBackend, tmp_path: Path) -> None:
    other = new_job(tmp_path, "true")
    other.output_dir.mkdir(parents=True)
    (other.output_dir / "model.json").write_text("other-run-secret\n")
    job = hostile_job(
        tmp_path,
        [
            ("other artifact", "read", str(other.output_dir / "model.json")),
            ("other run", "list", str(other.run_dir)),
            ("all runs", "list", str(other.run_dir.parent)),
        ],
    )
    _, log = run_to_end(backend, job)
    assert_refused(log, "other artifact", "other run", "all runs")
    assert "other-run-secret" not in log


@needs_landlock
def test_a_training_cannot_write_outside_the_writable_parts_of_its_run(
    backend: LocalBackend, tmp_path: Path, daemon_state: Path, canary: Canary
) -> None:
    attempts = [
        ("overwrite canary", "write", str(canary.file)),
        ("new file by the canary", "write", str(canary.file.parent / "planted.txt")),
        ("new file in the state dir", "write", str(daemon_state / "planted.db")),
        ("overwrite state.db", "write", str(daemon_state / "state.db")),
        ("forge own exit record", "write", "{run}/local/exit.json"),  # the supervisor's word on how it ended
        ("rewrite own snapshot", "write", "{run}/run.json"),  # the gates it will be judged by
    ]
    job = hostile_job(tmp_path, attempts)
    (job.run_dir / "run.json").write_text('{"validate": ["accuracy >= 0.9"]}\n')
    before = files_in(canary.file.parent, daemon_state)
    _, log = run_to_end(backend, job)
    assert_refused(log, *(name for name, _, _ in attempts))
    assert files_in(canary.file.parent, daemon_state) == before, "a file outside the run appeared or changed"
    assert (job.run_dir / "run.json").read_text() == '{"validate": ["accuracy >= 0.9"]}\n'
    assert json.loads((job.run_dir / "local" / "exit.json").read_text())["exit_code"] == 0
    canary.assert_untouched()


@needs_landlock
def test_a_training_cannot_read_the_credentials_directory(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, canary: Canary
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "git-token").write_text(canary.token + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))  # as systemd hands it to the daemon
    job = hostile_job(
        tmp_path,
        [("credential", "read", str(credentials / "git-token")), ("credentials", "list", str(credentials))],
    )
    _, log = run_to_end(backend, job)
    assert_refused(log, "credential", "credentials")
    canary.assert_not_in(log)


@needs_landlock
def test_a_training_cannot_read_the_secrets_in_the_environment_of_its_supervisor(
    backend: LocalBackend, tmp_path: Path, canary: Canary
) -> None:
    # The supervisor runs with the daemon's environment (GITOPSD_GIT_TOKEN, AWS_SECRET_ACCESS_KEY), and is the
    # leader of the training's process group. test_an_unconfined_training_can_read_everything shows that
    # this attack works without confinement.
    job = hostile_job(tmp_path, [("supervisor environ", "environ", "SUPERVISOR")])
    _, log = run_to_end(backend, job)
    assert_refused(log, "supervisor environ")
    canary.assert_not_in(log)


THREAD_NAMES = """
import threading
worker = threading.Thread(target=lambda: done.wait())
done = threading.Event()
worker.start()
try:
    with open(f"/proc/self/task/{worker.native_id}/comm", "w") as handle:  # what CUDA does for its threads
        handle.write("cuda-worker")
except OSError as exc:
    print(f"own thread name: refused {errno.errorcode.get(exc.errno, exc.errno)}", flush=True)
else:
    print("own thread name: " + open(f"/proc/self/task/{worker.native_id}/comm").read().strip(), flush=True)
done.set()
"""


@needs_landlock
@pytest.mark.parametrize("root", [False, True], ids=["service account", "root"])
def test_a_training_names_its_own_threads_in_proc_and_still_cannot_reach_its_supervisor_there(
    backend: LocalBackend, tmp_path: Path, canary: Canary, monkeypatch: pytest.MonkeyPatch, root: bool
) -> None:
    # CUDA gives up (error 304) when it cannot write /proc/self/task/TID/comm, so a service account's training
    # may write /proc; Landlock's ptrace rule still keeps it out of its supervisor's entries. A root training
    # keeps /proc read-only (root passes the file modes of /proc/sys), and its log says what that costs.
    monkeypatch.setattr("gitopsd.backends.local.hostfacts.os.geteuid", lambda: 0 if root else 1000)
    attempts = [
        ("supervisor environ", "environ", "SUPERVISOR"),
        ("supervisor name", "write", "/proc/SUPERVISOR/comm"),
        ("supervisor memory", "write", "/proc/SUPERVISOR/mem"),
    ]
    job = hostile_job(tmp_path, attempts, extra=THREAD_NAMES)
    _, log = run_to_end(backend, job)
    assert_refused(log, "supervisor environ", "supervisor memory")
    assert_refused(log, "supervisor name", errors="EACCES|EINVAL")  # the kernel's own answer: not its thread
    canary.assert_not_in(log)
    if root:
        assert "own thread name: refused EACCES" in log
        assert "running as root: /proc stays read-only" in log
    else:
        assert "own thread name: cuda-worker" in log
        assert "running as root" not in log


ESCAPEE = """
import os, subprocess, sys
out = os.environ["GITOPSD_OUTPUT_DIR"]
os.symlink(sys.argv[1], os.path.join(out, "model.json"))
late = "import os, sys, time; time.sleep(30); os.symlink(sys.argv[1], os.path.join(sys.argv[2], 'late.json'))"
escapee = subprocess.Popen([sys.executable, "-c", late, sys.argv[1], out], start_new_session=True)
open(os.path.join(out, "escapee.pid"), "w").write(str(escapee.pid))
print("left a link and an escapee behind", flush=True)
"""


@needs_landlock
def test_a_training_cannot_smuggle_a_daemon_file_into_its_output_for_the_daemon_to_collect(
    backend: LocalBackend, tmp_path: Path, daemon_state: Path
) -> None:
    # The daemon copies the artifact with its own rights: a link to registry.db would be registered as the model.
    registry = daemon_state / "registry.db"
    hard = hostile_job(tmp_path, [("hard link", "link", f"{registry}|{{run}}/out/model.json")])
    _, log = run_to_end(backend, hard)
    assert_refused(log, "hard link", errors="EXDEV")  # Landlock's answer to a link across its rules

    job = new_job(tmp_path, f"{sys.executable} escape.py {registry}")
    (job.tree_dir / "escape.py").write_text(ESCAPEE)
    ref = submit(backend, job)
    status = wait_finished(backend, ref)
    assert status.state is JobState.FAILED
    assert "symbolic links in its output that lead outside its run" in status.message
    assert f"{job.output_dir / 'model.json'} -> {registry}" in status.message
    escapee = int((job.output_dir / "escapee.pid").read_text())
    assert not Path(f"/proc/{escapee}").exists(), "a process that left the group must not outlive the check"


@pytest.mark.skipif(KERNEL.abi < 6, reason="signal scoping needs Landlock ABI 6")
def test_a_training_cannot_signal_its_supervisor_or_the_daemon(backend: LocalBackend, tmp_path: Path) -> None:
    job = hostile_job(
        tmp_path,
        [("signal supervisor", "signal", "SUPERVISOR"), ("signal daemon", "signal", str(os.getpid()))],
    )
    _, log = run_to_end(backend, job)
    assert_refused(log, "signal supervisor", "signal daemon")


# -- what keeps working ------------------------------------------------------------------------------------

HEALTHY = """
import json, os, subprocess, tempfile
data = open("../data/train.csv").read()  # an input in the run's exported tree
with tempfile.NamedTemporaryFile("w", delete=False) as scratch:  # TMPDIR: the run's own
    scratch.write(data)
os.listdir("/etc")
open("/dev/null", "w").write("discarded")
subprocess.run(["sh", "-c", "echo child >> /dev/stdout"], check=True)  # reopens the log
with open(os.environ["GITOPSD_METRICS_FILE"], "a") as metrics:
    metrics.write(json.dumps({"accuracy": 1.0}) + "\\n")
out = os.environ["GITOPSD_OUTPUT_DIR"]
os.replace(scratch.name, os.path.join(out, "model.bin"))  # a rename from TMPDIR into the output directory
os.symlink("model.bin", os.path.join(out, "latest"))  # a link inside the run is fine
print("trained on", len(data), "bytes; scratch in", os.path.dirname(scratch.name))
"""


@needs_landlock
def test_a_healthy_training_reads_its_inputs_and_writes_its_artifact_and_says_it_ran_confined(
    backend: LocalBackend, tmp_path: Path
) -> None:
    job = new_job(tmp_path, f"{sys.executable} train.py")
    job = replace(job, workdir=job.tree_dir / "src")
    job.workdir.mkdir()
    (job.workdir / "train.py").write_text(HEALTHY)
    (job.tree_dir / "data").mkdir()
    (job.tree_dir / "data" / "train.csv").write_text("x,y\n1,2\n")
    ref, log = run_to_end(backend, job)
    assert (job.output_dir / "latest").read_text() == "x,y\n1,2\n"
    assert f"scratch in {job.run_dir / 'tmp'}" in log
    assert "child" in log
    assert f"confined by Landlock (ABI {KERNEL.abi})" in log
    described = backend.describe(ref)
    assert (described["confined"], described["landlock_abi"]) == (True, KERNEL.abi)


@needs_landlock
def test_operator_paths_are_readable_and_writable_as_configured(tmp_path: Path, daemon_state: Path) -> None:
    datasets, scratch = tmp_path / "datasets", tmp_path / "scratch"
    datasets.mkdir()
    scratch.mkdir()
    (datasets / "big.csv").write_text("shared data\n")
    settings = {"confine_read": [str(datasets)], "confine_write": [str(scratch)]}
    local = LocalBackend(name="local", settings=settings, state_dir=daemon_state)
    try:
        job = hostile_job(
            tmp_path,
            [("dataset", "read", str(datasets / "big.csv")), ("write dataset", "write", str(datasets / "x"))],
            extra=f"open({str(scratch / 'cache')!r}, 'w').write('cached')\n",
        )
        _, log = run_to_end(local, job)
    finally:
        cancel_everything(local, tmp_path)
    assert "dataset: ALLOWED b'shared data\\n'" in log
    assert re.search(r"^write dataset: refused EACCES$", log, re.M)
    assert not (datasets / "x").exists()
    assert (scratch / "cache").read_text() == "cached"


def test_an_unconfined_training_can_read_everything_and_its_log_and_lineage_say_so(
    tmp_path: Path, daemon_state: Path, canary: Canary
) -> None:
    local = LocalBackend(name="local", settings={"confine": False}, state_dir=daemon_state)
    try:
        job = hostile_job(
            tmp_path,
            [
                ("canary file", "read", str(canary.file)),
                ("state.db", "read", str(daemon_state / "state.db")),
                ("supervisor environ", "environ", "SUPERVISOR"),
            ],
        )
        ref, log = run_to_end(local, job)
        described = local.describe(ref)
    finally:
        cancel_everything(local, tmp_path)
    assert "not confined: the backend setting `confine` is false" in log
    assert f"canary file: ALLOWED b'{canary.file_secret}" in log, "the opt-out must really turn confinement off"
    assert "state-db-secret" in log and canary.token in log
    assert (described["confined"], described["landlock_abi"]) == (False, None)


@pytest.mark.parametrize(
    ("probe", "settings", "expected"),
    [
        (Probe(abi=0, reason="this kernel has no Landlock (it needs Linux 5.13 or later)"), {}, "has no Landlock"),
        (Probe(abi=2), {}, "Landlock ABI 2 and confinement needs ABI 3"),
        (Probe(abi=3), {"confine_network": True}, "setting confine_network: refusing TCP needs Landlock ABI 4"),
    ],
)
def test_without_landlock_a_training_is_refused_and_never_started_unless_the_operator_opts_out(
    tmp_path: Path, daemon_state: Path, probe: Probe, settings: dict[str, Any], expected: str
) -> None:
    local = LocalBackend(name="local", settings=settings, state_dir=daemon_state, probe=lambda: probe)
    job = new_job(tmp_path, f'touch "{tmp_path}/started"')
    with pytest.raises(BackendUnavailable, match=re.escape(expected)) as refused:
        local.check()
    if "confine_network" not in settings:
        assert "set `confine: false` in the settings of backend 'local'" in str(refused.value)
    assert readiness.unavailable("local", settings, lambda: probe) == str(refused.value)  # the quick pass's word
    with pytest.raises(BackendUnavailable, match=re.escape(expected)):
        local.submit(job)
    assert not (job.run_dir / "local").exists()
    assert not (tmp_path / "started").exists()

    opted_out = LocalBackend(name="local", settings={"confine": False}, state_dir=daemon_state, probe=lambda: probe)
    opted_out.check()
    assert readiness.unavailable("local", {"confine": False}, lambda: probe) is None
    ref = submit(opted_out, job)
    assert wait_finished(opted_out, ref).state is JobState.SUCCEEDED
    assert (tmp_path / "started").exists()
    assert "not confined" in log_text(opted_out, ref)


# -- a real pass -------------------------------------------------------------------------------------------

SNOOP = """
import errno, os
state = os.path.join(os.environ["GITOPSD_OUTPUT_DIR"], "..", "..", "..")
for name in ("state.db", "registry.db", "source.git/config", "artifacts", "CANARY"):
    target = name if name.startswith("/") else os.path.join(state, name)
    try:
        found = os.listdir(target) if os.path.isdir(target) else open(target, "rb").read(64)
    except OSError as exc:
        print(f"snoop {name}: refused {errno.errorcode[exc.errno]}", flush=True)
    else:
        print(f"snoop {name}: ALLOWED {found!r}", flush=True)
try:
    open(os.path.join(state, "planted"), "w").write("x")
except OSError as exc:
    print(f"plant: refused {errno.errorcode[exc.errno]}", flush=True)
"""


@needs_landlock
def test_a_hostile_repository_training_in_a_real_pass_reads_nothing_of_the_daemon_and_still_registers(
    demo_repo: GitRepo, state_dir: Path, canary: Canary
) -> None:
    # A first version puts an artifact in the store and the databases on disk: there is something to steal.
    gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait")
    snoop = SNOOP.replace('"CANARY"', repr(str(canary.file)))
    demo_repo.edit("src/train.py", "def main() -> None:\n", "def main() -> None:\n" + textwrap.indent(
        f"exec({snoop!r})\n", "    "))  # fmt: skip
    demo_repo.commit("Snoop around before training")
    gitopsd(state_dir, "reconcile", "--wait")
    listed = json.loads(gitopsd(state_dir, "registry", "list", "--json").stdout)
    assert [v["label"] for v in listed] == ["blobs@1", "blobs@2"], "the pass must still train and register"
    assert listed[1]["lineage"]["job"]["confined"] is True
    log = gitopsd(state_dir, "logs", "blobs").stdout
    for name in ("state.db", "registry.db", "source.git/config", "artifacts", str(canary.file)):
        assert re.search(rf"^snoop {re.escape(name)}: refused EACCES$", log, re.M), log
    assert "plant: refused EACCES" in log
    assert "ALLOWED" not in log
    assert not (state_dir / "planted").exists()
    canary.assert_not_in(log)
    canary.assert_untouched()


LINK_ARTIFACT = """

def main() -> None:  # the real training, then its artifact swapped for a link to the daemon's registry
    train()
    out = os.environ["GITOPSD_OUTPUT_DIR"]
    os.remove(os.path.join(out, "model.json"))
    os.symlink(os.path.join(out, "..", "..", "..", "registry.db"), os.path.join(out, "model.json"))
"""


@needs_landlock
def test_a_hostile_repository_cannot_have_the_daemon_register_its_registry_database_as_the_model(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path, canary: Canary
) -> None:
    train = demo_repo.read("src/train.py").replace("def main() -> None:", "def train() -> None:")
    demo_repo.write(
        "src/train.py", train.replace('if __name__ == "__main__":', LINK_ARTIFACT + '\nif __name__ == "__main__":')
    )
    demo_repo.commit("Hand in the registry as the model")
    reconciler.reconcile_until_settled(timeout_s=60)
    blobs = next(m for m in json.loads(gitopsd(state_dir, "status", "--json").stdout)["models"] if m["name"] == "blobs")
    assert "symbolic links in its output that lead outside its run" in blobs["message"], blobs
    assert json.loads(gitopsd(state_dir, "registry", "list", "--json").stdout) == []
    stored = (
        [p for p in (state_dir / "artifacts").rglob("*") if p.is_file()] if (state_dir / "artifacts").exists() else []
    )
    assert not any(p.read_bytes().startswith(b"SQLite format 3") for p in stored)
    canary.assert_untouched()


# -- the policy, on a made-up file system ------------------------------------------------------------------


class FakeFs:
    """A file system of directories (a trailing '/'), files and symlinks ('path -> target')."""

    def __init__(self, *entries: str) -> None:
        self.links: dict[str, str] = {}
        self.paths: set[str] = {"/"}
        for entry in entries:
            path, _, target = entry.partition(" -> ")
            path = path.rstrip("/")
            if target:
                self.links[path] = target
            self.paths.add(path)
            parent = os.path.dirname(path)
            while parent not in self.paths:
                self.paths.add(parent)
                parent = os.path.dirname(parent)

    def resolve(self, path: str) -> str:
        parts = path.strip("/").split("/")
        current = "/"
        for part in parts:
            current = os.path.join(current, part) if part else current
            if current in self.links:
                current = self.resolve(self.links[current])
        return os.path.normpath(current)

    def exists(self, path: str) -> bool:
        return path in self.paths or path in self.links

    def listdir(self, path: str) -> list[str] | None:
        children = [p for p in self.paths if p != path and os.path.dirname(p) == path]
        return sorted(os.path.basename(p) for p in children) if children or path in self.paths else None


RUN = "/var/lib/gitopsd/runs/r1"
RUN_PATHS = RunPaths(run_dir=RUN, tree_dir=f"{RUN}/tree", output_dir=f"{RUN}/out", metrics_dir=f"{RUN}/out",
                     log_file=f"{RUN}/logs/output.log", tmp_dir=f"{RUN}/tmp")  # fmt: skip
HOST = HostFacts(
    python_prefixes=("/usr",),
    path_dirs=("/usr/bin", "/bin", "/home/svc/.pyenv/shims", "/home/svc/.cargo/bin", "/var/lib/gitopsd/bin"),
    home="/home/svc",
    protected=("/var/lib/gitopsd", "/run/credentials/gitopsd.service"),
)
FS = FakeFs(
    "/usr/bin/python3", "/bin -> /usr/bin", "/lib -> /usr/lib", "/usr/lib/", "/lib64 -> /usr/lib64", "/usr/lib64/",
    "/sbin -> /usr/sbin", "/usr/sbin/", "/opt/tool/", "/proc/", "/sys/", "/dev/null", "/dev/shm/",
    "/etc/hosts", "/etc/ssl/certs/", "/etc/gitopsd/gitopsd.toml", "/etc/resolv.conf -> /run/systemd/resolve/stub.conf",
    "/run/systemd/resolve/stub.conf", "/run/credentials/gitopsd.service/token",
    "/home/svc/.ssh/id_ed25519", "/home/svc/.pyenv/libexec/pyenv", "/home/svc/.pyenv/shims/python3",
    "/home/svc/.cargo/bin/cargo", "/home/svc/.cargo/credentials.toml",
    "/var/lib/gitopsd/state.db", "/var/lib/gitopsd/bin/tool", f"{RUN}/tree/", f"{RUN}/out/", "/srv/data/set.csv",
)  # fmt: skip


def rules(policy: Policy) -> dict[str, str]:
    return {rule.path: str(rule.access) for rule in policy.rules}


def test_the_policy_grants_the_system_python_and_run_and_carves_out_what_holds_secrets() -> None:
    policy = build_policy(ConfineSettings(), RUN_PATHS, HOST, FS, backend="local")
    assert rules(policy) == {
        "/dev": "write",
        "/etc": "list",  # its entries, but not /etc/gitopsd's content
        "/etc/hosts": "read",
        "/etc/ssl": "read",
        "/home/svc/.cargo/bin": "read",  # a PATH directory alone: ~/.cargo/credentials.toml stays hidden
        "/home/svc/.pyenv": "read",  # a PATH directory of a pyenv root: the whole installation
        "/opt": "read",
        "/proc": "write",  # CUDA names its threads in /proc/self/task/TID/comm; a service account passes no mode there
        "/run/systemd/resolve/stub.conf": "read",  # /etc/resolv.conf, granted where it leads
        "/sys": "read",
        "/usr": "read",
        RUN: "read",
        f"{RUN}/logs/output.log": "write",
        f"{RUN}/out": "write",
        f"{RUN}/tmp": "write",
        f"{RUN}/tree": "write",
    }
    assert policy.hidden == ("/etc/gitopsd",)
    assert policy.tmp_dir == f"{RUN}/tmp"
    assert "/etc/* (2 entries)" in policy.summary() and "hidden from it: /etc/gitopsd" in policy.summary()


_PATHS = st.lists(st.sampled_from(["a", "b", "ab", "a.b"]), max_size=4).map(lambda parts: "/" + "/".join(parts))


@examples(max_examples=300, deadline=None)
@given(st.lists(st.builds(Rule, path=_PATHS, access=st.sampled_from(list(Access))), max_size=40))
def test_a_policy_keeps_each_path_once_at_its_strongest_and_drops_what_an_ancestor_grants(granted: list[Rule]) -> None:
    """`_minimal`, by its definition: a path appears once, with the strongest access any rule gives it, unless a
    directory above it ("/" included) is granted at least as much; siblings that share a prefix ("/a", "/ab")
    are not each other's ancestors."""
    strength = {Access.LIST: 0, Access.READ: 1, Access.WRITE: 2}
    strongest = {path: max((r.access for r in granted if r.path == path), key=strength.__getitem__)
                 for path in {r.path for r in granted}}  # fmt: skip
    expected = [Rule(path=path, access=access) for path, access in sorted(strongest.items())
                if not any(other != path and (other == "/" or path.startswith(other + "/"))
                           and strength[held] >= strength[access] for other, held in strongest.items())]  # fmt: skip
    assert list(_minimal(granted)) == expected


def test_a_root_training_keeps_proc_read_only_where_root_could_change_kernel_settings() -> None:
    root = HostFacts(**{**vars(HOST), "root": True})
    assert rules(build_policy(ConfineSettings(), RUN_PATHS, root, FS, backend="local"))["/proc"] == "read"


def test_a_grant_that_contains_a_protected_path_is_replaced_by_its_other_entries() -> None:
    host = HostFacts(python_prefixes=(), path_dirs=(), home=None, protected=("/opt/gitopsd/state",))
    fs = FakeFs("/opt/tool/bin/x", "/opt/gitopsd/state/state.db", "/opt/gitopsd/venv/bin/python",
                "/opt/link -> /opt/gitopsd/state")  # fmt: skip
    moved = {
        k: v.replace("/var/lib/gitopsd", "/opt/gitopsd/state") for k, v in vars(RUN_PATHS).items() if k != "inputs"
    }
    run = RunPaths(**moved)
    policy = build_policy(ConfineSettings(), run, host, fs, backend="local")
    opt = {path: access for path, access in rules(policy).items() if path.startswith("/opt") and "/runs/" not in path}
    assert opt == {"/opt/tool": "read", "/opt/gitopsd/venv": "read"}
    assert policy.hidden == ("/opt/gitopsd/state", "/opt/link")


def test_a_venv_or_conda_prefix_on_path_is_granted_whole_and_a_path_entry_in_the_state_dir_is_not() -> None:
    host = HostFacts(python_prefixes=(), path_dirs=("/srv/venv/bin", "/srv/conda/bin", "/srv/plain/bin",
                     "/var/lib/gitopsd/bin"), home=None, protected=("/var/lib/gitopsd",))  # fmt: skip
    fs = FakeFs("/srv/venv/pyvenv.cfg", "/srv/venv/bin/python", "/srv/conda/conda-meta/", "/srv/conda/bin/python",
                "/srv/plain/bin/tool", "/srv/plain/secret", "/var/lib/gitopsd/bin/tool")  # fmt: skip
    granted = rules(build_policy(ConfineSettings(), RUN_PATHS, host, fs, backend="local"))
    assert {p for p in granted if p.startswith("/srv")} == {"/srv/venv", "/srv/conda", "/srv/plain/bin"}
    assert not any(p.startswith("/var/lib/gitopsd") and not p.startswith(RUN) for p in granted)


def test_operator_paths_are_granted_around_the_home_and_refused_inside_protected_paths() -> None:
    settings = ConfineSettings(read=("/home",), write=("/srv/data",))
    policy = build_policy(settings, RUN_PATHS, HOST, FakeFs(*FS.paths, "/home/other/data.csv"), backend="local")
    assert rules(policy)["/home/other"] == "read" and "/home/svc" not in rules(policy)
    assert rules(policy)["/srv/data"] == "write"
    assert "/home/svc" in policy.hidden
    home = build_policy(ConfineSettings(read=("/home/svc",)), RUN_PATHS, HOST, FS, backend="local")
    assert rules(home)["/home/svc"] == "read", "the operator may grant the home explicitly"
    for settings, key in (
        (ConfineSettings(read=("/var/lib/gitopsd/artifacts",)), "confine_read"),
        (ConfineSettings(write=("/run/credentials/gitopsd.service",)), "confine_write"),
        (ConfineSettings(read=("/var/lib/gitopsd/runs/r2",)), "confine_read"),
        (ConfineSettings(read=("/srv/data",), deny=("/srv",)), "confine_read"),
    ):
        with pytest.raises(ConfinementError, match=rf"backend 'local' setting {key}: .* may never reach"):
            build_policy(settings, RUN_PATHS, HOST, FS, backend="local")


def test_run_paths_outside_the_run_directory_are_refused() -> None:
    escaping = RunPaths(**{**RUN_PATHS.__dict__, "metrics_dir": "/var/lib/gitopsd/runs"})
    with pytest.raises(ConfinementError, match="metrics directory /var/lib/gitopsd/runs is outside its run"):
        build_policy(ConfineSettings(), escaping, HOST, FS, backend="local")


def test_policy_round_trips_through_json_and_adds_the_venv_late() -> None:
    policy = build_policy(ConfineSettings(network=True), RUN_PATHS, HOST, FS, backend="local")
    assert Policy.from_json(json.loads(json.dumps(policy.to_json()))) == policy
    with_venv = policy.with_read("/var/lib/gitopsd/local/venvs/.builds/abc-1")
    assert rules(with_venv)["/var/lib/gitopsd/local/venvs/.builds/abc-1"] == "read"
    assert policy.with_read("/usr/lib/python3").rules == policy.rules, "already covered by /usr"


def test_settings_are_checked_with_the_setting_named() -> None:
    assert parse_settings({}, backend="gpu") == ConfineSettings()
    parsed = parse_settings({"confine_read": ["/data/"], "confine_network": True, "other": 1}, backend="gpu")
    assert (parsed.read, parsed.network) == (("/data",), True)
    for settings, message in (
        ({"confine": "no"}, "setting confine: expected true or false, got 'no'"),
        ({"confine_read": "/data"}, "setting confine_read: expected a list of absolute paths, got '/data'"),
        ({"confine_write": ["scratch"]}, "setting confine_write: expected a list of absolute paths, got 'scratch'"),
        ({"confine_network": 1}, "setting confine_network: expected true or false, got 1"),
    ):
        with pytest.raises(ConfinementError, match=re.escape(f"backend 'gpu' {message}")):
            parse_settings(settings, backend="gpu")


def test_refusal_and_tmpdir() -> None:
    assert refusal(ConfineSettings(), Probe(abi=3), backend="local") is None
    assert refusal(ConfineSettings(enabled=False), Probe(abi=0, reason="none"), backend="local") is None
    assert refusal(ConfineSettings(network=True), Probe(abi=4), backend="local") is None
    policy = Policy(rules=(Rule(path="/scratch", access=Access.WRITE),), tmp_dir="/run/r1/tmp")
    assert training_tmpdir(policy, "/scratch/tmp") == "/scratch/tmp"
    assert training_tmpdir(policy, "/tmp") == "/run/r1/tmp"
    assert training_tmpdir(policy, None) == "/run/r1/tmp"


def test_landlock_rights_follow_the_abi_and_never_handle_device_ioctls() -> None:
    assert landlock.handled_fs(1) == (1 << 13) - 1
    assert landlock.handled_fs(3) == landlock.handled_fs(7) == (1 << 15) - 1
    assert not landlock.handled_fs(7) & landlock.FS_IOCTL_DEV
    write_v1 = landlock.rights(Access.WRITE, 1, directory=True)
    assert not write_v1 & (landlock.FS_REFER | landlock.FS_TRUNCATE)
    assert landlock.rights(Access.WRITE, 3, directory=True) & landlock.FS_TRUNCATE
    on_file = landlock.rights(Access.WRITE, 7, directory=False)
    assert on_file == landlock.FS_EXECUTE | landlock.FS_READ_FILE | landlock.FS_WRITE_FILE | landlock.FS_TRUNCATE
    assert not landlock.rights(Access.READ, 7, directory=True) & landlock.FS_WRITE_FILE
    assert landlock.rights(Access.LIST, 7, directory=True) == landlock.FS_READ_DIR


def test_the_service_unit_lets_trainings_confine_themselves() -> None:
    # @system-service lacks the Landlock calls and the unit answers others with EPERM: the probe would then say
    # "blocked by a seccomp filter" and every training would be refused.
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "gitopsd.service").read_text()
    filters = re.findall(r"^SystemCallFilter=(.*)$", unit, re.M)
    allowed = {name for line in filters if not line.startswith("~") for name in line.split()}
    denied = {name for line in filters if line.startswith("~") for name in line[1:].split()}
    calls = {"landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"}
    assert calls <= allowed and not calls & denied
    assert re.search(r"^NoNewPrivileges=yes$", unit, re.M), "PR_SET_NO_NEW_PRIVS is what Landlock asks for anyway"


def test_a_runs_declared_data_outside_its_tree_is_readable_and_nothing_beside_it() -> None:
    host = HostFacts(python_prefixes=(), path_dirs=(), home=None, protected=("/var/lib/gitopsd",))
    fs = FakeFs("/datasets/blobs.csv", "/datasets/other.csv")
    run = RunPaths(**{**vars(RUN_PATHS), "inputs": ("/datasets/blobs.csv",)})
    granted = rules(build_policy(ConfineSettings(), run, host, fs, backend="local"))
    assert granted.get("/datasets/blobs.csv") == "read"
    assert "/datasets/other.csv" not in granted and "/datasets" not in granted
    inside = RunPaths(**{**vars(RUN_PATHS), "inputs": ("/var/lib/gitopsd/state.db",)})
    with pytest.raises(ConfinementError, match=r"state\.db is inside /var/lib/gitopsd"):
        build_policy(ConfineSettings(), inside, host, FakeFs("/var/lib/gitopsd/state.db"), backend="local")
