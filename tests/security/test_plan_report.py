"""A plan is posted as a comment on pull requests from any branch: what a hostile repository writes must not
inject markdown or HTML into it, and no repository can make the comment too large to post.

- a spec file named with `|`, `<img>`, `<!--`, a backtick and `@team`, and an invalid spec whose error message
  quotes such a value: the comment keeps one HTML comment (the marker), no tag, no mention, every table row its
  cells; the JSON is still JSON and carries the text as it is;
- `md()` on every character class that means something to markdown or HTML;
- `term()`, the terminal's face, writes out every control character and redacts every credential, whatever the
  text (its shortcut for plain ASCII changes nothing);
- 3,000 models with long reasons: the comment stays within GitHub's 65,536 characters, the summary stays, and
  a line says how many models were left out of the details.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitopsd.errors import SpecProblem, printable
from gitopsd.reconcile.changeplan import Because, ChangePlan, Entry, Verdict, Why, invalid
from gitopsd.reconcile.planreport import MARKER, MAX_MARKDOWN, md, render_markdown, term
from gitopsd.source.redact import redact_text
from tests.conftest import GitRepo, gitopsd

MODEL = "models/blobs.yaml"
HOSTILE = (
    "x|<img src=https://evil.invalid/p.png>`<!-- @octo-org/admins #1 [a](https://evil.invalid) ![i](x) $x$ "
    "www.evil.invalid :tada: ~~struck~~ **bold** &lt;b&gt;"
)


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def _assert_inert(comment: str) -> None:
    assert comment.startswith(MARKER + "\n")
    assert comment.count("<!--") == 1, "only the marker is an HTML comment"
    assert "<img" not in comment and "<a " not in comment
    assert "@octo" not in comment and "#1" not in comment, "no mention, no issue reference"
    assert not re.search(r"(?<![\\(])\[a\]", comment), "no link"
    assert "`" not in comment.replace("\\`", "").replace("`gitopsd plan --format json`", "")
    for line in comment.splitlines():
        if line.startswith("| "):
            assert _unescaped_pipes(line) == _unescaped_pipes(comment.splitlines()[_header(comment)])
        assert not line.startswith("#") or line.startswith("### gitopsd plan:")


def _header(comment: str) -> int:
    return next(i for i, line in enumerate(comment.splitlines()) if line.startswith("| "))


ESCAPES = [
    ("- item", "\\- item"),
    ("12. item", "12\\. item"),
    ("www.x.invalid", "www\\.x.invalid"),
    (":tada:", "\\:tada:"),
    ("&lt;b&gt;", "&amp;lt;b&amp;gt;"),
    ("a -> b (c) > d", "a → b (c) &gt; d"),
]


@pytest.mark.parametrize(("text", "shown"), ESCAPES)
def test_md_escapes_what_starts_a_block_or_a_link_and_leaves_prose_alone(text: str, shown: str) -> None:
    assert md(text) == shown


def test_md_makes_any_text_one_inert_line() -> None:
    shown = md(HOSTILE + "\n# heading\r\n- item\u2028more")
    assert "\n" not in shown and "\r" not in shown and "\u2028" not in shown
    assert "<" not in shown and ">" not in shown.replace("&gt;", "")
    assert _unescaped_pipes(shown) == 0
    assert "\\`" in shown and "\\[" in shown and "\\$" in shown and "https\\://" in shown and "\\# heading" not in shown
    assert "@octo" not in shown and "#1" not in shown and "\\#\u200b heading" in shown
    assert "\\~\\~struck" in shown and "\\*\\*bold" in shown and "www\\.evil" in shown and "\\:tada" in shown


def test_a_hostile_file_name_cannot_inject_into_the_comment(demo_repo: GitRepo, state_dir: Path) -> None:
    demo_repo.git("checkout", "-q", "-b", "change")
    hostile_path = "models/" + HOSTILE.replace("/", "_") + ".yaml"
    demo_repo.write(hostile_path, demo_repo.read(MODEL).replace("name: blobs", "name: evil"))
    demo_repo.commit("A model in a file with a hostile name")
    args = ("plan", "--repo", str(demo_repo.path), "--base", "main", "--branch", "change")
    comment = gitopsd(state_dir, *args, "--format", "markdown").stdout
    _assert_inert(comment)
    assert "evil" in comment and "🚀 train" in comment
    doc = json.loads(gitopsd(state_dir, *args, "--format", "json").stdout)
    assert [m["path"] for m in doc["models"] if m["name"] == "evil"] == [hostile_path]


def test_an_invalid_spec_quoting_hostile_text_cannot_inject_into_the_comment(
    demo_repo: GitRepo, state_dir: Path
) -> None:
    demo_repo.git("checkout", "-q", "-b", "change")
    demo_repo.edit(MODEL, "  train:\n", f"  train:\n    backend: '{HOSTILE}'\n")
    demo_repo.write("models/" + HOSTILE.replace("/", "_") + ".yaml", "kind: [unclosed\n")
    demo_repo.commit("Broken, with hostile text in the errors")
    args = ("plan", "--repo", str(demo_repo.path), "--base", "main", "--branch", "change")
    done = gitopsd(state_dir, *args, "--format", "markdown", check=False)
    assert done.returncode == 1
    _assert_inert(done.stdout)
    assert "cannot be planned" in done.stdout and "spec.train.backend" in done.stdout.replace("\\", "")
    doc = json.loads(gitopsd(state_dir, *args, "--format", "json", check=False).stdout)
    assert doc["valid"] is False and doc["exit_code"] == 1 and len(doc["problems"]) >= 2


@pytest.mark.parametrize(("text", "shown"), [
    ("m00001", "m00001"),
    ("a\x7fb", "a\\x7fb"),
    ("x\x1b[31mred", "x\\x1b[31mred"),
    ("line\nforged", "line\\nforged"),
    ("fetch https://user:tok@host/r.git failed", "fetch https://***@host/r.git failed"),
    ("caf\u00e9\u202e", "caf\u00e9\\u202e"),
])  # fmt: skip
def test_term_writes_out_control_characters_and_redacts_credentials(text: str, shown: str) -> None:
    assert term(text) == shown


_PIECES = st.characters() | st.sampled_from(["https://", "u:p@", "\x7f", "\x1b", "?token=", "\udc80", "\u2028"])


@given(st.lists(_PIECES).map("".join))
def test_term_is_the_escaped_redacted_text_for_any_text(text: str) -> None:
    assert term(text) == printable(redact_text(text))


def _many(count: int, hours: float | None = 1.0) -> ChangePlan:
    why = Because(code=Why.CODE_CHANGED, text="code tree changed (" + "src/" * 60 + ")")
    entries = tuple(
        Entry(model=f"model-{i:05d}", path=f"models/model-{i:05d}.yaml", verdict=Verdict.TRAIN, change="modified",
              reasons=(why,), backend="local", gpus=1, gpu_hours=hours)
        for i in range(count)
    )  # fmt: skip
    return ChangePlan(base_commit="b" * 40, head_commit="a" * 40, base_label="main", head_label="HEAD",
                      entries=entries)  # fmt: skip


@pytest.mark.parametrize("count", [200, 3000])
def test_the_comment_stays_within_the_forge_limit_and_keeps_its_summary(count: int) -> None:
    comment = render_markdown(_many(count))
    assert len(comment.encode()) <= MAX_MARKDOWN
    assert comment.startswith(MARKER + "\n### gitopsd plan:")
    assert f"**{count} training(s), {count} GPU(s)" in comment, "the totals stay"
    assert "left out" in comment
    assert comment.count("<details>") == comment.count("</details>"), "no details block is cut in half"


def test_thousands_of_unbounded_models_are_counted_not_listed_in_the_totals() -> None:
    comment = render_markdown(_many(20_000, hours=None))
    assert len(comment.encode()) <= MAX_MARKDOWN
    assert "unbounded for: model-00000, model-00001," in comment and "and 19980 more**" in comment


def test_thousands_of_spec_problems_stay_within_the_limit() -> None:
    problems = [SpecProblem(file=f"models/m{i}.yaml", line=i + 1, field="spec.train.command", message="x" * 80)
                for i in range(5000)]  # fmt: skip
    comment = render_markdown(invalid(base_commit=None, head_commit="a" * 40, base_label="main", head_label="HEAD",
                                      problems=problems))  # fmt: skip
    assert len(comment.encode()) <= MAX_MARKDOWN and "5000 problem(s)" in comment and "left out" in comment
