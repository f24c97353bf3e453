"""End to end on the real cluster: the demo repository switched to Slurm, reconciled by the real Reconciler.

The operator's configuration offers two Slurm backends, `hpc-cli` (cluster "alpha", sbatch/squeue) and
`hpc-rest` (cluster "beta", slurmrestd), so every test here also shows several clusters side by side, each model
picking one by name. Covered: training to a registered version whose lineage names the Slurm job and node; a job
refused at plan time; adoption after a crash right after sbatch; an outside scancel retried by the retry policy; a
removed model's job cancelled; and slurmctld stopped for a while: BackendUnavailable, nothing resubmitted, then
done.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitopsd.model import Phase
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.reconcile.statusview import read_status
from gitopsd.spec.operator import Operator, OperatorBackend
from tests.conftest import GitRepo
from tests.slurm.conftest import Cluster

MODEL = "models/blobs.yaml"
UP = Path(__file__).resolve().parents[2] / "tools" / "slurm" / "up.sh"

OUTAGE_S = 60
"""How long slurmctld stays down in the outage test: the issue asks for a minute."""


def slurm_operator(cluster: Cluster) -> Operator:
    """The operator's two Slurm backends, each a transport to the test cluster under its own cluster name."""
    return Operator(
        backends={
            "hpc-cli": OperatorBackend(type="slurm", settings=cluster.settings("cli", cluster="alpha")),
            "hpc-rest": OperatorBackend(type="slurm", settings=cluster.settings("rest", cluster="beta")),
        }
    )


def use_slurm(repo: GitRepo, cluster: Cluster, *, default: str = "hpc-cli", retries: int = 0) -> None:
    """Point the demo at the operator's Slurm backends and give it a second model on the other one."""
    text = repo.read("gitops.yaml")
    repo.write(
        "gitops.yaml",
        text.replace("backend: local", f"backend: {default}").replace("retries: 0", f"retries: {retries}"),
    )
    other = "hpc-rest" if default == "hpc-cli" else "hpc-cli"
    spec = (
        repo.read(MODEL)
        .replace("name: blobs", "name: blobs-b")
        .replace("  train:\n", f"  train:\n    backend: {other}\n")
    )
    repo.write("models/blobs-b.yaml", spec)


def set_command(repo: GitRepo, command: str, model: str = MODEL) -> None:
    repo.edit(model, "command: python3 train.py --epochs 40 --lr 0.5", f"command: {command}")


def runs(state_dir: Path) -> list[tuple[str, str, str, str]]:
    conn = sqlite3.connect(state_dir / "state.db")
    rows = conn.execute("SELECT id, model, phase, reason FROM runs ORDER BY rowid").fetchall()
    conn.close()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def events(state_dir: Path) -> list[str]:
    conn = sqlite3.connect(state_dir / "state.db")
    rows = conn.execute("SELECT kind FROM events ORDER BY rowid").fetchall()
    conn.close()
    return [r[0] for r in rows]


def model_status(state_dir: Path, name: str = "blobs") -> dict[str, Any]:
    return next((m for m in read_status(state_dir)["models"] if m["name"] == name), {})


def wait_phase(rec: Reconciler, state_dir: Path, phase: Phase, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (model_status(state_dir).get("run") or {}).get("phase") != phase:
        assert time.monotonic() < deadline, model_status(state_dir)
        rec.reconcile()
        time.sleep(0.2)


@pytest.fixture
def rec(demo_repo: GitRepo, state_dir: Path, cluster: Cluster) -> Iterator[Reconciler]:
    reconciler = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=slurm_operator(cluster))
    yield reconciler
    reconciler.close()
    for run_id, *_ in runs(state_dir) if (state_dir / "state.db").exists() else []:
        for job in cluster.jobs_named(f"gitopsd-{run_id}"):
            cluster.run("scancel", str(job["job_id"]), check=False)


