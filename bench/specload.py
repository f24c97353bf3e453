"""`make bench`: how long `gitopsd plan` and `gitopsd reconcile --once` take as whole processes at 10,000 specs.

The daemon loads a new commit incrementally in memory, but every command-line pass is a new process: it must
get its desired state from the state directory's parse cache (`gitopsd/reconcile/speccache.py`) or parse every
spec. This script builds the repository of `bench/run.py` (10,000 suspended models, a bare Git repository
committed with pygit2), then times the real `gitopsd` command, each measurement a few runs, and reports medians:

- `plan`, cold: a state directory that does not exist (a fresh CI runner), so nothing is cached;
- `validate` of a checkout of the repository: the other check a pull request runs (no target);
- `reconcile --once` and `plan` on a warm state directory, nothing changed; `reconcile --once` also with an
  operator configuration (`--config`, the `local` backend with settings, output limits), in its own state
  directory; `plan` also as a pull-request comment (`--format markdown`) and as piped JSON, which time the
  report's other two faces on 10,000 models (no target);
- `reconcile --once` and `plan` on a copy of the warm state directory with a long history (10 versions of every
  model, 100,000 in all, their alias moves, and the 110,000 runs that made them, one failed attempt per model
  among them): a pass that finds nothing to do must not pay for the history (same targets);
- the first `plan` and the first `reconcile --once` after a commit that changes one spec (it stays suspended, so
  nothing is submitted and every repetition measures the same work).

`--gitopsd PATH` times another installation; `--against PATH` times a second one alternately with the first, run
by run (e.g. an installation of the commit before the cache), so that both see the same load on a shared
machine. Each row has the median wall-clock time (what the targets are about) and the median CPU time. A
benchmark reports; it exits 0 even when a target is missed, unless --check is given; 2 when a command failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pygit2
from history import HISTORY_PER_MODEL, add_history
from report import command_options, render
from run import BRANCH, BenchRepo, gitopsd_command, model_name, model_yaml

_BLOB = pygit2.enums.FileMode.BLOB
_TREE = pygit2.enums.FileMode.TREE


#: An operator's configuration of the kind the quick settled pass applies to (docs/architecture.md): the
#: built-in `local` backend with settings of its own, output limits, data roots.
OPERATOR_CONFIG = """\
data_roots = ["/nonexistent/data"]

[backends.local]
type = "local"
settings = { max_parallel = 2, grace_s = 5 }

