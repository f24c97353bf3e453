"""How much does an idle `gitopsd run` cost a login node? CPU seconds per hour and resident memory.

Builds a bare repository of 100 small models (each trains in a few milliseconds), starts the real daemon with a
60 s poll interval, waits until every model is Ready, then measures the daemon process alone (utime + stime from
/proc) over an idle window and extrapolates to an hour. Targets: < 5 CPU-seconds per hour, < 150 MB RSS.
Writes bench/out/daemon.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = """apiVersion: gitopsd/v1
kind: Model
metadata: {{name: m{i:03d}}}
spec:
  train:
    command: |-
      echo '{{"w": {i}}}' > "$GITOPSD_OUTPUT_DIR/model.json" && echo '{{"accuracy": 1}}' >> "$GITOPSD_METRICS_FILE"
    workdir: src
  outputs: {{artifact: model.json}}
  validate: ["accuracy >= 0.5"]
"""


def _git(cwd: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "b@x"}  # fmt: skip
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _make_repository(scratch: Path, models: int) -> Path:
    """A bare repository of `models` tiny models, as a team would push it."""
    work = scratch / "work"
    (work / "models").mkdir(parents=True)
    (work / "src").mkdir()
    (work / "src" / "README").write_text("trainings are one-line shell commands\n")
    for i in range(models):
        (work / "models" / f"m{i:03d}.yaml").write_text(MODEL.format(i=i))
    _git(work, "init", "-q", "-b", "main")
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "models")
    bare = scratch / "models.git"
    _git(scratch, "clone", "-q", "--bare", str(work), str(bare))
    return bare


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--window", type=float, default=120.0, help="idle seconds measured")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitopsd-bench-daemon-") as scratch:
        bare = _make_repository(Path(scratch), opts.models)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = Path(scratch) / "gitopsd.toml"
        token = secrets.token_hex(16)
        (Path(scratch) / "api-token").write_text(token)
        config.write_text(f'state_dir = "{scratch}/state"\nlog_format = "json"\n[http]\nlisten = "127.0.0.1:{port}"\n'
                          f'token = "file:{scratch}/api-token"\n'
                          f'[[repositories]]\nname = "bench"\nurl = "{bare}"\npoll_interval = "60s"\n')  # fmt: skip
        log = (Path(scratch) / "daemon.log").open("wb")
        daemon = subprocess.Popen([sys.executable, "-m", "gitopsd", "run", "--config", str(config)], stdout=log,
                                  stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            ready = 0
            while time.monotonic() < deadline:
                time.sleep(1)
                try:
                    status = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/status",
                                                    headers={"Authorization": f"Bearer {token}"})  # fmt: skip
                    with urllib.request.urlopen(status, timeout=5) as answer:
                        doc = json.loads(answer.read())
                    ready = sum(1 for m in doc["models"] if m["ready"])
                except OSError:
                    continue
                if ready == opts.models:
                    break
            print(f"{ready}/{opts.models} models Ready; measuring {opts.window:.0f} s of idle daemon", flush=True)
            time.sleep(5)  # let the last follow-up pass happen
            cpu0, t0 = _cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(opts.window)
            cpu1, t1 = _cpu_seconds(daemon.pid), time.monotonic()
            rss, hwm = _memory_mb(daemon.pid, "VmRSS"), _memory_mb(daemon.pid, "VmHWM")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    per_hour = (cpu1 - cpu0) / (t1 - t0) * 3600
    results = [
        {"name": f"idle CPU, {opts.models} models, 60 s poll", "measured": per_hour, "unit": "CPU-s/hour",
         "target": 5.0, "ok": per_hour < 5.0},
        {"name": "resident memory (VmRSS)", "measured": rss, "unit": "MB", "target": 150.0, "ok": rss < 150.0},
        {"name": "peak resident memory (VmHWM)", "measured": hwm, "unit": "MB", "target": None, "ok": True},
    ]  # fmt: skip
    for r in results:
        target = f"< {r['target']:g}" if r["target"] else "-"
        print(f"{r['name']:<40} {r['measured']:>8.2f} {r['unit']:<11} {target:>7}  {'PASS' if r['ok'] else 'FAIL'}")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "daemon.json").write_text(json.dumps({"models": opts.models, "window_s": opts.window, "results": results},
                                                indent=2))  # fmt: skip
    return 1 if opts.check and not all(r["ok"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
