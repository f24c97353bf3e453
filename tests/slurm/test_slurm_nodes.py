"""The login node is not the compute node: on the namespaced test cluster (tools/slurm/up.sh), a job runs on nodeN
under that hostname, sees the shared run root but not the daemon's state directory, and the demo still trains
and registers a version, its run directory under the backend's `runs_dir`."""

from __future__ import annotations

import json
import os
import sqlite3
import textwrap
from pathlib import Path

import pytest

from gitopsd.registry.versions import Registry
from tests.conftest import GitRepo, gitopsd
from tests.slurm.conftest import Cluster

MODEL = "models/blobs.yaml"


@pytest.fixture
def nodes(cluster: Cluster) -> Cluster:
    """The cluster, which must be the namespaced one (fails under CI, else skips, when it is an older one)."""
    if not cluster.namespaced:
        why = f"the Slurm cluster in {cluster.dir} has no namespaced nodes: restart it with tools/slurm/up.sh"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)
        pytest.skip(why)
    return cluster


def test_a_job_on_each_node_has_the_nodes_hostname_and_cannot_see_the_private_dir(
    nodes: Cluster, state_dir: Path, tmp_path: Path
) -> None:
    assert nodes.private is not None and len(nodes.nodes) >= 2
    state_dir.mkdir(parents=True)
    (state_dir / "state.db").write_text("the daemon's own")
    (tmp_path / "shared.txt").write_text("seen everywhere")
    for node in nodes.nodes:
        probe = (f"hostname; ls -A {nodes.private}; test -e {state_dir} && echo 'state dir visible'; "
                 f"cat {tmp_path / 'shared.txt'}")  # fmt: skip
        done = nodes.run("srun", "-w", node, "-N1", "sh", "-c", probe)
        assert done.stdout.splitlines() == [node, "seen everywhere"], done.stdout + done.stderr
    assert os.listdir(nodes.private), "this side (the login node) still sees it"
    spread = nodes.run("srun", "-N", str(len(nodes.nodes)), "hostname")
    assert sorted(spread.stdout.split()) == sorted(nodes.nodes), "one step spans every node"


def test_the_demo_trains_on_the_nodes_with_a_state_dir_they_cannot_see(
    nodes: Cluster, demo_repo: GitRepo, state_dir: Path, tmp_path: Path
) -> None:
    assert nodes.runs_dir is not None
    config = tmp_path / "config.toml"
    settings = nodes.settings("cli")
    config.write_text(
        textwrap.dedent(f"""
        [backends.hpc]
        type = "slurm"
        settings = {json.dumps(settings)}
        """).replace('": ', '" = ')
    )
    demo_repo.edit("gitops.yaml", "backend: local", "backend: hpc")
    demo_repo.edit("gitops.yaml", "keep: 3", "keep: 0")  # every ended run is pruned: pruning works there too
    blind = f"if [ -e {state_dir} ]; then echo 'the node sees the state dir' >&2; exit 9; fi; "
    demo_repo.edit(MODEL, "command: python3 train.py", f"command: {blind}python3 train.py")
    demo_repo.commit("Train on the cluster")

    gitopsd(state_dir, "--config", str(config), "reconcile", "--repo", str(demo_repo.path), "--wait",
            "--timeout", "120")  # fmt: skip

    registry = Registry(state_dir / "registry.db", readonly=True)
    try:
        version = registry.latest("blobs")
    finally:
        registry.close()
    assert version is not None and version.number == 1
    job = version.lineage["job"]
    assert job["nodes"] in nodes.nodes and job["host"] == job["nodes"], job
    conn = sqlite3.connect(state_dir / "state.db")
    ((run_dir,),) = conn.execute("SELECT run_dir FROM runs").fetchall()
    conn.close()
    run_dir = Path(run_dir)
    assert run_dir.parent == nodes.runs_dir and run_dir.name == version.run_id
    started = json.loads((run_dir / "slurm" / "started.json").read_text())
    assert started["host"] == job["nodes"]
    assert not (state_dir / "runs").exists(), "nothing of the run is under the state dir"
    assert sorted(p.name for p in run_dir.iterdir()) == ["logs", "run.json", "slurm"], "pruned in the run root"
