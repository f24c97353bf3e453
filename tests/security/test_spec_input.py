"""Attack cases: spec files written by whoever can push, meant to inject, exhaust or confuse the daemon.

Each case is a real hostile commit in a real repository that gitopsd already tracks. It is refused three ways,
each with a clear error naming the file and field and no traceback: `gitopsd validate` on the working tree (a
pull request's CI), `gitopsd plan` (a review gate) and a real reconcile pass, after which the last good commit
stays in force and `gitopsd status` says why. And the attack achieves nothing: no job script gains a line, no
run starts, the process's memory stays bounded, no canary leaks, nothing outside the run is written, and the
same process goes on serving a healthy repository.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pygit2
import pytest
from gitopsd_slurm.script import build_request, directive_value, directives
from gitopsd_slurm.settings import SlurmSettings, is_constraint, parse_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.cli.scaffold import init_demo
from gitopsd.errors import MAX_PROBLEMS, PermanentError, SpecError
from gitopsd.reconcile.desired import DesiredLoader
from gitopsd.reconcile.reconciler import PassResult, Reconciler
from gitopsd.source.mirror import Source
from gitopsd.spec.bounds import SpecLimits
from gitopsd.spec.fields import NAME_PATTERN
from gitopsd.spec.load import MAX_FILE_PROBLEMS, load_model, load_repository
from gitopsd.spec.operator import Operator, OperatorBackend
from gitopsd.spec.worktree import load_tree
from tests.backend_contract import new_job
from tests.conftest import GIT_ENV, GitRepo, gitopsd
from tests.security.conftest import Canary

MODEL = "models/blobs.yaml"
MIB = 1024 * 1024
#: The operator lets repositories choose these settings (with any value the plugin accepts), so that what is
#: tested here is the plugin's grammar and bounds, not the operator's allow-list.
ANY = ["partition", "account", "qos", "constraint", "time", "exclusive", "limits"]
OPERATOR = Operator(
    backends={
        "local": OperatorBackend(type="local", settings={"max_parallel": 2}, allow={"max_parallel": "*"}),
        "hpc": OperatorBackend(type="slurm", allow=dict.fromkeys(ANY, "*")),
    }
)


@pytest.fixture(autouse=True)
def operator_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The same operator configuration for every `gitopsd` command these tests run."""
    path = tmp_path / "operator.toml"
    allow = ", ".join(f'{key} = "*"' for key in ANY)
    path.write_text(
        '[backends.local]\ntype = "local"\nsettings = { max_parallel = 2 }\nallow = { max_parallel = "*" }\n'
        f'[backends.hpc]\ntype = "slurm"\nallow = {{ {allow} }}\n'
    )
    monkeypatch.setenv("GITOPSD_CONFIG", str(path))
    return path


# ---- the daemon under attack ------------------------------------------------------------------------------


@dataclass
class Tracked:
    """A repository gitopsd tracks, with `good` applied by a real pass: the commit that must stay in force."""

    repo: GitRepo
    state: Path
    good: str


def one_pass(state: Path, url: Path) -> PassResult:
    rec = Reconciler(state_dir=state, url=str(url), operator=OPERATOR)
    try:
        return rec.reconcile("test")
    finally:
        rec.close()


