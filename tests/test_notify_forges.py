"""The pure core of notifications: each forge's request, the signed webhook, what an answer means, and what a
pass's records turn into (commit statuses once per change, events past the cursor)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from gitopsd.daemon.config import NotificationConfig, load_config
from gitopsd.daemon.deliveries import Cursor, Facts, commit_status, event_payload, notices
from gitopsd.daemon.forges import (
    DESCRIPTION_MAX,
    classify,
    slack_request,
    status_request,
    webhook_request,
)
from gitopsd.errors import PermanentError
from gitopsd.reconcile.statusview import notification_line

SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
TOKEN = "ghp_" + "x" * 36


def sink(kind: str, **fields: Any) -> NotificationConfig:
    defaults: dict[str, dict[str, Any]] = {
        "github": {"project": "octo/models", "token": "env:T"},
        "gitlab": {"project": "group/sub/models", "token": "env:T"},
        "gitea": {"url": "https://gitea.example/", "project": "octo/models", "token": "env:T"},
        "webhook": {"url": "https://hooks.example/gitopsd", "secret": "env:S"},
        "slack": {"url": "env:SLACK_URL"},
    }
    return NotificationConfig.model_validate({"name": kind, "kind": kind, **defaults[kind], **fields})


STATUS = {"repository": "demo", "sha": SHA, "state": "pending", "description": "0/1 ready; training: blobs"}


def test_github_status_is_the_documented_request() -> None:
    request = status_request(sink("github"), TOKEN, STATUS, "demo")
    assert (request.method, request.url) == ("POST", f"https://api.github.com/repos/octo/models/statuses/{SHA}")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/vnd.github+json"
    assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert json.loads(request.body) == {"state": "pending", "description": "0/1 ready; training: blobs",
                                        "context": "gitopsd/demo"}  # fmt: skip


def test_gitlab_status_encodes_the_project_path_and_says_running_and_failed() -> None:
    request = status_request(sink("gitlab", url="https://gl.example"), TOKEN, STATUS, "demo")
    assert request.url == f"https://gl.example/api/v4/projects/group%2Fsub%2Fmodels/statuses/{SHA}"
    assert request.headers["PRIVATE-TOKEN"] == TOKEN and "Authorization" not in request.headers
    assert json.loads(request.body) == {"state": "running", "description": STATUS["description"],
                                        "name": "gitopsd/demo"}  # fmt: skip
    failed = status_request(sink("gitlab"), TOKEN, {**STATUS, "state": "failure"}, "demo")
    assert json.loads(failed.body)["state"] == "failed" and failed.url.startswith("https://gitlab.com/api/v4/")
    by_id = status_request(sink("gitlab", project="4711"), TOKEN, STATUS, "demo")
    assert by_id.url == f"https://gitlab.com/api/v4/projects/4711/statuses/{SHA}"


def test_gitea_status_uses_its_token_header_and_api_v1() -> None:
    request = status_request(sink("gitea", context="ci/models", target_url="https://dash.example/demo"), TOKEN,
                             {**STATUS, "state": "success"}, "demo")  # fmt: skip
    assert request.url == f"https://gitea.example/api/v1/repos/octo/models/statuses/{SHA}"
    assert request.headers["Authorization"] == f"token {TOKEN}"
    assert json.loads(request.body) == {"state": "success", "description": STATUS["description"],
                                        "context": "ci/models", "target_url": "https://dash.example/demo"}  # fmt: skip


def test_a_long_description_is_cut_to_githubs_140_characters_and_a_bad_sha_is_refused() -> None:
    long = {**STATUS, "description": "failed: " + ", ".join(f"model-{i} (GateFailed)" for i in range(30))}
    body = json.loads(status_request(sink("github"), TOKEN, long, "demo").body)
    assert len(body["description"]) == DESCRIPTION_MAX and body["description"].endswith("...")
    with pytest.raises(ValueError, match="not a commit id"):
        status_request(sink("github"), TOKEN, {**STATUS, "sha": "../../orgs/x"}, "demo")


def verify(secret: bytes, headers: dict[str, str], body: bytes, now: float, tolerance: int = 300) -> bool:
    """The receiver's check, as docs/notifications.md shows it."""
    timestamp = headers["X-Gitopsd-Timestamp"]
    if abs(now - int(timestamp)) > tolerance:
        return False
    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Gitopsd-Signature-256"])


