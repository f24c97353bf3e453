"""`gitopsd comment`: ONE plan comment per pull/merge request, against a local GitHub, GitLab and Gitea API.

Each forge's fake answers only its documented requests (method, path, the token in its header, a JSON body), so
a passing test means the real command made the real requests; the reviewer-visible result is the fake's list
of comments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitopsd.cli.forgeclient import upsert
from gitopsd.cli.prcomment import (
    MARKER,
    Comment,
    CommentError,
    choose_ours,
    compose_body,
    next_page,
    pull_request_number,
    target_from_env,
    truncate,
)
from tests.fakeforge import TOKEN, FakeForge, ci_env, serve

PLAN = f"{MARKER}\n## gitopsd plan\n\n| model | trains |\n| --- | --- |\n| blobs | yes: code changed |\n"


@pytest.fixture(params=["github", "gitlab", "gitea"])
def forge(request: pytest.FixtureRequest) -> Iterator[FakeForge]:
    with serve(FakeForge(forge=request.param)) as fake:
        yield fake


def event_file(tmp_path: Path, number: int = 7) -> Path:
    path = tmp_path / "event.json"
    path.write_text(json.dumps({"action": "synchronize", "number": number, "pull_request": {"number": number}}))
    return path


def run_comment(
    fake: FakeForge, tmp_path: Path, plan: str | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command, with only the CI's variables (and PATH, PYTHONPATH) in its environment."""
    plan_file = tmp_path / "plan.md"
    if plan is not None:
        plan_file.write_text(plan)
    base = {k: os.environ[k] for k in ("PATH", "PYTHONPATH", "HOME") if k in os.environ}
    full = {**base, **(env if env is not None else ci_env(fake, str(event_file(tmp_path))))}
    return subprocess.run(
        [sys.executable, "-m", "gitopsd", "comment", str(plan_file), "--forge", fake.forge, "--timeout", "5", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def writes(fake: FakeForge) -> list[tuple[str, str]]:
    return [(s.method, s.path) for s in fake.seen if s.method != "GET"]


def test_first_push_posts_the_plan_and_later_pushes_edit_the_same_comment(forge: FakeForge, tmp_path: Path) -> None:
    for n in range(5):  # five comments of reviewers first: ours lands on page 3 of 2 a page
        forge.add(f"looks good {n}", f"reviewer{n}")
    first = run_comment(forge, tmp_path, PLAN)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("created the plan comment")
    assert len(forge.comments) == 6
    assert forge.comments[-1]["body"] == PLAN, "the plan as gitopsd plan wrote it"
    second = run_comment(forge, tmp_path, PLAN.replace("code changed", "data changed"))
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("updated the plan comment")
    assert len(forge.comments) == 6, "one plan comment, edited, not a new one per push"
    assert "data changed" in forge.comments[-1]["body"]
    listed = [s for s in forge.seen if s.method == "GET" and s.path.endswith(("/comments", "/notes"))]
    pages = [s.query.get("page", ["1"])[0] for s in listed]
    if forge.forge != "gitea":
        assert "3" in pages, "pagination was followed to the last page"
    edit = {"github": "PATCH", "gitlab": "PUT", "gitea": "PATCH"}[forge.forge]
    assert writes(forge)[0][0] == "POST"
    assert writes(forge)[1][0] == edit
    token_header = {"github": "authorization", "gitlab": "private-token", "gitea": "authorization"}[forge.forge]
    assert all(token_header in s.headers for s in forge.seen)
    assert TOKEN not in first.stdout + first.stderr + second.stdout + second.stderr


def test_the_marker_is_prepended_once_and_a_missing_plan_says_so(forge: FakeForge, tmp_path: Path) -> None:
    done = run_comment(forge, tmp_path, "## a plan without the marker\n")
    assert done.returncode == 0, done.stderr
    assert forge.bodies()[0].startswith(MARKER + "\n## a plan without the marker")
    assert forge.bodies()[0].count(MARKER) == 1
    (tmp_path / "plan.md").unlink()
    done = run_comment(forge, tmp_path, None)
    assert done.returncode == 0, done.stderr
    assert len(forge.comments) == 1
    assert "wrote no plan for this change" in forge.bodies()[0]


def test_a_persons_comment_with_the_marker_is_never_edited(forge: FakeForge, tmp_path: Path) -> None:
    forge.add(f"{MARKER}\nI pasted the marker", "mallory")
    done = run_comment(forge, tmp_path, PLAN)
    assert done.returncode == 0, done.stderr
    assert forge.bodies() == [f"{MARKER}\nI pasted the marker", PLAN]


def test_github_actions_token_that_cannot_say_who_it_is_edits_the_bots_comment(tmp_path: Path) -> None:
    with serve(FakeForge(forge="github", me="github-actions[bot]", app_token=True)) as fake:
        fake.add(f"{MARKER}\nfrom a person", "mallory")
        assert run_comment(fake, tmp_path, PLAN).returncode == 0
        done = run_comment(fake, tmp_path, PLAN + "\nsecond push\n")
        assert done.returncode == 0, done.stderr
        assert len(fake.comments) == 2
        assert fake.bodies()[0] == f"{MARKER}\nfrom a person"
        assert "second push" in fake.bodies()[1]


def test_a_plan_over_the_forges_limit_is_cut_with_a_line_saying_so(tmp_path: Path) -> None:
    rows = "".join(f"| model-{i:05} | trains: code changed |\n" for i in range(4000))
    plan = f"{MARKER}\n## plan\n\n<details><summary>all</summary>\n\n```text\n{rows}```\n\n</details>\n"
    with serve(FakeForge(forge="github")) as fake:
        done = run_comment(fake, tmp_path, plan)
        assert done.returncode == 0, done.stderr  # the fake refuses a body over 65,536 characters, as GitHub does
        body = fake.bodies()[0]
    assert len(body) <= 65536
    assert body.startswith(MARKER)
    assert "**The plan is cut here:**" in body
    assert "do not fit in one comment (at most 65,536)" in body
    tail = body[: body.index("**The plan is cut here:**")]
    assert tail.rstrip().endswith("```\n</details>"), "the open code block and <details> are closed"


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (401, "refused the token in $"),
        (403, "forbids this token to comment"),
        (404, "was not found (404"),
        (422, "answered 422"),
    ],
)
def test_a_refusal_is_one_clear_line_and_exit_1_without_the_token(
    forge: FakeForge, tmp_path: Path, status: int, words: str
) -> None:
    forge.script.append(("POST", status, {"message": f"refused {status}"}))
    done = run_comment(forge, tmp_path, PLAN)
    assert done.returncode == 1
    assert words in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert TOKEN not in done.stdout + done.stderr


