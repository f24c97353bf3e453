"""A training's outputs are hostile input: real trainings on the local backend try to make gitopsd read, store
or register what they should not, or hang or exhaust the pass.

The trainings here run unconfined (the operator's `confine = false`), because the daemon's own defenses must hold
without Landlock: on a host without it, or for a backend whose trainings run elsewhere but leave their outputs
on a shared file system. `tests/security/test_confinement.py` covers what confinement adds.

Every case runs a hostile model next to the demo's healthy `blobs`: the attack must end its own run Failed with
a reason that names the file (or be harmless), leave no canary byte in the store, and not keep `blobs` from
being registered.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from gitopsd.backends.local.backend import LocalBackend
from gitopsd.model import JobRef
from gitopsd.reconcile.outputs import OutputLimits
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.spec.operator import Operator, OperatorBackend
from tests.conftest import GitRepo, gitopsd, on_a_terminal
from tests.security.conftest import Canary

MODEL = "models/blobs.yaml"
HOSTILE = "hostile"
REAL_COMMAND = "command: python3 train.py --epochs 40 --lr 0.5"

PRELUDE = """\
import json, os, sys
out = os.environ["GITOPSD_OUTPUT_DIR"]
metrics = os.environ["GITOPSD_METRICS_FILE"]
run_dir = os.path.dirname(out)

def good_metrics():
    with open(metrics, "a") as handle:
        handle.write(json.dumps({"accuracy": 0.97, "loss": 0.1}) + "\\n")

def artifact(name="model.json", text='{"w": [1.0, 2.0]}'):
    with open(os.path.join(out, name), "w") as handle:
        handle.write(text)
"""


def add_hostile_model(repo: GitRepo, script: str, *, artifact: str = "model.json") -> None:
    """A second model, `hostile`, whose training runs `script` (after PRELUDE) instead of the demo's."""
    repo.write("src/hostile.py", PRELUDE + script)
    spec = repo.read(MODEL).replace("name: blobs", f"name: {HOSTILE}")
    spec = spec.replace(REAL_COMMAND, "command: python3 hostile.py")
    repo.write(f"models/{HOSTILE}.yaml", spec.replace("artifact: model.json", f"artifact: {artifact}"))
    repo.commit("A hostile training")


#: The operator runs local trainings unconfined, for the command line ($GITOPSD_CONFIG) and for a Reconciler.
UNCONFINED = Operator(backends={"local": OperatorBackend(type="local", settings={"confine": False})})


@pytest.fixture(autouse=True)
def unconfined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "operator.toml"
    config.write_text('[backends.local]\ntype = "local"\nsettings = { confine = false }\n')
    monkeypatch.setenv("GITOPSD_CONFIG", str(config))


def settle(repo: GitRepo, state_dir: Path, limits: OutputLimits | None = None) -> None:
    rec = Reconciler(state_dir=state_dir, url=str(repo.path), limits=limits, operator=UNCONFINED)
    try:
        result = rec.reconcile_until_settled(timeout_s=90)
        assert result.active == 0, "runs still in flight"
    finally:
        rec.close()


def model_status(state_dir: Path, name: str) -> dict[str, Any]:
    doc = json.loads(gitopsd(state_dir, "status", "--json").stdout)
    model: dict[str, Any] = next(m for m in doc["models"] if m["name"] == name)
    return model


def labels(state_dir: Path) -> list[str]:
    return [v["label"] for v in json.loads(gitopsd(state_dir, "registry", "list", "--json").stdout)]


def store_bytes(state_dir: Path) -> bytes:
    """Everything in the artifact store, objects and records."""
    root = state_dir / "artifacts"
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink())


def assert_refused(state_dir: Path, canary: Canary, *fragments: str) -> dict[str, Any]:
    """The hostile run Failed with OutputRefused naming the file; blobs registered; no canary byte stored."""
    hostile = model_status(state_dir, HOSTILE)
    assert hostile["run"]["phase"] == "Failed", hostile
    assert hostile["reason"] == "OutputRefused", hostile
    for fragment in fragments:
        assert fragment in hostile["message"], hostile["message"]
    assert labels(state_dir) == ["blobs@1"]
    assert model_status(state_dir, "blobs")["ready"] is True
    assert canary.file_secret.encode() not in store_bytes(state_dir)
    canary.assert_not_in(json.dumps(hostile), gitopsd(state_dir, "status").stdout)
    canary.assert_untouched()
    return hostile


