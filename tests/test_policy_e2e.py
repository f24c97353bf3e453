"""Team policy end to end: a real Git repository, the local backend, the real CLI (`plan`, `status`, `usage`).

The acceptance of issue 14: a team over its weekly GPU-hours is refused in `plan` and in the daemon, while
another team's model in the same commit trains.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from gitopsd.daemon.config import load_config
from gitopsd.model import Phase
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.reconcile.state import MIGRATIONS, RunRecord, StateStore, connect
from gitopsd.registry.sqlitedb import migrate
from tests.conftest import GitRepo, gitopsd
from tests.test_e2e import MODEL, model_status

POLICY = """
[[policies]]
team = "vision"
paths = ["models/vision/**"]
max_gpu_hours_per_week = 1

[[policies]]
team = "nlp"
paths = ["models/nlp/**"]
max_gpu_hours_per_week = 100
"""


def two_teams(repo: GitRepo) -> None:
    """Vision's `seg` (2 GPUs, 10 min: 0.33 GPU-hours a training) and NLP's `tag` (1 GPU), on the demo code."""
    spec = repo.read(MODEL)
    gpus = "  train:\n    resources:\n      gpus: {}\n"
    repo.write("models/vision/seg.yaml", spec.replace("name: blobs", "name: seg").replace("  train:\n", gpus.format(2)))
    repo.write("models/nlp/tag.yaml", spec.replace("name: blobs", "name: tag").replace("  train:\n", gpus.format(1)))
    repo.git("rm", "-q", MODEL)
    repo.commit("Two teams")


def seed_past_run(state_dir: Path, *, gpus: int, hours: float, ended_ago_h: float) -> None:
    """A run of vision's `seg` that gitopsd recorded earlier (through the state store's own API)."""
    end = time.time() - ended_ago_h * 3600
    with StateStore(state_dir / "state.db") as store:
        store.create_run(
            RunRecord(id="seg-past", model="seg", run_key="k-past", spec_digest="d-past", commit_id="0" * 40,
                      spec_path="models/vision/seg.yaml", backend="local", phase=Phase.CANCELLED, attempt=1,
                      run_dir=str(state_dir / "runs" / "seg-past"), created_at=end - hours * 3600, updated_at=end,
                      started_at=end - hours * 3600, ended_at=end, gpus=gpus, timeout_s=7200),
            message="seeded",
        )  # fmt: skip


def run_phases(state_dir: Path, model: str) -> list[str]:
    conn = sqlite3.connect(state_dir / "state.db")
    rows = conn.execute("SELECT phase FROM runs WHERE model = ? ORDER BY rowid", (model,)).fetchall()
    conn.close()
    return [r[0] for r in rows]


WEEK_MESSAGE = re.compile(
    r"team vision: 0\.8 GPU-hours used in the last 7 days \+ 0\.33 for this training > 1 allowed per week "
    r"\(policies\[0\]\)"
)


def test_a_team_over_its_week_is_refused_in_plan_and_in_the_daemon_while_another_team_trains(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "gitopsd.toml"
    config.write_text(POLICY)
    two_teams(demo_repo)
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=load_config(config).operator())
    try:
        rec.reconcile_until_settled(timeout_s=120)  # one real run each: seg's counts toward vision's week
        assert run_phases(state_dir, "seg") == ["Registered"] and run_phases(state_dir, "tag") == ["Registered"]
        seed_past_run(state_dir, gpus=4, hours=0.2, ended_ago_h=30)  # 0.8 GPU-hours yesterday
        demo_repo.edit("src/train.py", "import argparse", "import argparse  # faster")
        demo_repo.commit("Both models train again")

        planned = gitopsd(state_dir, "--config", str(config), "plan", check=False)
        assert "+ train tag (attempt 1) on local, 1 GPU(s)" in planned.stdout
        assert "+ train seg" not in planned.stdout
        refusal = next(line for line in planned.stdout.splitlines() if line.startswith("  ! seg: "))
        assert refusal.startswith("  ! seg: refused by policy: ") and WEEK_MESSAGE.search(refusal)
        dry = rec.reconcile(dry_run=True)
        assert list(dry.blocked) == ["seg"] and WEEK_MESSAGE.search(dry.blocked["seg"])

        result = rec.reconcile_until_settled(timeout_s=120)
    finally:
        rec.close()
    assert run_phases(state_dir, "tag") == ["Registered", "Registered"]
    assert run_phases(state_dir, "seg") == ["Registered", "Cancelled"], "no new run for the refused model"
    seg = model_status(state_dir, "seg")
    assert (seg["condition"], seg["reason"]) == ("Stalled", "PolicyDenied")
    assert WEEK_MESSAGE.search(seg["message"])
    assert model_status(state_dir, "tag")["ready"] is True
    assert result.retry_at is not None and result.retry_at <= time.time() + 900, "looked at again as the week rolls"

    shown = json.loads(gitopsd(state_dir, "--config", str(config), "usage", "--json").stdout)
    vision = next(row for row in shown["rows"] if row["team"] == "vision")
    assert vision["runs"] == 2 and 0.8 < vision["gpu_hours"] < 0.9  # the seeded run and the real one
    assert next(row for row in shown["rows"] if row["team"] == "nlp")["runs"] == 2


def test_a_refused_model_trains_once_its_week_has_room_again(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "gitopsd.toml"
    config.write_text(POLICY)
    two_teams(demo_repo)
    state_dir.mkdir(parents=True)
    seed_past_run(state_dir, gpus=4, hours=0.2, ended_ago_h=30)
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=load_config(config).operator())
    try:
        first = rec.reconcile_until_settled(timeout_s=120)
        assert run_phases(state_dir, "seg") == ["Cancelled"] and first.retry_at is not None
        again = [rec.reconcile() for _ in range(2)]  # a full pass or the settled one: each says when it is due
        assert run_phases(state_dir, "seg") == ["Cancelled"], "still refused: the week has no room yet"
        due = again[0].retry_at
        assert due is not None and again[1].retry_at == due, "a quiet pass keeps it"
        assert due <= time.time() + 900, "looked at again as the week rolls, also after a pass with nothing new"
        with StateStore(state_dir / "state.db") as store:  # eight days later, the seeded run left the week
            past = store.get_run("seg-past")
            assert past is not None and past.ended_at is not None
            store.update_run(past, ended_at=past.ended_at - 7 * 86400, started_at=past.ended_at - 7 * 86400 - 720)
        rec.troubles.clock = lambda: due + 1  # the recheck falls due
        rec.reconcile_until_settled(timeout_s=120)
    finally:
        rec.close()
    assert run_phases(state_dir, "seg") == ["Cancelled", "Registered"]
    assert model_status(state_dir, "seg")["ready"] is True


def test_static_limits_refuse_in_plan_and_daemon_and_name_the_rule(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "gitopsd.toml"
    config.write_text('[[policies]]\nteam = "vision"\npaths = ["models/vision/**"]\nmax_gpus = 1\nmax_retries = 0\n')
    two_teams(demo_repo)
    done = gitopsd(state_dir, "--config", str(config), "plan", "--repo", str(demo_repo.path), check=False)
    assert done.returncode == 1, "a refusal fails the plan, so CI blocks the merge"
    planned = done.stdout
    assert "  ! seg: refused at plan time: team vision: 2 GPUs > 1 allowed per model (policies[0])" in planned
    assert "+ train tag" in planned
    done = gitopsd(state_dir, "--config", str(config), "reconcile", "--repo", str(demo_repo.path), "--wait",
                   check=False)  # fmt: skip
    assert done.returncode == 1 and "  seg: PolicyDenied: " in done.stderr, "a CI job that waited fails on it"
    seg = model_status(state_dir, "seg")
    assert (seg["condition"], seg["reason"]) == ("Stalled", "PolicyDenied")
    assert "2 GPUs > 1 allowed per model (policies[0])" in seg["message"]
    assert model_status(state_dir, "tag")["ready"] is True


def test_usage_by_model_and_team_over_a_window_and_for_a_whole_daemon(demo_repo: GitRepo, tmp_path: Path) -> None:
    daemon = tmp_path / "daemon"
    config = tmp_path / "gitopsd.toml"
    config.write_text(f'state_dir = "{daemon}"\n[[repositories]]\nname = "alpha"\nurl = "{demo_repo.path}"\n'
                      + POLICY)  # fmt: skip
    state_dir = daemon / "alpha"
    state_dir.mkdir(parents=True)
    seed_past_run(state_dir, gpus=4, hours=0.5, ended_ago_h=30)  # 2 GPU-hours yesterday
    seed_past_run_of(state_dir, "tag", "models/nlp/tag.yaml", gpus=1, hours=3, ended_ago_h=24 * 10)  # too old
    shown = gitopsd(state_dir, "--config", str(config), "usage").stdout
    assert shown.splitlines()[1:] == [
        "  TEAM     GPU-HOURS   RUNS  IN FLIGHT",
        "  vision         2.0      1          0",
        "  total          2.0      1          0",
    ]
    month = json.loads(gitopsd(state_dir, "usage", "--config", str(config), "--window", "30d", "--by", "model",
                               "--json").stdout)  # fmt: skip
    assert [(r["model"], r["gpu_hours"]) for r in month["rows"]] == [("alpha/tag", 3.0), ("alpha/seg", 2.0)]
    assert month["total_gpu_hours"] == 5.0 and month["window_s"] == 30 * 86400
    empty = gitopsd(tmp_path / "nothing", "usage", "--window", "1h").stdout
    assert "no run with GPUs in this window" in empty
    bad = gitopsd(state_dir, "usage", "--window", "soon", check=False)
    assert bad.returncode == 2 and "--window" in bad.stderr and "Traceback" not in bad.stderr


def seed_past_run_of(state_dir: Path, model: str, path: str, *, gpus: int, hours: float, ended_ago_h: float) -> None:
    end = time.time() - ended_ago_h * 3600
    with StateStore(state_dir / "state.db") as store:
        store.create_run(
            RunRecord(id=f"{model}-past", model=model, run_key="k", spec_digest="d", commit_id="0" * 40,
                      spec_path=path, backend="local", phase=Phase.REGISTERED, attempt=1, run_dir="/nonexistent",
                      created_at=end - hours * 3600, updated_at=end, started_at=end - hours * 3600, ended_at=end,
                      gpus=gpus),
            message="seeded",
        )  # fmt: skip


def test_migration_4_takes_older_runs_gpus_from_their_snapshots(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    conn = connect(db)
    migrate(conn, [m for m in MIGRATIONS if m[0] < 4], what=str(db))
    row = ("r1", "m", "k", "d", "c", "models/m.yaml", "local", "Registered", 1, "/x", 1.0, 2.0, 1.0, 2.0)
    for run_id in ("r1", "r2"):
        conn.execute("INSERT INTO runs (id, model, run_key, spec_digest, commit_id, spec_path, backend, phase, "
                     "attempt, run_dir, created_at, updated_at, started_at, ended_at) VALUES "
                     "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (run_id, *row[1:]))  # fmt: skip
    snapshot = {"train": {"resources": {"gpus": 4, "nodes": 2}, "timeout_s": 3600}}
    conn.execute("INSERT INTO snapshots VALUES ('r1', ?)", (json.dumps(snapshot),))
    conn.close()
    with StateStore(db) as store:
        one, two = store.get_run("r1"), store.get_run("r2")
    assert one is not None and (one.gpus, one.timeout_s) == (8, 3600)
    assert two is not None and (two.gpus, two.timeout_s) == (0, None), "no snapshot: counted as 0 GPUs"


@pytest.mark.parametrize("phase", ["Registered", "Failed"])
def test_a_finished_run_counts_from_its_start_as_its_backend_reports_it(
    demo_repo: GitRepo, state_dir: Path, phase: str
) -> None:
    if phase == "Failed":
        demo_repo.edit(MODEL, "    - accuracy >= 0.9\n", "    - accuracy >= 1.1\n")
    demo_repo.edit(MODEL, "  train:\n", "  train:\n    resources:\n      gpus: 3\n")
    demo_repo.commit("three GPUs")
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    try:
        rec.reconcile_until_settled(timeout_s=120)
    finally:
        rec.close()
    with StateStore(state_dir / "state.db") as store:
        (run,) = store.gpu_runs(time.time() - 3600)
    assert run.phase == phase and run.gpus == 3 and run.timeout_s == 600
    assert run.started_at is not None and run.ended_at is not None
    assert run.created_at <= run.started_at <= run.ended_at


def slow_seg(demo_repo: GitRepo, tmp_path: Path) -> Path:
    """Two teams, vision's seg training for a minute; returns the configuration with POLICY."""
    config = tmp_path / "gitopsd.toml"
    config.write_text(POLICY)
    two_teams(demo_repo)
    demo_repo.edit("models/vision/seg.yaml", "command: python3 train.py", "command: sleep 60; python3 train.py")
    demo_repo.commit("seg takes a minute")
    return config