def test_a_fork_pull_requests_read_only_token_names_the_reason(tmp_path: Path) -> None:
    with serve(FakeForge(forge="github", app_token=True)) as fake:
        fake.script.append(("POST", 403, {"message": "Resource not accessible by integration"}))
        done = run_comment(fake, tmp_path, PLAN)
    assert done.returncode == 1
    assert "pull-requests: write" in done.stderr
    assert "from a fork gets a read-only token" in done.stderr


def test_a_wrong_token_is_refused_by_the_forge_and_named_by_its_variable(forge: FakeForge, tmp_path: Path) -> None:
    env = ci_env(forge, str(event_file(tmp_path)), token="not-the-token")
    done = run_comment(forge, tmp_path, PLAN, env=env)
    assert done.returncode == 1
    variable = "GITOPSD_GITLAB_TOKEN" if forge.forge == "gitlab" else "GITHUB_TOKEN"
    assert f"refused the token in ${variable} (401 Unauthorized)" in done.stderr
    assert "not-the-token" not in done.stderr
    assert forge.comments == []


def test_gitlab_without_a_token_says_the_job_token_cannot_write_notes(tmp_path: Path) -> None:
    with serve(FakeForge(forge="gitlab")) as fake:
        done = run_comment(fake, tmp_path, PLAN, env=ci_env(fake, "", token=None))
    assert done.returncode == 1
    assert "$GITOPSD_GITLAB_TOKEN is not set" in done.stderr
    assert "CI_JOB_TOKEN cannot write merge request notes" in done.stderr
    assert fake.seen == []


