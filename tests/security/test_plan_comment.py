"""`gitopsd comment` posts text a hostile branch shaped (the plan and the validate log quote its spec files) with a
token that may write to the forge. What such a branch, or a forge answer, must not achieve: carry the token to
another host (a redirect, a `Link: rel="next"` elsewhere), break out of the code block its log is shown in,
get a person's comment edited in its place, or exhaust memory with a huge plan.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gitopsd.cli.forgeclient import upsert
from gitopsd.cli.prcomment import MARKER, CommentError, compose_body, next_page, target_from_env
from tests.fakeforge import TOKEN, FakeForge, ci_env, serve
from tests.test_comment import PLAN, run_comment


def test_a_redirect_never_carries_the_token_to_where_it_points(tmp_path: Path) -> None:
    with serve(FakeForge(forge="github")) as elsewhere, serve(FakeForge(forge="github")) as fake:
        fake.script.append(("GET", 302, f"{elsewhere.url}/user"))
        done = run_comment(fake, tmp_path, PLAN)
        assert elsewhere.seen == [], "nothing reached the other host"
    assert done.returncode == 1
    assert "answered 302" in done.stderr
    assert TOKEN not in done.stdout + done.stderr


def test_a_next_page_on_another_origin_is_refused(tmp_path: Path) -> None:
    api = "https://api.github.com"
    with pytest.raises(CommentError, match="another origin"):
        next_page('<https://attacker.example/x?page=2>; rel="next"', api)
    with pytest.raises(CommentError, match="another origin"):
        next_page('<http://api.github.com/x?page=2>; rel="next"', api)  # the token must not go out in clear
    with pytest.raises(CommentError, match="another origin"):
        next_page('<https://api.github.com.attacker.example/x>; rel="next"', api)
    with pytest.raises(CommentError, match="another origin"):
        next_page('<https://gl.example/other/api/v4/x>; rel="next"', "https://gl.example/api/v4")


def test_an_api_url_with_credentials_or_a_query_is_refused() -> None:
    for url in ("https://user:pw@api.github.com", "https://api.github.com/?x=1", "file:///etc/passwd", "api"):
        env = {"GITHUB_TOKEN": "t", "GITHUB_API_URL": url, "GITHUB_REPOSITORY": "ml/demo"}
        with pytest.raises(CommentError, match="GITHUB_API_URL"):
            target_from_env("github", env, number=1)


def test_a_hostile_log_cannot_close_its_code_block() -> None:
    hostile = "models/x.yaml: bad\n```\n</details><img src=https://attacker.example/pixel>\n````\n@everyone"
    body = compose_body(PLAN, appendix=[("validate", hostile)], run_url=None, limit=65536)
    fence = "`````"  # longer than the longest run of backticks in the log
    assert f"{fence}text\n{hostile}\n{fence}\n" in body


def test_a_persons_marker_comment_is_not_edited_even_by_a_token_that_could(tmp_path: Path) -> None:
    with serve(FakeForge(forge="github", app_token=True)) as fake:
        planted = fake.add(f"{MARKER}\nplanted by a person", "mallory", bot=False)
        target = target_from_env("github", ci_env(fake, ""), number=7)
        upsert(target, PLAN, timeout=5, sleep=lambda _: None)
        assert next(c for c in fake.comments if c["id"] == planted)["body"] == f"{MARKER}\nplanted by a person"
        assert not [s for s in fake.seen if s.method == "PATCH"]


def test_a_huge_plan_is_read_in_part_and_cut_to_the_limit(tmp_path: Path) -> None:
    huge = MARKER + "\n" + ("| model | trains |\n" * 3_000_000)  # 54 MB
    with serve(FakeForge(forge="github")) as fake:
        done = run_comment(fake, tmp_path, huge)
        assert done.returncode == 0, done.stderr
        body = fake.bodies()[0]
    assert len(body) <= 65536
    assert "**The plan is cut here:**" in body


def test_an_event_without_an_integer_number_is_refused(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": "7/../../issues/1"}}))
    with serve(FakeForge(forge="github")) as fake:
        done = run_comment(fake, tmp_path, PLAN, env=ci_env(fake, str(event)))
        assert fake.seen == []
    assert done.returncode == 1
    assert "no pull_request.number" in done.stderr


def test_a_token_with_a_line_break_is_refused_without_showing_it(tmp_path: Path) -> None:
    with serve(FakeForge(forge="github")) as fake:
        env = ci_env(fake, "", token=None)
        env["GITHUB_TOKEN"] = "secret-part\r\nX-Injected: 1"
        done = run_comment(fake, tmp_path, PLAN, "--number", "7", env=env)
        assert fake.seen == []
    assert done.returncode == 1
    assert "holds characters no token has" in done.stderr
    assert "secret-part" not in done.stdout + done.stderr