def test_the_demo_trains_on_both_transports_and_lineage_names_job_and_node(
    demo_repo: GitRepo, rec: Reconciler, state_dir: Path, cluster: Cluster
) -> None:
    use_slurm(demo_repo, cluster)
    demo_repo.commit("Train on Slurm")
    rec.reconcile_until_settled(timeout_s=90)
    for name, backend, transport, slurm_cluster in (("blobs", "hpc-cli", "cli", "alpha"),
                                                     ("blobs-b", "hpc-rest", "rest", "beta")):  # fmt: skip
        status = model_status(state_dir, name)
        assert (status["ready"], status["latest_version"], status["backend"]) == (True, 1, backend), status
        version = rec.registry.latest(name)
        assert version is not None
        lineage = version.lineage
        job = lineage["job"]
        assert lineage["job_id"] == job["job_id"] and job["job_id"].isdigit()
        assert (job["backend"], job["transport"], job["cluster"]) == ("slurm", transport, slurm_cluster)
        assert job["nodes"] in cluster.node_names
        assert job["host"] == cluster.hostname_on(job["nodes"])
        assert (job["partition"], job["state"], job["exit_code"], lineage["exit_code"]) == ("debug", "COMPLETED", 0, 0)
        assert job["elapsed_s"] is not None
        assert version.metrics["accuracy"] >= 0.9
        (slurm_job,) = cluster.jobs_named(f"gitopsd-{version.run_id}")
        assert str(slurm_job["job_id"]) == job["job_id"]
    assert rec.reconcile().actions == (), "a converged repository plans nothing"


def test_more_gpus_than_any_node_has_is_refused_at_plan_time(
    demo_repo: GitRepo, rec: Reconciler, state_dir: Path, cluster: Cluster
) -> None:
    use_slurm(demo_repo, cluster)
    demo_repo.edit(MODEL, "    env:\n", "    resources:\n      gpus: 8\n    env:\n")
    demo_repo.commit("Ask for too much")
    rec.reconcile()
    status = model_status(state_dir)
    assert status["reason"] == "PolicyDenied"
    assert "asks for 8 GPUs, the largest node of cluster alpha has 2" in status["message"]
    assert [r[1] for r in runs(state_dir)] == ["blobs-b"], "nothing was submitted for the refused model"


CRASH = """
import os, signal, sys
from pathlib import Path
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.spec.operator import Operator
from gitopsd_slurm.cli_transport import CliTransport
from gitopsd_slurm.rest_transport import RestTransport
transport = {"cli": CliTransport, "rest": RestTransport}[sys.argv[3]]
real_submit = transport.submit
def submit_then_die(self, request):
    real_submit(self, request)            # sbatch (or POST /job/submit) has answered with the job id ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and gitopsd is killed before anything records it
transport.submit = submit_then_die
operator = Operator.model_validate_json(sys.argv[4])
Reconciler(state_dir=Path(sys.argv[1]), url=sys.argv[2], operator=operator).reconcile()
"""


@pytest.mark.parametrize("transport", ["cli", "rest"])
def test_gitopsd_killed_right_after_sbatch_adopts_the_job_never_submits_twice(
    demo_repo: GitRepo, state_dir: Path, cluster: Cluster, transport: str
) -> None:
    use_slurm(demo_repo, cluster, default=f"hpc-{transport}")
    (demo_repo.path / "models" / "blobs-b.yaml").unlink()
    demo_repo.commit("Train on Slurm")
    operator = slurm_operator(cluster)
    child = subprocess.run([sys.executable, "-c", CRASH, str(state_dir), str(demo_repo.path), transport,
                            operator.model_dump_json()],
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    ((run_id, _, phase, _),) = runs(state_dir)
    assert phase == "Submitting"
    assert len(cluster.jobs_named(f"gitopsd-{run_id}")) == 1, "the job reached Slurm"

    again = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=operator)
    try:
        again.reconcile_until_settled(timeout_s=90)
    finally:
        again.close()
    assert [r[2] for r in runs(state_dir)] == ["Registered"]
    assert "Adopted" in events(state_dir)
    assert len(cluster.jobs_named(f"gitopsd-{run_id}")) == 1, "one job in Slurm, not two"