def test_a_job_not_run_for_a_pull_request_says_so(tmp_path: Path) -> None:
    push = tmp_path / "push.json"
    push.write_text(json.dumps({"ref": "refs/heads/main", "after": "0" * 40}))
    with serve(FakeForge(forge="github")) as fake:
        done = run_comment(fake, tmp_path, PLAN, env=ci_env(fake, str(push)))
        assert done.returncode == 1
        assert "has no pull_request.number" in done.stderr
        by_number = run_comment(fake, tmp_path, PLAN, "--number", "7", env=ci_env(fake, str(push)))
        assert by_number.returncode == 0, by_number.stderr
        assert len(fake.comments) == 1


def test_a_5xx_answer_is_retried_with_backoff(forge: FakeForge, tmp_path: Path) -> None:
    forge.script.append(("POST", 502, {"message": "Bad Gateway"}))
    done = run_comment(forge, tmp_path, PLAN)
    assert done.returncode == 0, done.stderr
    assert "answered 502" in done.stderr and "trying again in 2 s" in done.stderr
    assert len(forge.comments) == 1


def test_a_timeout_is_retried_and_bounded(tmp_path: Path) -> None:
    waits: list[float] = []
    with serve(FakeForge(forge="github")) as fake:
        target = target_from_env("github", ci_env(fake, ""), number=7)
        fake.script.append(("GET", "hang", None))
        posted = upsert(target, PLAN, timeout=0.5, sleep=waits.append)
        assert posted.action == "created"
        assert waits == [2.0]
        fake.script.extend([("GET", 503, {}), ("GET", 503, {}), ("GET", 503, {}), ("GET", 503, {})])
        with pytest.raises(CommentError, match=r"answered 503 .* gave up after 4 tries"):
            upsert(target, PLAN, timeout=0.5, sleep=waits.append)
    assert waits == [2.0, 2.0, 4.0, 8.0]


def test_a_post_whose_answer_was_lost_is_not_posted_twice(forge: FakeForge, tmp_path: Path) -> None:
    target = target_from_env(forge.forge, ci_env(forge, ""), number=7)
    forge.script.append(("POST", "lost", None))
    posted = upsert(target, PLAN, timeout=0.5, sleep=lambda _: None)
    assert posted.action == "updated"
    assert forge.bodies() == [PLAN]


def test_the_event_payload_gives_the_pull_request_number() -> None:
    assert pull_request_number(b'{"pull_request": {"number": 12}}', "event.json") == 12
    for bad in (b"{}", b'{"pull_request": {"number": "12"}}', b'{"pull_request": {"number": true}}', b"[]", b"x"):
        with pytest.raises(CommentError):
            pull_request_number(bad, "event.json")


def test_the_target_comes_from_each_ci_s_variables() -> None:
    gh = target_from_env("github", {"GITHUB_TOKEN": "t", "GITHUB_REPOSITORY": "ml/demo", "GITHUB_EVENT_PATH": "e"},
                         event=b'{"pull_request": {"number": 3}}')  # fmt: skip
    assert gh.list_url == "https://api.github.com/repos/ml/demo/issues/3/comments?per_page=100"
    assert gh.comments_url == "https://api.github.com/repos/ml/demo/issues/3/comments"
    assert gh.comment_url(5) == "https://api.github.com/repos/ml/demo/issues/comments/5"
    assert gh.headers()["Authorization"] == "Bearer t"
    gl = target_from_env("gitlab", {"GITOPSD_GITLAB_TOKEN": "t", "CI_API_V4_URL": "https://gl.example/api/v4/",
                                    "CI_PROJECT_ID": "ml/demo", "CI_MERGE_REQUEST_IID": "4"})  # fmt: skip
    assert gl.list_url.startswith("https://gl.example/api/v4/projects/ml%2Fdemo/merge_requests/4/notes?sort=asc&")
    assert gl.comments_url == "https://gl.example/api/v4/projects/ml%2Fdemo/merge_requests/4/notes"
    assert gl.edit_method == "PUT"
    assert gl.headers()["PRIVATE-TOKEN"] == "t"
    gt = target_from_env("gitea", {"GITHUB_TOKEN": "t", "GITHUB_API_URL": "https://git.example/api/v1",
                                   "GITHUB_REPOSITORY": "ml/demo"}, number=9)  # fmt: skip
    assert gt.comments_url == "https://git.example/api/v1/repos/ml/demo/issues/9/comments"
    assert gt.headers()["Authorization"] == "token t"
    assert "t" not in repr(gt).split("token_env")[0].split("number=9")[1], "the token is not in the repr"
    with pytest.raises(CommentError, match="GITHUB_API_URL is not set"):
        target_from_env("gitea", {"GITHUB_TOKEN": "t", "GITHUB_REPOSITORY": "ml/demo"}, number=1)
    with pytest.raises(CommentError, match="not OWNER/NAME"):
        target_from_env("github", {"GITHUB_TOKEN": "t", "GITHUB_REPOSITORY": "../x"}, number=1)


