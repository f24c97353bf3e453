"""The quick settled pass of `gitopsd reconcile --once` (`gitopsd.reconcile.quickpass`): it answers only when
the full pass would answer the same with nothing done, and leaves state.db and registry.db as the full pass does.

Two state directories follow the same real repository (`tests/test_settled.Pair`): in `quick`, each pass first
asks `quick_reconcile` and runs a new `Reconciler` only when it says "not sure", as the command line does; in
`full`, every pass is a new `Reconciler` that never skips. After every pass both must report the same and hold
the same state. Real Git, real SQLite, real trainings on the local backend, real `gitopsd` processes for the
import test.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from gitopsd.cli.args import Context
from gitopsd.cli.common import settled_setup
from gitopsd.daemon.config import load_config
from gitopsd.errors import BackendUnavailable
from gitopsd.model import Reason
from gitopsd.reconcile import configsource, quickpass, settled
from gitopsd.reconcile.observe import Observer
from gitopsd.reconcile.outbox import Outbox
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.reconcile.state import StateStore
from gitopsd.reconcile.troubles import RetryBook
from gitopsd.registry.aliases import AliasBook
from gitopsd.registry.versions import Registry
from tests.conftest import GitRepo
from tests.test_settled import MODEL, Pair, shape, snapshot

HEAVY = ("pydantic", "yaml", "pygit2", "sqlite_utils", "importlib.metadata")


def _quick(pair: Pair, **flags: Any) -> str | None:
    pair.new("quick").close()  # bring the quick directory's remote up to the repository's commits
    config = flags.get("config", getattr(pair, "config", None))
    return quickpass.quick_reconcile(pair.root / "quick", None, None, config=config,
                                     verified=flags.get("verified", False))  # fmt: skip


def _source(state_dir: Path) -> dict[str, Any]:
    with StateStore(state_dir / "state.db") as store:
        row = store.source()
    assert row is not None
    return {k: v for k, v in asdict(row).items() if k not in ("url", "fetched_at", "applied_at")}


def probe(pair: Pair) -> bool:
    """One pass in each directory, as the command line makes it; the results and the state must be equal.
    Returns whether the quick directory's pass was the quick one."""
    commit = _quick(pair)
    if commit is None:
        rec = pair.new("quick")
        try:
            quick = shape(rec.reconcile("cli"))
        finally:
            rec.close()
    else:
        quick = {"commit": commit, "actions": [], "active": 0, "error": "", "unavailable": {}, "blocked": {},
                 "retry_at": None}  # fmt: skip
    rec = pair.new("full")
    try:
        full = shape(rec.reconcile("cli"))
    finally:
        rec.close()
    assert quick == full
    assert snapshot(pair.root / "quick") == snapshot(pair.root / "full")
    assert _source(pair.root / "quick") == _source(pair.root / "full")
    return commit is not None


@pytest.fixture
def pair(demo_repo: GitRepo, tmp_path: Path) -> Pair:
    return Pair(repo=demo_repo, root=tmp_path)  # the quick directory's full pass may use the record, the other not


def _suspended_and_settled(pair: Pair) -> None:
    pair.repo.edit(MODEL, "  train:\n", "  suspend: true\n  train:\n")
    pair.repo.commit("Suspended")
    pair.settle()


def test_the_quick_pass_agrees_with_the_full_pass_through_a_history(pair: Pair) -> None:
    repo = pair.repo
    pair.settle()  # trains blobs, registers version 1
    assert probe(pair) is True
    assert probe(pair) is True  # the quick pass keeps the record valid

    repo.edit(MODEL, "  train:\n", "  aliases: {prod: 1}\n  train:\n")
    repo.commit("An alias")
    assert probe(pair) is False  # a new commit: the full pass moves the alias
    assert [probe(pair) for _ in range(2)][-1] is True

    repo.edit(MODEL, "--epochs 40", "--epochs 41")
    repo.commit("Another training")
    assert probe(pair) is False  # submits
    pair.settle()
    assert probe(pair) is True

    repo.edit(MODEL, "    workdir: src\n", "    workdir: src\n    wrokdir: typo\n")
    repo.commit("An invalid commit")
    for _ in range(2):
        assert probe(pair) is False  # rejected each time, by the full pass