def test_the_webhook_is_signed_over_timestamp_and_body_and_a_replay_or_a_change_fails() -> None:
    payload = {"event": "version-registered", "repository": "demo", "model": "blobs", "version": 3}
    request = webhook_request("https://hooks.example/x", b"k3y", payload, delivery="d1", now=1_700_000_000)
    headers = dict(request.headers)
    assert headers["X-Gitopsd-Event"] == "version-registered" and headers["X-Gitopsd-Delivery"] == "d1"
    assert json.loads(request.body) == {"schema": "gitopsd.notification/v1", "id": "d1", **payload}
    assert verify(b"k3y", headers, request.body, now=1_700_000_010)
    assert not verify(b"k3y", headers, request.body, now=1_700_000_000 + 3600), "a replay an hour later"
    assert not verify(b"other", headers, request.body, now=1_700_000_010)
    assert not verify(b"k3y", {**headers, "X-Gitopsd-Timestamp": "1700000100"}, request.body, now=1_700_000_100)
    assert not verify(b"k3y", headers, request.body.replace(b"3", b"4"), now=1_700_000_010)


def test_slack_gets_one_line_of_text() -> None:
    request = slack_request("https://hooks.slack.com/services/T/B/X", {
        "event": "version-registered", "repository": "demo", "model": "blobs", "version": 2, "commit": SHA,
        "message": "registered blobs@2 (sha256 1c1d375dbe81)"})  # fmt: skip
    assert json.loads(request.body) == {
        "text": "[demo] blobs version 2 registered at 6dcb09b5b578: registered blobs@2 (sha256 1c1d375dbe81)"
    }


@pytest.mark.parametrize(
    ("kind", "status", "body", "headers", "expected"),
    [
        ("github", 201, b"{}", {}, "delivered"),
        ("slack", 200, b"ok", {}, "delivered"),
        ("gitlab", 400, b'{"message":"Cannot transition status via :run from :running"}', {}, "delivered"),
        ("gitlab", 400, b'{"message":"state is missing"}', {}, "stall"),
        ("github", 401, b'{"message":"Bad credentials"}', {}, "stall sink"),
        ("github", 403, b'{"message":"Resource not accessible by integration"}', {}, "stall sink"),
        ("github", 403, b'{"message":"API rate limit exceeded"}', {"X-RateLimit-Remaining": "0"}, "retry"),
        ("github", 404, b'{"message":"Not Found"}', {}, "stall sink"),
        ("github", 422, b'{"message":"No commit found for SHA"}', {}, "stall"),
        ("github", 301, b"", {"Location": "https://elsewhere.example/"}, "stall sink"),
        ("webhook", 408, b"", {}, "retry"),
        ("webhook", 429, b"", {"Retry-After": "120"}, "retry 120"),
        ("github", 500, b'{"message":"Server Error"}', {}, "retry"),
        ("gitea", 502, b"<html>Bad Gateway</html>", {}, "retry"),
        ("gitlab", 503, b"", {"Retry-After": "99999"}, "retry 3600"),
        ("github", None, b"", {}, "retry"),
    ],
)
def test_what_an_answer_means(kind: str, status: int | None, body: bytes, headers: dict[str, str],
                              expected: str) -> None:  # fmt: skip
    outcome = classify(sink(kind), status, body, headers, "no answer within 10 s", now=0.0)
    word, _, extra = expected.partition(" ")
    assert outcome.delivered is (word == "delivered")
    assert outcome.stall is (word == "stall")
    if word == "stall":
        assert outcome.sink_wide is (extra == "sink")
    if word == "retry" and extra:
        assert outcome.retry_after_s == float(extra)


def test_a_refusal_names_the_fix() -> None:
    assert "set `token` to a valid one" in classify(sink("github"), 401, b'{"message":"Bad credentials"}', {},
                                                    now=0).message  # fmt: skip
    assert "Commit statuses: write" in classify(sink("github"), 403, b"{}", {}, now=0).message
    assert "check `url` and `project`" in classify(sink("gitlab"), 404, b'{"message":"404 Project Not Found"}', {},
                                                   now=0).message  # fmt: skip
    assert "404 Project Not Found" in classify(sink("gitlab"), 404, b'{"message":"404 Project Not Found"}', {},
                                               now=0).message  # fmt: skip
    assert "Retry-After" not in classify(sink("github"), 503, b"", {}, now=0).message
    assert "set `url` to the final address" in classify(sink("webhook"), 308, b"", {}, now=0).message


def test_the_commit_status_is_pending_while_any_model_trains_then_failure_naming_models_or_success() -> None:
    assert commit_status(None, {}) is None
    assert commit_status(SHA, {"a": ("Ready", "Succeeded"), "b": ("Reconciling", "Progressing")}) == (
        "pending",
        "1/2 ready; training: b",
    )
    assert commit_status(SHA, {"a": ("Stalled", "GateFailed"), "b": ("Reconciling", "Progressing")}) == (
        "pending", "0/2 ready; training: b")  # fmt: skip
    assert commit_status(SHA, {"a": ("Stalled", "GateFailed"), "b": ("Ready", "Succeeded"),
                               "c": ("Stalled", "TrainingFailed")}) == (
        "failure", "failed: a (GateFailed), c (TrainingFailed)")  # fmt: skip
    assert commit_status(SHA, {"a": ("Ready", "Succeeded"), "s": ("Stalled", "Suspended")}) == (
        "success",
        "2 model(s) ready",
    )
    assert commit_status(SHA, {}) == ("success", "no models declared")