# -- links out of the run -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "artifact", "fragment"),
    [
        pytest.param(
            "good_metrics()\nos.symlink(SECRET, os.path.join(out, 'model.json'))\n",
            "model.json",
            "$GITOPSD_OUTPUT_DIR/model.json is a symbolic link (to '{secret}')",
            id="artifact-is-a-link",
        ),
        pytest.param(
            "good_metrics()\nos.symlink(os.path.dirname(SECRET), os.path.join(out, 'weights'))\n",
            "weights/secret.txt",
            "$GITOPSD_OUTPUT_DIR/weights is a symbolic link",
            id="a-parent-directory-is-a-link",
        ),
        pytest.param(
            "good_metrics()\nos.rename(out, out + '.real')\nos.symlink(os.path.dirname(SECRET), out)\n",
            "secret.txt",
            "$GITOPSD_OUTPUT_DIR is a symbolic link",
            id="the-output-directory-is-a-link",
        ),
    ],
)
def test_an_artifact_linked_out_of_the_run_registers_nothing(
    demo_repo: GitRepo, state_dir: Path, canary: Canary, script: str, artifact: str, fragment: str
) -> None:
    add_hostile_model(demo_repo, f"SECRET = {str(canary.file)!r}\n" + script, artifact=artifact)
    settle(demo_repo, state_dir)
    assert_refused(state_dir, canary, fragment.format(secret=canary.file), "follows no symbolic link")


def test_links_inside_a_directory_artifact_are_stored_as_links_never_followed(
    demo_repo: GitRepo, state_dir: Path, canary: Canary
) -> None:
    script = (
        f"SECRET = {str(canary.file)!r}\n"
        "good_metrics()\n"
        "os.makedirs(os.path.join(out, 'model', 'sub'))\n"
        "artifact('model/weights.bin', 'weights')\n"
        "os.symlink(SECRET, os.path.join(out, 'model', 'leak'))\n"
        "os.symlink(os.path.dirname(SECRET), os.path.join(out, 'model', 'sub', 'outside'))\n"
    )
    add_hostile_model(demo_repo, script, artifact="model")
    settle(demo_repo, state_dir)
    assert labels(state_dir) == ["blobs@1", f"{HOSTILE}@1"]
    version = json.loads(gitopsd(state_dir, "registry", "show", f"{HOSTILE}@1").stdout)
    obj = state_dir / "artifacts" / "sha256" / version["artifact"]["sha256"][:2] / version["artifact"]["sha256"][2:]
    with tarfile.open(obj) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["leak", "sub", "sub/outside", "weights.bin"]
    assert members["leak"].issym() and members["leak"].linkname == str(canary.file)
    assert members["sub/outside"].issym()
    assert canary.file_secret.encode() not in store_bytes(state_dir)
    canary.assert_untouched()


# -- the run's own records ------------------------------------------------------------------------------------

REWRITE = """\
path = os.path.join(run_dir, "run.json")
snapshot = json.load(open(path))
snapshot["validate"] = []
snapshot["outputs"] = {"artifact": "../../../../outside/secret.txt", "metrics": "../../../../outside/secret.txt"}
tmp = path + ".evil"
with open(tmp, "w") as handle:
    json.dump(snapshot, handle)
os.replace(tmp, path)
"""


def test_a_rewritten_run_json_does_not_lower_the_gates(demo_repo: GitRepo, state_dir: Path, canary: Canary) -> None:
    failing = "with open(metrics, 'a') as f:\n    f.write(json.dumps({'accuracy': 0.1, 'loss': 3.0}) + '\\n')\n"
    add_hostile_model(demo_repo, failing + "artifact()\n" + REWRITE)
    settle(demo_repo, state_dir)
    hostile = model_status(state_dir, HOSTILE)
    assert hostile["reason"] == "GateFailed", hostile
    assert "accuracy" in hostile["message"]
    assert labels(state_dir) == ["blobs@1"]
    assert canary.file_secret.encode() not in store_bytes(state_dir)
    canary.assert_untouched()


