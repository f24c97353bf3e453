"""`make bench`: how long the reconcile core takes on a repository of 10,000 models.

The daemon promises that an idle pass costs almost nothing and that one changed spec costs about one parse,
whatever the size of the repository; `gitopsd status` must answer at a login-node prompt. This script builds a
real Git repository (bare, committed with pygit2) in a temporary directory, drives a real `Reconciler` on it
in-process, runs the real `gitopsd status` command as a subprocess, and reports each measurement against its
target as a table and as bench/out/results.json.

Every model is `suspend: true` for the initial load, so the planner and summarizer consider all 10,000 of
them while nothing is submitted (training 10,000 jobs first would take hours). Each "one spec changes"
repetition commits one model un-suspended: that pass parses one spec, recomputes keys, plans, and really
submits one local run, which is then left to finish (untimed) so the next measurement starts converged again.

A benchmark reports; it does not fail the build: exit 0 even when a target is missed, unless --check is given.
Exit 2 means the benchmark could not measure what it claims to (e.g. a no-op pass that did something).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import math
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pygit2
from history import HISTORY_PER_MODEL, add_history
from report import render

from gitopsd.model import ConditionType
from gitopsd.reconcile.planner import Submit
from gitopsd.reconcile.reconciler import PassResult, Reconciler
from gitopsd.spec.operator import Operator, OperatorBackend

OUT_DIR = Path(__file__).resolve().parent / "out"
BRANCH = "main"
NOOP_PASSES = 20
CHANGE_PASSES = 5
STATUS_RUNS = 5
SETTLE_TIMEOUT_S = 120.0
_BLOB = pygit2.enums.FileMode.BLOB
_TREE = pygit2.enums.FileMode.TREE

#: The operator's one local backend, two trainings at a time.
OPERATOR = Operator(backends={"local": OperatorBackend(type="local", settings={"max_parallel": 2})})
REPO_YAML = """\
apiVersion: gitopsd/v1
kind: Repository
defaults:
  backend: local
  retries: 0
  timeout: 5m
"""

TRAIN_PY = """\
import json, os, pathlib


out = pathlib.Path(os.environ["GITOPSD_OUTPUT_DIR"])
out.mkdir(parents=True, exist_ok=True)
(out / "model.json").write_text(json.dumps({"index": os.environ.get("INDEX")}))
with open(os.environ["GITOPSD_METRICS_FILE"], "a") as handle:
    handle.write(json.dumps({"loss": 0.0, "accuracy": 1.0}) + "\\n")
"""


class BenchError(Exception):
    """The benchmark did not measure what it claims to measure."""


def model_name(index: int) -> str:
    return f"m{index:05d}"


def model_yaml(index: int, *, suspend: bool) -> str:
    return f"""\
apiVersion: gitopsd/v1
kind: Model
metadata:
  name: {model_name(index)}
spec:
  suspend: {"true" if suspend else "false"}
  train:
    command: python3 train.py
    workdir: src
    env:
      INDEX: "{index}"
  outputs:
    artifact: model.json
    metrics: metrics.jsonl