def test_a_run_in_flight_is_never_refused_cancelled_or_blocked_by_a_budget_it_now_exceeds(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path
) -> None:
    config = slow_seg(demo_repo, tmp_path)
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=load_config(config).operator())
    try:
        rec.reconcile()
        (flying,) = run_phases(state_dir, "seg")
        seed_past_run(state_dir, gpus=4, hours=0.2, ended_ago_h=30)  # with seg's 0.33 held: over vision's 1.0
        for _ in range(3):
            assert "seg" not in rec.reconcile(dry_run=True).blocked
            rec.reconcile()
        assert run_phases(state_dir, "seg")[0] in ("Queued", "Running"), "still in flight"
        assert model_status(state_dir, "seg")["reason"] == "Progressing"
        demo_repo.git("rm", "-q", "models/vision/seg.yaml")
        demo_repo.commit("seg goes")
        rec.reconcile_until_settled(timeout_s=60)
    finally:
        rec.close()
    assert flying in ("Queued", "Running", "Submitting")
    assert run_phases(state_dir, "seg") == ["Cancelled", "Cancelled"]


def test_a_run_superseded_in_the_same_pass_holds_nothing_against_its_successor(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path
) -> None:
    config = slow_seg(demo_repo, tmp_path)
    state_dir.mkdir(parents=True)
    seed_past_run(state_dir, gpus=4, hours=0.125, ended_ago_h=30)  # 0.5, and 0.33 held by seg's run: 0.83 of 1.0
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=load_config(config).operator())
    try:
        rec.reconcile()
        assert run_phases(state_dir, "seg")[1] in ("Submitting", "Queued", "Running")
        demo_repo.edit("models/vision/seg.yaml", "sleep 60", "sleep 61")
        demo_repo.commit("seg changes while it trains")
        result = rec.reconcile()  # stops the old run, submits the new: 0.5 + 0.33 fits; holding both would not
        assert "seg" not in result.blocked
        phases = run_phases(state_dir, "seg")
        demo_repo.git("rm", "-q", "models/vision/seg.yaml")
        demo_repo.commit("seg goes")
        rec.reconcile_until_settled(timeout_s=60)
    finally:
        rec.close()
    assert phases[:2] == ["Cancelled", "Cancelled"] and len(phases) == 3, phases


