"""Is collecting a finished run cheap, and is its lineage small? Collect + register one run, 1 KiB artifact.

Builds a state directory with the real local backend, registry (SQLite) and file store, and `--runs` finished
runs of the local backend as a training leaves them (its exit record, a metrics file, a 1 KiB artifact), each
with the snapshot a real run keeps (gates, outputs, commit, data). Then, in-process, collects them one by one
as a reconcile pass does (`backend.describe` for the lineage, then `collect`: gates, artifact into the store,
the version row and its record). The first run is reported on its own: it lists the training Python's packages
(one `python3` process) and stores the environment; every later run is in the same environment. Also reports
the bytes of the lineage the last version got, as registry.db stores it.

The training Python is the host's `python3` (what a repository without requirements gets). A `python3` on PATH
that is a `#!` launcher (a pyenv shim) is asked every time by design, so when PATH has one, a directory with a
`python3` link to the real interpreter is put first for the benchmark (and the output says so).

Targets (issue 16): collecting one finished run <= 20 ms (median), lineage <= 1,500 bytes. The code under test is
whatever `gitopsd` imports (PYTHONPATH=OTHER_CHECKOUT measures another version with the same script). Writes
bench/out/collect.json. Exit 0 even when a target is missed, unless --check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from report import render

import gitopsd
from gitopsd.backends.local.backend import LocalBackend
from gitopsd.model import JobRef, Phase
from gitopsd.reconcile.collect import collect
from gitopsd.reconcile.state import RunRecord
from gitopsd.registry.filestore import FileStore
from gitopsd.registry.versions import Registry

COLLECT_TARGET_MS = 20.0
LINEAGE_TARGET_BYTES = 1_500
COMMIT = "57d05ea2c4fc737b5f60c388daf67a74339bc642"
SNAPSHOT: dict[str, Any] = {
    "repo_url": "https://git.example.org/ml/models.git",
    "commit": COMMIT,
    "commit_info": {"author": "gitopsd <gitopsd@localhost>", "commit": COMMIT, "subject": "Declare the blobs model",
                    "time": 1796122188},
    "spec_path": "models/blobs.yaml",
    "code_tree": "173f3228e6f80fd85cb5358861e7cadc42510175",
    "train": {"workdir": "src", "command": "python3 train.py --epochs 40 --lr 0.5", "backend_type": "local"},
    "data": [{"uri": "data/blobs.csv", "sha256": "773797ebe021d087035955e7811ea16ed3de40f715a336fe77a6879cde14c7c4"}],
    "base": None,
    "outputs": {"artifact": "model.bin", "metrics": "metrics.jsonl"},
    "validate": ["accuracy >= 0.9", "loss < 0.5"],
}  # fmt: skip


def real_python3(scratch: Path) -> str | None:
    """Put a link to a real interpreter first on PATH when `python3` there is a launcher; what it links to."""
    found = shutil.which("python3")
    if found is None:
        return None
    with open(Path(found).resolve(), "rb") as handle:
        if handle.read(2) != b"#!":
            return None
    real = os.path.realpath(sys.executable)
    (scratch / "bin").mkdir()
    (scratch / "bin" / "python3").symlink_to(real)
    os.environ["PATH"] = f"{scratch / 'bin'}:{os.environ.get('PATH', '')}"
    return real


def finished_run(state_dir: Path, index: int) -> tuple[RunRecord, JobRef]:
    """A run of the local backend that ended well, as the supervisor leaves it."""
    run_id = f"blobs-{index:08x}"
    run_dir = state_dir / "runs" / run_id
    (run_dir / "local").mkdir(parents=True)
    (run_dir / "out").mkdir()
    now = time.time()
    (run_dir / "local" / "exit.json").write_text(json.dumps({
        "cancelled": False, "confined": True, "started_at": now - 1, "ended_at": now, "exit_code": 0, "host": "vm",
        "job_id": f"vm:{index}", "landlock_abi": 7, "max_parallel": 2, "message": "command exited with code 0",
        "out_of_memory": False, "peak_memory_mb": 16, "pid": 1000 + index, "python": None, "signal": None,
        "timed_out": False, "venv": None,
    }))  # fmt: skip
    (run_dir / "out" / "model.bin").write_bytes(os.urandom(1024))
    lines = [json.dumps({"epoch": e, "loss": 1.0 / e, "accuracy": 0.95}) for e in range(1, 41)]
    (run_dir / "out" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    run = RunRecord(id=run_id, model="blobs", run_key=f"{index:064x}", spec_digest="9e76" * 16, commit_id=COMMIT,
                    spec_path="models/blobs.yaml", backend="local", phase=Phase.VALIDATING, attempt=1,
                    run_dir=str(run_dir), created_at=now - 2, updated_at=now, job_id=f"vm:{index}",
                    started_at=now - 1)  # fmt: skip
    return run, JobRef(run_id=run_id, job_id=f"vm:{index}", run_dir=run_dir)


def measure(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gitopsd-bench-collect-") as scratch:
        linked = real_python3(Path(scratch))
        state_dir = Path(scratch) / "state"
        backend = LocalBackend(name="local", settings={}, state_dir=state_dir)
        store = FileStore(state_dir / "artifacts")
        prepared = [finished_run(state_dir, i) for i in range(runs + 1)]
        samples: list[float] = []
        with Registry(state_dir / "registry.db") as registry:
            for run, ref in prepared:
                start = time.perf_counter()
                job = backend.describe(ref)
                outcome = collect(run, snapshot=SNAPSHOT, registry=registry, store=store, job=job)
                samples.append(time.perf_counter() - start)
                if outcome.version is None:
                    sys.exit(f"run {run.id} was not registered: {outcome.message}")
        conn = sqlite3.connect(state_dir / "registry.db")
        (lineage_bytes,) = conn.execute("SELECT length(CAST(lineage AS BLOB)) FROM versions ORDER BY number DESC"
                                        " LIMIT 1").fetchone()  # fmt: skip
        conn.close()
        record = state_dir / "artifacts" / "records" / "blobs" / f"{runs + 1:08d}.json"
        return {"first_s": samples[0], "samples_s": samples[1:], "lineage_bytes": lineage_bytes,
                "record_bytes": record.stat().st_size, "python3_linked_to": linked}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="runs collected after the first (default 30)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "collect.json")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    opts = parser.parse_args()
    result = measure(opts.runs)
    median_ms = statistics.median(result["samples_s"]) * 1000
    p95_ms = sorted(result["samples_s"])[max(0, round(0.95 * len(result["samples_s"])) - 1)] * 1000
    rows = [
        ("collect first run (lists the environment)", f"{result['first_s'] * 1000:.1f} ms", "none", "reported"),
        (f"collect one finished run, median of {opts.runs}", f"{median_ms:.1f} ms", f"<= {COLLECT_TARGET_MS:g} ms",
         "ok" if median_ms <= COLLECT_TARGET_MS else "MISSED"),
        ("collect one finished run, p95", f"{p95_ms:.1f} ms", "none", "reported"),
        ("lineage bytes per version", f"{result['lineage_bytes']:,}", f"<= {LINEAGE_TARGET_BYTES:,}",
         "ok" if result["lineage_bytes"] <= LINEAGE_TARGET_BYTES else "MISSED"),
        ("version record bytes in the store", f"{result['record_bytes']:,}", "none", "reported"),
    ]  # fmt: skip
    print(render(rows))
    if result["python3_linked_to"]:
        print(f"(python3 on PATH is a launcher script; the training Python was {result['python3_linked_to']})")
    print(f"(gitopsd from {Path(gitopsd.__file__).parent}; load average {os.getloadavg()[0]:.2f})")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({"options": {"runs": opts.runs}, "median_ms": median_ms, "p95_ms": p95_ms,
                                    "loadavg": os.getloadavg(), **result}, indent=2))  # fmt: skip
    missed = median_ms > COLLECT_TARGET_MS or result["lineage_bytes"] > LINEAGE_TARGET_BYTES
    return 1 if opts.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