"""


# ---- the repository ---------------------------------------------------------------------------------------


class BenchRepo:
    """A bare repository of `count` suspended models; `unsuspend(i)` commits one model's change."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        self.repo = pygit2.init_repository(str(path), bare=True, initial_head=BRANCH)
        self.sig = pygit2.Signature("gitopsd bench", "bench@localhost")
        models = self.repo.TreeBuilder()
        for index in range(count):
            blob = self.repo.create_blob(model_yaml(index, suspend=True).encode())
            models.insert(f"{model_name(index)}.yaml", blob, _BLOB)
        src = self.repo.TreeBuilder()
        src.insert("train.py", self.repo.create_blob(TRAIN_PY.encode()), _BLOB)
        root = self.repo.TreeBuilder()
        root.insert("gitops.yaml", self.repo.create_blob(REPO_YAML.encode()), _BLOB)
        root.insert("models", models.write(), _TREE)
        root.insert("src", src.write(), _TREE)
        self.head = self._commit(root.write(), f"Declare {count} suspended models", [])
        # Packed, as a clone receives it and as git itself leaves it: `git gc --auto`, which commits and fetches
        # run, packs a repository past 6,700 loose objects. pygit2 writes each object loose, and reading 10,000
        # loose blobs (a file each) would time the file system, not gitopsd. Later commits stay loose.
        subprocess.run(["git", "-C", str(path), "repack", "-a", "-d", "-q"], check=True)

    def _commit(self, tree: pygit2.Oid, message: str, parents: list[pygit2.Oid]) -> pygit2.Oid:
        return self.repo.create_commit(f"refs/heads/{BRANCH}", self.sig, self.sig, message, tree, parents)

    def unsuspend(self, index: int) -> str:
        """Commit a change of one spec (suspend: false) on top of the current head; return the commit id."""
        commit = self.repo[self.head]
        assert isinstance(commit, pygit2.Commit)
        old_root = commit.tree
        old_models = old_root["models"]
        assert isinstance(old_models, pygit2.Tree)
        models = self.repo.TreeBuilder(old_models)
        blob = self.repo.create_blob(model_yaml(index, suspend=False).encode())
        models.insert(f"{model_name(index)}.yaml", blob, _BLOB)
        root = self.repo.TreeBuilder(old_root)
        root.insert("models", models.write(), _TREE)
        self.head = self._commit(root.write(), f"Train {model_name(index)}", [self.head])
        return str(self.head)


# ---- measuring --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Result:
    name: str
    measured_ms: float
    target_ms: float | None
    samples_ms: tuple[float, ...]
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target_ms is None:
            return "INFO"
        return "PASS" if self.measured_ms < self.target_ms else "FAIL"