def test_an_outside_scancel_is_cancelled_and_the_retry_policy_decides(
    demo_repo: GitRepo, rec: Reconciler, state_dir: Path, cluster: Cluster, tmp_path: Path
) -> None:
    use_slurm(demo_repo, cluster, retries=1)
    (demo_repo.path / "models" / "blobs-b.yaml").unlink()
    mark = tmp_path / "first-attempt-started"
    set_command(demo_repo, f"if [ ! -e {mark} ]; then touch {mark}; sleep 120; fi; python3 train.py --epochs 40")
    demo_repo.commit("A first attempt that hangs")
    wait_phase(rec, state_dir, Phase.RUNNING)
    deadline = time.monotonic() + 20
    while not mark.exists():  # the job is running its command, not just starting
        assert time.monotonic() < deadline
        time.sleep(0.1)
    first = model_status(state_dir)["run"]
    cluster.run("scancel", first["job_id"])
    rec.reconcile_until_settled(timeout_s=90)
    (_, _, phase1, reason1), (_, _, phase2, _) = runs(state_dir)
    assert (phase1, reason1, phase2) == ("Failed", "Cancelled", "Registered")
    conn = sqlite3.connect(state_dir / "state.db")
    (message,) = conn.execute("SELECT message FROM runs WHERE id = ?", (first["id"],)).fetchone()
    conn.close()
    assert "cancelled outside gitopsd" in message


def test_a_model_removed_from_git_has_its_slurm_job_cancelled(
    demo_repo: GitRepo, rec: Reconciler, state_dir: Path, cluster: Cluster
) -> None:
    use_slurm(demo_repo, cluster)
    (demo_repo.path / "models" / "blobs-b.yaml").unlink()
    set_command(demo_repo, "sleep 120")
    demo_repo.commit("A long training")
    wait_phase(rec, state_dir, Phase.RUNNING)
    ((run_id, *_),) = runs(state_dir)
    (demo_repo.path / MODEL).unlink()
    demo_repo.commit("Retire blobs")
    rec.reconcile()
    assert [r[2] for r in runs(state_dir)] == ["Cancelled"]
    deadline = time.monotonic() + 20
    while cluster.jobs_named(f"gitopsd-{run_id}")[0]["job_state"] != "CANCELLED":
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.skipif(os.geteuid() != 0, reason="stopping and starting slurmctld needs root")
def test_slurmctld_down_is_backend_unavailable_and_the_run_finishes_when_it_is_back(
    demo_repo: GitRepo, rec: Reconciler, state_dir: Path, cluster: Cluster
) -> None:
    use_slurm(demo_repo, cluster)
    (demo_repo.path / "models" / "blobs-b.yaml").unlink()
    set_command(demo_repo, "sleep 5; python3 train.py --epochs 40")
    demo_repo.commit("A training that outlives the controller")
    wait_phase(rec, state_dir, Phase.RUNNING)
    pid = int((cluster.dir / "run" / "slurmctld.pid").read_text())
    os.kill(pid, 15)
    try:
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            time.sleep(0.1)
        down_until = time.monotonic() + OUTAGE_S
        while time.monotonic() < down_until:
            result = rec.reconcile()
            assert result.actions == (), "nothing is submitted, failed or cancelled while Slurm is away"
            time.sleep(1)
        status = model_status(state_dir)
        assert status["reason"] == "BackendUnavailable", status
        assert "slurmctld" in status["message"] or "controller" in status["message"], status["message"]
    finally:
        env = {**os.environ, "GITOPSD_SLURM_DIR": str(cluster.dir)}
        subprocess.run([str(UP)], env=env, check=True, capture_output=True, timeout=120)
    rec.reconcile_until_settled(timeout_s=90)
    ((run_id, _, phase, _),) = runs(state_dir)
    assert phase == "Registered"
    assert len(cluster.jobs_named(f"gitopsd-{run_id}")) == 1
    assert "Submitted" in events(state_dir) and "Resubmitted" not in " ".join(events(state_dir))