def test_choosing_ours_takes_the_earliest_plan_comment_of_the_token_s_user() -> None:
    def c(ident: int, body: str, author: str, bot: bool = False, system: bool = False) -> Comment:
        return Comment(id=ident, body=body, author=author, bot=bot, system=system)

    plan = f"{MARKER}\nplan"
    comments = [c(1, plan, "alice"), c(2, "hi", "bot"), c(3, plan, "bot", system=True), c(4, plan, "bot"),
                c(5, plan, "bot")]  # fmt: skip
    assert choose_ours(comments, "bot") == comments[3]
    assert choose_ours(comments, None) is None, "unknown user: only a bot account's comment counts"
    assert choose_ours([c(1, plan, "alice"), c(2, plan, "github-actions[bot]", bot=True)], None).id == 2  # type: ignore[union-attr]
    assert choose_ours([c(1, f"quote: {MARKER}", "bot")], "bot") is None, "the marker must be the first line"
    assert choose_ours([c(1, plan, "alice"), c(2, plan, "gitea-actions")], None).id == 2  # type: ignore[union-attr]


def test_a_gitea_actions_token_that_may_not_ask_who_it_is_edits_its_own_comment(tmp_path: Path) -> None:
    with serve(FakeForge(forge="gitea", me="gitea-actions", me_is_bot=False, app_token=True)) as fake:
        fake.add(f"{MARKER}\nfrom a person", "mallory")
        for push in range(2):
            done = run_comment(fake, tmp_path, PLAN + f"\npush {push}\n")
            assert done.returncode == 0, done.stderr
        assert fake.bodies() == [f"{MARKER}\nfrom a person", PLAN + "\npush 1\n"]


def test_next_page_follows_rel_next_only() -> None:
    api = "https://api.github.com"
    link = '<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last"'
    assert next_page(link, api) == "https://api.github.com/x?page=2"
    assert next_page('<https://api.github.com/x?page=1>; rel="prev"', api) is None
    assert next_page(None, api) is None


def test_appended_logs_are_collapsed_code_blocks_and_empty_ones_left_out() -> None:
    body = compose_body(PLAN, appendix=[("validate", "models/a.yaml: spec.train: bad\n"), ("empty", "  \n")],
                        run_url="https://ci.example/run/1", limit=65536)  # fmt: skip
    assert body.startswith(MARKER + "\n## gitopsd plan")
    assert "<details><summary>validate</summary>\n\n```text\nmodels/a.yaml: spec.train: bad\n```" in body
    assert "empty" not in body
    assert compose_body("", appendix=[], run_url="https://ci.example/run/1", limit=65536) == (
        f"{MARKER}\n**gitopsd plan** wrote no plan for this change ([the job log](https://ci.example/run/1)).\n"
    )


def test_truncate_keeps_whole_lines_and_closes_what_it_cut_open() -> None:
    body = MARKER + "\n" + "<details>\n\n````\n" + "x" * 50 + "\n" * 3 + ("line\n" * 100) + "````\n</details>\n"
    cut = truncate(body, 300)
    assert len(cut) <= 300
    assert cut.startswith(MARKER + "\n<details>")
    assert "\n````\n</details>\n\n**The plan is cut here:**" in cut
    assert truncate("short", 300) == "short"
    assert truncate(MARKER + "\n" + "x" * 500, 50).startswith(MARKER + "\n"), "the marker survives any limit"
