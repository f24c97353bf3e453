"""`gitopsd plan` of a settled state directory: told from what the settling pass recorded, never different.

When the last pass over the applied commit did nothing and nothing changed since (`reconcile/settled.py`), a
plan of that commit against itself is each model's "unchanged" line, which the pass's rows of the `models`
table hold (`changeplan.Declared`): `cli/plan.py` then answers without loading the commit. These tests build a
repository with every kind of line such a plan has (registered, aliases, a fine-tune bound to its base's
version, suspended, waiting for a base, refused at plan time), let real passes settle it, and compare that plan
with the full one, byte for byte in every format, exit code included; the full one runs once the record is gone.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gitopsd.reconcile import settled
from tests.conftest import GitRepo, gitopsd

MODEL = "models/blobs.yaml"
FORMATS = ("text", "markdown", "json")


def _spec(name: str, spec: str) -> str:
    return f"apiVersion: gitopsd/v1\nkind: Model\nmetadata:\n  name: {name}\nspec:\n{spec}"


TRAIN = """\
  train:
    command: python3 train.py --epochs 40 --lr 0.5
    workdir: src
  outputs:
    artifact: model.json
    metrics: metrics.jsonl
"""


def _every_kind(repo: GitRepo, *, refused: bool = False) -> None:
    """The demo's model with aliases, a fine-tune of it, a suspended model, a model waiting for that one's
    version, a suspended model with nothing else to say, and when `refused` one that `OPERATOR`'s caps refuse
    (two CPUs, two hours: any host the tests run on has the CPUs, so the local backend itself would take it).
    A model its backend refuses is not settled for good (a bigger host takes it), so a state with one writes no
    settled-pass record (`tests/test_settled.py`)."""
    tuned = repo.read(MODEL).replace("  name: blobs\n", "  name: tuned\n")
    repo.write("models/tuned.yaml", tuned.replace("spec:\n", "spec:\n  base: blobs@production\n"))
    repo.edit(MODEL, "  validate:", "  aliases:\n    production: 1\n    newest: latest\n  validate:")
    repo.write("models/frozen.yaml", _spec("frozen", "  suspend: true\n  aliases:\n    stable: latest\n" + TRAIN))
    repo.write("models/idle.yaml", _spec("idle", "  suspend: true\n" + TRAIN))  # quiet: counted, not listed
    repo.write("models/waiter.yaml", _spec("waiter", "  base: frozen@stable\n" + TRAIN))
    if refused:
        huge = TRAIN.replace("    workdir: src\n", "    workdir: src\n    timeout: 2h\n    resources: {cpus: 2}\n")
        repo.write("models/huge.yaml", _spec("huge", huge))
    repo.commit("Every kind of plan line")


def _plans(state_dir: Path, *args: str, given: tuple[str, ...] = ()) -> list[tuple[int, str, str]]:
    return [_plan(state_dir, "--format", fmt, *args, given=given) for fmt in FORMATS]


def _plan(state_dir: Path, *args: str, given: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """`gitopsd [given] plan args`: exit code, stdout, stderr."""
    done = gitopsd(state_dir, *given, "plan", *args, check=False)
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout, done.stderr


def _heavy_imports(state_dir: Path, *given: str) -> list[str]:
    """The spec and Git libraries and the planner a `gitopsd [given] plan` imported (none: it loaded no spec and
    has no action to plan)."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['gitopsd', *{list(given)!r}, 'plan']\n"
        "try:\n"
        "    runpy.run_module('gitopsd', run_name='__main__')\n"
        "finally:\n"
        "    found = ('pydantic', 'yaml', 'pygit2', 'gitopsd.reconcile.planner')\n"
        "    print(sorted(m for m in found if m in sys.modules), file=sys.stderr)\n"
    )
    env = {**os.environ, "GITOPSD_STATE_DIR": str(state_dir)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert "Traceback" not in done.stderr
    found = ast.literal_eval(done.stderr.strip().splitlines()[-1])
    assert isinstance(found, list)
    return [str(name) for name in found]


def _files(state_dir: Path) -> dict[str, str]:
    """Every file of the state directory and a digest of its bytes; not SQLite's -wal and -shm files, which
    any reader of a database in WAL mode opens (a daemon keeps them open all along)."""
    return {
        str(p.relative_to(state_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(state_dir.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


@pytest.fixture
def settled_dir(demo_repo: GitRepo, state_dir: Path) -> Path:
    _every_kind(demo_repo)
    # waiter waits for a version of frozen, which is suspended: it stalls, and --wait says so (exit 1)
    gitopsd(state_dir, "reconcile", "--repo", str(demo_repo.path), "--wait", check=False)  # blobs@1
    gitopsd(state_dir, "reconcile", "--wait", check=False)  # tuned@1, on blobs@production
    gitopsd(state_dir, "reconcile", "--once")  # the pass that finds nothing to do writes the record
    assert (state_dir / settled.RECORD_FILE).is_file(), "the repository settles"
    return state_dir


def test_the_settled_plan_is_the_full_plan_in_every_format(settled_dir: Path) -> None:
    quick = _plans(settled_dir)
    settled.forget(settled_dir)
    full = _plans(settled_dir)
    assert quick == full
    code, text, _ = quick[0]
    assert code == 0
    for line in ("  frozen: suspended: nothing trains or moves\n",
                 "      alias stable: nothing -> latest (declared): refused, frozen has no version yet\n",
                 "  waiter: waiting for base model frozen@stable",
                 "  (3 unchanged model(s) not shown; 1 of them suspended)\n"):  # fmt: skip
        assert line in text
    models = {m["name"]: m for m in json.loads(quick[2][1])["models"]}
    for name in ("blobs", "tuned"):  # tuned's run key is bound to blobs@production: its wanted key
        assert models[name]["reasons"] == [{"code": "unchanged", "text": "unchanged (its run key is registered as v1)"}]


def test_the_settled_plan_loads_nothing_and_writes_nothing(settled_dir: Path) -> None:
    before = _files(settled_dir)
    assert _heavy_imports(settled_dir) == [], "no spec is loaded, no Git library imported"
    assert _files(settled_dir) == before
    settled.forget(settled_dir)
    full = ["gitopsd.reconcile.planner", "pydantic", "pygit2", "yaml"]
    assert _heavy_imports(settled_dir) == full, "without the record: the full plan"


def test_a_plan_the_record_does_not_vouch_for_is_the_full_one(demo_repo: GitRepo, settled_dir: Path) -> None:
    older = demo_repo.git("rev-parse", "HEAD~1")
    demo_repo.git("tag", "older", "HEAD~1")  # --branch names another commit than the settled one
    doc = json.loads(_plan(settled_dir, "--branch", "older", "--format", "json")[1])
    assert doc["head"]["commit"] == older
    assert {m["name"]: m["change"] for m in doc["models"]}["tuned"] == "removed"
    demo_repo.edit("models/frozen.yaml", "  suspend: true\n", "  suspend: false\n")
    demo_repo.commit("Thaw")  # the repository moved on: the record is of the commit before
    text = _plan(settled_dir)[1]
    assert "frozen: trains" in text and "resumed" in text


def test_rows_of_an_older_gitopsd_take_the_full_plan_until_a_pass_rewrites_them(settled_dir: Path) -> None:
    """A state directory from before migration 7 has rows without what a plan says: until a full pass writes
    them (a new gitopsd never trusts an older settled record, so it runs one), the plan is the full one."""
    full = _plans(settled_dir)
    conn = sqlite3.connect(settled_dir / "state.db")
    with conn:
        conn.execute("UPDATE models SET wanted_key = '', gpus = 0, gpu_hours = NULL, aliases = '{}'")
    conn.close()
    assert _plans(settled_dir) == full
    settled.forget(settled_dir)  # as a new gitopsd's code generation does
    gitopsd(settled_dir, "reconcile", "--once")
    conn = sqlite3.connect(settled_dir / "state.db")
    assert all(key for (key,) in conn.execute("SELECT wanted_key FROM models")), "the full pass wrote them"
    conn.close()
    assert (settled_dir / settled.RECORD_FILE).is_file()
    assert _plans(settled_dir) == full


def test_a_state_database_of_a_newer_gitopsd_is_refused_by_name(settled_dir: Path) -> None:
    conn = sqlite3.connect(settled_dir / "state.db")
    with conn:
        conn.execute("INSERT INTO migrations VALUES (999, 0)")
    conn.close()
    done = gitopsd(settled_dir, "reconcile", "--once", check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{settled_dir / 'state.db'} has schema migration 999 but this gitopsd knows only up to" in done.stderr
    assert "upgrade gitopsd" in done.stderr


OPERATOR = """\
[backends.local]
type = "local"
settings = {{ max_parallel = 2, grace_s = 5 }}

[backends.local.caps]
cpus = 1

[output_limits]
metrics_bytes = 2000000

[registry]
artifacts = "file://{root}/store/"
"""


def test_under_an_operator_configuration_the_settled_plan_is_the_full_plan(
    demo_repo: GitRepo, state_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "operator.toml"
    config.write_text(OPERATOR.format(root=tmp_path))
    _every_kind(demo_repo, refused=True)
    given = ("--config", str(config))
    gitopsd(state_dir, *given, "reconcile", "--repo", str(demo_repo.path), "--wait", check=False)
    gitopsd(state_dir, *given, "reconcile", "--wait", check=False)
    gitopsd(state_dir, *given, "reconcile", "--once")
    assert (state_dir / settled.RECORD_FILE).is_file()
    assert _heavy_imports(state_dir, *given) == []
    quick = _plans(state_dir, given=given)
    settled.forget(state_dir)
    assert quick == _plans(state_dir, given=given)
    code, text, _ = quick[0]
    assert code == 1, "a refused model fails the plan either way"
    assert "  huge: refused at plan time: cpus 2 is over the operator's cap of 1 for this backend" in text
    huge = {m["name"]: m for m in json.loads(quick[2][1])["models"]}["huge"]
    assert [r["code"] for r in huge["reasons"]] == ["refused"]
