"""gitopsd side by side with the tools its users would otherwise use: DVC and MLflow (optional, not in `make bench`).

Reproduces the comparison of issue 16 so anyone can check the ratios on their machine:
- `gitopsd plan` (warm state directory, nothing changed) vs `dvc status` (every stage up to date), at 1,000 and
  10,000 specs: a bare Git repository of suspended models (`bench/run.py`'s) vs a DVC project of as many stages,
  each with one dependency and one output, locked by `dvc commit` (nothing is trained or run);
- registering versions, metadata only and with a 1 KiB artifact: gitopsd's registry (and its file store) vs
  MLflow's model registry (SQLite backend store; one run with a logged artifact per version for the second);
- `gitopsd status --json` vs an MLflow listing of as many registered models, each with one version.

Every measurement is a whole process, as a user runs it (interpreter start, imports, the work, exit), and the
two tools alternate, round after round, so a burst of load on a shared machine falls on both; results are
medians. MLflow and DVC go into their own virtualenv (bench/out/peers-venv, `pip install mlflow dvc`, once); if
they cannot be installed (no network, no wheel for this Python) the script says so and exits 0. Writes
bench/out/peers.json. A measurement that does not do what it claims (an unexpected exit status or output)
stops the script with exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from report import render  # noqa: E402
from run import BenchRepo  # noqa: E402
from sidevenv import venv_python  # noqa: E402

PEERS = ("mlflow", "dvc")
GITOPSD = str(Path(sys.executable).parent / "gitopsd")

#: A child of this interpreter: registers COUNT versions of one model in a fresh state directory.
GITOPSD_REGISTER = """
import os, sys, time
from pathlib import Path
from gitopsd.registry.filestore import FileStore
from gitopsd.registry.recovery import save_version
from gitopsd.registry.store import ArtifactRef
from gitopsd.registry.versions import Registry
state, count, artifact = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
registry = Registry(state / "registry.db")
store = FileStore(state / "artifacts") if artifact else None
for i in range(count):
    if store is not None:
        src = state / f"model-{i}.bin"
        src.write_bytes(os.urandom(1024))
        ref = store.put(src)
    else:
        ref = ArtifactRef(sha256=f"{i:064x}", size=1024, uri=f"s3://bucket/sha256/{i:064x}")
    version = registry.register(model="peer", run_id=f"run-{i}", run_key=f"key-{i}", artifact=ref,
                                metrics={"loss": 0.1, "accuracy": 0.95},
                                gates=[{"gate": "accuracy >= 0.9", "value": 0.95, "passed": True}],
                                lineage={"commit": "c" * 40, "run_id": f"run-{i}"}, created_at=time.time())
    if store is not None:
        save_version(store, version)
registry.close()
print(count)
"""

#: A child of the peers' interpreter: registers COUNT versions of one new model in an MLflow SQLite store.
MLFLOW_REGISTER = """
import os, sys, tempfile
from pathlib import Path
import mlflow
from mlflow.tracking import MlflowClient
name, count, artifact = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
client = MlflowClient()
client.create_registered_model(name)
scratch = Path(tempfile.mkdtemp())
for i in range(count):
    if artifact:
        with mlflow.start_run() as run:
            src = scratch / f"model-{i}.bin"
            src.write_bytes(os.urandom(1024))
            mlflow.log_metrics({"loss": 0.1, "accuracy": 0.95})
            mlflow.log_artifact(str(src))
            client.create_model_version(name, f"runs:/{run.info.run_id}/{src.name}", run.info.run_id,
                                        tags={"commit": "c" * 40})
    else:
        client.create_model_version(name, f"s3://bucket/models/{name}/{i}", tags={"commit": "c" * 40})
print(count)
"""

#: A child of the peers' interpreter: every registered model and its latest versions, as JSON on stdout.
MLFLOW_LIST = """
import json
from mlflow.tracking import MlflowClient
client = MlflowClient()
models, token = [], None
while True:
    page = client.search_registered_models(max_results=1000, page_token=token)
    models += [{"name": m.name, "latest": [{"version": v.version, "source": v.source, "status": v.status}
                                           for v in m.latest_versions]} for m in page]
    token = page.token
    if not token:
        break
print(json.dumps({"models": models}))
"""

MLFLOW_MODELS = """
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient()
for i in range(int(sys.argv[1])):
    client.create_registered_model(f"model-{i:05d}")
    client.create_model_version(f"model-{i:05d}", f"s3://bucket/models/{i}")
