"""Faster YAML libraries than libyaml, measured on gitopsd's spec files, and why none reads them (optional).

Issue 16 asks for the fastest spec load that keeps `file:line: field` errors and the bounded-loading guarantees.
gitopsd reads a spec with libyaml's C parser and builds the values from its events in one walk
(`gitopsd/spec/yamlplain.py`), falling back to PyYAML's own constructor for anything unusual. This script
measures that against the Rust and C YAML libraries on PyPI, parsing only (text to Python values), on the
10,000 spec files of `bench/run.py`, and shows what each library makes of the YAML 1.1 scalars a spec may hold
(`yes`, `0777`, `1e3`, `1:30`, `1_000`, a date): a spec means what PyYAML's safe loader says it means, and a
library that reads `on: yes` as the string "yes" or `0777` as 777 would change the run key of a model, or refuse
a file gitopsd accepts, without any error to tell. (A repeated key all of them refuse, as gitopsd does.)

The libraries go into their own virtualenv (bench/out/yaml-venv, `pip install`, once); if they cannot be
installed the script says so and exits 0. Not part of `make bench`. Writes bench/out/yamlalt.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perdoc import best_us_per_text  # noqa: E402
from run import model_yaml  # noqa: E402
from sidevenv import venv_python  # noqa: E402

#: The PyPI names of the candidates, and the modules they install (called in the child below).
LIBRARIES = ("pyyaml", "ryaml", "yaml-rs", "pyyaml-rs")
MODULES = ("yaml", "ryaml", "yaml_rs", "pyyaml_rs")

#: YAML 1.1 scalars whose meaning the candidates may read differently from PyYAML's safe loader.
SCALARS = {
    "a: yes": "a YAML 1.1 boolean",
    "a: 0777": "a YAML 1.1 octal integer",
    "a: 1e3": "a string in YAML 1.1 (no dot), a float in 1.2",
    "a: 1:30": "a YAML 1.1 base-60 integer",
    "a: 1_000": "a YAML 1.1 integer with a separator",
    "a: 2024-01-01": "a YAML 1.1 date",
}

#: Run in the libraries' virtualenv: time each parser on the texts, then read each scalar document.
CHILD = """
import json, sys
import yaml, ryaml, yaml_rs, pyyaml_rs
sys.path.insert(0, sys.argv[4])
from perdoc import best_us_per_text
texts = json.load(open(sys.argv[1]))
scalars = json.loads(sys.argv[2])
rounds = int(sys.argv[3])
parsers = {
    "PyYAML safe loader (libyaml C parser)": lambda t: yaml.load(t, Loader=yaml.CSafeLoader),
    "ryaml (Rust)": ryaml.loads,
    "yaml-rs (Rust)": yaml_rs.loads,
    "pyyaml-rs (Rust)": pyyaml_rs.safe_load,
}
out = {"us_per_doc": {}, "reads": {}}
for name, parse in parsers.items():
    out["us_per_doc"][name] = best_us_per_text(parse, texts, rounds)
    reads = {}
    for doc in scalars:
        try:
            reads[doc] = repr(parse(doc)["a"])
        except Exception as exc:
            reads[doc] = "refused: " + str(exc).splitlines()[0][:60]
    out["reads"][name] = reads
print(json.dumps(out))
"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ours(texts: list[str], rounds: int) -> dict[str, float]:
    """gitopsd's own readings, in this interpreter: libyaml's events alone (the floor under any reader built on
    them) and `build_plain` (the values, the bounds and the unsafe-text flags, in one walk)."""
    import yaml

    from gitopsd.spec.yamlplain import build_plain

    def events(text: str) -> None:
        for _ in yaml.parse(text, Loader=yaml.CSafeLoader):
            pass

    return {
        "libyaml events only (no values)": best_us_per_text(events, texts, rounds),
        "gitopsd build_plain (libyaml events)": best_us_per_text(build_plain, texts, rounds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="the best of this many passes over the specs")
    parser.add_argument("--venv", type=Path, default=BENCH / "out" / "yaml-venv")
    parser.add_argument("--no-install", action="store_true", help="use an existing virtualenv only")
    opts = parser.parse_args()
    python = venv_python(opts.venv, LIBRARIES, MODULES, install=not opts.no_install)
    if python is None:
        print(f"the YAML libraries are not installed in {opts.venv} and could not be (`pip install "
              f"{' '.join(LIBRARIES)}`): nothing measured")  # fmt: skip
        return 0
    texts = [model_yaml(i, suspend=True) for i in range(opts.specs)]
    with tempfile.TemporaryDirectory(prefix="gitopsd-yamlalt-") as work:
        source = Path(work) / "texts.json"
        source.write_text(json.dumps(texts))
        argv = [str(python), "-c", CHILD, str(source), json.dumps(list(SCALARS)), str(opts.rounds), str(BENCH)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        say(done.stderr[-3000:])
        return 2
    theirs: dict[str, Any] = json.loads(done.stdout)
    speeds = {**ours(texts, opts.rounds), **theirs["us_per_doc"]}
    print(f"parsing one spec file ({opts.specs:,} of bench/run.py's, best of {opts.rounds}, collector off):\n")
    print("| reader | us per file |\n| --- | --- |")
    for name, us in speeds.items():
        print(f"| {name} | {us:.1f} |")
    reference = theirs["reads"]["PyYAML safe loader (libyaml C parser)"]
    print("\nwhat each reads where PyYAML's safe loader (what a spec means) reads the first column:\n")
    names = list(theirs["reads"])
    print("| document | what it is | " + " | ".join(names) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in names) + " |")
    differ = set()
    for doc, what in SCALARS.items():
        cells = []
        for name in names:
            read = theirs["reads"][name][doc]
            cells.append(read if read == reference[doc] else f"**{read}**")
            if read != reference[doc]:
                differ.add(name)
        print(f"| `{doc.replace(chr(10), '; ')}` | {what} | " + " | ".join(cells) + " |")
    print(f"\n{len(differ)} of {len(names) - 1} faster libraries read some spec differently (in bold).")
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    (out / "yamlalt.json").write_text(json.dumps({"us_per_doc": speeds, "reads": theirs["reads"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