def test_a_rewritten_run_json_does_not_change_the_artifact(demo_repo: GitRepo, state_dir: Path, canary: Canary) -> None:
    text = '{"w": [3.0, 4.0], "honest": true}'
    add_hostile_model(demo_repo, f"good_metrics()\nartifact(text={text!r})\n" + REWRITE)
    settle(demo_repo, state_dir)
    assert labels(state_dir) == ["blobs@1", f"{HOSTILE}@1"]
    version = json.loads(gitopsd(state_dir, "registry", "show", f"{HOSTILE}@1").stdout)
    assert version["artifact"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert [g["gate"] for g in version["gates"]] == ["accuracy >= 0.9", "loss < 0.5"]
    assert version["metrics"] == {"accuracy": 0.97, "loss": 0.1}
    assert canary.file_secret.encode() not in store_bytes(state_dir)
    canary.assert_untouched()


# -- outputs that block, never end, or are too big ------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "artifact", "fragments"),
    [
        pytest.param(
            "good_metrics()\nos.mkfifo(os.path.join(out, 'model.json'))\n",
            "model.json",
            ("$GITOPSD_OUTPUT_DIR/model.json is a FIFO (named pipe)", "only regular files and directories"),
            id="fifo-artifact",
        ),
        pytest.param(
            "artifact()\nos.mkfifo(metrics)\nimport time; time.sleep(1)\n",
            "model.json",
            ("$GITOPSD_OUTPUT_DIR/metrics.jsonl is a FIFO (named pipe)", "only regular files and directories"),
            id="fifo-metrics",
        ),
        pytest.param(
            "artifact()\nos.symlink('/dev/zero', metrics)\nimport time; time.sleep(1)\n",
            "model.json",
            ("$GITOPSD_OUTPUT_DIR/metrics.jsonl is a symbolic link (to '/dev/zero')", "follows no symbolic link"),
            id="metrics-linked-to-dev-zero",
        ),
        pytest.param(
            "good_metrics()\nos.makedirs(os.path.join(out, 'model'))\nos.mkfifo(os.path.join(out, 'model', 'pipe'))\n",
            "model",
            ("$GITOPSD_OUTPUT_DIR/model/pipe is a FIFO (named pipe)", "only regular files and directories"),
            id="fifo-inside-a-directory-artifact",
        ),
    ],
)
def test_an_output_that_would_block_or_never_end_fails_the_run_and_the_pass_goes_on(
    demo_repo: GitRepo, state_dir: Path, canary: Canary, script: str, artifact: str, fragments: tuple[str, str]
) -> None:
    add_hostile_model(demo_repo, script, artifact=artifact)
    # The real CLI in a child process: a pass that hung would end the test with TimeoutExpired, not hang it.
    done = gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait", check=False, timeout=120)
    assert done.returncode == 1 and f"  {HOSTILE}: OutputRefused: " in done.stderr, "--wait says what stalled"
    assert_refused(state_dir, canary, *fragments)
    assert "0 action(s)" in gitopsd(state_dir, "reconcile", timeout=60).stdout


def test_a_file_a_training_names_with_escape_sequences_never_reaches_a_terminal_raw(
    demo_repo: GitRepo, state_dir: Path, canary: Canary
) -> None:
    """The refusal names the training's own file, and `status` and the log printed messages as they were: a FIFO
    called ESC]0;...BEL in a directory artifact retitled the operator's terminal. Both escape what they show."""
    script = ("good_metrics()\nos.makedirs(os.path.join(out, 'model'))\n"
              "os.mkfifo(os.path.join(out, 'model', '\\x1b]0;owned\\x07\\x1b[2J'))\n")  # fmt: skip
    add_hostile_model(demo_repo, script, artifact="model")
    logged = gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait", check=False, timeout=120).stderr
    assert "is a FIFO" in logged and "\x1b" not in logged, "the log line about it, and the stalled line, are escaped"
    assert_refused(state_dir, canary, "is a FIFO (named pipe)")
    for args in (("status",), ("status", "--wide")):
        shown = on_a_terminal(state_dir, *args)
        assert "\x1b" not in shown and "model/\\x1b]0;owned\\x07\\x1b[2J is a FIFO" in shown, shown