def facts(**changes: Any) -> Facts:
    base: dict[str, Any] = {"repository": "demo", "events": [], "applied": SHA,
                            "conditions": {"blobs": ("Reconciling", "Progressing")}, "last_seq": 0}  # fmt: skip
    return Facts(**{**base, **changes})


def test_a_status_is_queued_once_per_change_of_commit_state_and_description() -> None:
    first, cursor = notices(sink("github"), Cursor(event_seq=0), facts(), now=0)
    assert [n.payload["state"] for n in first] == ["pending"]
    again, same = notices(sink("github"), cursor, facts(), now=0)
    assert again == [] and same == cursor
    done, cursor = notices(sink("github"), cursor, facts(conditions={"blobs": ("Ready", "Succeeded")}), now=0)
    assert [(n.subject, n.payload["state"]) for n in done] == [(SHA, "success")]
    assert done[0].key != first[0].key


def test_a_rejected_commit_gets_a_failure_status_and_a_commit_rejected_event_once() -> None:
    bad = "1" * 40
    rejected = facts(conditions={"blobs": ("Ready", "Succeeded")}, rejected=(bad, "SpecInvalid",
                     "models/blobs.yaml:12: spec.train.timeout: not a duration\nmodels/x.yaml:1: ..."))  # fmt: skip
    found, cursor = notices(sink("github"), Cursor(event_seq=0), rejected, now=0)
    assert {(n.subject, n.payload["state"]) for n in found} == {(SHA, "success"), (bad, "failure")}
    failure = next(n for n in found if n.subject == bad)
    assert failure.payload["description"].startswith("spec invalid: models/blobs.yaml:12: spec.train.timeout")
    assert notices(sink("github"), cursor, rejected, now=0)[0] == []
    events, cursor = notices(sink("webhook"), Cursor(event_seq=0), rejected, now=5.0)
    assert [(n.payload["event"], n.payload["commit"]) for n in events] == [("commit-rejected", bad)]
    assert notices(sink("webhook"), cursor, rejected, now=6.0)[0] == []


def row(seq: int, kind: str, reason: str = "", message: str = "", **extra: Any) -> dict[str, Any]:
    return {"seq": seq, "at": 100.0 + seq, "model": "blobs", "run_id": "blobs-1", "kind": kind, "reason": reason,
            "message": message, "commit_id": SHA, "version": None, **extra}  # fmt: skip


def test_events_become_the_five_notifications_and_the_rest_are_not_sent() -> None:
    rows = [row(1, "RunCreated"), row(2, "Registered", "Succeeded", "registered blobs@2", version=2),
            row(3, "Failed", "GateFailed", "gate accuracy >= 0.9 failed: 0.5"),
            row(4, "Failed", "TimedOut", "ran past its timeout"),
            row(5, "AliasMoved", "moved", "alias prod moved: blobs@1 -> blobs@2"),
            row(6, "ConditionReady", "Succeeded")]  # fmt: skip
    found, cursor = notices(sink("webhook"), Cursor(event_seq=0), facts(events=rows, last_seq=6), now=0)
    assert [n.payload["event"] for n in found] == ["version-registered", "gate-failed", "training-failed",
                                                   "alias-moved"]  # fmt: skip
    assert found[0].payload["version"] == 2 and found[0].key == "event:2"
    assert (found[3].payload["alias"], found[3].payload["from"], found[3].payload["to"]) == ("prod", 1, 2)
    assert cursor.event_seq == 6
    only, _ = notices(sink("slack", events=["gate-failed"]), Cursor(event_seq=0), facts(events=rows, last_seq=6),
                      now=0)  # fmt: skip
    assert [n.payload["event"] for n in only] == ["gate-failed"]
    assert event_payload(row(7, "Submitted"), "demo") is None


