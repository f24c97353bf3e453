"""End to end: a real Git repository, the real CLI and the local backend, as a user meets them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.spec.operator import Operator, OperatorBackend
from tests.conftest import GitRepo, gitopsd

MODEL = "models/blobs.yaml"


def status(state_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(gitopsd(state_dir, "status", "--json").stdout)
    return doc


def model_status(state_dir: Path, name: str = "blobs") -> dict[str, Any]:
    return next(m for m in status(state_dir)["models"] if m["name"] == name)


def versions(state_dir: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(gitopsd(state_dir, "registry", "list", "--json").stdout)
    return out


def runs(state_dir: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(state_dir / "state.db")
    rows = conn.execute("SELECT id, phase, reason FROM runs ORDER BY rowid").fetchall()
    conn.close()
    return [(r[0], r[1], r[2]) for r in rows]


def test_demo_reaches_version_1_and_a_second_pass_does_nothing(demo_repo: GitRepo, state_dir: Path) -> None:
    gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait")
    blobs = model_status(state_dir)
    assert blobs["ready"] is True, blobs
    assert blobs["latest_version"] == 1
    assert blobs["run"]["phase"] == "Registered"
    assert blobs["run"]["backend"] == "local"
    assert blobs["metrics"]["accuracy"] >= 0.9

    again = gitopsd(state_dir, "reconcile")
    assert "0 action(s)" in again.stdout
    assert len(runs(state_dir)) == 1
    assert [v["label"] for v in versions(state_dir)] == ["blobs@1"]


def test_code_change_retrains_and_label_change_does_not(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    demo_repo.edit(MODEL, "description: Separates", "description: Now better documented; separates")
    demo_repo.edit(MODEL, "team: demo", "team: research")
    demo_repo.commit("Only words change")
    result = reconciler.reconcile_until_settled(timeout_s=60)
    assert result.actions == ()
    assert [v["label"] for v in versions(state_dir)] == ["blobs@1"]

    demo_repo.edit("src/train.py", "random.shuffle(rows)", "random.shuffle(rows)  # same data, new code")
    commit = demo_repo.commit("Touch the training code")
    reconciler.reconcile_until_settled(timeout_s=60)
    labels = versions(state_dir)
    assert [v["label"] for v in labels] == ["blobs@1", "blobs@2"]
    assert labels[1]["lineage"]["commit"] == commit
    assert labels[0]["run_key"] != labels[1]["run_key"]
    assert model_status(state_dir)["latest_version"] == 2


def test_failing_gate_registers_nothing_and_says_why(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    demo_repo.edit(MODEL, "accuracy >= 0.9", "accuracy >= 0.999")
    demo_repo.commit("Demand too much")
    reconciler.reconcile_until_settled(timeout_s=60)
    blobs = model_status(state_dir)
    assert blobs["ready"] is False
    assert blobs["reason"] == "GateFailed"
    assert "accuracy" in blobs["message"] and "0.999" in blobs["message"] and "0.98" in blobs["message"]
    assert versions(state_dir) == []
    assert reconciler.reconcile().actions == (), "a failed key is not retrained until the spec changes"


@pytest.mark.parametrize(
    ("old", "new", "field", "words"),
    [
        ("  train:\n", "  train:\n    comand: oops\n", "spec.train.comand", "command"),
        ("retries: 0", "retries: lots", "defaults.retries", "retries"),
        ('      SEED: "7"', "      SEED: [unclosed", "", "YAML"),
    ],
    ids=["unknown-key", "wrong-type", "invalid-yaml"],
)
def test_bad_commit_is_rejected_whole(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path, old: str, new: str, field: str, words: str
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    good = status(state_dir)["repository"]["applied_commit"]
    target = "gitops.yaml" if "retries" in old else MODEL
    demo_repo.edit(target, old, new)
    demo_repo.edit("src/train.py", "random.shuffle(rows)", "random.shuffle(rows)  # would retrain")
    demo_repo.commit("A bad commit that also changes code")

    result = reconciler.reconcile_until_settled(timeout_s=60)
    assert result.actions == (), "nothing of a bad commit is applied"
    doc = status(state_dir)
    assert doc["repository"]["applied_commit"] == good
    assert doc["repository"]["error_reason"] == "SpecInvalid"
    assert target in doc["repository"]["error"] and field in doc["repository"]["error"]
    assert model_status(state_dir)["ready"] is True
    assert len(versions(state_dir)) == 1

    checked = gitopsd(state_dir, "validate", str(demo_repo.path), check=False)
    assert checked.returncode == 1
    line = next(line for line in checked.stderr.splitlines() if line.startswith(target))
    assert line.split(":")[1].isdigit(), f"validate names the line: {line}"
    assert words.lower() in checked.stderr.lower()


def test_reconcile_wait_fails_when_a_training_fails_past_its_retries(demo_repo: GitRepo, state_dir: Path) -> None:
    """`gitopsd reconcile --wait && ...` in a CI job: a training that failed for good must fail the job."""
    demo_repo.edit(MODEL, "command: python3 train.py", "command: python3 -c 'raise SystemExit(3)' && python3 train.py")
    demo_repo.commit("A training that fails")
    done = gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait", check=False)
    assert done.returncode == 1
    said = done.stderr.splitlines()
    assert "1 model(s) stalled, which waiting cannot mend:" in said
    assert any(line.startswith("  blobs: TrainingFailed: ") and "exit code 3" in line for line in said), said


def test_validate_of_a_folder_that_is_not_a_repositorys_root_says_so(demo_repo: GitRepo, state_dir: Path) -> None:
    """Run from models/ (or any folder without the layout), validate would find nothing to refuse: it says where
    to run instead of passing."""
    for folder in (demo_repo.path / "models", demo_repo.path / "src"):
        done = gitopsd(state_dir, "validate", str(folder), check=False)
        assert done.returncode == 1
        assert done.stderr.strip() == (f"error: {folder} has neither gitops.yaml nor models/: give the root of the "
                                       "repository's working tree")  # fmt: skip


def test_versions_are_immutable_and_tampering_is_detected(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    sqlite = shutil.which("sqlite3")
    statements = ["UPDATE versions SET run_key = 'x'", "DELETE FROM versions"]
    for sql in statements:
        if sqlite:
            done = subprocess.run([sqlite, str(state_dir / "registry.db"), sql], capture_output=True, text=True)
            assert done.returncode != 0 and "immutable" in done.stderr
        conn = sqlite3.connect(state_dir / "registry.db")
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            conn.execute(sql)
        conn.close()
    assert "1 version(s) verified" in gitopsd(state_dir, "registry", "verify").stdout

    sha = versions(state_dir)[0]["artifact"]["sha256"]
    obj = state_dir / "artifacts" / "sha256" / sha[:2] / sha[2:]
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes().replace(b"1", b"2", 1))
    tampered = gitopsd(state_dir, "registry", "verify", check=False)
    assert tampered.returncode == 1
    assert "blobs@1" in tampered.stderr


def _slow_training(repo: GitRepo, starts: Path, seconds: float, monkeypatch: pytest.MonkeyPatch) -> Operator:
    """The training appends to `starts`: outside its run, in a directory the operator lets trainings write (for
    the command line through $GITOPSD_CONFIG, for a Reconciler through the Operator returned)."""
    starts.parent.mkdir(parents=True, exist_ok=True)
    config = starts.parent.parent / "operator.toml"
    config.write_text(f'[backends.local]\nsettings = {{ max_parallel = 2, confine_write = ["{starts.parent}"] }}\n')
    monkeypatch.setenv("GITOPSD_CONFIG", str(config))
    repo.edit(
        MODEL,
        "command: python3 train.py --epochs 40 --lr 0.5",
        f'command: echo started >> "$STARTS" && sleep {seconds} && python3 train.py --epochs 40 --lr 0.5',
    )
    repo.edit(MODEL, '      SEED: "7"', f'      SEED: "7"\n      STARTS: "{starts}"')
    repo.commit("Slow training")
    settings = {"max_parallel": 2, "confine_write": [str(starts.parent)]}
    return Operator(backends={"local": OperatorBackend(settings=settings)})


def _wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_kill_9_while_training_adopts_the_run_and_never_trains_twice(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = tmp_path / "shared" / "starts.txt"
    _slow_training(demo_repo, starts, 3, monkeypatch)
    env = {**os.environ, "GITOPSD_STATE_DIR": str(state_dir)}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "gitopsd", "reconcile", "--repo", str(demo_repo.path), "--wait"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(starts.exists)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    assert [r[1] for r in runs(state_dir)] in (["Queued"], ["Running"])

    gitopsd(state_dir, "reconcile", "--wait")
    assert starts.read_text().count("started") == 1
    assert len(runs(state_dir)) == 1
    assert model_status(state_dir)["latest_version"] == 1


def test_crash_between_run_row_and_submit_resubmits_once(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = tmp_path / "shared" / "starts.txt"
    operator = _slow_training(demo_repo, starts, 0, monkeypatch)
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=operator)
    launcher = rec.applier.launcher

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("simulated crash right after the run row was committed")

    launcher.launch = crash  # type: ignore[method-assign,assignment]
    with pytest.raises(KeyboardInterrupt):
        rec.reconcile()
    assert [r[1] for r in runs(state_dir)] == ["Submitting"]
    rec.close()

    gitopsd(state_dir, "reconcile", "--wait")
    assert starts.read_text().count("started") == 1
    assert [r[1] for r in runs(state_dir)] == ["Registered"]


def test_removed_model_has_its_run_cancelled_and_keeps_its_versions(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = _slow_training(demo_repo, tmp_path / "shared" / "starts.txt", 30, monkeypatch)
    demo_repo.git("revert", "--no-edit", "HEAD")  # the plain demo first: blobs@1
    reconciler = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=operator)
    try:
        _removed_model_case(demo_repo, reconciler, state_dir)
    finally:
        reconciler.close()


def _removed_model_case(demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    demo_repo.git("revert", "--no-edit", "HEAD")  # the slow training again
    reconciler.reconcile()
    (demo_repo.path / MODEL).unlink()
    demo_repo.commit("Retire blobs")
    reconciler.reconcile()
    assert [r[1] for r in runs(state_dir)] == ["Registered", "Cancelled"]
    assert status(state_dir)["models"] == []
    assert [v["label"] for v in versions(state_dir)] == ["blobs@1"]


def test_suspended_model_trains_nothing(demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path) -> None:
    demo_repo.edit(MODEL, "spec:\n  train:", "spec:\n  suspend: true\n  train:")
    demo_repo.commit("Pause")
    reconciler.reconcile()
    assert runs(state_dir) == []
    blobs = model_status(state_dir)
    assert blobs["reason"] == "Suspended"


def test_divergence_fails_the_run_early(demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path) -> None:
    demo_repo.write(
        "src/blowup.py",
        "import os\nopen(os.environ['GITOPSD_METRICS_FILE'], 'w').write('{\"loss\": NaN}\\n')\n",
    )
    demo_repo.edit(MODEL, "command: python3 train.py --epochs 40 --lr 0.5", "command: python3 blowup.py && sleep 30")
    demo_repo.commit("Blow up")
    started = time.monotonic()
    reconciler.reconcile_until_settled(timeout_s=60)
    assert time.monotonic() - started < 20
    blobs = model_status(state_dir)
    assert blobs["reason"] == "Diverged"
    assert "loss" in blobs["message"]
    assert versions(state_dir) == []


def test_lineage_names_code_data_job_host_and_python_packages(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    version = json.loads(gitopsd(state_dir, "registry", "show", "blobs@1").stdout)
    lineage = version["lineage"]
    assert lineage["commit"] == demo_repo.git("rev-parse", "HEAD")
    assert lineage["code_tree"] == demo_repo.git("rev-parse", "HEAD:src")
    assert lineage["data"][0]["uri"] == "data/blobs.csv"
    assert lineage["job"]["host"] and lineage["job_id"]
    assert lineage["exit_code"] == 0
    assert lineage["python"].startswith("3.")
    assert lineage["packages"], "the packages of the training's Python are recorded"
    assert lineage["environment"].startswith("sha256:"), "by the digest of their environment, stored once"
    assert "packages" not in lineage["job"]
    assert version["artifact"]["size"] > 0
    shown = gitopsd(state_dir, "lineage", "blobs@1").stdout
    assert lineage["run_key"] in shown and "accuracy >= 0.9" in shown


def test_an_unavailable_backend_stalls_only_its_models(demo_repo: GitRepo, state_dir: Path) -> None:
    operator = Operator(backends={"local": OperatorBackend(), "gpu": OperatorBackend(type="no-such-plugin")})
    reconciler = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=operator)
    gpu_spec = (
        demo_repo.read(MODEL)
        .replace("name: blobs", "name: blobs-gpu")
        .replace("  train:\n", "  train:\n    backend: gpu\n")
    )
    demo_repo.write("models/blobs-gpu.yaml", gpu_spec)
    demo_repo.commit("A model on a backend this host does not have")
    try:
        reconciler.reconcile_until_settled(timeout_s=60)
    finally:
        reconciler.close()
    assert model_status(state_dir)["ready"] is True
    gpu = model_status(state_dir, "blobs-gpu")
    assert gpu["reason"] == "BackendUnavailable"
    assert "no-such-plugin" in gpu["message"] and "not installed" in gpu["message"]
    assert gpu["run"] is None


def test_plan_reviews_a_branch_with_its_gpu_cost_and_fails_on_a_bad_one(demo_repo: GitRepo, state_dir: Path) -> None:
    gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait")
    demo_repo.git("checkout", "-q", "-b", "bigger")
    demo_repo.edit("gitops.yaml", "    cpus: 1\n", "    cpus: 1\n    gpus: 2\n")
    demo_repo.commit("Train on two GPUs")
    shown = gitopsd(state_dir, "plan", "--branch", "bigger").stdout
    assert "+ train blobs (attempt 1) on local, 2 GPU(s)" in shown
    assert "cost: 2 GPU(s) for the new trainings, at most 0.3 GPU-hours" in shown
    assert len(runs(state_dir)) == 1, "plan changes nothing"

    demo_repo.edit(MODEL, "  train:\n", "  train:\n    gpu: 1\n")
    demo_repo.commit("A typo")
    refused = gitopsd(state_dir, "plan", "--branch", "bigger", check=False)
    assert refused.returncode == 1 and "spec.train.gpu" in refused.stderr