def test_gitopsd_logs_follows_no_link_blocks_on_no_fifo_and_redacts_what_the_training_printed(
    demo_repo: GitRepo, state_dir: Path, canary: Canary
) -> None:
    """An unconfined training can write its run's logs/ directory: `gitopsd logs` printed every entry whole, so a
    link there read the daemon's files, a FIFO hung the command, and a 3 MiB line was held at once. It now reads
    the logs as the dashboard does, streamed, with credentials in URLs redacted."""
    script = (
        f"SECRET = {str(canary.file)!r}\n"
        "logs = os.path.join(run_dir, 'logs')\n"
        "os.symlink(SECRET, os.path.join(logs, 'leak.log'))\n"
        "os.mkfifo(os.path.join(logs, 'zz.fifo'))\n"
        "print('cloning https://alice:hunter2-canary@example.com/x.git', flush=True)\n"
        "print('x' * (3 << 20), flush=True)\n"
        "good_metrics()\nartifact()\n"
    )
    add_hostile_model(demo_repo, script)
    gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait", timeout=120)
    shown = gitopsd(state_dir, "logs", HOSTILE, timeout=60).stdout
    assert "cloning https://" in shown and "hunter2-canary" not in shown
    assert "x" * (3 << 20) in shown.replace("\n", ""), "the long line is printed, in pieces"
    assert "leak.log" not in shown and "zz.fifo" not in shown
    canary.assert_not_in(shown)


def test_a_2_gib_metrics_file_is_refused_by_its_size_without_being_read(
    demo_repo: GitRepo, state_dir: Path, canary: Canary
) -> None:
    script = "artifact()\ngood_metrics()\nos.truncate(metrics, 2 << 30)\n"  # sparse: no disk, no time
    add_hostile_model(demo_repo, script)
    done = gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait", check=False, timeout=120)
    assert done.returncode == 1 and f"  {HOSTILE}: " in done.stderr
    assert_refused(
        state_dir,
        canary,
        "$GITOPSD_OUTPUT_DIR/metrics.jsonl is 2.0 GiB (2147483648 bytes), over the limit of 64 MiB (67108864 bytes)",
        "an operator can raise output_limits.metrics_bytes",
    )


@pytest.mark.parametrize(
    ("script", "limits", "artifact", "fragment"),
    [
        pytest.param(
            "artifact()\nlines = [json.dumps({'accuracy': 0.97, 'loss': 0.1, 'step': i}) + '\\n' for i in range(200)]\n"
            "with open(metrics, 'a') as f:\n    f.write(''.join(lines))\n",  # one write: the file is empty or whole
            OutputLimits(metrics_bytes=8192),
            "model.json",
            "$GITOPSD_OUTPUT_DIR/metrics.jsonl is 9 KiB (8890 bytes), over the limit of 8 KiB (8192 bytes); an "
            "operator can raise output_limits.metrics_bytes",
            id="metrics-over-a-configured-limit",
        ),
        pytest.param(
            "good_metrics()\nartifact(text='x' * 300_000)\n",
            OutputLimits(artifact_bytes=200_000),
            "model.json",
            "model.json is 293 KiB (300000 bytes), over the limit of 195 KiB (200000 bytes); an operator can raise "
            "output_limits.artifact_bytes",
            id="artifact-over-a-configured-limit",
        ),
        pytest.param(
            "good_metrics()\nos.makedirs(os.path.join(out, 'model'))\n"
            "for i in range(3): artifact(f'model/part{i}', 'x' * 90_000)\n",
            OutputLimits(artifact_bytes=200_000),
            "model",
            "$GITOPSD_OUTPUT_DIR/model is a directory of at least 264 KiB (270000 bytes) of files, over the limit of "
            "195 KiB (200000 bytes); an operator can raise output_limits.artifact_bytes",
            id="directory-artifact-over-a-configured-limit",
        ),
        pytest.param(
            "good_metrics()\nos.makedirs(os.path.join(out, 'model'))\n"
            "for i in range(30): artifact(f'model/f{i}', '')\n",
            OutputLimits(artifact_files=20),
            "model",
            "$GITOPSD_OUTPUT_DIR/model is a directory of more than 20 entries, over the limit of 20 entries; an "
            "operator can raise output_limits.artifact_files",
            id="directory-artifact-with-too-many-files",
        ),
    ],
)
def test_outputs_over_an_operator_limit_fail_the_run_naming_the_file_size_limit_and_setting(
    demo_repo: GitRepo, state_dir: Path, canary: Canary, script: str, limits: OutputLimits, artifact: str, fragment: str
) -> None:
    add_hostile_model(demo_repo, script, artifact=artifact)
    settle(demo_repo, state_dir, limits)
    assert_refused(state_dir, canary, fragment)


