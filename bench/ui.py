"""Is the dashboard's data fast on a login node? The overview of 1,000 models, and a model page of 20 runs x
10,000 metric points.

Builds a synthetic state directory with the real state and registry stores (no training): 1,000 models, each
with a condition, a registered run and a version, and one model with 20 runs whose metrics files hold 10,000
lines each (step, loss, accuracy, gpu_util). Measures, in-process, what the HTTP API calls: `views.overview`,
and `views.model_page` plus one `views.run_metrics` (1,000 points each) per run, first with an empty curve cache
(first load: every file parsed) and then cached (what every 2 s poll of an open page costs), and a poll with
`since` at the end of each file. Medians of `--repeat` runs. Targets: overview < 1 s, cached model page < 1 s.
Writes bench/out/ui.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from report import render  # noqa: E402

from gitopsd.model import Condition, ConditionType, Phase, Reason  # noqa: E402
from gitopsd.reconcile.state import ModelRow, RunRecord, SourceRow, StateStore  # noqa: E402
from gitopsd.registry.store import ArtifactRef  # noqa: E402
from gitopsd.registry.versions import Registry  # noqa: E402
from gitopsd.ui.views import UiContext, clear_caches, model_page, overview, run_metrics  # noqa: E402

COMMIT = "c" * 40


def build(state_dir: Path, *, models: int, runs: int, points: int) -> None:
    now = time.time()
    snapshot = {"outputs": {"metrics": "metrics.jsonl"}, "validate": ["accuracy >= 0.9", "loss < 0.5"]}
    with StateStore(state_dir / "state.db") as store:
        store.set_source(SourceRow(url="https://forge.example/org/models.git", applied_commit=COMMIT,
                                   fetched_commit=COMMIT))  # fmt: skip
        rows = {f"model-{i:04d}": ModelRow(name=f"model-{i:04d}", spec_path=f"models/{i}.yaml", run_key=f"k{i}",
                                           spec_digest="d", backend="local" if i % 2 else "slurm", suspend=False,
                                           labels=json.dumps({"team": f"team-{i % 7}"}))
                for i in range(models)}  # fmt: skip
        store.sync_models(rows, {})
        store.set_conditions(
            {n: Condition(type=ConditionType.READY, reason=Reason.SUCCEEDED, message="registered") for n in rows}, {}
        )
        registry = Registry(state_dir / "registry.db")
        for i, name in enumerate(rows):
            count = runs if i == 0 else 1
            for r in range(count):
                run_id = f"{name}-{r:02d}"
                run_dir = state_dir / "runs" / run_id
                run = RunRecord(id=run_id, model=name, run_key=f"k{i}-{r}", spec_digest="d", commit_id=COMMIT,
                                spec_path=f"models/{i}.yaml", backend="local", phase=Phase.REGISTERED, attempt=1,
                                run_dir=str(run_dir), created_at=now + r, updated_at=now + r, reason="Succeeded",
                                metrics={"loss": 0.1, "accuracy": 0.95}, version=r + 1)  # fmt: skip
                store.create_run(run, message="created", snapshot=snapshot)
                registry.register(model=name, run_id=run_id, run_key=run.run_key,
                                  artifact=ArtifactRef(sha256=f"{i:032x}{r:032x}", size=1, uri="file:///a"),
                                  metrics={"loss": 0.1, "accuracy": 0.95},
                                  gates=[{"gate": "accuracy >= 0.9", "value": 0.95, "passed": True}],
                                  lineage={"commit": COMMIT, "run_id": run_id}, created_at=now + r)  # fmt: skip
                if i == 0:
                    (run_dir / "out").mkdir(parents=True)
                    with (run_dir / "out" / "metrics.jsonl").open("w") as handle:
                        for step in range(points):
                            line = {"step": step, "loss": 1.0 / (step + 1) + r / 100, "accuracy": step / points,
                                    "gpu_util": 50 + step % 40}  # fmt: skip
                            handle.write(json.dumps(line) + "\n")
        registry.close()


def timed(fn: Callable[[], Any], repeat: int, before: Callable[[], None] = lambda: None) -> list[float]:
    samples = []
    for _ in range(repeat):
        before()
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitopsd-bench-ui-") as tmp:
        state_dir = Path(tmp) / "state"
        started = time.perf_counter()
        build(state_dir, models=opts.models, runs=opts.runs, points=opts.points)
        built = time.perf_counter() - started
        ctx = UiContext(sources={"models": state_dir})
        doc = overview(ctx)
        assert len(doc["models"]) == opts.models, len(doc["models"])
        page = model_page(ctx, "models", "model-0000")
        assert page is not None and len(page["runs"]) == opts.runs
        ids = [run["id"] for run in page["runs"]]

        def model_page_load() -> None:
            assert model_page(ctx, "models", "model-0000") is not None
            for run_id in ids:
                curves = run_metrics(ctx, "models", run_id)
                assert curves is not None and curves["total_points"] == opts.points, curves and curves["total_points"]

        ends = {run_id: (run_metrics(ctx, "models", run_id) or {})["offset"] for run_id in ids}

        def poll() -> None:
            for run_id in ids:
                run_metrics(ctx, "models", run_id, since=ends[run_id])

        results = [
            (f"overview, {opts.models} models", timed(lambda: overview(ctx), opts.repeat), 1.0),
            (f"model page + {opts.runs} x {opts.points} points, first load",
             timed(model_page_load, opts.repeat, clear_caches), None),
            (f"model page + {opts.runs} x {opts.points} points, cached", timed(model_page_load, opts.repeat), 1.0),
            (f"live poll of {opts.runs} runs (since=end)", timed(poll, opts.repeat), None),
        ]  # fmt: skip
    out: list[dict[str, Any]] = []
    for name, samples, target in results:
        median = statistics.median(samples)
        out.append({"name": name, "median_s": median, "samples_s": samples, "target_s": target,
                    "ok": target is None or median < target})  # fmt: skip
    rows = [(r["name"], f"{r['median_s'] * 1000:.0f} ms", f"< {r['target_s'] * 1000:.0f} ms" if r["target_s"] else "-",
             "PASS" if r["ok"] else "FAIL") for r in out]  # fmt: skip
    print(render(rows))
    print(f"(state directory built in {built:.1f} s)")
    directory = ROOT / "bench" / "out"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ui.json").write_text(json.dumps({"options": vars(opts), "results": out}, indent=2))
    return 1 if opts.check and not all(r["ok"] for r in out) else 0


if __name__ == "__main__":
    raise SystemExit(main())