def test_the_daemon_enforces_the_rules_of_its_repository(tmp_path: Path) -> None:
    from tests.test_daemon import start_daemon

    rule = POLICY.replace('team = "vision"\n', 'team = "vision"\nrepositories = ["demo"]\n')
    with start_daemon(tmp_path, extra=rule) as daemon:
        seed_past_run(daemon.state_dir / "demo", gpus=4, hours=0.2, ended_ago_h=30)
        two_teams(daemon.work)
        daemon.work.git("push", "-q", "origin", "HEAD:main")
        deadline = time.monotonic() + 120
        models: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            shown = json.loads(gitopsd(daemon.state_dir, "status", "--json", "--config", str(daemon.config)).stdout)
            models = {m["name"]: m for m in shown["models"]}
            if models.get("tag", {}).get("ready") and models.get("seg", {}).get("reason") == "PolicyDenied":
                break
            daemon.messages.clear()
            with contextlib.suppress(AssertionError):  # drain the notify socket, or the watchdog pings fill it
                daemon.read_notify("no such message", timeout=0.5)
        daemon.process.send_signal(signal.SIGTERM)
        daemon.read_notify("STOPPING=1")
        assert daemon.process.wait(timeout=60) == 0
    assert models["tag"]["ready"] is True, models
    assert models["seg"]["condition"] == "Stalled" and WEEK_MESSAGE.search(str(models["seg"]["message"])), models
    assert run_phases(daemon.state_dir / "demo", "seg") == ["Cancelled"], "only the seeded run"