def p95(samples: list[float]) -> float:
    """Nearest-rank 95th percentile (the 19th of 20 sorted samples)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def timed_pass(rec: Reconciler) -> tuple[float, PassResult]:
    start = time.perf_counter()
    result = rec.reconcile("bench")
    return (time.perf_counter() - start) * 1000, result


def expect(result: PassResult, what: str, *, submits: int) -> None:
    if result.error:
        raise BenchError(f"{what}: the pass reported an error: {result.error}")
    actions = list(result.actions)
    if submits == 0 and actions:
        raise BenchError(f"{what}: expected no action, got {len(actions)}: {actions[:3]}")
    if submits and (len(actions) != submits or not all(isinstance(a, Submit) for a in actions)):
        raise BenchError(f"{what}: expected {submits} Submit action(s), got {actions}")


def settle(rec: Reconciler, trained: str) -> None:
    """Let the submitted run finish and be registered (untimed), so the next pass starts converged."""
    result = rec.reconcile_until_settled(timeout_s=SETTLE_TIMEOUT_S, trigger="bench")
    if result.active:
        raise BenchError(f"{result.active} run(s) still in flight after {SETTLE_TIMEOUT_S:g} s")
    condition = rec.state.conditions().get(trained)
    if condition is None or condition.type is not ConditionType.READY:
        raise BenchError(f"model {trained} did not become Ready after its run: {condition}")


def time_command(argv: list[str], runs: int) -> list[float]:
    samples: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        samples.append((time.perf_counter() - start) * 1000)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return samples


def gitopsd_command() -> str:
    beside = Path(sys.executable).parent / "gitopsd"
    found = str(beside) if beside.exists() else shutil.which("gitopsd")
    if found is None:
        raise BenchError(f"no gitopsd command next to {sys.executable} or on PATH: run `make install` first")
    return found


def profiled(out: Path, action: Callable[[], PassResult], top: int) -> tuple[PassResult, str]:
    """Run `action` under cProfile; save the profile as `out`; return the top functions, cumulative."""
    profile = cProfile.Profile()
    result = profile.runcall(action)
    out.parent.mkdir(parents=True, exist_ok=True)
    profile.dump_stats(str(out))
    text = io.StringIO()
    pstats.Stats(profile, stream=text).strip_dirs().sort_stats("cumulative").print_stats(top)
    return result, text.getvalue()


# ---- the benchmark ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Options:
    models: int
    check: bool
    profile: bool
    top: int
    out: Path


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def summarize(
    name: str, samples: list[float], target_ms: float | None, note: str = "", *, tail: bool = False
) -> Result:
    """One result row: the median of `samples` (or their p95 with `tail`), shown on stderr as it is known."""
    measured = p95(samples) if tail else statistics.median(samples)
    say(f"{name}: {measured:,.1f} ms (samples: {', '.join(f'{s:.0f}' for s in samples)})")
    return Result(name=name, measured_ms=measured, target_ms=target_ms, samples_ms=tuple(samples), note=note)


def run(opts: Options, work: Path) -> tuple[list[Result], dict[str, str]]:
    results: list[Result] = []
    profiles: dict[str, str] = {}
    start = time.perf_counter()
    repo = BenchRepo(work / "repo.git", opts.models)
    say(f"generated and committed {opts.models} specs in {time.perf_counter() - start:.1f} s")

    state_dir = work / "state"
    rec = Reconciler(state_dir=state_dir, url=str(repo.path), operator=OPERATOR)
    try:
        cold_ms, cold = timed_pass(rec)
        expect(cold, "cold pass", submits=0)
        name = f"cold pass ({opts.models} specs, all suspended)"
        results.append(summarize(name, [cold_ms], None, "full load; no target"))

        noop: list[float] = []
        for _ in range(NOOP_PASSES):
            ms, result = timed_pass(rec)
            expect(result, "no-op pass", submits=0)
            noop.append(ms)
        results.append(summarize(f"no-op pass, median of {NOOP_PASSES}", noop, 50))
        results.append(summarize(f"no-op pass, p95 of {NOOP_PASSES}", noop, 50, tail=True))

        change: list[float] = []
        for index in range(CHANGE_PASSES):
            repo.unsuspend(index)
            ms, result = timed_pass(rec)
            expect(result, f"one-spec pass {index + 1}", submits=1)
            change.append(ms)
            settle(rec, model_name(index))
        name = f"one spec changed (1 submit), median of {CHANGE_PASSES}"
        results.append(summarize(name, change, 300, "each a new commit un-suspending one model; its run settles"))

        if opts.profile:
            expect(rec.reconcile("bench"), "no-op pass before the profile", submits=0)  # as the timed ones: warm
            result, profiles["noop"] = profiled(opts.out.parent / "noop.prof", lambda: rec.reconcile("bench"), opts.top)
            expect(result, "profiled no-op pass", submits=0)
            repo.unsuspend(CHANGE_PASSES)
            result, profiles["one_spec"] = profiled(
                opts.out.parent / "one_spec.prof", lambda: rec.reconcile("bench"), opts.top
            )
            expect(result, "profiled one-spec pass", submits=1)
            settle(rec, model_name(CHANGE_PASSES))
    finally:
        rec.close()

    gitopsd = gitopsd_command()
    for label, extra in (("status", []), ("status --json", ["--json"])):
        times = time_command([gitopsd, "--state-dir", str(state_dir), "status", *extra], STATUS_RUNS)
        name = f"`gitopsd {label}` subprocess, median of {STATUS_RUNS}"
        results.append(summarize(name, times, 300, f"{opts.models} models, output to /dev/null"))
    times = time_command([sys.executable, "-c", "pass"], STATUS_RUNS)
    name = f"`python -c pass` subprocess, median of {STATUS_RUNS}"
    results.append(summarize(name, times, None, "interpreter start-up on this machine, for reference"))
    results.append(history_passes(opts, repo, state_dir))
    return results, profiles


def history_passes(opts: Options, repo: BenchRepo, state_dir: Path) -> Result:
    """The one-spec pass again after the state directory gained a long history (`bench/history.py`: ten versions
    of every model, their alias moves and their runs, one failed attempt each): a pass with work to do must pay for
    the models it plans, not for the past."""
    added = add_history(state_dir, [model_name(i) for i in range(opts.models)], HISTORY_PER_MODEL)
    rec = Reconciler(state_dir=state_dir, url=str(repo.path), operator=OPERATOR)
    try:
        expect(rec.reconcile("bench"), "first pass over the history", submits=0)  # untimed: a new process's load
        change: list[float] = []
        first = CHANGE_PASSES + 1  # after the models the passes above trained (the profiled one included)
        for index in range(first, first + CHANGE_PASSES):
            repo.unsuspend(index)
            ms, result = timed_pass(rec)
            expect(result, f"one-spec pass {index + 1} over the history", submits=1)
            change.append(ms)
            settle(rec, model_name(index))
    finally:
        rec.close()
    name = f"one spec changed (1 submit), {added:,} versions and their runs behind, median of {CHANGE_PASSES}"
    return summarize(name, change, 300, "the same pass after the history was added to the state directory")


def table(results: list[Result]) -> str:
    return render(
        [
            (r.name, f"{r.measured_ms:,.1f} ms", "-" if r.target_ms is None else f"< {r.target_ms:g} ms", r.verdict)
            for r in results
        ]
    )


def code_version() -> dict[str, Any]:
    """The commit of the code measured, and which of its gitopsd files differ from it, to compare runs."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
        return done.stdout.rstrip("\n") if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "gitopsd").splitlines()
    return {"commit": git("rev-parse", "HEAD") or None, "changed": [line[3:] for line in changed]}


