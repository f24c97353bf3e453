"""Checkpointed, chained trainings on the real cluster (SLOW: minutes each; Slurm's time limits are whole minutes
and it signals and kills jobs up to a minute off). Kept to two tests.

A training counts to a target, one step a second, saving its count in $GITOPSD_CHECKPOINT_DIR and exiting when
the checkpoint signal comes; each start appends the count it resumed from to `resumes.log` there. Covered: a
1-minute time limit that takes three segments or more and registers one version whose lineage lists them; a segment
requeued by `scontrol requeue` (same job, restarted) and then signalled by `scancel -b --signal=USR1`
(preemption-like), resumed each time.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.spec.operator import Operator, OperatorBackend
from tests.conftest import GitRepo
from tests.slurm.conftest import Cluster
from tests.slurm.test_slurm_e2e import model_status, runs

pytestmark = pytest.mark.slow

TRAIN = """\
import json, os, signal, sys, time
from pathlib import Path
target = int(sys.argv[1])
ck = Path(os.environ["GITOPSD_CHECKPOINT_DIR"])
state = ck / "state.json"
count = json.loads(state.read_text())["count"] if state.exists() else 0
with (ck / "resumes.log").open("a") as log:
    log.write(f"{os.environ['SLURM_JOB_ID']} {os.environ.get('SLURM_RESTART_COUNT', '0')} {count}\\n")
stop = []
signal.signal(getattr(signal, "SIG" + os.environ["GITOPSD_CHECKPOINT_SIGNAL"]), lambda *_: stop.append(1))
def save():
    (ck / "state.tmp").write_text(json.dumps({"count": count}))
    (ck / "state.tmp").replace(state)
while count < target and not stop:
    time.sleep(1)
    count += 1
    save()
if count < target:
    sys.exit(3)
out = Path(os.environ["GITOPSD_OUTPUT_DIR"])
(out / "model.json").write_text(json.dumps({"count": count}))
with open(os.environ["GITOPSD_METRICS_FILE"], "a") as m:
    m.write(json.dumps({"accuracy": 1.0, "loss": 0.1, "count": count}) + "\\n")
"""


def checkpointed_model(repo: GitRepo, *, target: int, timeout: str) -> None:
    repo.write("src/count.py", TRAIN)
    text = repo.read("models/blobs.yaml")
    text = text.replace("command: python3 train.py --epochs 40 --lr 0.5", f"command: python3 count.py {target}")
    text = text.replace("    env:\n", f"    timeout: {timeout}\n    checkpoint:\n      before: 10s\n    env:\n")
    repo.write("models/blobs.yaml", text)
    repo.write("gitops.yaml", repo.read("gitops.yaml").replace("backend: local", "backend: hpc"))


@pytest.fixture
def rec(demo_repo: GitRepo, state_dir: Path, cluster: Cluster) -> Iterator[Reconciler]:
    operator = Operator(backends={"hpc": OperatorBackend(type="slurm", settings=cluster.settings("cli"))})
    reconciler = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=operator)
    yield reconciler
    reconciler.close()
    for run_id, *_ in runs(state_dir) if (state_dir / "state.db").exists() else []:
        for job in cluster.jobs_named(f"gitopsd-{run_id}"):
            cluster.run("scancel", str(job["job_id"]), check=False)


def resumes(state_dir: Path) -> list[tuple[str, int, int]]:
    if not (state_dir / "state.db").exists() or not runs(state_dir):
        return []
    conn = sqlite3.connect(state_dir / "state.db")
    ((run_dir,),) = conn.execute("SELECT run_dir FROM runs").fetchall()
    conn.close()
    log = Path(run_dir) / "checkpoint" / "resumes.log"  # under the backend's runs_dir on the namespaced cluster
    lines = log.read_text().split("\n") if log.exists() else []
    return [(job, int(restart), int(count)) for job, restart, count in (line.split() for line in lines if line)]


def until(rec: Reconciler, done: object, timeout_s: float, seen: set[str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, "gave up waiting"
        rec.reconcile()
        if seen is not None:
            seen.add(str(model_status(rec.state_dir).get("message", "")))
        time.sleep(1)


def test_a_one_minute_time_limit_takes_several_segments_and_registers_one_version(
    demo_repo: GitRepo, rec: Reconciler, state_dir: Path
) -> None:
    # A segment counts for less than its minute (its signal comes 10 s or more before the limit, and Slurm checks
    # time limits only every half minute or so), so 110 s of counting needs at least three segments.
    checkpointed_model(demo_repo, target=110, timeout="1m")
    demo_repo.commit("Count to 110 in one-minute jobs")
    seen: set[str] = set()
    until(rec, lambda: model_status(state_dir).get("ready"), 900, seen)
    assert [r[2] for r in runs(state_dir)] == ["Registered"], "one run"
    version = rec.registry.latest("blobs")
    assert version is not None and version.number == 1
    segments = version.lineage["job"]["segments"]
    starts = resumes(state_dir)
    assert len(segments) >= 3, "two one-minute segments are not enough for 110 s of counting"
    assert [s["job_id"] for s in segments] == [job for job, _, _ in starts], "one start per segment, in order"
    counts = [count for _, _, count in starts]
    assert counts[0] == 0 and counts == sorted(set(counts)), "each segment resumed where the last one stopped"
    assert [s["signalled"] for s in segments] == [True] * (len(segments) - 1) + [False]
    assert all(s["nodes"] and s["started_at"] and s["ended_at"] for s in segments)
    assert any("segment 2 of at most 10" in message for message in seen), seen
    ((run_id, *_),) = runs(state_dir)
    if runs_root := rec.operator.backends["hpc"].settings.get("runs_dir"):  # the namespaced cluster
        kept = Path(runs_root) / ".gitopsd" / "requests" / f"{run_id}.json"
        assert kept.is_file(), "the request later segments reuse is on the shared run root, for a standby daemon"


def test_a_requeued_and_then_signalled_segment_resumes_each_time(
    demo_repo: GitRepo, rec: Reconciler, state_dir: Path, cluster: Cluster
) -> None:
    checkpointed_model(demo_repo, target=40, timeout="10m")
    demo_repo.commit("Count to 40")
    until(rec, lambda: resumes(state_dir), 120)
    ((job_id, _, _),) = resumes(state_dir)
    time.sleep(5)  # let it count a little: what it saved is what it resumes from
    cluster.run("scontrol", "requeue", job_id)
    for _ in range(30):  # a requeued job may not start again for two minutes (BeginTime): let it, once it is pending
        if cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False).returncode == 0:
            break
        time.sleep(1)
    until(rec, lambda: len(resumes(state_dir)) == 2, 300)
    time.sleep(5)
    cluster.run("scancel", "-b", "--signal=USR1", job_id)
    until(rec, lambda: model_status(state_dir).get("ready"), 600)
    starts = resumes(state_dir)
    assert [(job, restart) for job, restart, _ in starts][:2] == [(job_id, 0), (job_id, 1)], "requeued: same job"
    assert len(starts) == 3 and starts[2][0] != job_id, "after the signal, a second segment"
    counts = [count for _, _, count in starts]
    assert counts[0] == 0 < counts[1] < counts[2], "each start resumed from the checkpoint"
    version = rec.registry.latest("blobs")
    assert version is not None
    segments = version.lineage["job"]["segments"]
    assert [s["job_id"] for s in segments] == [job_id, starts[2][0]]
    assert [s["restart"] for s in segments[0]["starts"]] == [0, 1]
    assert segments[0]["signalled"] is True
