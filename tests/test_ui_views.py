"""The dashboard's documents over real state: a demo repository reconciled with the local backend, a failed gate,
a fine-tuned version, alias moves and refusals, metrics files that grow, vanish or hold garbage."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gitopsd.cli.scaffold import init_demo
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.ui.sources import discover
from gitopsd.ui.views import (
    UiContext,
    clear_caches,
    cluster,
    heartbeat,
    model_page,
    overview,
    run_log,
    run_metrics,
    version_page,
)
from tests.conftest import GitRepo

MODEL = "models/blobs.yaml"
FORGE = "https://forge.example/org/models/commit/{commit}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[UiContext, GitRepo]:
    """One repository: blobs@1 with production -> 1 (then a refused move to 5), blobs-tuned@1 fine-tuned from it,
    and strict, whose gate fails."""
    root = tmp_path_factory.mktemp("ui")
    repo = GitRepo(root / "repo")
    init_demo(repo.path)
    repo.edit(MODEL, "spec:\n  train:", "spec:\n  aliases:\n    production: 1\n  train:")
    base = repo.read(MODEL)
    tuned = (
        base.replace("name: blobs", "name: blobs-tuned")
        .replace("  aliases:\n    production: 1\n", "  base: blobs@production\n")
        .replace("team: demo", "team: tuning")
    )
    strict = (
        base.replace("name: blobs", "name: strict")
        .replace("  aliases:\n    production: 1\n", "")
        .replace("accuracy >= 0.9", "accuracy >= 0.999")
    )
    repo.write("models/blobs-tuned.yaml", tuned)
    repo.write("models/strict.yaml", strict)
    repo.commit("Three models")
    state_dir = root / "state"
    rec = Reconciler(state_dir=state_dir, url=str(repo.path))
    try:
        rec.reconcile_until_settled(timeout_s=90)
        rec.reconcile_until_settled(timeout_s=90)  # the tuned model trains once its base is registered
        repo.edit(MODEL, "production: 1", "production: 5")
        repo.commit("Promote a version that does not exist")
        rec.reconcile_until_settled(timeout_s=90)
    finally:
        rec.close()
    ctx = UiContext(sources=discover(state_dir), commit_urls={"repo": FORGE}, started_at=123.0)
    return ctx, repo


def test_overview_lists_every_model_with_condition_version_team_and_facets(world: tuple[UiContext, GitRepo]) -> None:
    ctx, repo = world
    assert list(ctx.sources) == ["repo"], "named after the source URL's last component"
    doc = json.loads(json.dumps(overview(ctx), allow_nan=False))
    rows = {m["name"]: m for m in doc["models"]}
    assert set(rows) == {"blobs", "blobs-tuned", "strict"}
    blobs = rows["blobs"]
    assert blobs["condition"] in ("Ready", "Stalled") and blobs["latest_version"] == 1
    assert blobs["aliases"] == {"production": 1}
    assert blobs["labels"] == {"team": "demo"} and blobs["team"] == "demo" and blobs["backend"] == "local"
    assert blobs["run"]["phase"] == "Registered" and blobs["run"]["segment"] is None
    assert rows["strict"]["condition"] == "Stalled" and rows["strict"]["reason"] == "GateFailed"
    assert rows["strict"]["latest_version"] is None
    assert doc["facets"] == {"teams": ["demo", "tuning"], "backends": ["local"],
                             "conditions": ["Ready", "Reconciling", "Stalled"]}  # fmt: skip
    (source,) = doc["repositories"]
    head = repo.git("rev-parse", "HEAD")
    assert source["name"] == "repo" and source["applied_commit"] == head == source["fetched_commit"]
    assert source["commit_url"] == FORGE.replace("{commit}", head)
    assert source["error"] == "" and source["error_reason"] == ""


def test_model_page_runs_gates_versions_and_alias_history(world: tuple[UiContext, GitRepo]) -> None:
    ctx, _ = world
    page = model_page(ctx, "repo", "blobs")
    assert page is not None
    json.dumps(page, allow_nan=False)
    assert page["gates"] == [
        {"text": "accuracy >= 0.9", "metric": "accuracy", "op": ">=", "threshold": 0.9},
        {"text": "loss < 0.5", "metric": "loss", "op": "<", "threshold": 0.5},
    ]
    (run,) = page["runs"]
    assert run["phase"] == "Registered" and run["version"] == 1 and page["more"] is False
    assert {g["gate"]: g["passed"] for g in run["gates"]} == {"accuracy >= 0.9": True, "loss < 0.5": True}
    assert run["metrics"]["accuracy"] >= 0.9
    (version,) = page["versions"]
    assert version["number"] == 1 and version["run_id"] == run["id"] and version["base"] is None
    assert len(version["artifact_sha256"]) == 64
    kinds = [(e["kind"], e["alias"], e["version"]) for e in page["alias_history"]]
    # Refused while v1 was training (once for that commit), set once it registered, refused again at 5.
    assert kinds == [("refused", "production", 1), ("set", "production", 1), ("refused", "production", 5)]
    assert "blobs@5" in page["alias_history"][2]["message"]
    assert [e["at"] for e in page["alias_history"]] == sorted(e["at"] for e in page["alias_history"])


def test_a_failed_gate_shows_its_threshold_and_value(world: tuple[UiContext, GitRepo]) -> None:
    ctx, _ = world
    page = model_page(ctx, "repo", "strict")
    assert page is not None and page["condition"] == "Stalled" and page["reason"] == "GateFailed"
    (run,) = page["runs"]
    assert run["reason"] == "GateFailed" and "0.999" in run["message"]
    failed = [g for g in run["gates"] if not g["passed"]]
    assert failed == [{"gate": "accuracy >= 0.999", "passed": False, "value": run["metrics"]["accuracy"],
                       "metric": "accuracy", "op": ">=", "threshold": 0.999}]  # fmt: skip
    assert page["versions"] == []


def test_fine_tuned_version_graph_shows_its_base_chain(world: tuple[UiContext, GitRepo]) -> None:
    ctx, _ = world
    page = version_page(ctx, "repo", "blobs-tuned", 1)
    assert page is not None
    json.dumps(page, allow_nan=False)
    assert page["model"] == "blobs-tuned" and page["number"] == 1
    assert page["lineage"]["base"]["label"] == "blobs@1"
    nodes = {n["id"]: n for n in page["graph"]["nodes"]}
    assert nodes["version:blobs-tuned@1"]["url"] is None
    assert nodes["version:blobs@1"]["url"] == "/ui/versions/repo/blobs/1"
    edges = {(e["from"], e["label"]) for e in page["graph"]["edges"]}
    assert ("version:blobs@1", "fine-tuned from") in edges
    commits = [n for n in page["graph"]["nodes"] if n["kind"] == "commit"]
    assert commits and all(n["url"] and n["url"].startswith("https://forge.example/") for n in commits)
    kinds = {n["kind"] for n in page["graph"]["nodes"]}
    assert kinds == {"commit", "spec", "run", "job", "artifact", "version"}
    runs = [n for n in page["graph"]["nodes"] if n["kind"] == "run"]
    assert runs and all(n["detail"]["environment"].startswith("sha256:") for n in runs), "the training's packages"
    tuned = model_page(ctx, "repo", "blobs-tuned")
    assert tuned is not None and tuned["versions"][0]["base"] == {"model": "blobs", "version": 1}


def test_metrics_curves_downsampling_and_since(world: tuple[UiContext, GitRepo]) -> None:
    ctx, _ = world
    page = model_page(ctx, "repo", "blobs")
    assert page is not None
    run_id = page["runs"][0]["id"]
    full = run_metrics(ctx, "repo", run_id)
    assert full is not None and full["x"] == "epoch" and full["live"] is False
    assert set(full["series"]) == {"loss", "accuracy"}
    epochs = len(full["series"]["loss"])
    assert epochs == full["total_points"] and epochs > 10 and full["downsampled"] is False
    xs = [x for x, _ in full["series"]["loss"]]
    assert xs == sorted(xs)
    thin = run_metrics(ctx, "repo", run_id, points=10)
    assert thin is not None and thin["downsampled"] is True and len(thin["series"]["loss"]) <= 10
    losses = [y for _, y in full["series"]["loss"]]
    assert min(y for _, y in thin["series"]["loss"]) == min(losses)
    after = run_metrics(ctx, "repo", run_id, since=full["offset"])
    assert after is not None and after["series"] == {"loss": [], "accuracy": []} and after["total_points"] == 0


def test_a_growing_metrics_file_and_a_vanished_one(world: tuple[UiContext, GitRepo]) -> None:
    ctx, _ = world
    state_dir = ctx.sources["repo"]
    page = model_page(ctx, "repo", "strict")
    assert page is not None
    run_id = page["runs"][0]["id"]
    metrics = state_dir / "runs" / run_id / "out" / "metrics.jsonl"
    first = run_metrics(ctx, "repo", run_id)
    assert first is not None
    with metrics.open("a") as handle:
        handle.write(json.dumps({"epoch": 1000, "loss": 0.01, "gpu_util": 50.0}) + "\n")
        handle.write("garbage\n" + "[" * 10_000 + "\n")
    grown = run_metrics(ctx, "repo", run_id, since=first["offset"])
    assert grown is not None and grown["series"]["loss"] == [[1000.0, 0.01]]
    assert grown["series"]["gpu_util"] == [[1000.0, 50.0]] and grown["total_points"] == 1
    assert grown["offset"] == metrics.stat().st_size
    metrics.unlink()
    gone = run_metrics(ctx, "repo", run_id)
    assert gone is not None and gone["series"] == {} and gone["offset"] == 0


def test_log_tail(world: tuple[UiContext, GitRepo]) -> None:
    ctx, _ = world
    page = model_page(ctx, "repo", "blobs")
    assert page is not None
    log = run_log(ctx, "repo", page["runs"][0]["id"])
    assert log is not None and "epoch" in log["text"] and log["truncated"] is False
    short = run_log(ctx, "repo", page["runs"][0]["id"], nbytes=100)
    assert short is not None and short["truncated"] is True and len(short["text"]) <= 100


def test_unknown_things_are_none(world: tuple[UiContext, GitRepo]) -> None:
    ctx, _ = world
    assert model_page(ctx, "nope", "blobs") is None
    assert model_page(ctx, "repo", "nope") is None
    assert run_metrics(ctx, "repo", "nope") is None
    assert run_log(ctx, "nope", "x") is None
    assert version_page(ctx, "repo", "blobs", 99) is None
    assert version_page(ctx, "repo", "nope", 1) is None


def test_cluster_and_heartbeat(world: tuple[UiContext, GitRepo]) -> None:
    ctx, _ = world
    doc = cluster(ctx)
    json.dumps(doc, allow_nan=False)
    assert (doc["gpus"] is None) == (doc["gpus_error"] is not None)
    (local,) = doc["backends"]
    assert (local["name"], local["available"]) == ("local", True), "it just ran the world's trainings"
    assert local["message"].startswith("a run moved ") and local["message"].endswith(" ago")
    assert doc["queue"] == []
    named = UiContext(sources=ctx.sources, backends=[{"name": "gpu", "type": "nvidia"}])
    assert [b["name"] for b in cluster(named)["backends"]] == ["gpu"]
    assert heartbeat(ctx) == {"started_at": 123.0}


def test_queue_and_unavailable_backend(tmp_path: Path, world: tuple[UiContext, GitRepo]) -> None:
    ctx, _ = world
    state_dir = tmp_path / "copy"
    source = sqlite3.connect(ctx.sources["repo"] / "state.db")
    target = sqlite3.connect(state_dir.with_suffix(".db"))
    source.backup(target)
    source.close()
    state_dir.mkdir()
    target.execute("UPDATE runs SET phase = 'Queued', message = 'Priority', created_at = 5 WHERE model = 'strict'")
    target.execute("UPDATE conditions SET reason = 'BackendUnavailable', message = 'backend local is unavailable: "
                   "https://u:pw@slurm.example/ down' WHERE model = 'blobs'")  # fmt: skip
    target.commit()
    target.close()
    state_dir.with_suffix(".db").rename(state_dir / "state.db")
    doc = cluster(UiContext(sources={"copy": state_dir}))
    (queued,) = doc["queue"]
    assert (queued["model"], queued["phase"], queued["message"], queued["since"]) == ("strict", "Queued", "Priority", 5)
    (local,) = doc["backends"]
    assert local["available"] is False and "pw" not in local["message"] and "***@slurm.example" in local["message"]


def test_a_backend_not_heard_from_for_a_while_is_neither_up_nor_down(
    tmp_path: Path, world: tuple[UiContext, GitRepo]
) -> None:
    ctx, _ = world
    state_dir = tmp_path / "old"
    state_dir.mkdir()
    source = sqlite3.connect(ctx.sources["repo"] / "state.db")
    target = sqlite3.connect(state_dir / "state.db")
    source.backup(target)
    source.close()
    target.execute("UPDATE runs SET updated_at = 1000")
    target.commit()
    target.close()
    (local,) = cluster(UiContext(sources={"old": state_dir}))["backends"]
    assert local["available"] is None
    assert local["message"] == "last answered at 1970-01-01 00:16:40 UTC (no run since)"


def test_an_unreadable_state_db_is_said_not_raised(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state.db").write_bytes(b"not a database" * 100)
    doc = overview(UiContext(sources={"broken": broken}))
    (repo,) = doc["repositories"]
    assert repo["error_reason"] == "StateUnreadable" and "state.db" in repo["error"]
    assert doc["models"] == []


def test_plateau_and_divergence_verdicts_with_their_step(tmp_path: Path, world: tuple[UiContext, GitRepo]) -> None:
    ctx, _ = world
    state_dir = tmp_path / "v"
    source = sqlite3.connect(ctx.sources["repo"] / "state.db")
    state_dir.mkdir()
    target = sqlite3.connect(state_dir / "state.db")
    source.backup(target)
    source.close()
    runs = dict(target.execute("SELECT model, id FROM runs").fetchall())
    for model in ("blobs", "strict"):
        run_dir = state_dir / "runs" / runs[model]
        (run_dir / "out").mkdir(parents=True)
        target.execute("UPDATE runs SET run_dir = ? WHERE id = ?", (str(run_dir), runs[model]))
    lines = [{"step": 10 * i, "loss": v} for i, v in enumerate([3.0, 2.0, 1.0, 1.5, 1.2, 1.1])]
    (state_dir / "runs" / runs["blobs"] / "out" / "metrics.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines)
    )
    bad = [{"step": 5, "loss": 1.0}, {"note": "x"}, {"step": 6, "gpu_util": 3.0}, {"step": 7, "loss": 1e9}]
    (state_dir / "runs" / runs["strict"] / "out" / "metrics.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in bad)
    )
    target.execute("UPDATE runs SET stop_reason = 'Plateaued', reason = 'Plateaued' WHERE model = 'blobs'")
    target.execute("INSERT INTO events (at, model, run_id, kind, reason, message) VALUES (1, 'blobs', ?, "
                   "'EarlyStop', 'Plateaued', 'loss has not improved on 1.0 for 3 reports (min_delta 0.0)')",
                   (runs["blobs"],))  # fmt: skip
    target.execute("UPDATE runs SET reason = 'Diverged', message = 'loss = 1000000000.0 exceeds 100.0 at metrics "
                   "line 3' WHERE model = 'strict'")  # fmt: skip
    target.commit()
    target.close()
    (state_dir / "registry.db").write_bytes((ctx.sources["repo"] / "registry.db").read_bytes())
    clear_caches()
    copy = UiContext(sources={"v": state_dir})
    plateau = model_page(copy, "v", "blobs")
    diverged = model_page(copy, "v", "strict")
    assert plateau is not None and diverged is not None
    assert plateau["runs"][0]["verdict"] == {
        "kind": "plateau", "reason": "Plateaued", "step": 50.0,
        "message": "loss has not improved on 1.0 for 3 reports (min_delta 0.0)",
    }  # fmt: skip
    verdict = diverged["runs"][0]["verdict"]
    assert verdict["kind"] == "divergence" and verdict["step"] == 7.0, "the third line with numbers"
