"""How fast does the command line start? `gitopsd --help`, and `gitopsd status` on an empty state directory.

Whole processes, as a user runs them: the console script next to this interpreter (`.venv/bin/gitopsd` under
`make bench`; `--gitopsd PATH` for another install), output to /dev/null, no operator configuration (an empty
XDG_CONFIG_HOME, no GITOPSD_* variable). The cases run in turn, round after round, so a burst of load on a shared
machine falls on all of them alike; wall-clock medians are the result, and the CPU time of each process (its
rusage) is reported beside them, as it moves less with the load. Two references, without a target: the bare
interpreter (`python -c pass`) and the interpreter importing argparse, the floor of the command line's parser.
Target: <= 45 ms each. A command that does not do what it claims (help exits non-zero, status does not exit 3
with "nothing reconciled yet") stops the benchmark with exit 2. Writes bench/out/startup.json.

An editable install (`make install`) reads gitopsd from the source tree; where PYTHONDONTWRITEBYTECODE is set
(many container images, CI runners) nothing writes its bytecode, so every start compiles what it imports:
`make install` compiles it once (`compileall`), and this benchmark says when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import command_options, render  # noqa: E402

TARGET_S = 0.045


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def probe(python: str, cwd: str) -> dict[str, Any]:
    """Where the interpreter `python` finds gitopsd, and which of its start-up modules have no bytecode (so that
    every start compiles them)."""
    code = (
        "import importlib.util, json, os, gitopsd.cli.main as m, gitopsd.reconcile.statusview as s;"
        "print(json.dumps({'package': os.path.dirname(os.path.dirname(m.__file__)),"
        " 'uncompiled': [f for f in (m.__file__, s.__file__)"
        " if not os.path.exists(importlib.util.cache_from_source(f))]}))"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd=cwd)
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def measure(cases: dict[str, list[str]], env: dict[str, str], cwd: str, rounds: int, warmup: int) -> dict[str, Any]:
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(warmup + rounds):
        for name, argv in cases.items():
            cpu0 = children_cpu()
            started = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, env=env, text=True, cwd=cwd)
            elapsed = time.perf_counter() - started
            spent = children_cpu() - cpu0
            check(name, done)
            if round_ >= warmup:
                wall[name].append(elapsed)
                cpu[name].append(spent)
    return {"wall": wall, "cpu": cpu}


def check(name: str, done: subprocess.CompletedProcess[str]) -> None:
    if name.startswith("gitopsd status"):
        ok = done.returncode == 3 and "nothing reconciled yet" in done.stdout
    elif name == "gitopsd --help":
        ok = done.returncode == 0 and "usage: gitopsd" in done.stdout.lower()  # click wrote "Usage:", argparse "usage:"
    else:
        ok = done.returncode == 0
    if not ok:
        print(f"{name}: exit {done.returncode}\n{done.stdout[-1000:]}{done.stderr[-2000:]}", file=sys.stderr)
        raise SystemExit(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="timed runs of each case (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    command_options(parser, "startup.json")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    opts = parser.parse_args()
    script = Path(opts.gitopsd or Path(sys.executable).parent / "gitopsd")
    if not script.is_file():
        parser.error(f"{script} does not exist: run `make install`, or give --gitopsd PATH")
    python = script.read_text().splitlines()[0].removeprefix("#!").strip()  # the interpreter of that install
    with tempfile.TemporaryDirectory(prefix="gitopsd-bench-startup-") as tmp:
        (Path(tmp) / "state").mkdir()
        (Path(tmp) / "config").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPSD_")}
        env |= {"GITOPSD_STATE_DIR": f"{tmp}/state", "XDG_CONFIG_HOME": f"{tmp}/config"}
        cases = {
            "python -c pass (reference)": [python, "-c", "pass"],
            "python -c 'import argparse' (reference)": [python, "-c", "import argparse"],
            "gitopsd --help": [str(script), "--help"],
            "gitopsd status (empty state dir)": [str(script), "status"],
        }
        found = probe(python, tmp)  # not here: `python -c` would import the gitopsd of the current directory
        load_before = os.getloadavg()
        samples = measure(cases, env, tmp, opts.rounds, opts.warmup)
        load_after = os.getloadavg()
    results = []
    for name in cases:
        wall = statistics.median(samples["wall"][name])
        target = None if "reference" in name else TARGET_S
        results.append({"name": name, "median_s": wall, "cpu_median_s": statistics.median(samples["cpu"][name]),
                        "samples_s": samples["wall"][name], "cpu_samples_s": samples["cpu"][name],
                        "target_s": target, "ok": target is None or wall <= target})  # fmt: skip
    rows = [(r["name"], f"{r['median_s'] * 1000:.1f} ms (cpu {r['cpu_median_s'] * 1000:.1f})",
             f"<= {r['target_s'] * 1000:.0f} ms" if r["target_s"] else "-", "PASS" if r["ok"] else "FAIL")
            for r in results]  # fmt: skip
    print(render(rows))
    uncompiled = found["uncompiled"]
    install = "editable: the source tree" if "site-packages" not in found["package"] else "installed copy"
    print(f"({script}, gitopsd from {found['package']} ({install}); {opts.rounds} rounds; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {os.cpu_count()} CPUs)")  # fmt: skip
    if uncompiled:
        print(f"note: no bytecode for {', '.join(uncompiled)}: every start compiles them "
              f"(PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}); `make install` compiles "
              "the tree once")  # fmt: skip
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({"gitopsd": str(script), "python": python, "rounds": opts.rounds,
                                    "package": found["package"], "missing_bytecode": uncompiled,
                                    "loadavg": [load_before, load_after], "cpus": os.cpu_count(),
                                    "results": results}, indent=2))  # fmt: skip
    return 1 if opts.check and not all(r["ok"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