def test_the_budget_queries_use_indexes_not_the_whole_history(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as store:
        executed: list[str] = []
        store.conn.set_trace_callback(executed.append)
        store.gpu_runs(time.time() - 7 * 86400)
        store.runs_of_commit("0" * 40)
        store.conn.set_trace_callback(None)
        plans = [
            str(row[3])
            for sql in executed
            if sql.lstrip().upper().startswith("SELECT")
            for row in store.conn.execute("EXPLAIN QUERY PLAN " + sql)
        ]
    scans = [p for p in plans if p.startswith(("SCAN", "SEARCH"))]
    assert len(scans) == 3 and all("USING INDEX" in p for p in scans), plans


def test_a_weekly_budget_counts_the_teams_runs_in_every_repository_its_rule_covers(
    demo_repo: GitRepo, tmp_path: Path
) -> None:
    daemon = tmp_path / "daemon"
    config = tmp_path / "gitopsd.toml"
    repositories = "".join(f'[[repositories]]\nname = "{n}"\nurl = "{demo_repo.path}"\n' for n in ("alpha", "beta"))
    config.write_text(f'state_dir = "{daemon}"\n{repositories}{POLICY}')
    loaded = load_config(config)
    alpha, beta = loaded.repositories
    (daemon / "beta").mkdir(parents=True)
    seed_past_run(daemon / "beta", gpus=4, hours=0.2, ended_ago_h=30)  # vision's 0.8 GPU-hours, in beta
    two_teams(demo_repo)
    rec = Reconciler(state_dir=loaded.state_dir_of(alpha), url=str(demo_repo.path), operator=loaded.operator_for(alpha))
    try:
        blocked = rec.reconcile(dry_run=True).blocked
    finally:
        rec.close()
    assert list(blocked) == ["seg"] and WEEK_MESSAGE.search(blocked["seg"])

    alone = POLICY.replace('team = "vision"\n', 'team = "vision"\nrepositories = ["alpha"]\n')
    config.write_text(f'state_dir = "{daemon}"\n{repositories}{alone}')
    loaded = load_config(config)
    ((peer, _, theirs),) = loaded.operator_for(alpha).budget_peers  # beta, through nlp's rule only
    assert peer == "beta" and [i for i, _ in theirs] == [1], "a rule for alpha alone: beta's runs are not vision's"
    rec = Reconciler(state_dir=loaded.state_dir_of(alpha), url=str(demo_repo.path), operator=loaded.operator_for(alpha))
    try:
        assert rec.reconcile(dry_run=True).blocked == {}
    finally:
        rec.close()
    assert [name for name, _, _ in loaded.operator_for(beta).budget_peers] == ["alpha"], "nlp covers both"