def _event(state_dir: Path) -> None:
    with StateStore(state_dir / "state.db") as store:
        store.event("blobs", "Noted", reason="test", message="by hand")


def _run_in_flight(state_dir: Path) -> None:
    with sqlite3.connect(state_dir / "state.db") as conn:
        conn.execute(
            "INSERT INTO runs (id, model, run_key, spec_digest, commit_id, spec_path, backend, phase, attempt, "
            "run_dir, created_at, updated_at) VALUES ('r1', 'blobs', 'k', 'd', 'c', 'p', 'local', 'Running', 1, "
            "'/nonexistent', 0, 0)"
        )


def _permanent_trouble(state_dir: Path) -> None:
    """A trouble that waits for the operator, in a record that describes it (a new Reconciler forgives it, so
    only the quick path's own check can refuse)."""
    with StateStore(state_dir / "state.db") as store:
        RetryBook(store.conn, lambda: 0.0).failed("k", model="blobs", what="register", reason=Reason.REGISTRY_FAILED,
                                                 exc=BackendUnavailable("down for good"))  # fmt: skip
        store.conn.execute("UPDATE troubles SET next_at = NULL")
        row = store.source()
        assert row is not None
        with Registry(state_dir / "registry.db") as registry:
            fingerprint = settled.fingerprint(
                row, state=store, troubles=RetryBook(store.conn, time.time), outbox=Outbox(store.conn, time.time),
                registry=registry, aliases=AliasBook(registry.conn), setup=settled.DEFAULT_SETUP,
            )  # fmt: skip
    key = (state_dir / "speccache.key").read_bytes()
    record = settled.read(state_dir, key, settled.code_generation())
    assert record is not None
    assert settled.write(state_dir, key, settled.code_generation(), replace(record, fingerprint=fingerprint))


def _registry_lost(state_dir: Path) -> None:
    for path in state_dir.glob("registry.db*"):
        path.unlink()


def _other_code(state_dir: Path) -> None:
    key = (state_dir / "speccache.key").read_bytes()
    record = settled.read(state_dir, key, settled.code_generation())
    assert record is not None
    assert settled.write(state_dir, key, settled.code_generation() + "; other", record)


def _record_garbled(state_dir: Path) -> None:
    (state_dir / settled.RECORD_FILE).write_text("{not json")


def _mirror_behind(state_dir: Path) -> None:
    remote = state_dir.parent / "quick.git"
    subprocess.run(["git", "--git-dir", str(remote), "branch", "other", "HEAD"], check=True)


@pytest.mark.parametrize(
    "tamper",
    [_event, _run_in_flight, _permanent_trouble, _registry_lost, _other_code, _record_garbled],
    ids=["event", "run-in-flight", "permanent-trouble", "registry-lost", "other-code", "garbled"],
)
def test_a_change_the_record_does_not_describe_takes_the_full_pass(pair: Pair, tamper: Any) -> None:
    pair.settle()  # trains blobs, registers version 1 in the registry and its store
    assert _quick(pair) is not None
    tamper(pair.root / "quick")
    assert quickpass.quick_reconcile(pair.root / "quick", None, None, config=None, verified=False) is None


def test_a_remote_branch_the_mirror_lacks_takes_the_full_pass_which_fetches_it(pair: Pair) -> None:
    _suspended_and_settled(pair)
    assert _quick(pair) is not None
    _mirror_behind(pair.root / "quick")
    assert quickpass.quick_reconcile(pair.root / "quick", None, None, config=None, verified=False) is None
    rec = pair.new("quick")
    rec.reconcile("cli")
    rec.close()
    assert quickpass.quick_reconcile(pair.root / "quick", None, None, config=None, verified=False) is not None


