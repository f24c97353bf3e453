"""`make bench`: what a repository's declarations cost (base models, aliases, names, backends) at scale.

`bench/run.py` and `bench/specload.py` time 10,000 models that declare nothing beyond a training: no aliases,
no base model. Costs that grow with declarations never show there, and several grew faster than the
declarations did (docs/design-notes.md). This script builds repositories that declare a lot and times the real
`gitopsd` as whole processes, median of `--runs`:

- `reconcile --once`, first pass and after a one-spec commit, of 4,000 suspended models fine-tuned from one
  base, each declaring two aliases of versions to come (refused until the base trains: every pass asks);
- `validate` of a ring of 10,000 fine-tunes (every model refused: its chain of bases comes back around);
- `validate` of 4,000 spec files that share one model name, and of a gitops.yaml declaring 5,000 backends
  the operator does not offer (every one refused, each on its line).

The targets are a few times what linear work takes on the 2-core machine, and a fraction of what the quadratic
versions took, so a regression to per-model scans fails them. Exit 0 even when a target is missed, unless
--check is given; 2 when a command did not do what the row claims.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from report import command_options, render
from run import gitopsd_command
from specload import BenchError, Row, Sample, row, sampled, say, timed

REPOSITORY = "apiVersion: gitopsd/v1\nkind: Repository\nbackends:\n  local: {}\n"


def model(name: str, *, base: str | None = None, aliases: str = "", command: str = "python3 train.py") -> str:
    """A suspended model spec: nothing ever trains, so every pass measures the same work."""
    lines = ["apiVersion: gitopsd/v1", "kind: Model", "metadata:", f"  name: {name}", "spec:", "  suspend: true"]
    lines += [f"  base: {base}"] if base else []
    lines += [f"  aliases: {aliases}"] if aliases else []
    lines += ["  train:", f"    command: {command}", "    workdir: src", "  outputs:", "    artifact: model.json"]
    return "\n".join(lines) + "\n"


def write_tree(root: Path, specs: dict[str, str], repository: str = REPOSITORY) -> Path:
    """A Git working tree with `specs` (path: text), gitops.yaml and src/train.py, committed."""
    (root / "src").mkdir(parents=True)
    (root / "src" / "train.py").write_text("print('trained')\n")
    (root / "gitops.yaml").write_text(repository)
    for path, text in specs.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    commit(root, "Declare")
    return root


def commit(root: Path, message: str) -> None:
    git = ["git", "-C", str(root), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    if not (root / ".git").exists():
        subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], check=True)


def refused(argv: list[str], env: dict[str, str], expect: str) -> Sample:
    """Time a command that must refuse (exit 1) and say `expect` on stderr."""
    sample, done = sampled(argv, env)
    if done.returncode != 1 or expect not in done.stderr:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode} without {expect!r}: {done.stderr[-500:]}")
    return sample


def measure(gitopsd: str, runs: int, work: Path) -> list[Row]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITOPSD_")}
    env["XDG_CONFIG_HOME"] = str(work / "config")  # no operator configuration: the built-in local backend
    aliases = "{production: 1, staging: latest}"
    tuned = {"models/m00000.yaml": model("m00000", aliases=aliases)}
    tuned |= {f"models/m{i:05d}.yaml": model(f"m{i:05d}", base="m00000@production", aliases=aliases)
              for i in range(1, 4000)}  # fmt: skip
    fine = write_tree(work / "fine-tunes", tuned)
    say("wrote 4,000 fine-tunes with two aliases each")
    first, again = [], []
    for attempt in range(runs):
        state = str(work / f"state{attempt}")
        first.append(timed([gitopsd, "--state-dir", state, "reconcile", "--once", "--repo", str(fine)], env))
    for attempt in range(runs):
        spec = fine / "models" / f"m{attempt + 1:05d}.yaml"
        spec.write_text(spec.read_text().replace("python3 train.py", f"python3 train.py --round {attempt}"))
        commit(fine, f"Edit m{attempt + 1:05d}")
        again.append(timed([gitopsd, "--state-dir", str(work / "state0"), "reconcile", "--once"], env))
    ring = write_tree(work / "ring", {f"models/r{i}.yaml": model(f"r{i}", base=f"r{(i + 1) % 10_000}@1")
                                      for i in range(10_000)})  # fmt: skip
    same = write_tree(work / "same", {f"models/s{i:04d}.yaml": model("same") for i in range(4000)})
    backends = "".join(f"  b{i}: {{}}\n" for i in range(5000))
    offered = write_tree(work / "backends", {"models/m.yaml": model("m")}, f"{REPOSITORY}{backends}")
    say("wrote a ring of 10,000 fine-tunes, 4,000 files of one name, 5,000 refused backends")
    checks = {
        "ring": (ring, "base models form a cycle"),
        "same": (same, "names must be unique"),
        "backends": (offered, "is not offered by the operator"),
    }
    found: dict[str, list[Sample]] = {what: [] for what in checks}
    for _ in range(runs):
        for what, (tree, expect) in checks.items():
            found[what].append(refused([gitopsd, "validate", str(tree)], env, expect))
    return [
        row(f"first `reconcile --once`, 4,000 fine-tunes x 2 waiting aliases, median of {runs}", first, 8000),
        row(f"`reconcile --once` after a one-spec commit, same repository, median of {runs}", again, 3000),
        row(f"`validate`, a ring of 10,000 fine-tunes (all refused), median of {runs}", found["ring"], 4000),
        row(f"`validate`, 4,000 files of one model name (all refused), median of {runs}", found["same"], 3000),
        row(f"`validate`, 5,000 backends the operator does not offer, median of {runs}", found["backends"], 3000),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="runs of each command (default 3)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    command_options(parser, "declared.json")
    args = parser.parse_args(argv)
    try:
        gitopsd = args.gitopsd or gitopsd_command()
        with tempfile.TemporaryDirectory(prefix="gitopsd-declared-") as tmp:
            rows = measure(gitopsd, args.runs, Path(tmp))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    cells = [(f"{r.name} (CPU {r.cpu_ms:,.0f} ms)", f"{r.measured_ms:,.0f} ms",
              "-" if r.target_ms is None else f"<= {r.target_ms:g} ms", r.verdict) for r in rows]  # fmt: skip
    print(f"\n{render(cells)}\n")
    missed = [r.name for r in rows if r.verdict == "FAIL"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"gitopsd": gitopsd, "results": [asdict(r) for r in rows], "missed": missed},
                                   indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")
    if missed:
        print(f"missed target(s): {', '.join(missed)}", file=sys.stderr)
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
