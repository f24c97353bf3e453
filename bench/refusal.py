"""What refusing a hostile commit costs, beside what loading a valid one of the same size costs.

Whoever can push chooses the spec files, and so how many problems they hold. This benchmark builds three working
trees from `gitopsd init`, each with `--files` spec files of the same shape, and times the real
`gitopsd validate` on each as a whole process (median of `--runs`; wall clock, CPU time and peak RSS of that
process, read with `wait4`, so the benchmark's own memory does not count):

- valid: each file's `env` is a mapping of about 13,000 quoted values (what loading such files costs);
- wrong values: the same mapping with the values unquoted, so that every one of them is a problem;
- unknown key: each file holds a list of about 39,000 numbers under a key the schema does not know (one
  problem, in a document of many values);
- over the bound: each file holds a flow list of about 118,000 numbers, more values than a spec file may have.

A refusal has no target of its own; the ratio to the valid tree is the figure to watch (each invalid file is
composed once more for its lines, and only its first problems are located: `docs/design-notes.md`). The
output of each command is counted, not kept. Writes bench/out/refusal.json. Exit 2 when a command does not do
what the row claims (the valid tree refused, an invalid one accepted).
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import command_options, render  # noqa: E402

#: Bytes of one spec file, under the 256 KiB bound of one file.
FILE_BYTES = 230 * 1024
HEAD = """\
apiVersion: gitopsd/v1
kind: Model
metadata:
  name: {name}
spec:
  suspend: true
  train:
    command: python3 train.py
    workdir: src
{body}  outputs:
    artifact: model.json
"""


def spec_text(kind: str, name: str) -> str:
    if kind == "unknown key":
        values = (FILE_BYTES - 300) // 6
        return HEAD.format(name=name, body="") + "  junk:\n" + "  - 1\n" * values
    if kind == "over the bound":
        values = (FILE_BYTES - 300) // 2
        return HEAD.format(name=name, body="") + "  junk: [" + "1," * values + "1]\n"
    values = (FILE_BYTES - 300) // 18
    quote = '"' if kind == "valid" else ""
    body = "    env:\n" + "".join(f"      K{i:05d}: {quote}v{quote}\n" for i in range(values))
    if kind == "wrong values":
        body = body.replace(": v\n", ": 1\n")
    return HEAD.format(name=name, body=body)


KINDS = ("valid", "wrong values", "unknown key", "over the bound")


def build(gitopsd: str, root: Path, kind: str, files: int) -> Path:
    tree = root / kind.replace(" ", "-")
    subprocess.run([gitopsd, "init", str(tree)], check=True, capture_output=True)
    for index in range(files):
        name = f"h{index:05d}"
        (tree / "models" / f"{name}.yaml").write_text(spec_text(kind, name))
    return tree


def timed(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One run: wall and CPU seconds, peak RSS in MiB, exit status and bytes written, of that process alone."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=out, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        written = out.tell()
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024,
            "exit": child.returncode, "bytes": written}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20, help="spec files of each tree (default 20)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each command (default 3)")
    command_options(parser, "refusal.json")
    opts = parser.parse_args()
    gitopsd = opts.gitopsd or str(Path(sys.executable).parent / "gitopsd")
    samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="gitopsd-bench-refusal-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPSD_")}
        env |= {"GITOPSD_STATE_DIR": f"{tmp}/state", "XDG_CONFIG_HOME": f"{tmp}/config"}
        trees = {kind: build(gitopsd, Path(tmp), kind, opts.files) for kind in KINDS}
        for _ in range(opts.runs):  # in turn, so that a burst of load falls on every kind alike
            for kind, tree in trees.items():
                run = timed([gitopsd, "validate", str(tree)], env)
                if run["exit"] != (0 if kind == "valid" else 1):
                    print(f"bench: validate of the {kind} tree exited {run['exit']}", file=sys.stderr)
                    return 2
                samples[kind].append(run)
    results = []
    for kind in KINDS:
        runs = samples[kind]
        results.append({"kind": kind, "files": opts.files, "runs": runs,
                        **{f"median_{k}": statistics.median(r[k] for r in runs)
                           for k in ("wall_s", "cpu_s", "rss_mib", "bytes")}})  # fmt: skip
    valid_cpu = results[0]["median_cpu_s"]
    rows = [(f"validate, {opts.files} files, {r['kind']}",
             f"{r['median_wall_s']:.2f} s (cpu {r['median_cpu_s']:.2f} s, {r['median_cpu_s'] / valid_cpu:.1f}x the "
             f"valid tree's), {r['median_rss_mib']:.0f} MiB, {r['median_bytes']:,.0f} bytes out", "-", "INFO")
            for r in results]  # fmt: skip
    print(render(rows))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({"gitopsd": gitopsd, "results": results, "cpus": os.cpu_count()}, indent=2) + "\n")
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
