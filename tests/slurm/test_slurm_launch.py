"""On the real cluster: a training's environment on the compute node (modules, Python requirements) and how its
command starts there (`spec.train.launcher`), reconciled end to end by the real Reconciler.

Covered: a model with `modules: [gitopsd-test/1.0]`, a requirements file (a local wheel, installed offline) and
`launcher: srun` sees the module, the environment and its rank in its training and registers a version whose
lineage names its node; a missing module is a clear, permanent EnvironmentFailed in status, never retried; and
on a cluster of two nodes or more, a `launcher: srun` training whose ranks all-reduce over TCP through
MASTER_ADDR/MASTER_PORT registers one version whose lineage names both nodes.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.reconcile.statusview import read_status
from gitopsd.spec.operator import Operator, OperatorBackend
from tests.conftest import GitRepo
from tests.slurm.conftest import Cluster
from tests.slurm.test_slurm_script import LMOD_INIT, MODULEFILES, lmod, tiny_wheel

GITOPS = """\
apiVersion: gitopsd/v1
kind: Repository
defaults:
  backend: hpc
  retries: {retries}
  timeout: 5m
"""

MODEL = """\
apiVersion: gitopsd/v1
kind: Model
metadata:
  name: {name}
spec:
  train:
    command: {command}
    launcher: {launcher}
    modules: {modules}
{python}    resources:
      nodes: {nodes}
  outputs:
    artifact: result.json
  validate:
{gates}
"""

PROBE = """\
import json, os, sys
import tinypkg
keys = ("GOPS_TEST_MODULE", "RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
seen = {key: os.environ.get(key) for key in keys}
seen.update(prefix=sys.prefix, tinypkg=tinypkg.HELLO)
out = os.environ["GITOPSD_OUTPUT_DIR"]
with open(os.path.join(out, "result.json"), "w") as handle:
    json.dump(seen, handle)
with open(os.environ["GITOPSD_METRICS_FILE"], "a") as handle:
    handle.write(json.dumps({"ok": 1}) + "\\n")
"""

ALLREDUCE = """\
# A sum over all ranks through rank 0, over TCP: what torch.distributed does at MASTER_ADDR:MASTER_PORT.
import json, os, socket, time
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
mine, host = rank + 1, socket.gethostname()
if rank == 0:
    server = socket.create_server(("", port))
    peers = [server.accept()[0] for _ in range(world - 1)]
    parts = [json.loads(peer.makefile().readline()) for peer in peers]
    total = mine + sum(part["value"] for part in parts)
    hosts = sorted([host] + [part["host"] for part in parts])
    for peer in peers:
        peer.sendall((json.dumps({"sum": total}) + "\\n").encode())
else:
    for _ in range(300):
        try:
            conn = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            time.sleep(0.2)
    conn.sendall((json.dumps({"value": mine, "host": host}) + "\\n").encode())
    total = json.loads(conn.makefile().readline())["sum"]
    hosts = []
out = os.environ["GITOPSD_OUTPUT_DIR"]
with open(os.path.join(out, "result.json"), "w") as handle:
    json.dump({"rank": rank, "sum": total, "hosts": hosts}, handle)
with open(os.environ["GITOPSD_METRICS_FILE"], "a") as handle:
    handle.write(json.dumps({"sum": total, "world_size": world}) + "\\n")
"""


def operator(cluster: Cluster) -> Operator:
    """One Slurm backend whose jobs load modules with the host's Lmod from tests/slurm/modulefiles."""
    settings = cluster.settings("cli", modules_init=str(LMOD_INIT), module_path=[str(MODULEFILES)])
    return Operator(backends={"hpc": OperatorBackend(type="slurm", settings=settings)})


def write_model(
    repo: GitRepo, *, name: str, command: str, launcher: str = "srun", modules: str = "[]",
    requirements: bool = False, nodes: int = 1, gates: str = "ok >= 1", retries: int = 0,
) -> None:  # fmt: skip
    repo.write("gitops.yaml", GITOPS.format(retries=retries))
    python = "    python:\n      requirements: requirements.txt\n" if requirements else ""
    gate_lines = "\n".join(f"    - {gate}" for gate in gates.split(";"))
    repo.write(f"models/{name}.yaml", MODEL.format(name=name, command=command, launcher=launcher, modules=modules,
                                                   python=python, nodes=nodes, gates=gate_lines))  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.path.mkdir()
    repo.git("init", "-q", "-b", "main")
    return repo


@pytest.fixture
def rec(repo: GitRepo, state_dir: Path, cluster: Cluster) -> Iterator[Reconciler]:
    lmod()  # Lmod on the nodes (tools/slurm/up.sh installs it), else a clear skip (a failure under CI)
    reconciler = Reconciler(state_dir=state_dir, url=str(repo.path), operator=operator(cluster))
    yield reconciler
    reconciler.close()
    for run_id, *_ in runs(state_dir) if (state_dir / "state.db").exists() else []:
        for job in cluster.jobs_named(f"gitopsd-{run_id}"):
            cluster.run("scancel", str(job["job_id"]), check=False)


def runs(state_dir: Path) -> list[tuple[str, str, str, str]]:
    conn = sqlite3.connect(state_dir / "state.db")
    rows = conn.execute("SELECT id, model, phase, reason FROM runs ORDER BY rowid").fetchall()
    conn.close()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def run_dir_of(state_dir: Path, run_id: str) -> Path:
    """Where the run's directory is: under the backend's runs_dir on a shared root, else STATE_DIR/runs."""
    conn = sqlite3.connect(state_dir / "state.db")
    (row,) = conn.execute("SELECT run_dir FROM runs WHERE id = ?", (run_id,)).fetchall()
    conn.close()
    return Path(row[0])


def model_status(state_dir: Path, name: str) -> dict[str, Any]:
    return next(m for m in read_status(state_dir)["models"] if m["name"] == name)


def test_modules_requirements_and_srun_reach_the_training_and_lineage_names_the_node(
    repo: GitRepo, rec: Reconciler, state_dir: Path
) -> None:
    repo.write("probe.py", PROBE)
    tiny_wheel(repo.path)
    repo.write("requirements.txt", "--no-index\n./tinypkg-1.0-py3-none-any.whl\n")
    write_model(repo, name="envcheck", command="python probe.py", modules="[gitopsd-test/1.0]", requirements=True)
    repo.commit("A model that needs a module and a requirements file")
    rec.reconcile_until_settled(timeout_s=180)
    status = model_status(state_dir, "envcheck")
    assert (status["ready"], status["latest_version"]) == (True, 1), status
    version = rec.registry.latest("envcheck")
    assert version is not None
    run_dir = run_dir_of(state_dir, version.run_id)
    seen = json.loads((run_dir / "out" / "result.json").read_text())
    assert seen["GOPS_TEST_MODULE"] == "1.0", "the module was loaded on the compute node"
    assert seen["tinypkg"] == "hello from tinypkg"
    venv = Path(seen["prefix"])
    assert venv.parent == run_dir.parent / ".venvs" and (venv / "gitopsd-venv.json").is_file()
    assert (seen["RANK"], seen["LOCAL_RANK"], seen["NODE_RANK"], seen["WORLD_SIZE"]) == ("0", "0", "0", "1")
    assert seen["MASTER_ADDR"] and 20000 <= int(seen["MASTER_PORT"]) < 30000
    job = version.lineage["job"]
    assert job["node_names"] == [job["nodes"]] and job["host"] in (job["nodes"], os.uname().nodename)


def test_a_missing_module_is_a_permanent_environment_failure_named_in_status(
    repo: GitRepo, rec: Reconciler, state_dir: Path
) -> None:
    write_model(repo, name="nomod", command="echo never runs", launcher="none",
                modules="[gitopsd-test/1.0, no-such-module/9.9]", retries=2)  # fmt: skip
    repo.commit("A model that needs a module the cluster does not have")
    rec.reconcile_until_settled(timeout_s=120)
    for _ in range(3):  # more passes: a permanent failure is not retried, whatever `retries` says
        rec.reconcile()
    assert [(phase, reason) for _, _, phase, reason in runs(state_dir)] == [("Failed", "EnvironmentFailed")]
    status = model_status(state_dir, "nomod")
    text = json.dumps(status)
    assert "module no-such-module/9.9 cannot be loaded" in text and "spec.train.modules" in text, status


def node_count(cluster: Cluster) -> int:
    nodes = cluster.run("sinfo", "-N", "-h", "-o", "%N").stdout.split()
    return len(set(nodes))


def test_two_nodes_all_reduce_under_srun_and_lineage_names_both(
    repo: GitRepo, rec: Reconciler, state_dir: Path, cluster: Cluster
) -> None:
    if node_count(cluster) < 2:
        message = (
            f"the test cluster has {node_count(cluster)} node(s); this test needs 2: start a multi-node cluster "
            "with tools/slurm/up.sh (nodes) and point GITOPSD_SLURM_DIR/SLURM_CONF at it"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    repo.write("allreduce.py", ALLREDUCE)
    write_model(repo, name="ring", command="python3 allreduce.py", nodes=2, gates="sum >= 3;world_size >= 2")
    repo.commit("Two ranks on two nodes")
    rec.reconcile_until_settled(timeout_s=180)
    status = model_status(state_dir, "ring")
    assert (status["ready"], status["latest_version"]) == (True, 1), status
    version = rec.registry.latest("ring")
    assert version is not None and version.metrics["sum"] == 3
    run_dir = run_dir_of(state_dir, version.run_id)
    rank0 = json.loads((run_dir / "out" / "result.json").read_text())
    rank1 = json.loads((run_dir / "ranks" / "1" / "result.json").read_text())
    assert (rank0["rank"], rank0["sum"], rank1["rank"], rank1["sum"]) == (0, 3, 1, 3)
    assert len(set(rank0["hosts"])) == 2, "the two ranks ran on two nodes"
    job = version.lineage["job"]
    assert sorted(job["node_names"]) == sorted(rank0["hosts"])
