"""Golden tests of `gitopsd plan --format markdown|json`: what a reviewer reads on a pull request, for each kind of
change the issue names, produced by the real command line on real Git repositories.

Each case builds a repository from the demo (`tests/conftest.py`), commits a change on a branch `change`, and
plans `--base main --branch change` the way a CI job does: on a fresh, empty state directory (the alias case
plans against a state directory that registered versions, with no --base: the applied commit). Commit ids
are replaced by BASE and HEAD, so the files are stable; `GITOPSD_UPDATE_GOLDEN=1` rewrites them. Every golden
JSON validates against the schema shipped in the package.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.conftest import GitRepo, gitopsd, on_a_terminal

GOLDEN = Path(__file__).parent / "golden" / "plan"
MODEL = "models/blobs.yaml"
UPDATE = os.environ.get("GITOPSD_UPDATE_GOLDEN") == "1"


def _branch(repo: GitRepo) -> None:
    repo.git("checkout", "-q", "-b", "change")


def _code_change(repo: GitRepo, state_dir: Path) -> list[str]:
    _branch(repo)
    repo.edit("src/train.py", "import", "# a faster optimiser\nimport")
    repo.commit("Train faster")
    return []


def _data_change(repo: GitRepo, state_dir: Path) -> list[str]:
    _branch(repo)
    data = repo.read("data/blobs.csv") + "0.50000,0.50000,1\n"
    old = hashlib.sha256(repo.read("data/blobs.csv").encode()).hexdigest()
    repo.write("data/blobs.csv", data)
    repo.edit(MODEL, old, hashlib.sha256(data.encode()).hexdigest())
    repo.commit("One more point")
    return []


def _label_only(repo: GitRepo, state_dir: Path) -> list[str]:
    _branch(repo)
    repo.edit(MODEL, "    team: demo\n", "    team: vision\n")
    repo.edit(MODEL, "  description: Separates", "  description: Still separates")
    repo.commit("Hand the model to the vision team")
    return []


def _alias_move(repo: GitRepo, state_dir: Path) -> list[str]:
    gitopsd(state_dir, "reconcile", "--repo", str(repo.path), "--wait")  # blobs@1
    repo.edit("src/train.py", "import", "# v2\nimport")
    repo.edit(MODEL, "spec:\n", "spec:\n  aliases:\n    production: 1\n    staging: latest\n")
    repo.commit("Train v2, production stays on v1")
    gitopsd(state_dir, "reconcile", "--wait")  # blobs@2
    _branch(repo)
    repo.edit(MODEL, "    production: 1\n", "    production: 2\n")
    repo.commit("Promote v2 to production")
    return ["--branch", "change"]  # against the applied commit of this state directory


def _removed_model(repo: GitRepo, state_dir: Path) -> list[str]:
    repo.write("models/old.yaml", repo.read(MODEL).replace("name: blobs", "name: blobs-old"))
    repo.commit("A second model")
    _branch(repo)
    repo.git("rm", "-q", "models/old.yaml")
    repo.commit("Retire blobs-old")
    return []


def _policy_refusal(repo: GitRepo, state_dir: Path) -> list[str]:
    config = state_dir.parent / "operator.toml"
    config.write_text('[backends.local]\ntype = "local"\n[backends.local.caps]\ngpus = 1\n')
    _branch(repo)
    repo.write("models/big.yaml", repo.read(MODEL).replace("name: blobs", "name: big")
               .replace("  train:\n", "  train:\n    resources:\n      gpus: 4\n"))  # fmt: skip
    repo.edit(MODEL, "  train:\n", "  train:\n    resources:\n      gpus: 1\n")
    repo.commit("A big model, and one GPU for blobs")
    return ["--config", str(config)]


TEAMS = """\
[backends.local]
type = "local"

[[policies]]
team = "vision"
paths = ["models/vision/**"]
max_gpu_hours_per_change = 0.25

