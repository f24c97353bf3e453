"""`make bench`: do the registry's listings stay fast and small in memory on a large registry?

Builds a `registry.db` of `--versions` versions (default 100,000) in a temporary state directory, through the
registry's own schema (its migrations) and plain SQL inserts in one transaction, so building takes seconds. The
rows look like what `gitopsd.reconcile.collect.lineage` records: commit and commit info, spec path and digest,
code tree, data digests, backend, job facts, times and, for the fine-tuned model, a `base` naming the version it
was trained from. One model (`--big-model-share` of the versions) has most of the history and alias moves; the
rest is spread over `--models` models. `--packages N` adds a package list of N entries to every version, twice
(in `job` and at the top of the lineage), as versions registered before issue 16's environment records carry it.

Then it runs the real command line as whole processes (`python -m gitopsd`), stdout to /dev/null (not a
terminal, as when piped; as bench/run.py times `status`), and reads each process's CPU time and peak RSS from
GNU time (`/usr/bin/time -f "%M %U %S"`; without it, from `resource.getrusage(RUSAGE_CHILDREN)`, whose peak the
parent's own high-water mark can inflate, so the build runs in a child process and this one stays small). Each
listing runs once untimed into a file, whose output is checked (the JSON parses and holds every row, the text
has a line per row: a listing that fails or loses rows stops the benchmark with exit 2), then `--repeat` times
timed; the table shows medians. CPU time is shown beside wall time because it depends less on what else the
machine runs.

Targets (issue 16): `registry list --json` at 100,000 versions <= 1.0 s and <= 100 MB peak RSS. The others are
reported. A benchmark reports; it does not fail the build: exit 0 even when a target is missed, unless --check.
Writes bench/out/listings.json. The machine is usually shared: compare runs on the same machine and look at the
load average recorded with them.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from report import render  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "out"
TIME_TARGET_S = 1.0
RSS_TARGET_MB = 100.0
BIG = "llm"
TUNED = "llm-tuned"
COLUMNS = (
    "model, number, run_id, run_key, artifact_sha256, artifact_size, artifact_uri, metrics, gates, lineage, created_at"
)


def _hex(n: int, width: int = 40) -> str:
    return f"{n:0{width}x}"[-width:]


def _lineage(model: str, number: int, i: int, at: float, packages: dict[str, str] | None) -> dict[str, Any]:
    """A version's lineage, shaped like `gitopsd.reconcile.collect.lineage` writes it."""
    commit = _hex(i * 7919 + 1)
    run_id = f"{model}-{_hex(i, 8)}"
    job: dict[str, Any] = {
        "backend": "slurm" if i % 3 else "local", "cancelled": False, "confined": True, "ended_at": at - 1.0,
        "exit_code": 0, "host": f"gpu-node-{i % 64:02d}", "job_id": str(1_000_000 + i), "landlock_abi": 4,
        "max_parallel": 2, "name": "cluster" if i % 3 else "local", "out_of_memory": False,
        "peak_memory_mb": 4096 + i % 2048, "pid": 10_000 + i % 50_000, "python": "3.11.7", "signal": None,
        "started_at": at - 3600.0, "timed_out": False, "venv": None,
    }  # fmt: skip
    if packages is not None:
        job["packages"] = packages
    lineage: dict[str, Any] = {
        "repo": "https://forge.example/ml/models.git",
        "commit": commit,
        "commit_info": {"author": f"Dev {i % 40} <dev{i % 40}@example.org>", "commit": commit,
                        "subject": f"Tune {model}: lr {0.001 * (1 + i % 9):.3f}, batch {32 << (i % 3)}",
                        "time": int(at) - 7200},
        "spec_path": f"models/{model}.yaml",
        "run_id": run_id,
        "run_key": _hex(i * 31 + 7, 64),
        "spec_digest": _hex(i * 17 + 3, 64),
        "code_tree": _hex(i // 10 + 11),
        "workdir": "src",
        "command": f"python3 train.py --config configs/{model}.yaml --seed {i % 5}",
        "data": [{"sha256": _hex(i // 50 + 5, 64), "uri": f"s3://datasets/{model}/train-v{i // 50}.parquet"},
                 {"sha256": _hex(i // 50 + 6, 64), "uri": f"s3://datasets/{model}/eval-v{i // 50}.parquet"}],
        "base": ({"label": f"{BIG}@{max(1, number // 2)}", "ref": "production", "sha256": _hex(number, 64)}
                 if model == TUNED else None),
        "backend": {"name": job["name"], "type": job["backend"]},
        "job_id": job["job_id"],
        "attempt": 1 + i % 2,
        "job": job,
        "started_at": job["started_at"],
        "ended_at": job["ended_at"],
        "exit_code": 0,
        "python": "3.11.7",
        "gitopsd": {"host": "login-1", "python": "3.11.7"},
    }  # fmt: skip
    if packages is not None:
        lineage["packages"] = packages
    return lineage


def _counts(versions: int, models: int, big_share: float) -> dict[str, int]:
    big = int(versions * big_share)
    tuned = (versions - big) // (models + 1)
    rest = versions - big - tuned
    counts = {BIG: big, TUNED: tuned}
    for m in range(models):
        counts[f"model-{m:04d}"] = rest // models + (1 if m < rest % models else 0)
    return {name: n for name, n in counts.items() if n > 0}


def build(db: Path, *, versions: int, models: int, big_share: float, packages: int) -> dict[str, int]:
    """Write the registry; return versions per model."""
    import sqlite3

    from gitopsd.registry.versions import Registry

    Registry(db).close()  # the real schema, triggers included
    listed = {f"package-{p:03d}": f"{p % 7}.{p % 13}.{p % 5}" for p in range(packages)} if packages else None
    counts = _counts(versions, models, big_share)
    start = time.time() - versions * 60.0
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    i = 0
    moves = []
    for model, count in counts.items():
        for number in range(1, count + 1):
            i += 1
            at = start + i * 60.0
            metrics = {"accuracy": 0.9 + (i % 97) / 1000, "loss": 1.0 / (1 + i % 89), "epoch": float(10 + i % 5)}
            gates = [{"gate": "accuracy >= 0.9", "passed": True, "value": metrics["accuracy"]},
                     {"gate": "loss < 0.5", "passed": True, "value": metrics["loss"]}]  # fmt: skip
            lineage = _lineage(model, number, i, at, listed)
            sha = _hex(i * 104729 + 13, 64)
            conn.execute(
                f"INSERT INTO versions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (model, number, lineage["run_id"], lineage["run_key"], sha, 1_000_000 + i,
                 f"s3://models/sha256/{sha[:2]}/{sha[2:]}", json.dumps(metrics, sort_keys=True),
                 json.dumps(gates, sort_keys=True), json.dumps(lineage, sort_keys=True), at),
            )  # fmt: skip
            if number % (2 if model == BIG else 10) == 0:  # the big model's production alias moves often
                moves.append((model, "production", number, number - 1, "moved", lineage["commit"],
                              f"Promote {model}@{number}", at + 30.0))  # fmt: skip
    conn.executemany(
        "INSERT INTO alias_moves (model, alias, version, previous, kind, commit_id, subject, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        moves,
    )
    conn.execute("COMMIT")
    conn.close()
    counts["alias_moves"] = len(moves)
    counts["alias_moves_" + BIG] = sum(1 for m in moves if m[0] == BIG)
    return counts


def _run(state_dir: Path, args: list[str], out: Path | None) -> dict[str, float | None]:
    """One whole `gitopsd` process, its stdout into `out` (None: /dev/null): wall seconds, CPU seconds (user +
    system) and peak RSS in MB (None where this machine cannot tell)."""
    env = {**os.environ, "GITOPSD_STATE_DIR": str(state_dir)}
    gnu_time = shutil.which("time", path="/usr/bin")
    with tempfile.NamedTemporaryFile(prefix="gitopsd-bench-time-") as stats:
        command = [sys.executable, "-m", "gitopsd", *args]
        if gnu_time:
            command = [gnu_time, "-f", "%M %U %S", "-o", stats.name, *command]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out or os.devnull, "wb") as handle:
            started = time.perf_counter()
            done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.PIPE, check=False)
            wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            print(f"gitopsd {' '.join(args)} exited {done.returncode}: {done.stderr.decode()[-2000:]}", file=sys.stderr)
            raise SystemExit(2)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if gnu_time:
            peak_kb, user, system = Path(stats.name).read_text().split()[-3:]
            return {"wall_s": wall, "cpu_s": float(user) + float(system), "peak_rss_mb": int(peak_kb) / 1000}
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": after.ru_maxrss / 1000 if after.ru_maxrss > before.ru_maxrss
            else None}  # fmt: skip


def _check(kind: str, out: Path, expected: int) -> None:
    """Stop (exit 2) when a listing lost rows or is not what it claims."""
    if kind == "json":
        with out.open("rb") as handle:
            rows = json.load(handle)
        got = len(rows)
    else:
        with out.open("rb") as handle:
            got = sum(1 for _ in handle)
    if got != expected:
        print(f"{out.name}: {got} rows, expected {expected}", file=sys.stderr)
        raise SystemExit(2)


def _registry(state_dir: Path, opts: argparse.Namespace) -> dict[str, int]:
    """Build the registry in a child process (so this one's peak stays out of RUSAGE_CHILDREN), or reuse the one
    --keep left; return versions per model and the alias move counts."""
    db, counts_file = state_dir / "registry.db", state_dir / "counts.json"
    if db.exists() and counts_file.exists():
        counts: dict[str, int] = json.loads(counts_file.read_text())
        return counts
    code = (f"import json, pathlib, sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import listings; "
            f"print(json.dumps(listings.build(pathlib.Path({str(db)!r}), versions={opts.versions}, "
            f"models={opts.models}, big_share={opts.big_model_share}, packages={opts.packages})))")  # fmt: skip
    built = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    counts = json.loads(built.stdout)
    counts_file.write_text(json.dumps(counts))
    return counts


def _measure(state_dir: Path, scratch: Path, counts: dict[str, int], repeat: int) -> list[dict[str, Any]]:
    total = counts_total(counts)
    big_history = counts[BIG] + counts["alias_moves_" + BIG]
    cases = [
        (f"`registry list --json`, {total:,} versions", ["registry", "list", "--json"], "json", total, True),
        (f"`registry list` (text), {total:,} versions", ["registry", "list"], "text", total, False),
        (f"`registry list {BIG} --json`, {counts[BIG]:,} versions", ["registry", "list", BIG, "--json"], "json",
         counts[BIG], False),
        (f"`history {BIG} --json`, {big_history:,} entries", ["history", BIG, "--json"], "json", big_history, False),
        (f"`history {BIG}` (text), {big_history:,} entries", ["history", BIG], "text", big_history, False),
    ]  # fmt: skip
    results: list[dict[str, Any]] = []
    for name, args, kind, expected, targeted in cases:
        out = scratch / "stdout"
        _run(state_dir, args, out)  # untimed: the output, checked (and the file cache warmed)
        size = out.stat().st_size
        _check(kind, out, expected)
        out.unlink()
        samples = [_run(state_dir, args, None) for _ in range(repeat)]
        wall = statistics.median(s["wall_s"] for s in samples if s["wall_s"] is not None)
        cpu = statistics.median(s["cpu_s"] for s in samples if s["cpu_s"] is not None)
        peaks = [s["peak_rss_mb"] for s in samples if s["peak_rss_mb"] is not None]
        peak = statistics.median(peaks) if peaks else None
        ok = not targeted or (wall <= TIME_TARGET_S and peak is not None and peak <= RSS_TARGET_MB)
        results.append({"name": name, "args": args, "median_s": wall, "median_cpu_s": cpu, "peak_rss_mb": peak,
                        "samples": samples, "output_bytes": size, "targeted": targeted, "ok": ok})  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=500, help="models besides the big one and its fine-tune")
    parser.add_argument("--big-model-share", type=float, default=0.2)
    parser.add_argument("--packages", type=int, default=0, help="package-list entries per version (0: none)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the registry in this state directory and keep it")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "listings.json")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitopsd-bench-listings-") as tmp:
        state_dir = opts.keep or Path(tmp) / "state"
        state_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        counts = _registry(state_dir, opts)
        build_s = time.perf_counter() - started
        results = _measure(state_dir, Path(tmp), counts, opts.repeat)
    rows = []
    for r in results:
        rss = f"{r['peak_rss_mb']:.0f} MB" if r["peak_rss_mb"] is not None else "? MB"
        target = f"<= {TIME_TARGET_S:.1f} s, <= {RSS_TARGET_MB:.0f} MB" if r["targeted"] else "(reported)"
        verdict = ("PASS" if r["ok"] else "FAIL") if r["targeted"] else "-"
        rows.append((r["name"], f"{r['median_s']:.2f} s (cpu {r['median_cpu_s']:.2f} s), {rss}", target, verdict))
    print(render(rows))
    per_version = results[0]["output_bytes"] / max(1, counts_total(counts))
    print(f"(registry built in {build_s:.1f} s; `registry list --json` writes {per_version:,.0f} bytes per version; "
          f"stdout to /dev/null; load average {os.getloadavg()[0]:.2f}; medians of {opts.repeat})")  # fmt: skip
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()}
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}
    opts.out.write_text(json.dumps({"options": options, "machine": machine, "counts": counts, "results": results},
                                   indent=2))  # fmt: skip
    return 1 if opts.check and not all(r["ok"] for r in results) else 0


def counts_total(counts: dict[str, int]) -> int:
    """Versions in the registry."""
    return sum(n for name, n in counts.items() if not name.startswith("alias_moves"))


if __name__ == "__main__":
    raise SystemExit(main())