def test_a_configuration_a_signature_policy_or_another_repository_takes_the_full_pass(pair: Pair) -> None:
    _suspended_and_settled(pair)
    state_dir = pair.root / "quick"
    assert _quick(pair) is not None
    config = pair.root / "operator.toml"
    config.write_text("")  # a configuration: its digest is not the built-in setup of the record
    assert _quick(pair, config=config) is None
    assert _quick(pair, verified=True) is None
    assert quickpass.quick_reconcile(state_dir, str(pair.repo.path), None, config=None, verified=False) is None
    assert quickpass.quick_reconcile(state_dir, None, "no-such-branch", config=None, verified=False) is None
    assert quickpass.quick_reconcile(state_dir, None, "-x", config=None, verified=False) is None
    assert quickpass.quick_reconcile(pair.root / "nowhere", None, None, config=None, verified=False) is None


@pytest.mark.parametrize(
    "needed",
    [
        {"local": ("local", {})},
        {"local": ("local", {"max_parallel": 2}), "other": ("local", {"grace_s": 1})},
        {"local": ("local", {"max_parallel": -1})},
        {"local": ("local", {"max_parallel": "many"}), "b": ("local", {})},
        {"local": ("local", {"grace_s": 0}), "b": ("local", {"memory_poll_s": 99_999})},
        {"local": ("local", {"confine": "yes"}), "b": ("local", {"confine_read": ["relative/path"]})},
        {"local": ("local", {"confine": False, "max_parallel": 0})},
    ],
)
def test_the_local_backend_check_is_the_observers(needed: dict[str, Any], tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as store:
        _, expected = Observer(store, tmp_path).check(needed)
    assert quickpass.local_unavailable(needed) == expected


def test_another_backend_type_is_left_to_the_full_pass(tmp_path: Path) -> None:
    assert quickpass.local_unavailable({"gpu": ("slurm", {})}) is None


def test_the_command_line_answers_a_settled_pass_without_heavy_imports(pair: Pair, tmp_path: Path) -> None:
    _suspended_and_settled(pair)
    pair.new("quick").close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPSD_")}
    env |= {"GITOPSD_STATE_DIR": str(pair.root / "quick"), "XDG_CONFIG_HOME": str(tmp_path / "config")}

    def run(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "gitopsd", *args, "reconcile", "--once"],
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        lines = done.stderr.splitlines()
        return done, {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}

    done, modules = run()
    assert done.returncode == 0, done.stderr[-2000:]
    commit = pair.repo.git("rev-parse", "HEAD")
    assert done.stdout == f"commit {commit[:12]}: 0 action(s), 0 run(s) in flight\n"
    assert sorted(m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY) == []
    assert "gitopsd.reconcile.reconciler" not in modules
    assert "gitopsd.backends.local.backend" not in modules  # its readiness is asked without it

    config = tmp_path / "operator.toml"  # a new operator configuration: the full pass (the detector works) ...
    config.write_text(f'state_dir = "{pair.root}"\n[backends.local]\nsettings = {{ max_parallel = 2 }}\n'
                      "[output_limits]\nmetrics_bytes = 2000000\n")  # fmt: skip
    done, modules = run("--config", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == f"commit {commit[:12]}: 0 action(s), 0 run(s) in flight\n"
    assert "gitopsd.reconcile.reconciler" in modules and "pygit2" in modules
    done, modules = run("--config", str(config))  # ... which leaves a record made under it: the quick pass
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == f"commit {commit[:12]}: 0 action(s), 0 run(s) in flight\n"
    assert sorted(m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY) == []
    assert "gitopsd.reconcile.reconciler" not in modules

    config.write_text(config.read_text() + 'log_level = "loud"\n')  # one that the full pass refuses
    done, _ = run("--config", str(config))
    assert done.returncode == 1 and "log_level" in done.stderr and done.stdout == ""


# --- with an operator configuration ------------------------------------------------------------------------------

PLAIN = """\
state_dir = "{root}"
data_roots = ["/nonexistent/data"]

[backends.local]
type = "local"
settings = {{ max_parallel = 2, grace_s = 5 }}

[output_limits]
metrics_bytes = 2000000
artifact_files = 5000

[registry]
artifacts = "file://{root}/store/"

[[repositories]]
name = "quick"
url = "{root}/quick.git"

[[repositories]]
name = "full"
url = "{root}/full.git"
"""


@dataclass
class Configured(Pair):
    """A `Pair` whose reconcilers are made as the command line makes them under the configuration `config`: its
    operator and output limits for the repository entry that serves the state directory, and its digest (the
    URL and branch are the tracked source's, as `gitopsd reconcile` without --repo takes them)."""

    config: Path = Path("/nonexistent")

    def new(self, which: str) -> Reconciler:
        plain = super().new(which)  # clones and pushes the directory's remote
        plain.close()
        config = load_config(self.config)
        here = self.root / which
        mine = [r for r in config.repositories if config.state_dir and config.state_dir_of(r).absolute() == here]
        repo = mine[0] if mine else None
        return Reconciler(state_dir=here, url=plain.url,
                          operator=config.operator_for(repo) if repo else config.operator(),
                          limits=config.output_limits.limits(), setup=config.settled_setup(repo),
                          settled_pass=which == "quick")  # fmt: skip


def _configured(demo_repo: GitRepo, tmp_path: Path, text: str = PLAIN) -> Configured:
    config = tmp_path / "operator.toml"
    config.write_text(text.format(root=tmp_path))
    return Configured(repo=demo_repo, root=tmp_path, config=config)


def test_with_a_configuration_the_quick_pass_agrees_with_the_full_pass(demo_repo: GitRepo, tmp_path: Path) -> None:
    pair = _configured(demo_repo, tmp_path)
    pair.settle()  # trains blobs on the configured backend, registers version 1 in the configured store
    assert (tmp_path / "store" / "quick").is_dir() and (tmp_path / "store" / "full").is_dir()
    assert probe(pair) is True
    assert probe(pair) is True
    demo_repo.edit(MODEL, "  train:\n", "  aliases: {prod: 1}\n  train:\n")
    demo_repo.commit("An alias")
    assert probe(pair) is False
    assert [probe(pair) for _ in range(2)][-1] is True


@pytest.mark.parametrize(
    "change",
    [
        "[standby]\nlease_dir = \"{root}/lease\"\n",
        "[environment]\nSLURM_CONF = \"/etc/slurm.conf\"\n",
        "[http]\ntoken = \"file:{root}/token\"\n",
        "[backends.local.settings]\nruns_dir = \"{root}/runs\"\n",
        "[backends.gpu]\ntype = \"slurm\"\n",
        "[[repositories]]\nname = \"quick\"\nurl = \"{root}/quick.git\"\n"
        "verify = {{ allowed_signers = \"/signers\" }}\n",
        "[[repositories]]\nname = \"quick\"\nurl = \"{root}/elsewhere.git\"\n",
        "[[repositories]]\nname = \"quick\"\nurl = \"{root}/quick.git\"\nbranch = \"other\"\n",
        "[registry]\nartifacts = \"s3://bucket/models\"\n",
        "state_dir = \"relative/state\"\n",
        "not toml = = =\n",
    ],
    ids=["standby", "environment", "secret", "runs-dir", "plugin", "verify", "other-url", "other-branch", "s3",
         "relative-state-dir", "not-toml"],
)  # fmt: skip
def test_what_the_digest_cannot_show_equal_takes_the_full_pass(demo_repo: GitRepo, tmp_path: Path, change: str) -> None:
    base = "[backends.local]\nsettings = {{ max_parallel = 2 }}\n"
    if change.startswith("state_dir"):  # top-level keys before any table
        text = change + base
    else:
        text = 'state_dir = "{root}"\n' + ("" if "backends.local.settings" in change else base) + change
    path = tmp_path / "operator.toml"
    path.write_text(text.format(root=tmp_path))
    found = configsource.plain(path, tmp_path / "quick")
    if "elsewhere" in change or "branch" in change:  # the quick pass refuses the tracked source's mismatch
        assert found is not None and found.repository is not None
    else:
        assert found is None
    if change.startswith(("[standby]", "[[repositories]]")):  # the record of a full pass under it is not used
        pair = Configured(repo=demo_repo, root=tmp_path, config=path)
        _suspended_and_settled(pair)
        assert (tmp_path / "quick" / settled.RECORD_FILE).is_file()
        assert _quick(pair) is None


def test_the_same_configuration_without_a_refused_part_is_quick(demo_repo: GitRepo, tmp_path: Path) -> None:
    """The counterpart of the refusals: the same set-up with nothing refused takes the quick pass."""
    path = tmp_path / "operator.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n[backends.local]\nsettings = {{ max_parallel = 2 }}\n'
                    f'[[repositories]]\nname = "quick"\nurl = "{tmp_path}/quick.git"\n')  # fmt: skip
    pair = Configured(repo=demo_repo, root=tmp_path, config=path)
    _suspended_and_settled(pair)
    assert _quick(pair) is not None


def test_an_edited_or_moved_configuration_takes_the_full_pass(demo_repo: GitRepo, tmp_path: Path) -> None:
    pair = _configured(demo_repo, tmp_path)
    _suspended_and_settled(pair)
    assert _quick(pair) is not None
    text = pair.config.read_text()
    moved = tmp_path / "elsewhere.toml"
    moved.write_text(text)
    assert _quick(pair, config=moved) is None  # the same bytes at another path
    pair.config.write_text(text.replace("max_parallel = 2", "max_parallel = 3"))  # one byte
    assert _quick(pair) is None
    pair.config.write_text(text)
    assert _quick(pair) is not None  # back as it was: the record still describes it
    assert _quick(pair, config=None) is None  # no configuration: the built-in setup is another one
    (tmp_path / "linked.toml").symlink_to(pair.config)
    assert _quick(pair, config=tmp_path / "linked.toml") is not None  # the path is the resolved one


def test_the_command_line_the_daemon_and_the_quick_path_name_a_configuration_alike(tmp_path: Path) -> None:
    path = tmp_path / "operator.toml"
    path.write_text(PLAIN.format(root=tmp_path))
    config = load_config(path)
    for which, repo in (("quick", config.repositories[0]), ("full", config.repositories[1]), ("none", None)):
        found = configsource.plain(path, tmp_path / which)
        assert found is not None
        ctx = Context(state_dir=tmp_path / which, config=path)
        assert found.setup == settled_setup(ctx) == config.settled_setup(repo)  # the daemon: `Daemon._start`
        operator = config.operator_for(repo) if repo else config.operator()
        assert found.store == operator.registry.artifacts
    assert len({configsource.plain(path, tmp_path / w).setup for w in ("quick", "full", "none")}) == 3  # type: ignore[union-attr]


@pytest.mark.parametrize("artifacts", ["file:///a/b/", "file:///a//b/../c", "file:///a/./b"])
def test_the_quick_path_finds_the_configured_store_as_the_configuration_does(tmp_path: Path, artifacts: str) -> None:
    path = tmp_path / "operator.toml"
    for extra in ("", f'artifacts = "{artifacts}x"\n'):
        path.write_text(f'state_dir = "{tmp_path}"\n[registry]\nartifacts = "{artifacts}"\n'
                        f'[[repositories]]\nname = "quick"\nurl = "/r"\n{extra}')  # fmt: skip
        config = load_config(path)
        found = configsource.plain(path, tmp_path / "quick")
        assert found is not None and found.store == config.operator_for(config.repositories[0]).registry.artifacts


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('state_dir = "/srv/gitopsd"\n[[repositories]]\nname = "demo"\nurl = "x"\n', True),
        ('state_dir = "/srv/gitopsd"\n[[repositories]]\nname = "other"\nurl = "x"\n', False),
        ('[[repositories]]\nname = "demo"\nurl = "x"\n', False),  # no state_dir: it serves no directory
        ('state_dir = "gitopsd"\n[[repositories]]\nname = "demo"\nurl = "x"\n', None),  # relative: not told here
        ("state_dir = [", None),  # not TOML: whoever loads it says why
        ('state_dir = "/srv/gitopsd"\nrepositories = 3\n', None),
    ],
)
def test_whether_a_configuration_names_a_state_directory_is_told_without_its_schema(
    tmp_path: Path, text: str, named: bool | None
) -> None:
    config = tmp_path / "gitopsd.toml"
    config.write_text(text)
    assert configsource.names_state_dir(config, Path("/srv/gitopsd/demo")) is named