def document(opts: Options, results: list[Result], elapsed_s: float, load: list[float]) -> dict[str, Any]:
    return {
        "setup": {
            "models": opts.models,
            "initial_state": "every model suspend: true (planned and summarized, nothing submitted)",
            "one_spec_change": "a commit sets suspend: false on one model; the pass submits one local run",
            "backend": "local, max_parallel: 2",
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "pygit2": version("pygit2"),
            "libgit2": pygit2.LIBGIT2_VERSION,
        },
        "code": code_version(),
        "elapsed_s": round(elapsed_s, 1),
        "load_average_1m": {"start": load[0], "end": load[1]},
        "results": [{**asdict(r), "verdict": r.verdict} for r in results],
        "missed": [r.name for r in results if r.verdict == "FAIL"],
    }


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--models", type=int, default=10_000, help="number of model specs (default 10000)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one extra no-op and one-spec pass (cProfile, untimed); "
        "writes noop.prof and one_spec.prof beside the JSON and prints the top functions",
    )
    parser.add_argument("--top", type=int, default=15, help="functions shown per profile (default 15)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "results.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.models < CHANGE_PASSES + 1:
        parser.error(f"--models must be at least {CHANGE_PASSES + 1}, got {args.models}")
    return Options(models=args.models, check=args.check, profile=args.profile, top=args.top, out=args.out)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    started = time.perf_counter()
    load = [os.getloadavg()[0]]
    try:
        with tempfile.TemporaryDirectory(prefix="gitopsd-bench-") as tmp:
            results, profiles = run(opts, Path(tmp))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    load.append(os.getloadavg()[0])
    for label, text in profiles.items():
        print(f"\n== cProfile of the {label} pass (top {opts.top} by cumulative time) ==\n{text.strip()}")
    print(f"\n{table(results)}\n")
    doc = document(opts, results, elapsed, load)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        f"wrote {opts.out} ({elapsed:.0f} s in all; 1-minute load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end, on {os.cpu_count()} CPUs)"
    )
    if doc["missed"]:
        print(f"missed target(s): {', '.join(doc['missed'])}", file=sys.stderr)
        return 1 if opts.check else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