@pytest.fixture
def tracked(demo_repo: GitRepo, state_dir: Path) -> Tracked:
    """The demo repository, its model suspended (so no training runs), applied by one pass."""
    demo_repo.edit(MODEL, "spec:\n", "spec:\n  suspend: true\n")
    good = demo_repo.commit("Suspend the demo model")
    result = one_pass(state_dir, demo_repo.path)
    assert result.error == "", result.error
    return Tracked(repo=demo_repo, state=state_dir, good=good)


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def runs(state: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(state / "state.db")
    rows = conn.execute("SELECT id, phase FROM runs ORDER BY rowid").fetchall()
    conn.close()
    return [(r[0], r[1]) for r in rows]


def refused(tracked: Tracked, *needles: str) -> str:
    """HEAD is refused by validate, plan and a pass, each saying every one of `needles`; returns validate's
    report. The last good commit stays in force, status shows why, and no run was started."""
    bad = tracked.repo.git("rev-parse", "HEAD")
    checked = gitopsd(tracked.state, "validate", str(tracked.repo.path), check=False)
    assert checked.returncode == 1, checked.stdout
    planned = gitopsd(tracked.state, "plan", check=False)
    assert planned.returncode == 1, planned.stdout
    result = one_pass(tracked.state, tracked.repo.path)
    assert f"commit {bad[:12]} rejected, {tracked.good[:12]} stays in force" in result.error
    shown = gitopsd(tracked.state, "status", "--wide")
    assert f"applied {tracked.good[:12]}" in shown.stdout
    for needle in needles:
        assert needle in checked.stderr, checked.stderr
        assert needle in planned.stderr, planned.stderr
        assert needle in result.error, result.error
        assert needle in shown.stdout, shown.stdout
    no_traceback(checked.stderr, planned.stderr, shown.stdout)
    assert runs(tracked.state) == []
    return checked.stderr


#: Runs the real `gitopsd` CLI and writes the peak RSS of its own process (not of its children) to argv[1].
# The peak is read from VmHWM, the high-water mark of this process's own memory map: ru_maxrss would also
# carry the peak of the pytest process it was forked from, which grows over a whole run.
_MEASURED = """\
import runpy, sys
out = sys.argv.pop(1)
try:
    runpy.run_module("gitopsd", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status:
        peak_kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(out, "w") as handle:
        handle.write(peak_kib)
"""


def _address_space_cap() -> None:  # a regression fails this test with MemoryError instead of swapping the host
    resource.setrlimit(resource.RLIMIT_AS, (4 * 1024 * MIB, 4 * 1024 * MIB))


def measured(state: Path, tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `gitopsd ARGS` and return what it did and the peak resident memory of its process, in MiB."""
    out = tmp / f"rss-{os.getpid()}-{len(list(tmp.glob('rss-*')))}"
    env = {**os.environ, "GITOPSD_STATE_DIR": str(state)}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, str(out), *args], env=env, capture_output=True, text=True,
        timeout=600, preexec_fn=_address_space_cap,
    )  # fmt: skip
    return done, int(out.read_text()) // 1024


def serves_a_healthy_repository(tmp: Path) -> None:
    """This process still trains and registers the demo model of another repository."""
    repo = tmp / "healthy"
    init_demo(repo)
    rec = Reconciler(state_dir=tmp / "healthy-state", url=str(repo))
    try:
        result = rec.reconcile_until_settled(timeout_s=300, trigger="test")
        assert result.error == "" and result.active == 0, result
        assert [v.label for v in rec.registry.list("blobs")] == ["blobs@1"]
    finally:
        rec.close()


# ---- Slurm settings: a newline adds #SBATCH lines ---------------------------------------------------------

INJECTION = "\n#SBATCH --export=ALL\n#SBATCH --output=$HOME/.bashrc\n#SBATCH --get-user-env"


def use_slurm(repo: GitRepo, settings_yaml: str) -> None:
    """Declare backend `hpc` (Slurm) with the given settings and move the demo model onto it, unsuspended."""
    repo.edit(
        "gitops.yaml", "registry:\n", f"backends:\n  hpc:\n    type: slurm\n    settings: {settings_yaml}\nregistry:\n"
    )
    repo.edit("gitops.yaml", "  backend: local\n", "  backend: hpc\n")
    repo.edit(MODEL, "  suspend: true\n", "")
    repo.edit(MODEL, "    command:", "    backend: hpc\n    command:")


@pytest.mark.parametrize("key", ["partition", "account", "qos", "constraint"])
def test_a_newline_in_a_slurm_setting_is_refused_before_any_job_script_exists(
    tracked: Tracked, key: str, canary: Canary
) -> None:
    value = "gpu" + INJECTION
    use_slurm(tracked.repo, "{" + f"{key}: {value!r}".replace("'", '"').replace("\n", "\\n") + "}")
    tracked.repo.commit(f"Slurm {key} with #SBATCH lines in it")
    report = refused(tracked, "gitops.yaml:", f"backends.hpc.settings.{key}: a newline (U+000A) is not allowed")
    assert "--export=ALL" not in report.replace(repr(value)[1:-1], "")  # only ever shown escaped, on one line
    assert not list(tracked.state.rglob("*.sh"))
    canary.assert_untouched()
    canary.assert_not_in(report)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("partition", "gpu --export=ALL", "expected a Slurm partition name, or several separated by ','"),
        ("account", "ml;id", "expected a Slurm name"),
        ("qos", "high,low", "expected a Slurm name"),
        ("constraint", "a100&(ib|", "expected a Slurm feature expression"),
        ("constraint", "a100 #x", "expected a Slurm feature expression"),
    ],
)
def test_slurm_settings_outside_slurms_grammar_name_backend_setting_and_value(
    tracked: Tracked, key: str, value: str, expected: str
) -> None:
    use_slurm(tracked.repo, "{" + f'{key}: "{value}"' + "}")
    tracked.repo.commit(f"Slurm {key} {value}")
    refused(tracked, f"backends.hpc.settings: backend 'hpc' setting {key}: {expected}", f"got {value!r}")


@pytest.mark.parametrize(
    "expression", ["a100", "a100&ib", "gpu|cpu", "a100&(ib|roce)", "[rack1*2&rack2*4]", "!knl", "intel&!(knl|old)"]
)
def test_slurm_feature_expressions_are_accepted(expression: str) -> None:
    assert is_constraint(expression)
    assert parse_settings("hpc", {"constraint": expression, "partition": "gpu,debug"}).constraint == expression


@pytest.mark.parametrize(
    "expression", ["", "a100&", "&a", "a||b", "(a", "a)", "[a|b)", "a**2", "a b", "a,b", "a\nb", "a;b", "a*", "*2"]
)
def test_text_that_is_not_a_feature_expression_is_refused(expression: str) -> None:
    assert not is_constraint(expression)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"time": "400d"}, "setting time: expected at most 527040 minutes (366 days)"),
        ({"grace_s": 10**9}, "setting grace_s: expected at most 3600"),
        ({"limits": {"max_nodes": 10**9}}, "limits.max_nodes: expected at most 100000"),
        ({"poll_max_s": float("inf")}, "poll_max_s: expected a number of seconds"),
        ({"rest": {"url": "http://x", "user": "me\r\nX-Evil: 1"}}, "rest.user: expected one line of text"),
        ({"rest": {"url": "http://x", "api_version": "../../admin"}}, "rest.api_version: expected a version"),
        ({"rest": {"url": "http://x", "token_env": "A B"}}, "rest.token_env: expected an environment variable"),
        ({"cluster": "a" * 2000}, "setting cluster: expected at most 1024 characters"),
    ],
)
def test_slurm_numbers_and_strings_have_bounds(values: dict[str, Any], words: str) -> None:
    with pytest.raises(PermanentError, match="backend 'hpc' setting ") as caught:
        parse_settings("hpc", values)
    assert words in str(caught.value)


# ---- the job script cannot gain a line, whatever reaches it ----------------------------------------------


def sbatch_arguments(script: str) -> list[str]:
    """The options sbatch reads from a script's #SBATCH lines, modelled on sbatch's own scanner (opt.c), taking
    the stricter reading where Slurm versions differ: a line ends at the first non-comment line; in a line,
    arguments split at blanks outside quotes (" or '), a backslash escapes the next character, an unescaped
    '#' ends the line even inside quotes, and the words packjob and hetjob are blanked out."""
    found: list[str] = []
    for raw in script.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("#"):
            break
        if not line.startswith("#SBATCH"):
            continue
        text = re.sub("packjob|hetjob", lambda m: " " * len(m.group()), raw.strip()[len("#SBATCH") :], flags=re.I)
        i = 0
        while i < len(text):
            while i < len(text) and text[i] in " \t\v\f\r":
                i += 1
            if i >= len(text):
                break
            arg, quote, escaped, ended = "", "", False, False
            while i < len(text) and (quote or text[i] not in " \t\v\f\r"):
                char = text[i]
                i += 1
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                    continue
                elif char == "#":
                    ended = True
                    break
                elif quote and char == quote:
                    quote = ""
                    continue
                elif not quote and char in "\"'":
                    quote = char
                    continue
                arg += char
            assert not quote, f"sbatch would stop at an unmatched quote in {raw!r}"
            if arg:
                found.append(arg)
            if ended:
                break
    return found


def slurm_settings(**values: Any) -> SlurmSettings:
    """Settings built directly, as if the load-time check had been skipped: the renderer's own wall."""
    return replace(parse_settings("hpc", {}), **values)


@pytest.mark.parametrize("key", ["partition", "account", "qos", "constraint"])
def test_the_script_renderer_refuses_a_line_break_in_any_setting(tmp_path: Path, key: str) -> None:
    job = new_job(tmp_path, "python train.py")
    with pytest.raises(PermanentError, match=rf"refusing to write #SBATCH --{key}="):
        build_request(job, slurm_settings(**{key: "gpu" + INJECTION}), {})


def test_the_script_renderer_refuses_a_workdir_with_a_line_break(tmp_path: Path) -> None:
    job = new_job(tmp_path, "true")
    job = replace(job, workdir=job.tree_dir / ("src" + INJECTION))
    with pytest.raises(PermanentError, match="refusing to write #SBATCH --chdir="):
        build_request(job, slurm_settings(), {})


def test_multiline_commands_and_env_values_stay_in_their_quotes(tmp_path: Path) -> None:
    job = replace(
        new_job(tmp_path, "echo one\n#SBATCH --export=ALL\necho two"),
        env={"NOTE": "a\n#SBATCH --get-user-env\n'b'"},
        workdir=new_job(tmp_path, "true").tree_dir / "odd \"dir\" 'with' #hash and packjob\\",
    )
    request = build_request(job, slurm_settings(partition="gpu", constraint="a100&(ib|roce)"), {})
    arguments = sbatch_arguments(request.script)
    lines = directives(request.options)
    assert len(arguments) == len(lines)  # one option per #SBATCH line: no value split, none added by the body
    assert arguments == sbatch_arguments("\n".join(lines))
    assert f"--chdir={job.workdir}" in arguments
    assert not any(a.startswith(("--get-user-env", "--export=ALL")) for a in arguments)
    assert arguments.count("--export=NONE") == 1


QUOTED_ESCAPE = 'src" --export=ALL --get-user-env "x'  # no control character: a legal Git path and spec path


def test_quotes_in_a_workdir_cannot_add_sbatch_options(tmp_path: Path) -> None:
    job = new_job(tmp_path, "true")
    job = replace(job, workdir=job.tree_dir / QUOTED_ESCAPE)
    arguments = sbatch_arguments(build_request(job, slurm_settings(), {}).script)
    assert f"--chdir={job.workdir}" in arguments
    assert "--export=ALL" not in arguments and "--get-user-env" not in arguments


def test_the_real_sbatch_reads_every_value_back_exactly(tmp_path: Path) -> None:
    """sbatch lists the options it found in a script before it contacts the controller; --test-only makes sure
    that nothing is submitted even where a controller answers."""
    conf = Path(os.environ.get("GITOPSD_SLURM_DIR", "/tmp/gitopsd-slurm")) / "slurm.conf"
    if not shutil.which("sbatch") or not (os.environ.get("SLURM_CONF") or conf.is_file()):
        pytest.skip("no sbatch and Slurm configuration on this host")
    job = new_job(tmp_path, "echo one\n#SBATCH --export=ALL")
    job = replace(job, workdir=job.tree_dir / (QUOTED_ESCAPE + " #hash 'single' packjob\\ hetjob"))
    request = build_request(job, slurm_settings(partition="gpu", constraint="a100&(ib|roce)"), {})
    script = tmp_path / "job.sh"
    script.write_text(request.script)
    env = {"SLURM_CONF": str(conf), **os.environ}
    done = subprocess.run(["sbatch", "--test-only", "-vvv", str(script)], env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    found = re.findall(r'Found in script, argument "(.*)"$', done.stderr, flags=re.M)
    if not found:
        pytest.skip(f"sbatch did not read the script here: {done.stderr[-300:]}")
    assert found == sbatch_arguments(request.script)
    assert f"--chdir={job.workdir}" in found
    assert not any(a.startswith(("--export=ALL", "--get-user-env")) for a in found)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs", "Zl", "Zp"]), min_size=1, max_size=40))
def test_any_printable_value_is_read_back_by_sbatch_exactly(value: str) -> None:
    line = f"#SBATCH --chdir={directive_value('chdir', value)}"
    assert sbatch_arguments(line + "\nexit 0\n") == [f"--chdir={value}"]


LINE_BREAKING = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]]


@given(st.text(max_size=10), st.sampled_from(LINE_BREAKING), st.text(max_size=10))
def test_any_value_with_a_control_character_is_refused(before: str, char: str, after: str) -> None:
    with pytest.raises(PermanentError):
        directive_value("partition", before + char + after)


# ---- the workdir's directory name -------------------------------------------------------------------------


def test_a_workdir_named_with_a_newline_is_refused(tracked: Tracked) -> None:
    hostile = "src" + INJECTION
    tracked.repo.write(f"{hostile}/train.py", tracked.repo.read("src/train.py"))
    tracked.repo.edit(MODEL, "workdir: src", 'workdir: "' + hostile.replace("\n", "\\n") + '"')
    tracked.repo.edit(MODEL, "  suspend: true\n", "")
    tracked.repo.commit("A workdir whose name adds #SBATCH lines")
    refused(tracked, f"{MODEL}:12: spec.train.workdir: a newline (U+000A) is not allowed in this value")


# ---- YAML that expands beyond any bound -------------------------------------------------------------------


def bomb(style: str) -> str:
    """Labels whose YAML aliases expand to 10**9 values, in one of several spellings."""
    if style == "flow, no blank before *":  # the spelling that passed the old textual alias guard
        lines = ['a0: &a0 {"k0":"xxxxxxxx","k1":"xxxxxxxx"}']
        lines += [f"a{i}: &a{i} {{" + ",".join(f'"k{j}":*a{i - 1}' for j in range(10)) + "}" for i in range(1, 10)]
    elif style == "flow lists":
        lines = ["a0: &a0 [x,x,x,x,x,x,x,x,x,x]"]
        lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    elif style == "block":
        lines = ["a0: &a0"] + [f"  - x{j}" for j in range(10)]
        for i in range(1, 10):
            lines += [f"a{i}: &a{i}"] + [f"  - *a{i - 1}" for _ in range(10)]
    else:  # merge keys
        lines = ["a0: &a0 {" + ", ".join(f"k{j}: x" for j in range(10)) + "}"]
        for i in range(1, 10):
            lines += [f"a{i}: &a{i}"] + [f"  m{j}: {{<<: *a{i - 1}}}" for j in range(10)]
    return "".join(f"    {line}\n" for line in lines)


BOMBS = ["flow, no blank before *", "flow lists", "block", "merge keys"]


@pytest.mark.parametrize("style", BOMBS)
def test_an_alias_bomb_is_refused_with_bounded_memory(tracked: Tracked, tmp_path: Path, style: str) -> None:
    tracked.repo.edit(MODEL, "  labels:\n    team: demo\n", "  labels:\n" + bomb(style))
    tracked.repo.commit(f"An alias bomb ({style})")
    done, rss_mib = measured(tracked.state, tmp_path, "validate", str(tracked.repo.path))
    assert done.returncode == 1, done.stderr
    assert "YAML aliases expand this document to more than 100000 values" in done.stderr
    no_traceback(done.stderr)
    assert rss_mib < 128, f"validate of an alias bomb peaked at {rss_mib} MiB"  # a healthy validate: ~50 MiB
    refused(tracked, f"{MODEL}:", "YAML aliases expand this document to more than 100000 values")


def test_after_every_alias_bomb_the_same_process_serves_a_healthy_repository(tmp_path: Path) -> None:
    for index, style in enumerate(BOMBS):
        repo = GitRepo(tmp_path / f"bomb{index}")
        init_demo(repo.path)
        repo.edit(MODEL, "  labels:\n    team: demo\n", "  labels:\n" + bomb(style))
        repo.commit("bomb")
        result = one_pass(tmp_path / f"bomb{index}-state", repo.path)
        assert "YAML aliases expand" in result.error
    serves_a_healthy_repository(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  labels: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 levels deep"),
        ("  labels: &x {a: *x}\n", "a YAML alias refers to a node that contains it"),
        ("  labels: {a: 1" + ":59" * 40_000 + "}\n", "an integer of 120001 characters"),
        ("  labels: {a: " + "9" * 5000 + "}\n", "an integer of 5000 characters"),
        ("  labels: {a: 0x" + "f" * 5000 + "}\n", "numbers in a spec have at most 64"),
        ("  labels: {a: [" + "1," * 100_000 + "1]}\n", "this document has more than 100000 values"),
        ("  labels: {a: [" + "1," * 100_000 + "1]}\n  b: [1\n", "this document has more than 100000 values"),
    ],
)
def test_other_costly_yaml_is_refused_with_its_line(text: str, expected: str) -> None:
    document = "apiVersion: gitopsd/v1\nkind: Model\nmetadata:\n  name: m\n" + text
    with pytest.raises(SpecError) as caught:
        load_model(document + "spec: {train: {command: x}, outputs: {artifact: a}}\n", "models/m.yaml")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("models/m.yaml:5:")


# ---- files that are too big, too many, or not text --------------------------------------------------------


def test_an_oversized_spec_file_is_refused_without_being_read(
    tracked: Tracked, monkeypatch: pytest.MonkeyPatch
) -> None:
    padding = "".join(f"# {'x' * 76}\n" for _ in range(4000))  # 320,000 bytes of comment
    tracked.repo.write(MODEL, tracked.repo.read(MODEL) + padding)
    tracked.repo.commit("A spec file of 320 KB")
    size = len(tracked.repo.read(MODEL).encode())
    refused(tracked, f"{MODEL}: the file is {size} bytes; a spec file may have at most 256 KiB")
    read: list[str] = []
    original = Source.blob_bytes

    def spy(self: Source, blob_id: str) -> bytes:
        read.append(blob_id)
        return original(self, blob_id)

    monkeypatch.setattr(Source, "blob_bytes", spy)
    rec = Reconciler(state_dir=tracked.state.parent / "fresh", url=str(tracked.repo.path), operator=OPERATOR)
    try:
        assert "a spec file may have at most 256 KiB" in rec.reconcile("test").error
    finally:
        rec.close()
    assert tracked.repo.git("rev-parse", f"HEAD:{MODEL}") not in read


def test_a_repository_over_the_count_or_total_bound_is_refused_before_any_file_is_read(
    demo_repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(5):
        demo_repo.write(f"models/m{index}.yaml", demo_repo.read(MODEL).replace("name: blobs", f"name: m{index}"))
    commit = demo_repo.commit("Five more models")
    monkeypatch.setattr(Source, "blob_bytes", lambda *_: pytest.fail("a spec file was read"))
    source = Source(str(demo_repo.path), tmp_path / "mirror.git")
    source.fetch()
    with pytest.raises(SpecError, match="more than 3 spec files; a repository may have at most 3"):
        DesiredLoader(source, limits=SpecLimits(max_files=3)).load(commit)
    with pytest.raises(SpecError, match=r"spec files total \d+ bytes; .* at most 4 KiB together"):
        DesiredLoader(source, limits=SpecLimits(max_total_bytes=4096)).load(commit)
    with pytest.raises(SpecError, match="more than 3 spec files"):
        load_tree(demo_repo.path, limits=SpecLimits(max_files=3))


def test_a_repository_that_is_one_long_cycle_of_base_models_is_refused_at_once_in_short_lines(
    tracked: Tracked,
) -> None:
    """3,000 models, each fine-tuned from the next and the last from the first. Following each model's chain on
    its own made the check cubic (minutes for each pass, validate and plan of such a repository) and every
    problem a list of all 3,000 names. Each is now named once, in a line that shows a few of them."""
    count = 3000
    model = tracked.repo.read(MODEL)
    for index in range(count):
        text = model.replace("name: blobs", f"name: m{index}")
        tracked.repo.write(
            f"models/ring/m{index}.yaml", text.replace("spec:\n", f"spec:\n  base: m{(index + 1) % count}@1\n")
        )
    tracked.repo.commit("A ring of fine-tunes")
    report = refused(tracked, "models/ring/m0.yaml: spec.base: base models form a cycle: m0 -> m1 -> m2 -> ")
    cycle = [line for line in report.splitlines() if "base models form a cycle" in line]
    assert len(cycle) == MAX_PROBLEMS  # and a line that counts the others
    assert f"{count - MAX_PROBLEMS} more problem(s) in {count - MAX_PROBLEMS} file(s)" in report
    assert max(map(len, report.splitlines())) < 200
    assert "m1001.yaml: spec.base: base models form a cycle: m1001 -> m1002 -> m1003 -> m1004 -> m1005 -> m1006 -> " \
           "m1007 -> ... -> m1001 (3000 steps)" in report  # fmt: skip


def test_thousands_of_files_that_share_one_model_name_are_refused_in_short_lines(tracked: Tracked) -> None:
    """Each problem named every other file: 4,000 files of one name made 384 MB of messages (quadratic), held by
    the pass, the state database and every status. Now each names three others and counts the rest."""
    model = tracked.repo.read(MODEL)
    for index in range(2000):
        tracked.repo.write(f"models/same/m{index:04d}.yaml", model)
    tracked.repo.commit("Two thousand blobs")
    report = refused(tracked, "models/same/m0000.yaml: metadata.name: model name 'blobs' is also used by "
                     "models/blobs.yaml, models/same/m0001.yaml, models/same/m0002.yaml and 1997 more; names must be "
                     "unique")  # fmt: skip
    # a commit lists its first MAX_PROBLEMS problems, then counts the others
    assert len([line for line in report.splitlines() if "is also used by" in line]) == MAX_PROBLEMS
    assert f"{2001 - MAX_PROBLEMS} more problem(s) in {2001 - MAX_PROBLEMS} file(s), from this one on, are not " \
           "shown; fix those above first" in report  # fmt: skip
    assert max(map(len, report.splitlines())) < 200


def test_files_full_of_wrong_values_are_refused_in_a_bounded_report(tracked: Tracked, tmp_path: Path) -> None:
    """Every wrong value was located and reported: a hundred files of 14,000 unquoted numbers in `env` made 1.45
    million problems, 1 GB of memory, 130 s of CPU for `validate` and a 180 MB error that a pass held, logged and
    stored for `status`. Now a file shows its first MAX_FILE_PROBLEMS and says it has more, and a commit shows
    its first MAX_PROBLEMS and counts the others."""
    numbers = "".join(f"      K{index:05d}: {index}\n" for index in range(5000))
    model = tracked.repo.read(MODEL).replace('      SEED: "7"\n', numbers)
    for index in range(40):
        tracked.repo.write(f"models/many/m{index:02d}.yaml", model.replace("name: blobs", f"name: m{index:02d}"))
    tracked.repo.commit("Forty files of five thousand numbers where strings belong")
    report = refused(
        tracked,
        "models/many/m00.yaml:15: spec.train.env.K00000: environment values must be strings: quote it in YAML, "
        'e.g. "0" (got int 0)',
        f"models/many/m00.yaml: this file has more problems than the {MAX_FILE_PROBLEMS} shown; fix these and "
        "check it again",
    )
    lines = report.splitlines()
    assert len(lines) == MAX_PROBLEMS + 2  # the problems shown, the count of the others, the summary
    assert lines[-2].startswith(f"models/many/m{MAX_PROBLEMS // (MAX_FILE_PROBLEMS + 1):02d}.yaml")
    hidden = 40 * (MAX_FILE_PROBLEMS + 1) - MAX_PROBLEMS
    assert f"{hidden} more problem(s) in " in lines[-2]
    assert lines[-1] == f"error: {40 * (MAX_FILE_PROBLEMS + 1)} problem(s) in {tracked.repo.path}"
    planned = gitopsd(tracked.state, "plan", check=False)
    assert f"invalid: {40 * (MAX_FILE_PROBLEMS + 1)} problem(s) in its spec files, listed above" in planned.stdout
    done, peak_mib = measured(tracked.state, tmp_path, "validate", str(tracked.repo.path))
    assert done.returncode == 1 and len(done.stderr) < 100_000
    assert peak_mib < 150, peak_mib


def test_a_gitops_yaml_of_thousands_of_refused_backends_is_composed_once_for_their_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each refused backend's line was found by composing the whole document again: 5,000 backends kept
    `validate` busy for 200 s. One composition serves every line, and none is made when nothing is refused."""
    import yaml

    from gitopsd.spec.resolve import load_repository_for

    composed: list[str] = []
    real = yaml.compose

    def compose(text: str, **kw: Any) -> Any:
        composed.append(text)
        return real(text, **kw)

    monkeypatch.setattr(yaml, "compose", compose)
    text = "apiVersion: gitopsd/v1\nkind: Repository\nbackends:\n" + "".join(f"  b{i}: {{}}\n" for i in range(300))
    with pytest.raises(SpecError) as info:
        load_repository_for(OPERATOR, text)
    lines = [p.line for p in info.value.problems]
    assert len(lines) == 300 and lines[:2] == [4, 5] and lines[-1] == 303
    assert composed == [text]
    composed.clear()
    load_repository_for(OPERATOR, "apiVersion: gitopsd/v1\nkind: Repository\nbackends:\n  local: {}\n")
    assert composed == []


def test_a_tree_that_names_one_subtree_over_and_over_is_refused_after_a_million_entries(tracked: Tracked) -> None:
    """Six Git trees, each naming the next sixteen times, spell 16^5 paths under models/ (none a spec file): a
    walk that counted only spec files read them all, and one more level multiplies that by sixteen. The walk
    stops past `max_entries`, and the pass, `plan` and `status` say why."""
    repo = pygit2.Repository(str(tracked.repo.path))
    blob = repo.create_blob(b"not a spec\n")
    level = repo.TreeBuilder()
    for index in range(16):
        level.insert(f"x{index}.txt", blob, pygit2.enums.FileMode.BLOB)
    tree = level.write()
    for _ in range(4):
        level = repo.TreeBuilder()
        for index in range(16):
            level.insert(f"d{index}", tree, pygit2.enums.FileMode.TREE)
        tree = level.write()
    head = repo.head.peel(pygit2.Commit)
    models = repo.TreeBuilder(head.tree["models"].id)
    models.insert("bomb", tree, pygit2.enums.FileMode.TREE)
    root = repo.TreeBuilder(head.tree)
    root.insert("models", models.write(), pygit2.enums.FileMode.TREE)
    signature = pygit2.Signature("attacker", "a@example.com")
    bad = str(repo.create_commit("HEAD", signature, signature, "A tree bomb", root.write(), [head.id]))
    why = "more than 1000000 files and directories under models/ (spec files or not)"
    result = one_pass(tracked.state, tracked.repo.path)
    assert f"commit {bad[:12]} rejected, {tracked.good[:12]} stays in force" in result.error and why in result.error
    planned = gitopsd(tracked.state, "plan", check=False)
    assert planned.returncode == 1 and why in planned.stderr, planned.stderr
    assert why in gitopsd(tracked.state, "status", "--wide").stdout
    for index in range(200):  # `validate` walks a working tree: the bound holds there too
        tracked.repo.write(f"models/notes/n{index}.txt", "not a spec\n")
    with pytest.raises(SpecError, match="more than 100 files and directories under models/"):
        load_tree(tracked.repo.path, limits=SpecLimits(max_entries=100))


def test_a_spec_that_is_not_utf8_is_refused_naming_the_byte_and_line(tracked: Tracked) -> None:
    text = tracked.repo.read(MODEL).replace("  suspend: true\n", "").replace("Separates", "Café separates")
    (tracked.repo.path / MODEL).write_bytes(text.encode("latin-1"))
    tracked.repo.commit("A Latin-1 spec")
    offset = text.encode("latin-1").index(b"\xe9")
    line = text[:offset].count("\n") + 1
    refused(tracked, f"{MODEL}:{line}: not UTF-8 text: byte 0xe9 at offset {offset} cannot be decoded")


def test_a_binary_spec_is_refused(tracked: Tracked) -> None:
    (tracked.repo.path / "models" / "logo.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    tracked.repo.commit("A PNG named like a spec")
    refused(tracked, "models/logo.yaml:3: binary content (a NUL byte at offset 8)")


# ---- names that would make bad Git tags -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"), [("a..b", "'..' is not allowed"), ("x.lock", "a name cannot end with '.lock'")]
)
def test_a_model_name_that_is_no_git_tag_is_refused(tracked: Tracked, name: str, why: str) -> None:
    tracked.repo.edit(MODEL, "name: blobs", f"name: {name}")
    tracked.repo.commit(f"Model {name}")
    refused(tracked, f"{MODEL}:5: metadata.name: invalid name {name!r}: {why} (names become Git tags")


@settings(max_examples=500, deadline=None)
@given(st.from_regex(NAME_PATTERN, fullmatch=True))
def test_every_accepted_name_is_a_valid_tag(name: str) -> None:
    try:
        model = load_model(f"apiVersion: gitopsd/v1\nkind: Model\nmetadata: {{name: '{name}'}}\n"
                           "spec: {train: {command: x}, outputs: {artifact: a}}\n", "m.yaml")  # fmt: skip
    except SpecError:
        return
    assert pygit2.reference_is_valid_name(f"refs/tags/models/{model.name}/v1")


def test_alias_names_are_refused_like_model_names() -> None:
    text = "apiVersion: gitopsd/v1\nkind: Model\nmetadata: {name: m}\n"
    text += "spec: {aliases: {prod..x: 1}, train: {command: x}, outputs: {artifact: a}}\n"
    with pytest.raises(SpecError, match=r"spec.aliases\['prod..x'\]: invalid name 'prod..x'"):
        load_model(text, "m.yaml")


@pytest.mark.parametrize(
    ("field", "entries", "bound"),
    [("aliases", lambda n: "{" + ", ".join(f"a{i}: 1" for i in range(n)) + "}", 100),
     ("modules", lambda n: "[" + ", ".join(f"m{i}" for i in range(n)) + "]", 64)],
)  # fmt: skip
def test_aliases_and_modules_have_a_count_bound_that_the_error_names(
    field: str, entries: Callable[[int], str], bound: int
) -> None:
    """Each alias is a registry row, an audit tag and an event when it moves or is refused: a model of 5,000
    refused aliases cost a pass seconds on every commit. The error says the bound and the count, not the value."""
    spec = "{aliases: %s, train: {command: x}, outputs: {artifact: a}}" if field == "aliases" else \
           "{train: {command: x, modules: %s}, outputs: {artifact: a}}"  # fmt: skip
    text = "apiVersion: gitopsd/v1\nkind: Model\nmetadata: {name: m}\nspec: " + spec + "\n"
    load_model(text % entries(bound), "m.yaml")
    with pytest.raises(SpecError) as info:
        load_model(text % entries(5000), "m.yaml")
    where = "spec.aliases" if field == "aliases" else "spec.train.modules"
    assert str(info.value).splitlines() == [f"m.yaml:4: {where}: at most {bound} entries, got 5000"]


# ---- numbers over their bounds ----------------------------------------------------------------------------


def test_numbers_over_their_bounds_are_all_named_at_once(tracked: Tracked) -> None:
    repo = tracked.repo
    repo.edit("gitops.yaml", "  keep: 3", "  keep: 10001")
    repo.edit("gitops.yaml", "    cpus: 1", "    cpus: 10001")
    repo.edit(MODEL, "    workdir: src", "    workdir: src\n    timeout: 400d\n    retries: 101\n"
              "    resources: {gpus: 10001, nodes: 10001, memory: 65Ti}")  # fmt: skip
    repo.edit(MODEL, "patience: 5", "patience: 1000001")
    repo.edit(MODEL, "  suspend: true\n", "  suspend: true\n  aliases: {production: 1000000001}\n")
    repo.commit("Every number over its bound")
    refused(
        tracked,
        "runs.keep: must be at most 10000, got int 10001",
        "defaults.resources.cpus: must be at most 10000",
        "spec.train.timeout: must be at most 366d (31622400 seconds), got '400d'",
        "spec.train.retries: must be at most 100",
        "spec.train.resources.gpus: must be at most 10000",
        "spec.train.resources.nodes: must be at most 10000",
        "spec.train.resources.memory: must be at most 64Ti, got '65Ti'",
        "spec.convergence.plateau.patience: must be at most 1000000",
        "spec.aliases.production: an alias points at a version number (1, 2, ... at most 1000000000)",
    )


def test_backend_setting_numbers_are_bounded_at_load_time(tracked: Tracked) -> None:
    tracked.repo.edit(
        "gitops.yaml", "registry:\n", "backends: {local: {settings: {max_parallel: 100000}}}\nregistry:\n"
    )
    tracked.repo.commit("max_parallel 100000")
    refused(tracked, "backends.local.settings: backend 'local' setting max_parallel: expected at most 10000")


def test_an_integer_beyond_2_53_anywhere_is_refused() -> None:
    with pytest.raises(SpecError, match=r"backends.hpc.settings.limits.max_nodes: this 67-bit integer is too large"):
        load_repository("apiVersion: gitopsd/v1\nkind: Repository\n"
                        "backends: {hpc: {settings: {limits: {max_nodes: 100000000000000000000}}}}\n")  # fmt: skip


# ---- control characters in every other string -------------------------------------------------------------

BASE = """\
apiVersion: gitopsd/v1
kind: Model
metadata:
  name: m
  description: {description}
  labels: {{{label}}}
spec:
  aliases: {{{alias}}}
  train:
    command: {command}
    env: {{SEED: {env}}}
  outputs: {{artifact: {artifact}}}
  validate: [{gate}]
"""
CLEAN = {"description": "d", "label": "team: ml", "alias": "prod: 1", "command": "x", "env": '"1"',
         "artifact": "model.pt", "gate": "'acc >= 0.9'"}  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("label", '"team": "\\e[2J\\e[31mpwned"', "metadata.labels.team: an escape character (U+001B)"),
        ("label", '"te\\nam": "x"', "metadata.labels['te\\nam']: a newline (U+000A) is not allowed in this key"),
        ("description", '"a\\e[31m"', "metadata.description: an escape character (U+001B)"),
        ("command", '"rm -rf ~ #\\u202e\\u2066 safe"', "spec.train.command: the character right-to-left override"),
        ("command", '"echo\\r"', "spec.train.command: a carriage return (U+000D)"),
        ("env", '"a\\0b"', "spec.train.env.SEED: a NUL character (U+0000)"),
        ("artifact", '"model\\n.pt"', "spec.outputs.artifact: a newline (U+000A)"),
        ("gate", '"acc >= 0.9\\n"', "spec.validate[0]: a newline (U+000A)"),
        ("alias", '"prod\\u2028": 1', "spec.aliases['prod\\u2028']: a line separator (U+2028)"),
        ("label", '"team": "' + "x" * 70_000 + '"', "metadata.labels.team: this value is 70000 characters long"),
    ],
)
def test_control_characters_are_refused_in_every_string_with_its_field(field: str, value: str, where: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_model(BASE.format(**{**CLEAN, field: value}), "models/m.yaml")
    assert where in str(caught.value)


def test_description_command_and_env_values_may_span_lines() -> None:
    text = BASE.format(**{**CLEAN, "description": '"two\\nlines"', "command": '"set -e\\n\\tpython train.py"',
                          "env": '"a\\nb"'})  # fmt: skip
    model = load_model(text, "models/m.yaml")
    assert model.spec.train.command == "set -e\n\tpython train.py"
    assert model.spec.train.env == {"SEED": "a\nb"}


def test_an_ansi_escape_in_a_label_never_reaches_the_operators_terminal(tracked: Tracked) -> None:
    tracked.repo.edit(MODEL, "    team: demo", '    team: "\\e]0;pwned\\a\\e[2J"')
    tracked.repo.commit("A label that repaints the terminal")
    report = refused(tracked, f"{MODEL}:8: metadata.labels.team: an escape character (U+001B) is not allowed")
    assert "\x1b" not in report


# ---- exporting a workdir ----------------------------------------------------------------------------------


def test_a_256_mib_workdir_file_is_exported_with_bounded_memory(demo_repo: GitRepo, tmp_path: Path) -> None:
    size = 256 * MIB
    with (demo_repo.path / "src" / "weights.bin").open("wb") as handle:
        handle.truncate(size)  # zeros: small in Git, 256 MiB once written out
    demo_repo.commit("A 256 MiB file in the workdir")
    state = tmp_path / "state"
    done, rss_mib = measured(state, tmp_path, "reconcile", "--repo", str(demo_repo.path))
    assert done.returncode == 0, done.stderr
    assert "1 action(s)" in done.stdout
    assert rss_mib < 128, f"a pass that exported a 256 MiB file peaked at {rss_mib} MiB"  # healthy: ~50 MiB
    [(run_id, _)] = runs(state)
    exported = state / "runs" / run_id / "tree" / "src" / "weights.bin"
    assert exported.stat().st_size == size
    digest = hashlib.sha256()
    with exported.open("rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(bytes(size)).hexdigest()
    rec = Reconciler(state_dir=state, url=str(demo_repo.path), operator=OPERATOR)
    try:
        assert rec.reconcile_until_settled(timeout_s=300, trigger="test").error == ""
        assert [v.label for v in rec.registry.list("blobs")] == ["blobs@1"]
    finally:
        rec.close()


def git(repo: GitRepo, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(["git", *args], cwd=repo.path, env=env, input=stdin, capture_output=True, text=True,
                          check=True)  # fmt: skip
    return done.stdout.strip()


def push_under_src(repo: GitRepo, name: str, tree: str, message: str) -> None:
    """Commit HEAD's tree with `tree` added to src/ as `name`, as a push would, whatever Git's own tools allow."""
    src = git(repo, "ls-tree", "HEAD:src") + f"\n040000 tree {tree}\t{name}\n"
    root = git(repo, "ls-tree", "HEAD").replace(git(repo, "rev-parse", "HEAD:src"), git(repo, "mktree", stdin=src))
    commit = git(repo, "commit-tree", git(repo, "mktree", stdin=root + "\n"), "-p", "HEAD", "-m", message)
    git(repo, "update-ref", "refs/heads/main", commit)


def failed_run(state: Path, repo: GitRepo) -> tuple[str, str]:
    """One pass of `repo` into `state`, whose one run must fail: its id, and what `status --wide` says."""
    result = one_pass(state, repo.path)
    [(run_id, phase)] = runs(state)
    assert phase == "Failed", result
    return run_id, gitopsd(state, "status", "--wide").stdout


def test_a_tree_entry_named_dotdot_cannot_write_outside_the_run(demo_repo: GitRepo, tmp_path: Path) -> None:
    """Git's own tools refuse such trees, but `git mktree` writes them and nothing stops a push."""
    blob = git(demo_repo, "hash-object", "-w", "--stdin", stdin="pwned\n")
    tree = git(demo_repo, "mktree", stdin=f"100644 blob {blob}\tpwned.txt\n")
    for _ in range(5):  # runs/ID/tree/src/../../../../.. is the state directory's parent
        tree = git(demo_repo, "mktree", stdin=f"040000 tree {tree}\t..\n")
    push_under_src(demo_repo, "..", tree, "escape")
    _, events = failed_run(tmp_path / "state", demo_repo)
    assert "holds a tree entry named '..'; refusing to export it" in events
    assert not list(tmp_path.rglob("pwned.txt"))


def test_a_workdir_that_names_one_subtree_over_and_over_fails_the_run_before_anything_is_written(
    demo_repo: GitRepo, tmp_path: Path
) -> None:
    """Eight trees, each naming the next sixteen times, spell 16^7 files (268 million) under src/: exported, they
    would fill the run directory's disk. The export weighs the trees first (each distinct tree once) and the run
    fails naming the bound; nothing of the tree is written."""
    blob = git(demo_repo, "hash-object", "-w", "--stdin", stdin="x\n")
    tree = git(demo_repo, "mktree", stdin="".join(f"100644 blob {blob}\tf{i}\n" for i in range(16)))
    for _ in range(6):
        tree = git(demo_repo, "mktree", stdin="".join(f"040000 tree {tree}\td{i}\n" for i in range(16)))
    push_under_src(demo_repo, "bomb", tree, "bomb")
    state = tmp_path / "state"
    run_id, shown = failed_run(state, demo_repo)
    assert "would write 286,331,155 files and directories (512 MiB)" in shown, shown
    assert "a run's tree may have at most 1,000,000 (100.0 GiB)" in shown, shown
    assert not (state / "runs" / run_id / "tree" / "src").exists()


def test_a_spec_file_whose_name_would_forge_a_log_line_is_refused(tracked: Tracked) -> None:
    forged = "models/x\n12:00:00 INFO blobs: registered blobs@9.yaml"
    tracked.repo.write(forged, tracked.repo.read(MODEL).replace("name: blobs", "name: forged"))
    tracked.repo.commit("A spec file named like a log line")
    report = refused(tracked, "models/x\\n12:00:00 INFO blobs: registered blobs@9.yaml: a newline (U+000A) in the")
    assert "\n12:00:00" not in report