# -- metrics lines that are too long or too deep ---------------------------------------------------------------

DEEP = """\
good_metrics()
artifact()
with open(metrics, "a") as handle:
    handle.write('{"x": ' + "[" * 100_000 + "]" * 100_000 + '}\\n')
    handle.write('{"loss": ' + "[" * 100_000 + '\\n')
    handle.write(json.dumps({"accuracy": 0.95, "loss": 0.2}) + "\\n")
"""


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param(None, id="default-limits-skip-it-for-its-length"),
        pytest.param(OutputLimits(metrics_line_bytes=1 << 20), id="a-long-line-limit-skips-it-for-its-depth"),
    ],
)
def test_a_metrics_line_nested_100000_deep_is_skipped_and_later_passes_work(
    demo_repo: GitRepo, state_dir: Path, canary: Canary, limits: OutputLimits | None
) -> None:
    add_hostile_model(demo_repo, DEEP)
    settle(demo_repo, state_dir, limits)
    assert labels(state_dir) == ["blobs@1", f"{HOSTILE}@1"]
    version = json.loads(gitopsd(state_dir, "registry", "show", f"{HOSTILE}@1").stdout)
    assert version["metrics"] == {"accuracy": 0.95, "loss": 0.2}  # the lines after the deep ones were read
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), limits=limits, operator=UNCONFINED)
    try:
        assert rec.reconcile().actions == ()
    finally:
        rec.close()
    assert model_status(state_dir, HOSTILE)["ready"] is True
    canary.assert_untouched()


DEEP_TREE = """\
good_metrics()
artifact()
fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
for level in range(5000):
    if level % 1000 == 0:
        os.symlink(os.path.dirname(SECRET), "outside", dir_fd=fd)
    os.mkdir("d", dir_fd=fd)
    deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = deeper
os.fchmod(fd, 0)
"""


