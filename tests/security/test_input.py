"""Input that used to leave a model stuck for ever: each case is a real repository through real passes, and
ends in one clear, bounded outcome instead of an exception or a retry loop every pass.

- data the daemon may not read (permission denied) stalls the model once, with the data named; no retry loop;
- a Git submodule as `train.workdir` is a spec error at validate, plan and reconcile, never an AttributeError;
- a metric that is not a finite number (`accuracy = Infinity`) fails its gate instead of the registry;
- a failing command is retried within `retries` with a backoff between attempts, and `status` says when;
- `retries` and `runs.keep` are bounded in the schema, with the field named;
- a spec file named with bytes that are not UTF-8 rejects its commit, naming the file with the bytes escaped,
  and the last good commit stays in force and listed by `status`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gitopsd.errors import RETRY_BASE_S
from gitopsd.reconcile.reconciler import Reconciler
from tests.conftest import GitRepo, gitopsd
from tests.security.conftest import Canary

MODEL = "models/blobs.yaml"


def _runs(state_dir: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(state_dir / "state.db")
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY rowid")]
    conn.close()
    return rows


def _blobs(state_dir: Path) -> dict[str, Any]:
    doc = json.loads(gitopsd(state_dir, "status", "--json").stdout)
    return next(m for m in doc["models"] if m["name"] == "blobs")


def _outputs(state_dir: Path, repo: GitRepo) -> list[str]:
    """validate, plan and reconcile on the repository, each of which must refuse it with exit code 1."""
    validate = gitopsd(state_dir, "validate", str(repo.path), check=False)
    plan = gitopsd(state_dir, "plan", "--repo", str(repo.path), check=False)
    reconcile = gitopsd(state_dir, "reconcile", "--repo", str(repo.path), check=False)
    assert (validate.returncode, plan.returncode, reconcile.returncode) == (1, 1, 1), (validate, plan, reconcile)
    return [validate.stderr, plan.stderr, reconcile.stderr]


# ---- data the daemon cannot read -------------------------------------------------------------------------------
def _without_root_privileges() -> list[str]:
    """A command prefix under which file permissions hold, also for root (who reads any file otherwise)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a file root cannot read cannot be made")
    drop = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}"]


def test_data_the_daemon_may_not_read_stalls_the_model_once_naming_the_data(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path, canary: Canary
) -> None:
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    locked = datasets / "blobs.csv"
    shutil.copy(demo_repo.path / "data" / "blobs.csv", locked)
    locked.chmod(0)
    config = tmp_path / "operator.toml"
    config.write_text(f'data_roots = ["{datasets}"]\n')
    demo_repo.edit(MODEL, "    - uri: data/blobs.csv\n", f"    - uri: file://{locked}\n")
    demo_repo.edit("gitops.yaml", "retries: 0", "retries: 3")
    demo_repo.commit("Train on data the daemon may not read")
    env = {**os.environ, "GITOPSD_STATE_DIR": str(state_dir)}
    command = [*_without_root_privileges(), sys.executable, "-m", "gitopsd", "--config", str(config)]
    outputs = []
    for _ in range(3):  # every pass after the first finds nothing to do
        done = subprocess.run([*command, "reconcile", "--repo", str(demo_repo.path)], env=env, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        outputs += [done.stdout, done.stderr]
        assert "Traceback" not in done.stderr
    runs = _runs(state_dir)
    assert [(r["phase"], r["reason"]) for r in runs] == [("Failed", "SubmitFailed")], "refused once, not retried"
    blobs = _blobs(state_dir)
    assert (blobs["condition"], blobs["reason"]) == ("Stalled", "SubmitFailed")
    assert f"data file://{locked} cannot be read by gitopsd: Permission denied" in blobs["message"]
    assert "make it readable by the daemon's user" in blobs["message"]
    canary.assert_not_in(*outputs, json.dumps(blobs))


# ---- a submodule as the workdir -------------------------------------------------------------------------------
@pytest.fixture
def with_submodule(demo_repo: GitRepo, tmp_path: Path) -> GitRepo:
    """The demo repository with another repository added as the submodule `vendored` (checked out)."""
    lib = GitRepo(tmp_path / "lib")
    lib.path.mkdir()
    lib.git("init", "-q")
    lib.write("src/train.py", "print('trained elsewhere')\n")
    lib.commit("A library")
    demo_repo.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib.path), "vendored")
    return demo_repo


@pytest.mark.parametrize("workdir", ["vendored", "vendored/src"])
def test_a_submodule_as_workdir_is_a_spec_error_everywhere(
    with_submodule: GitRepo, state_dir: Path, workdir: str
) -> None:
    with_submodule.edit(MODEL, "    workdir: src\n", f"    workdir: {workdir}\n")
    with_submodule.commit("Train in a submodule")
    for output in _outputs(state_dir, with_submodule):
        assert "spec.train.workdir: 'vendored' is a Git submodule, which gitopsd does not check out" in output
        assert "AttributeError" not in output and "Traceback" not in output
    assert _runs(state_dir) == []

    # A clone without --recurse-submodules has an empty directory there: still a submodule.
    shutil.rmtree(with_submodule.path / "vendored")
    (with_submodule.path / "vendored").mkdir()
    done = gitopsd(state_dir, "validate", str(with_submodule.path), check=False)
    assert done.returncode == 1 and "'vendored' is a Git submodule" in done.stderr