[output_limits]
metrics_bytes = 2000000
"""


class BenchError(Exception):
    """A command failed: the benchmark did not measure what it claims to."""


@dataclass(frozen=True, kw_only=True)
class Row:
    name: str
    measured_ms: float
    target_ms: float | None
    samples_ms: tuple[float, ...]
    cpu_ms: float
    cpu_samples_ms: tuple[float, ...]

    @property
    def verdict(self) -> str:
        if self.target_ms is None:
            return "INFO"
        return "PASS" if self.measured_ms <= self.target_ms else "FAIL"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sample:
    """One command: wall-clock and CPU (user + system) milliseconds. On a shared machine the wall clock also
    counts waiting for a core; the CPU time does not."""

    wall_ms: float
    cpu_ms: float


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sampled(argv: list[str], env: dict[str, str]) -> tuple[Sample, subprocess.CompletedProcess[str]]:
    """Run a command, output to /dev/null and stderr kept: its sample and what it did."""
    cpu = _cpu_s()
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, check=False)
    return Sample(wall_ms=(time.perf_counter() - start) * 1000, cpu_ms=(_cpu_s() - cpu) * 1000), done


def timed(argv: list[str], env: dict[str, str]) -> Sample:
    sample, done = sampled(argv, env)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return sample


def edit_one(repo: BenchRepo, index: int, round_: int) -> None:
    """Commit a change of model `index` that keeps it suspended: one new blob, nothing to submit."""
    commit = repo.repo[repo.head]
    assert isinstance(commit, pygit2.Commit)
    old_models = commit.tree["models"]
    assert isinstance(old_models, pygit2.Tree)
    text = model_yaml(index, suspend=True).replace("python3 train.py", f"python3 train.py --round {round_}")
    models = repo.repo.TreeBuilder(old_models)
    models.insert(f"{model_name(index)}.yaml", repo.repo.create_blob(text.encode()), _BLOB)
    root = repo.repo.TreeBuilder(commit.tree)
    root.insert("models", models.write(), _TREE)
    repo.head = repo._commit(root.write(), f"Edit {model_name(index)}", [repo.head])


def row(name: str, samples: list[Sample], target: float | None) -> Row:
    wall = [s.wall_ms for s in samples]
    cpu = [s.cpu_ms for s in samples]
    measured, cpu_median = statistics.median(wall), statistics.median(cpu)
    shown = ", ".join(f"{s.wall_ms:.0f}" for s in samples)
    say(f"{name}: {measured:,.0f} ms wall, {cpu_median:,.0f} ms CPU (wall samples: {shown})")
    return Row(name=name, measured_ms=measured, target_ms=target, samples_ms=tuple(wall), cpu_ms=cpu_median,
               cpu_samples_ms=tuple(cpu))  # fmt: skip


def measure(commands: list[str], models: int, runs: int, work: Path) -> list[Row]:
    """Every measurement for each of `commands` (the first is the one measured against the targets; another is
    timed alternately with it, run by run, so that both see the same load on a shared machine)."""
    start = time.perf_counter()
    repo = BenchRepo(work / "repo.git", models)
    say(f"generated and committed {models} specs in {time.perf_counter() - start:.1f} s")
    config = work / "config"  # no operator configuration: the built-in local backend
    config.mkdir()
    operator = work / "operator.toml"  # and, in other state directories, an operator's configuration
    operator.write_text(OPERATOR_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPSD_")}
    env["XDG_CONFIG_HOME"] = str(config)
    url = str(repo.path)
    labels = ["", *(f" [{c}]" for c in commands[1:])]
    states = [str(work / f"state{i}") for i in range(len(commands))]
    configured = [str(work / f"configured{i}") for i in range(len(commands))]
    found: dict[tuple[str, int], list[Sample]] = {}

    def run(what: str, index: int, *args: str) -> None:
        found.setdefault((what, index), []).append(timed([commands[index], "--state-dir", *args], env))

    tree = work / "tree"  # a pull request's checkout, for `gitopsd validate`
    subprocess.run(["git", "clone", "-q", url, str(tree)], check=True)
    for attempt in range(runs):
        for i in range(len(commands)):
            run("cold", i, str(work / f"fresh{i}-{attempt}"), "plan", "--repo", url)
            run("validate", i, str(work / f"fresh{i}-{attempt}"), "validate", str(tree))
    for i, state in enumerate(states):
        for _ in range(2):  # untimed: the first pass fills the state directory (and its cache)
            timed([commands[i], "--state-dir", state, "reconcile", "--once", "--repo", url], env)
            timed([commands[i], "--state-dir", configured[i], "--config", str(operator), "reconcile", "--once",
                   "--repo", url], env)  # fmt: skip
    for _ in range(runs):
        for i, state in enumerate(states):
            run("warm reconcile", i, state, "reconcile", "--once")
            run("warm configured", i, configured[i], "--config", str(operator), "reconcile", "--once")
            run("warm plan", i, state, "plan")
            run("warm markdown", i, state, "plan", "--format", "markdown")
            run("warm json", i, state, "plan", "--format", "json")
    history = [str(work / f"history{i}") for i in range(len(commands))]
    added = 0
    for i, state in enumerate(history):  # the warm state directory, and a registry 100,000 versions long
        shutil.copytree(states[i], state)
        added = add_history(Path(state), [model_name(i) for i in range(models)], HISTORY_PER_MODEL)
        for _ in range(2):  # untimed: the first pass sees the new history, the second writes the record again
            timed([commands[i], "--state-dir", state, "reconcile", "--once"], env)
    for _ in range(runs):
        for i, state in enumerate(history):
            run("history reconcile", i, state, "reconcile", "--once")
            run("history plan", i, state, "plan")
    for round_ in range(runs):
        edit_one(repo, round_, round_)
        for i, state in enumerate(states):
            run("first plan", i, state, "plan")
            run("first reconcile", i, state, "reconcile", "--once")
    names: dict[str, tuple[str, int | None]] = {
        "cold": (f"`plan`, cold (no state dir), {models} specs", 1000),
        "validate": (f"`validate` of a working tree, {models} specs", None),
        "warm reconcile": ("`reconcile --once`, warm, nothing changed", 150),
        "warm configured": ("`reconcile --once`, warm, nothing changed, with an operator configuration", 150),
        "warm plan": ("`plan`, warm, nothing changed", 150),
        "warm markdown": ("`plan --format markdown`, warm, nothing changed (a pull-request comment)", None),
        "warm json": ("`plan --format json`, warm, nothing changed, piped", None),
        "history reconcile": (f"`reconcile --once`, warm, nothing changed, {added:,} versions in the registry", 150),
        "history plan": (f"`plan`, warm, nothing changed, {added:,} versions in the registry", 150),
        "first plan": ("first `plan` after a one-spec commit", 200),
        "first reconcile": ("first `reconcile --once` after a one-spec commit", 200),
    }
    rows = [
        row(f"{name}, median of {runs}{labels[i]}", found[(what, i)], target if i == 0 else None)
        for what, (name, target) in names.items()
        for i in range(len(commands))
    ]
    start_up = [timed([sys.executable, "-c", "pass"], env) for _ in range(runs)]
    rows.append(row(f"`python -c pass`, median of {runs} (interpreter start-up, for reference)", start_up, None))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=10_000, help="model specs (default 10000)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    parser.add_argument("--against", help="another gitopsd command, timed alternately with it (rows marked)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    command_options(parser, "specload.json")
    args = parser.parse_args(argv)
    gitopsd = args.gitopsd or gitopsd_command()
    load = [os.getloadavg()[0]]
    try:
        with tempfile.TemporaryDirectory(prefix="gitopsd-specload-") as tmp:
            commands = [gitopsd, *([args.against] if args.against else [])]
            rows = measure(commands, args.models, args.runs, Path(tmp))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    load.append(os.getloadavg()[0])
    cells = [(f"{r.name} (CPU {r.cpu_ms:,.0f} ms)", f"{r.measured_ms:,.0f} ms",
              "-" if r.target_ms is None else f"<= {r.target_ms:g} ms", r.verdict) for r in rows]  # fmt: skip
    print(f"\n{render(cells)}\n")
    doc = {
        "gitopsd": gitopsd,
        "models": args.models,
        "branch": BRANCH,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_1m": {"start": load[0], "end": load[1]},
        "results": [{**asdict(r), "verdict": r.verdict} for r in rows],
        "missed": [r.name for r in rows if r.verdict == "FAIL"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out} (1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end)")
    if doc["missed"]:
        print(f"missed target(s): {', '.join(doc['missed'])}", file=sys.stderr)
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
