"""What does a host memory limit cost the login node? CPU seconds per hour of one run's supervisor.

Starts real local-backend runs whose training holds 64 MiB and then 1 GiB resident and sleeps, with and
without `resources.memory`, and measures the supervisor process alone (utime + stime from /proc) over a window,
extrapolated to an hour. Sampling reads RSS counters, so the cost must not grow with the training's size.
Target: < 10 CPU-seconds per hour per limited run at the default `memory_poll_s` of 1 s. Writes
bench/out/supervisor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/supervisor.py`: the repository's tests package is a sibling
    sys.path.insert(0, str(ROOT))

from report import render  # noqa: E402

from gitopsd.backends.local.backend import LocalBackend  # noqa: E402
from gitopsd.model import JobRef, Resources  # noqa: E402
from tests.backend_contract import new_job  # noqa: E402

TRAINING = "import time; held = bytearray(b'x') * ({mib} << 20); open('ready', 'w').close(); time.sleep(3600)"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(backend: LocalBackend, root: Path, *, mib: int, limit_mb: int | None, window: float) -> float:
    command = f'{sys.executable} -c "{TRAINING.format(mib=mib)}"'
    job = new_job(root, command, resources=Resources(memory_mb=limit_mb))
    run_dir = job.run_dir
    backend.submit(job)
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "tree" / "ready").exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"the training of {mib} MiB did not start; see {run_dir / 'logs'}")
            time.sleep(0.1)
        pid = int(json.loads((run_dir / "local" / "state.json").read_text())["pid"])
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(window)
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
    finally:
        backend.cancel(JobRef(run_id=job.run_id, job_id="", run_dir=run_dir))
    return (cpu1 - cpu0) / (t1 - t0) * 3600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per case")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    opts = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gitopsd-bench-supervisor-") as tmp:
        root = Path(tmp)
        backend = LocalBackend(name="local", settings={}, state_dir=root / "state")
        for mib, limit in ((64, None), (64, 4096), (1024, 4096)):
            per_hour = measure(backend, root, mib=mib, limit_mb=limit, window=opts.window)
            target = None if limit is None else 10.0
            name = f"supervisor CPU, {mib} MiB training, " + ("no limit" if limit is None else "4 GiB limit")
            ok = target is None or per_hour < target
            results.append({"name": name, "measured": per_hour, "unit": "CPU-s/hour", "target": target, "ok": ok})
    rows = [(r["name"], f"{r['measured']:.1f} CPU-s/h", f"< {r['target']:g}" if r["target"] else "-",
             "PASS" if r["ok"] else "FAIL") for r in results]  # fmt: skip
    print(render(rows))
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "supervisor.json").write_text(json.dumps({"window_s": opts.window, "results": results}, indent=2))
    return 1 if opts.check and not all(r["ok"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