def test_a_tree_deeper_than_the_recursion_limit_in_out_is_pruned_and_passes_go_on(
    demo_repo: GitRepo, state_dir: Path, canary: Canary
) -> None:
    """With `runs.keep: 0` a run's out/ is pruned as soon as it ends: 5000 levels, links out, a locked bottom."""
    demo_repo.edit("gitops.yaml", "keep: 3", "keep: 0")
    add_hostile_model(demo_repo, f"SECRET = {str(canary.file)!r}\n" + DEEP_TREE)
    try:
        settle(demo_repo, state_dir)
        assert labels(state_dir) == ["blobs@1", f"{HOSTILE}@1"]
        run_id = model_status(state_dir, HOSTILE)["run"]["id"]
        assert not (state_dir / "runs" / run_id / "out").exists()
        assert (state_dir / "runs" / run_id / "logs").is_dir()
        assert "0 action(s)" in gitopsd(state_dir, "reconcile", timeout=60).stdout
    finally:  # should the tree survive, pytest's own cleanup would hit the recursion limit in later sessions
        subprocess.run(["chmod", "-R", "u+rwx", str(state_dir / "runs")], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", str(state_dir / "runs")], check=False)
    canary.assert_untouched()


# -- the backend's records in the run directory -----------------------------------------------------------

FIFO_STATE = """\
import time
state = os.path.join(run_dir, "local", "state.json")
os.mkfifo(state + ".fifo")
os.replace(state + ".fifo", state)
time.sleep(2)
good_metrics()
artifact()
"""


def test_a_fifo_in_place_of_the_backends_own_record_does_not_hang_status(
    demo_repo: GitRepo, state_dir: Path, canary: Canary
) -> None:
    """The local backend reads `run_dir/local/state.json` on every status call; a FIFO there hung the pass."""
    add_hostile_model(demo_repo, FIFO_STATE)
    gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait", timeout=120)
    assert labels(state_dir) == ["blobs@1", f"{HOSTILE}@1"]
    canary.assert_untouched()


def test_describe_never_runs_an_interpreter_a_tampered_record_names(tmp_path: Path, canary: Canary) -> None:
    """`describe` reads the run's venv for its packages; the venv comes from a record the training can rewrite."""
    marker = tmp_path / "ran"

    def fake_venv(path: Path) -> Path:
        (path / "bin").mkdir(parents=True)
        python = path / "bin" / "python"
        python.write_text(f'#!/bin/sh\nenv > {marker}\necho \'{{"python": "9.9", "packages": {{}}}}\'\n')
        python.chmod(0o755)
        return path

    state = tmp_path / "state"
    backend = LocalBackend(name="local", settings={}, state_dir=state)
    run_dir = state / "runs" / "r1"
    (run_dir / "local").mkdir(parents=True)
    evil = fake_venv(run_dir / "out" / "venv")
    record = {"job_id": "r1", "exit_code": 0, "venv": str(evil), "python": None}
    (run_dir / "local" / "exit.json").write_text(json.dumps(record))
    facts = backend.describe(JobRef(run_id="r1", job_id="r1", run_dir=run_dir))
    assert facts["venv"] is None
    assert not marker.exists(), "describe ran the interpreter the record named"

    # One the backend built is read (pyvenv.cfg, package metadata), never run either: a package the repository
    # installed could run code from a .pth file at interpreter start.
    own = fake_venv(state / "local" / "venvs" / "0123456789abcdef")
    (own / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 9.9\n")
    dist = own / "lib" / "python9.9" / "site-packages" / "numpy-2.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 2.0\n")
    (run_dir / "local" / "exit.json").write_text(json.dumps({**record, "venv": str(own)}))
    facts = backend.describe(JobRef(run_id="r1", job_id="r1", run_dir=run_dir))
    assert (facts["python"], facts["packages"]) == ("9.9", {"numpy": "2.0"})
    assert not marker.exists(), "the venv's interpreter was run"


# -- memory ---------------------------------------------------------------------------------------------------

MEASURE = """\
import sys, time
from pathlib import Path
from gitopsd.reconcile.reconciler import Reconciler

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

rec = Reconciler(state_dir=Path(sys.argv[1]), url=sys.argv[2])
rec.reconcile()
import hashlib, tarfile  # what collecting will import, so that it is not counted as growth
before = peak_kib()
rec.reconcile_until_settled(timeout_s=120)
print(before, peak_kib())
"""

BIG = """\
good_metrics()
with open(os.path.join(out, "model.json"), "wb") as handle:
    handle.truncate(256 << 20)
with open(metrics, "a") as handle:
    line = json.dumps({"accuracy": 0.97, "loss": 0.1, "note": "n" * 1000}) + "\\n"
    handle.write(line * (48 * 1024 * 1024 // len(line)))
"""


def test_collecting_large_outputs_keeps_the_daemons_memory_flat(demo_repo: GitRepo, state_dir: Path) -> None:
    """A 48 MiB metrics file (under the default 64 MiB limit) and a 256 MiB artifact: observing and collecting
    them must not hold either in memory. Measured as the growth of the pass's peak RSS, in its own process."""
    add_hostile_model(demo_repo, BIG)
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(state_dir), str(demo_repo.path)],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    before, after = (int(x) for x in done.stdout.split())
    assert labels(state_dir) == ["blobs@1", f"{HOSTILE}@1"]
    assert after - before < 40 * 1024, f"peak RSS grew by {(after - before) // 1024} MiB while collecting"