[[policies]]
team = "everyone"
max_gpus = 1
"""


def _team_policy(repo: GitRepo, state_dir: Path) -> list[str]:
    config = state_dir.parent / "operator.toml"
    config.write_text(TEAMS)
    _branch(repo)
    two_gpus = repo.read(MODEL).replace("  train:\n", "  train:\n    resources:\n      gpus: 2\n")
    repo.write("models/vision/seg.yaml", two_gpus.replace("name: blobs", "name: seg"))  # 0.33 GPU-h > 0.25
    repo.write("models/wide.yaml", two_gpus.replace("name: blobs", "name: wide"))  # 2 GPUs > everyone's 1
    repo.edit(MODEL, "  train:\n", "  train:\n    resources:\n      gpus: 1\n")  # within everyone's rule
    repo.commit("A segmenter for vision, a wide model, one GPU for blobs")
    return ["--config", str(config)]


def _no_timeout(repo: GitRepo, state_dir: Path) -> list[str]:
    _branch(repo)
    repo.edit("gitops.yaml", "  timeout: 10m\n", "")
    repo.edit(MODEL, "  train:\n", "  train:\n    resources:\n      gpus: 2\n")
    repo.write("models/bounded.yaml", repo.read(MODEL).replace("name: blobs", "name: bounded")
               .replace("  train:\n", "  train:\n    timeout: 2h\n"))  # fmt: skip
    repo.commit("Two GPUs, and no time limit for blobs")
    return []


CASES: dict[str, tuple[Callable[[GitRepo, Path], list[str]], int]] = {
    "code-change": (_code_change, 0),
    "data-change": (_data_change, 0),
    "label-only": (_label_only, 0),
    "alias-move": (_alias_move, 0),
    "removed-model": (_removed_model, 0),
    "policy-refusal": (_policy_refusal, 1),
    "team-policy": (_team_policy, 1),
    "no-timeout": (_no_timeout, 0),
}


def _plan(state_dir: Path, repo: GitRepo, args: list[str], fmt: str) -> tuple[int, str]:
    config = args[:2] if args[:1] == ["--config"] else []
    rest = args[len(config) :]
    where = rest or ["--repo", str(repo.path), "--base", "main", "--branch", "change"]
    done = gitopsd(state_dir, *config, "plan", *where, "--format", fmt, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout


def _stable(text: str, repo: GitRepo) -> str:
    """Commit ids replaced by what they are: BASE (main) and HEAD (change)."""
    for name, ref in (("HEAD", "change"), ("BASE", "main")):
        commit = repo.git("rev-parse", ref)
        text = text.replace(commit, name).replace(commit[:12], name)
    return text


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with GITOPSD_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file (GITOPSD_UPDATE_GOLDEN=1 rewrites it)"


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_plan_of_each_kind_of_change_matches_its_golden_markdown_and_json(
    demo_repo: GitRepo, state_dir: Path, case: str
) -> None:
    build, code = CASES[case]
    args = build(demo_repo, state_dir)
    state_before = _listing(state_dir)
    md_code, markdown = _plan(state_dir, demo_repo, args, "markdown")
    json_code, text = _plan(state_dir, demo_repo, args, "json")
    assert (md_code, json_code) == (code, code), (markdown, text)
    doc = json.loads(text)
    assert doc["exit_code"] == code
    assert text.count("\n") == 1, "piped, the document is one line"
    _check(f"{case}.md", _stable(markdown, demo_repo))
    _check(f"{case}.json", _stable(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", demo_repo))
    assert _listing(state_dir) == state_before, "a plan writes nothing into the state directory"


def test_a_terminal_gets_the_plan_indented_and_a_pipe_on_one_line(demo_repo: GitRepo, state_dir: Path) -> None:
    """As every --json of the command line: a person reads it indented, a program gets the C encoder's one line
    (several times faster on ten thousand models)."""
    _code_change(demo_repo, state_dir)
    args = ["plan", "--repo", str(demo_repo.path), "--base", "main", "--branch", "change", "--format", "json"]
    piped = gitopsd(state_dir, *args).stdout
    assert piped.count("\n") == 1
    shown = on_a_terminal(state_dir, *args)
    assert shown == json.dumps(json.loads(piped), indent=2, ensure_ascii=False) + "\n"


def _listing(state_dir: Path) -> dict[str, tuple[int, int]]:
    """Each file of the state directory with its size and modification time; SQLite's shared-memory index and
    write-ahead log, which a read-only reader of a WAL database may create, are not content."""
    if not state_dir.exists():
        return {}
    return {
        str(p.relative_to(state_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in state_dir.rglob("*")
        if p.is_file() and not p.name.endswith(("-shm", "-wal"))
    }


def _schema() -> dict[str, object]:
    loaded: dict[str, object] = json.loads((files("gitopsd.reconcile") / "plan.schema.json").read_text())
    return loaded


def test_every_golden_json_validates_against_the_shipped_schema() -> None:
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    goldens = sorted(GOLDEN.glob("*.json"))
    assert {p.stem for p in goldens} == set(CASES)
    for path in goldens:
        jsonschema.validate(json.loads(_restore(path.read_text())), schema)


def _restore(text: str) -> str:
    """Golden JSON with commit-shaped ids again (the schema checks them)."""
    return text.replace('"HEAD"', '"' + "a" * 40 + '"').replace('"BASE"', '"' + "b" * 40 + '"')


def test_the_example_in_docs_pull_requests_is_the_golden_policy_refusal() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "pull-requests.md").read_text()
    example = docs.split("````markdown\n", 1)[1].split("````", 1)[0]
    golden = (GOLDEN / "policy-refusal.md").read_text()
    assert example == golden.replace("BASE", "3f1c2a9e0b7d").replace("HEAD", "8e4d1f0c6a25")