def test_a_credential_in_an_event_message_is_redacted() -> None:
    payload = event_payload(row(1, "Failed", "TrainingFailed", "cannot fetch https://bob:hunter2@data.example/x"),
                            "demo")  # fmt: skip
    assert payload is not None and "hunter2" not in payload["message"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gitopsd.toml"
    path.write_text('state_dir = "/srv/gitopsd"\n[[repositories]]\nname = "demo"\nurl = "/srv/demo.git"\n' + text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[notifications]]\nname = "gh"\nkind = "github"\ntoken = "env:T"\n',
            "notifications[0]: kind 'github' needs `project`",
        ),
        (
            '[[notifications]]\nname = "gh"\nkind = "github"\nproject = "octo/models"\ntoken = "ghp_plain"\n',
            "notifications[0].token: String should match pattern",
        ),
        (
            '[[notifications]]\nname = "s"\nkind = "slack"\nurl = "https://hooks.slack.com/services/T/B/X"\n',
            "notifications[0]: kind 'slack' needs `url`, the incoming-webhook URL by reference",
        ),
        (
            '[[notifications]]\nname = "w"\nkind = "webhook"\nurl = "https://h.example/"\n',
            "kind 'webhook' needs `url` (the receiver) and `secret`",
        ),
        (
            '[[notifications]]\nname = "w"\nkind = "webhook"\nurl = "file:///etc/passwd"\nsecret = "env:S"\n',
            "expected http(s)://host",
        ),
        (
            '[[notifications]]\nname = "w"\nkind = "webhook"\nurl = "https://h.example/"\nsecret = "env:S"\n'
            'events = ["version-registered", "model-deleted"]\n',
            "notifications[0].events[1]: Input should be",
        ),
        ('[[notifications]]\nname = "gt"\nkind = "gitea"\nproject = "o/r"\ntoken = "env:T"\n', "needs `url`"),
        (
            '[[notifications]]\nname = "w"\nkind = "webhook"\nurl = "https://h.example/"\nsecret = "env:S"\n'
            'repositories = ["demo", "other"]\n',
            "notification 'w' names repositories not in [[repositories]]: other",
        ),
        (
            '[[notifications]]\nname = "w"\nkind = "webhook"\nurl = "https://h.example/"\nsecret = "env:S"\n'
            'timeout = "soon"\n',
            "notifications[0].timeout",
        ),
    ],
)
def test_configuration_errors_name_the_toml_path(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PermanentError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)


def test_a_full_configuration_loads_with_its_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[[notifications]]\nname = "gh"\nkind = "github"\nproject = "octo/models"\n'
                               'token = "credential:github-token"\n[[notifications]]\nname = "chat"\nkind = "slack"\n'
                               'url = "env:SLACK_URL"\nevents = ["gate-failed", "training-failed"]\n'))  # fmt: skip
    github, slack = config.notifications
    assert (github.api(), github.context_for("demo"), github.timeout, github.max_pending) == (
        "https://api.github.com",
        "gitopsd/demo",
        10,
        1000,
    )
    assert github.serves("demo") and slack.events == ["gate-failed", "training-failed"]


DOCS = (Path(__file__).resolve().parent.parent / "docs" / "notifications.md").read_text()


def test_the_toml_example_in_docs_notifications_is_a_valid_configuration(tmp_path: Path) -> None:
    (block,) = re.findall(r"```toml\n(.*?)```", DOCS, re.S)
    path = tmp_path / "gitopsd.toml"
    path.write_text('[[repositories]]\nname = "ml-models"\nurl = "/srv/models.git"\n' + block)
    config = load_config(path)
    assert [n.kind for n in config.notifications] == ["github", "gitlab", "gitea", "webhook", "slack"]


def test_the_receiver_snippet_in_docs_notifications_verifies_a_real_request() -> None:
    (snippet,) = re.findall(r"```python\n(.*?)```", DOCS, re.S)
    scope: dict[str, Any] = {}
    exec(snippet, scope)  # the documentation's own code, nothing else
    request = webhook_request("https://h.example/", b"k3y", {"event": "alias-moved"}, delivery="d", now=time.time())
    assert scope["verify"](b"k3y", dict(request.headers), request.body)
    assert not scope["verify"](b"k3y", dict(request.headers), request.body + b" ")


def test_status_names_a_failing_sink_and_nothing_of_a_working_one() -> None:
    entry = {"sink": "gh", "waiting": 3, "attempts": 2, "stalled": False, "next_retry_at": 1796103784.0,
             "error": "HTTP 503: Service Unavailable"}  # fmt: skip
    assert notification_line(entry) == (
        "notifications: 3 waiting for gh: HTTP 503: Service Unavailable, next retry at 2026-12-01 05:43:04 UTC"
    )
    assert notification_line({**entry, "stalled": True}).endswith(  # type: ignore[union-attr]
        "stalled until a reload (SIGHUP) or 2026-12-01 05:43:04 UTC"
    )
    assert notification_line({**entry, "next_retry_at": None}).endswith("retrying now")  # type: ignore[union-attr]
    assert notification_line({**entry, "attempts": 0}) is None, "waiting for its first attempt is not failing"
    assert notification_line({**entry, "waiting": 0}) is None
