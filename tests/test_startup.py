"""`gitopsd --help` and `gitopsd status` start without loading the heavy libraries, and `gitopsd validate` without
the Git library.

Start-up time is measured by `bench/startup.py` (`make bench`), never here; what a test can hold fixed is the
cause of a slow start: a module-level import of a library that these commands do not need. Each case runs the
real command line in a fresh interpreter with `-X importtime`, which lists every module the process imported,
including those imported while the command ran.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Libraries gitopsd depends on that take milliseconds each to import, and that neither command needs.
HEAVY = ("click", "pygit2", "pydantic", "boto3", "botocore", "sqlite_utils", "waitress", "prometheus_client", "yaml",
         "ruamel", "apscheduler", "watchfiles")  # fmt: skip


def _run(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `gitopsd ARGS` on an empty state directory and no operator configuration; the modules it imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPSD_")}
    env |= {"GITOPSD_STATE_DIR": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "gitopsd", *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=60)  # fmt: skip
    modules = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    modules.discard("imported package")  # the header line
    return done, modules


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_the_heavy_libraries_are_installed() -> None:
    """Otherwise their absence from the commands below would prove nothing (click: where it is installed, as a
    dependency of something else, the command line must still not load it)."""
    assert [name for name in HEAVY if name != "click" and importlib.util.find_spec(name) is None] == []


def test_importtime_sees_a_heavy_import(tmp_path: Path) -> None:
    """The detector works: `gitopsd schema` builds the schema with pydantic, and the list says so."""
    done, modules = _run(["schema"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pydantic" in _heavy(modules)
    assert "gitopsd.spec.schema" in modules


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["status", "--help"], ["registry", "--help"]])
def test_help_imports_no_heavy_library_and_nothing_beyond_the_commands(args: list[str], tmp_path: Path) -> None:
    done, modules = _run(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: gitopsd" in done.stdout
    assert _heavy(modules) == []
    ours = sorted(m for m in modules if m == "gitopsd" or m.startswith("gitopsd."))
    assert "gitopsd.cli.main" in ours
    # help loads the command modules (their options and docstrings) and nothing they call, not even the logging
    # setup that runs before a command
    assert [m for m in ours if m != "gitopsd" and not m.startswith("gitopsd.cli")] == []
    assert "logging" not in modules
    assert {"gitopsd.cli.doctorcore", "gitopsd.cli.doctorfacts", "gitopsd.cli.plan"}.isdisjoint(ours)


def test_status_of_an_empty_state_dir_imports_no_heavy_library(tmp_path: Path) -> None:
    done, modules = _run(["status"], tmp_path)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "nothing reconciled yet" in done.stdout
    assert _heavy(modules) == []
    assert "gitopsd.reconcile.statusview" in modules  # it ran the real status, not a shortcut
    assert {"gitopsd.reconcile.reconciler", "gitopsd.registry.versions", "gitopsd.spec.schema"}.isdisjoint(modules)
    assert {"sqlite3", "json"}.isdisjoint(modules), "no database to read, no document to decode"


def test_validate_of_a_working_tree_imports_no_git_library_and_no_reconciler(tmp_path: Path) -> None:
    """`validate` reads files, not Git: pygit2 alone takes 60-80 ms to import, a tenth of a large tree's check."""
    from gitopsd.cli.scaffold import init_demo

    init_demo(tmp_path / "repo")
    done, modules = _run(["validate", str(tmp_path / "repo")], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "valid; 1 model(s): blobs" in done.stdout
    assert "pydantic" in _heavy(modules)  # it really loaded the specs
    assert "pygit2" not in _heavy(modules)
    assert {"gitopsd.reconcile.desired", "gitopsd.reconcile.speccache", "gitopsd.source.mirror"}.isdisjoint(modules)


def test_a_command_without_an_operator_configuration_skips_its_schema(tmp_path: Path) -> None:
    """The configuration's pydantic models take about 20 ms to build; a plan on the built-in default (a CI
    runner's) has no file for them to read. With a file, they are what reads it."""
    from gitopsd.cli.scaffold import init_demo

    init_demo(tmp_path / "repo")
    done, modules = _run(["plan", "--repo", str(tmp_path / "repo")], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "blobs: trains: new model" in done.stdout, done.stdout
    assert "gitopsd.reconcile.reconciler" in modules  # it really planned
    assert "gitopsd.daemon.config" not in modules
    config = tmp_path / "operator.toml"
    config.write_text('[backends.local]\ntype = "local"\n')
    done, modules = _run(["--config", str(config), "plan", "--repo", str(tmp_path / "repo")], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gitopsd.daemon.config" in modules


def test_status_logs_nothing_so_it_skips_the_logging_setup(tmp_path: Path) -> None:
    """`status` is declared `logs=False`: the logging set-up (with its URL redaction) is left out. That is safe
    only while nothing status runs can log, i.e. imports `logging` at all: on a state directory with a status, an
    empty one, and an unreadable one. With --config it loads the daemon's configuration and sets logging up."""
    from gitopsd.reconcile.state import SourceRow, StateStore

    state = tmp_path / "state"
    state.mkdir()
    with StateStore(state / "state.db") as store:
        store.set_source(SourceRow(url="https://user:secret@example.com/repo.git", branch="main"))
    done, modules = _run(["status"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "secret" not in done.stdout + done.stderr
    assert "logging" not in modules
    (state / "state.db").write_bytes(b"not a database" * 100)
    done, modules = _run(["status"], tmp_path)
    assert done.returncode == 1 and "error:" in done.stderr
    assert "logging" not in modules
    config = tmp_path / "gitopsd.toml"
    config.write_text(f'state_dir = "{state}"\n[[repositories]]\nname = "r"\nurl = "https://example.com/r.git"\n')
    done, modules = _run(["status", "--config", str(config)], tmp_path)
    assert done.returncode in (1, 3), done.stderr[-2000:]
    assert {"logging", "gitopsd.daemon.logs"} <= modules


#: Imports the command line as `{how}` does, noting at each collection whether it came while the command line was
#: being imported; prints that, whether the collector is on once the command (`--version`) has run, and whether
#: the import's objects were moved to the collector's permanent generation.
_ENTRY_PROBE = """
import gc, sys

during = []
gc.callbacks.append(lambda phase, info: phase == "start" and during.append(
    "gitopsd.cli.main" in sys.modules and not hasattr(sys.modules["gitopsd.cli.main"], "main")))
try:
    {how}
except SystemExit:
    pass
print(any(during), gc.isenabled(), gc.get_freeze_count() > 10_000)
"""


@pytest.mark.parametrize(("how", "collects", "frozen"), [("import gitopsd.cli.main", "True", "False"),  # control
                                                         ("import gitopsd.__main__", "False", "True")])  # fmt: skip
def test_the_command_line_is_imported_with_the_collector_off_and_runs_with_it_on(
    how: str, collects: str, frozen: str, tmp_path: Path
) -> None:
    """The console script and `python -m gitopsd` import the command line with the cyclic collector paused (a
    dozen young collections that would find nothing), freeze what the import made so that no later collection
    scans it, and hand the command the collector switched on again."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="gitopsd")
    assert script.value == "gitopsd.cli.entry:main"
    done = subprocess.run([sys.executable, "-c", _ENTRY_PROBE.format(how=how), "--version"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == [collects, "True", frozen]