# ---- metrics that are not finite numbers ----------------------------------------------------------------------
def test_an_infinite_metric_fails_its_gate_and_nothing_is_registered(demo_repo: GitRepo, state_dir: Path) -> None:
    demo_repo.write(
        "src/infinite.py",
        "import os\n"
        "out = os.environ['GITOPSD_OUTPUT_DIR']\n"
        "open(os.path.join(out, 'model.json'), 'w').write('{}')\n"
        "open(os.environ['GITOPSD_METRICS_FILE'], 'w').write('{\"accuracy\": Infinity, \"loss\": 0.1}\\n')\n",
    )
    demo_repo.edit(MODEL, "command: python3 train.py --epochs 40 --lr 0.5", "command: python3 infinite.py")
    demo_repo.commit("Perfect accuracy, of a sort")
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    try:
        result = rec.reconcile_until_settled(timeout_s=60)
    finally:
        rec.close()
    assert result.active == 0
    assert [(r["phase"], r["reason"]) for r in _runs(state_dir)] == [("Failed", "GateFailed")]
    blobs = _blobs(state_dir)
    assert blobs["reason"] == "GateFailed" and blobs["latest_version"] is None
    assert "accuracy = inf is not a finite number (needs >= 0.9)" in blobs["message"]


# ---- retries -----------------------------------------------------------------------------------------------------
def _pass_until(rec: Reconciler, state_dir: Path, failed: int) -> None:
    """Reconcile until `failed` runs have ended Failed and none is in flight (a minute at most)."""
    deadline = time.monotonic() + 60
    while True:
        result = rec.reconcile()
        if not result.active and [r["phase"] for r in _runs(state_dir)].count("Failed") >= failed:
            return
        assert time.monotonic() < deadline, _runs(state_dir)
        time.sleep(0.2)


def test_a_failing_command_is_retried_with_a_backoff_and_status_says_when(demo_repo: GitRepo, state_dir: Path) -> None:
    demo_repo.edit(MODEL, "command: python3 train.py --epochs 40 --lr 0.5", "command: exit 3")
    demo_repo.edit("gitops.yaml", "retries: 0", "retries: 100")
    demo_repo.commit("A command that always fails, retried a hundred times")
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path))
    try:
        _pass_until(rec, state_dir, failed=2)
    finally:
        rec.close()
    first, second = _runs(state_dir)
    assert second["created_at"] >= first["ended_at"] + RETRY_BASE_S / 2, "a retry waits out its backoff"
    assert second["attempt"] == 2
    blobs = _blobs(state_dir)  # the pass that saw attempt 2 fail planned the wait for attempt 3
    assert (blobs["condition"], blobs["reason"]) == ("Reconciling", "TrainingFailed")
    assert "attempt 2 of 101 failed, retrying at " in blobs["message"]
    assert "exit code 3" in blobs["message"]


@pytest.mark.parametrize(
    ("file", "old", "new", "field", "most"),
    [
        ("gitops.yaml", "retries: 0", "retries: 1000000000", "defaults.retries", "100"),
        (MODEL, "    workdir: src\n", "    workdir: src\n    retries: 101\n", "spec.train.retries", "100"),
        ("gitops.yaml", "keep: 3", "keep: 10001", "runs.keep", "10000"),
        ("gitops.yaml", "keep: 3", "keep: 1000000000000000000000000000000", "runs.keep", "2**53"),
        (MODEL, "spec:\n", "spec:\n  base: other@99999999999999999999\n", "spec.base", "1000000000"),
        (MODEL, "spec:\n", "spec:\n  base: other@1000000001\n", "spec.base", "1000000000"),
    ],
)
def test_absurd_retries_and_runs_keep_are_spec_errors_naming_the_field(
    demo_repo: GitRepo, state_dir: Path, file: str, old: str, new: str, field: str, most: str
) -> None:
    demo_repo.edit(file, old, new)
    demo_repo.commit("Absurd numbers")
    for output in _outputs(state_dir, demo_repo):
        assert f"{file}:" in output and f"{field}:" in output and most in output
        assert "OverflowError" not in output
    assert _runs(state_dir) == []


# ---- spec file names that are not UTF-8 ---------------------------------------------------------------------------
def test_a_spec_file_named_with_bytes_that_are_not_utf8_is_refused_and_the_last_good_commit_stays(
    demo_repo: GitRepo, state_dir: Path
) -> None:
    gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait")
    good = demo_repo.git("rev-parse", "HEAD")
    other = demo_repo.read(MODEL).replace("name: blobs", "name: other")
    (demo_repo.path / os.fsdecode(b"models/caf\xe9.yaml")).write_text(other)  # Git takes any bytes in a name
    demo_repo.commit("A model file named in Latin-1")
    outputs = _outputs(state_dir, demo_repo)
    for output in outputs:
        assert "models/caf\\xe9.yaml: the file's name is not valid UTF-8" in output, output
        assert "UnicodeEncodeError" not in output and "Traceback" not in output
    doc = json.loads(gitopsd(state_dir, "status", "--json").stdout)
    assert doc["repository"]["applied_commit"] == good
    assert doc["repository"]["error_reason"] == "SpecInvalid"
    assert "models/caf\\xe9.yaml" in doc["repository"]["error"]
    assert [(m["name"], m["latest_version"]) for m in doc["models"]] == [("blobs", 1)]
    shown = gitopsd(state_dir, "status").stdout
    assert "models/caf\\xe9.yaml" in shown and "blobs" in shown