"""


class BenchError(Exception):
    """The benchmark did not measure what it claims to measure."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(argv: list[str], *, env: dict[str, str], cwd: Path, expect: Callable[[subprocess.CompletedProcess[str]], bool],
        what: str) -> float:  # fmt: skip
    """Seconds `argv` took as a whole process; BenchError if `expect` does not hold of what it did."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - started
    if not expect(done):
        raise BenchError(f"{what}: exit {done.returncode}\n{done.stdout[-1000:]}\n{done.stderr[-2000:]}")
    return elapsed


def alternate(rounds: int, ours: Callable[[int], float], theirs: Callable[[int], float]) -> tuple[float, float]:
    """Medians of `rounds` runs of each, alternating (ours first in even rounds, theirs in odd ones)."""
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            a.append(ours(i))
            b.append(theirs(i))
        else:
            b.append(theirs(i))
            a.append(ours(i))
    return statistics.median(a), statistics.median(b)


def ok(code: int = 0, text: str = "") -> Callable[[subprocess.CompletedProcess[str]], bool]:
    return lambda done: done.returncode == code and text in done.stdout


def dvc_project(path: Path, stages: int, dvc: str, env: dict[str, str]) -> None:
    """A DVC project (no Git) of `stages` stages, each `cp data/N.txt out/N.txt`, locked and up to date."""
    path.mkdir(parents=True)
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=path, env=env, check=True)
    (path / "data").mkdir()
    (path / "out").mkdir()
    lines = ["stages:"]
    for i in range(stages):
        (path / "data" / f"{i}.txt").write_text(f"input {i}\n")
        (path / "out" / f"{i}.txt").write_text(f"input {i}\n")
        lines += [f"  s{i}:", f"    cmd: cp data/{i}.txt out/{i}.txt", f"    deps: [data/{i}.txt]",
                  f"    outs: [out/{i}.txt]"]  # fmt: skip
    (path / "dvc.yaml").write_text("\n".join(lines) + "\n")
    subprocess.run([dvc, "commit", "-f", "-q"], cwd=path, env=env, check=True, capture_output=True)


def plan_vs_dvc(work: Path, specs: int, rounds: int, peers: Path, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    repo = BenchRepo(work / f"repo-{specs}.git", specs)
    state = work / f"state-{specs}"
    gitopsd = [GITOPSD, "--state-dir", str(state)]
    run([*gitopsd, "reconcile", "--repo", str(repo.path)], env=env, cwd=work, expect=ok(), what="reconcile")
    dvc = str(peers.parent / "dvc")
    project = work / f"dvc-{specs}"
    dvc_project(project, specs, dvc, env)
    say(f"{specs} specs: repository, state directory and DVC project ready in {time.perf_counter() - started:.0f} s")
    ours, theirs = alternate(
        rounds,
        lambda _: run([*gitopsd, "plan", "--repo", str(repo.path)], env=env, cwd=work, expect=ok(), what="plan"),
        lambda _: run([dvc, "status"], env=env, cwd=project, expect=ok(0, "up to date"), what="dvc status"),
    )
    return {"name": f"`gitopsd plan` vs `dvc status`, {specs:,} specs", "gitopsd_s": ours, "peer_s": theirs,
            "ratio": theirs / ours}  # fmt: skip


def register(work: Path, count: int, artifact: bool, rounds: int, peers: Path, env: dict[str, str]) -> dict[str, Any]:
    flag = "1" if artifact else "0"
    done = ok(0, str(count))

    def ours(i: int) -> float:
        state = work / f"register-{flag}-{i}"
        state.mkdir()
        argv = [sys.executable, "-c", GITOPSD_REGISTER, str(state), str(count), flag]
        return run(argv, env=env, cwd=work, expect=done, what="gitopsd register")

    def theirs(i: int) -> float:
        argv = [str(peers), "-c", MLFLOW_REGISTER, f"peer-{flag}-{i}", str(count), flag]
        return run(argv, env=env, cwd=work, expect=done, what="mlflow register")

    ours_s, theirs_s = alternate(rounds, ours, theirs)
    what = "with a 1 KiB artifact" if artifact else "metadata only"
    return {"name": f"registering {count:,} versions, {what} (per second)", "gitopsd_s": ours_s, "peer_s": theirs_s,
            "gitopsd_per_s": count / ours_s, "peer_per_s": count / theirs_s, "ratio": theirs_s / ours_s}  # fmt: skip


def status_vs_listing(work: Path, models: int, rounds: int, peers: Path, env: dict[str, str]) -> dict[str, Any]:
    from ui import build  # the dashboard benchmark's state directory: models with a run and a version each

    state = work / "status-state"
    build(state, models=models, runs=1, points=10)
    listing_env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'listing.db'}"}
    subprocess.run([str(peers), "-c", MLFLOW_MODELS, str(models)], env=listing_env, cwd=work, check=True,
                   capture_output=True)  # fmt: skip

    def has_models(done: subprocess.CompletedProcess[str]) -> bool:
        return done.returncode == 0 and len(json.loads(done.stdout)["models"]) == models

    ours, theirs = alternate(
        rounds,
        lambda _: run(
            [GITOPSD, "--state-dir", str(state), "status", "--json"],
            env=env,
            cwd=work,
            expect=has_models,
            what="status --json",
        ),
        lambda _: run(
            [str(peers), "-c", MLFLOW_LIST], env=listing_env, cwd=work, expect=has_models, what="mlflow listing"
        ),
    )
    return {"name": f"`gitopsd status --json` vs an MLflow listing, {models:,} models", "gitopsd_s": ours,
            "peer_s": theirs, "ratio": theirs / ours}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", type=int, nargs="+", default=[1000, 10_000], help="sizes of the plan rows")
    parser.add_argument("--versions", type=int, default=1000, help="versions registered per process")
    parser.add_argument("--models", type=int, default=1000, help="models listed by the status row")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each tool per row (medians)")
    parser.add_argument("--venv", type=Path, default=BENCH / "out" / "peers-venv")
    parser.add_argument("--no-install", action="store_true", help="only use an existing peers virtualenv")
    parser.add_argument("--only", choices=["plan", "register", "status"], nargs="+")
    opts = parser.parse_args()
    peers = venv_python(opts.venv, PEERS, PEERS, install=not opts.no_install)
    if peers is None:
        print(f"MLflow and DVC are not installed in {opts.venv} and could not be (`pip install mlflow dvc`): "
              "nothing compared")  # fmt: skip
        return 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITOPSD_", "MLFLOW_"))}
    env |= {"DVC_NO_ANALYTICS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "GIT_TERMINAL_PROMPT": "0"}
    only = set(opts.only or ["plan", "register", "status"])
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="gitopsd-bench-peers-") as tmp:
            work = Path(tmp)
            env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "XDG_CONFIG_HOME": f"{tmp}/config",
                    "HOME": tmp}  # fmt: skip
            if "register" in only:
                # MLflow creates its schema on first use: not part of any measurement
                subprocess.run([str(peers), "-c", MLFLOW_REGISTER, "warmup", "1", "1"], env=env, cwd=work,
                               check=True, capture_output=True)  # fmt: skip
                for artifact in (False, True):
                    results.append(register(work, opts.versions, artifact, opts.rounds, peers, env))
                    say(results[-1]["name"] + " done")
            if "status" in only:
                results.append(status_vs_listing(work, opts.models, opts.rounds, peers, env))
                say(results[-1]["name"] + " done")
            if "plan" in only:
                for specs in opts.specs:
                    results.append(plan_vs_dvc(work, specs, opts.rounds, peers, env))
                    say(results[-1]["name"] + " done")
    except BenchError as exc:
        print(f"benchmark error: {exc}", file=sys.stderr)
        return 2

    def shown(r: dict[str, Any], side: str) -> str:
        if f"{side}_per_s" in r:
            return f"{r[f'{side}_per_s']:,.0f}/s"
        return f"{r[f'{side}_s'] * 1000:,.0f} ms"

    rows = [(r["name"], shown(r, "gitopsd"), shown(r, "peer"), f"{r['ratio']:.1f}x") for r in results]
    table = render(rows).splitlines()
    table[0] = table[0].replace("measured", "gitopsd ").replace("  target", "    peer").replace("result", " ratio")
    print("\n".join(table))
    print(f"(medians of {opts.rounds} alternating whole-process runs; load average {os.getloadavg()[0]:.2f}; "
          f"{os.cpu_count()} CPUs)")  # fmt: skip
    out = BENCH / "out" / "peers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"options": {k: str(v) for k, v in vars(opts).items()}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
