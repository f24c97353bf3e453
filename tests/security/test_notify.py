"""A hostile repository against notifications: what it writes reaches a Slack channel, a webhook receiver and a
forge's status page, but it cannot ping @channel, slip in a link, add a header, pick the address or the path,
or flood a receiver with an unbounded message. Everything that chooses where and how a notification goes is the
operator's configuration."""

from __future__ import annotations

import json
import time

import pytest

from gitopsd.daemon.config import NotificationConfig
from gitopsd.daemon.courier import Courier
from gitopsd.daemon.deliveries import Cursor, Facts, notices
from gitopsd.daemon.forges import slack_escape, slack_text, status_request
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.reconcile.statusview import read_status
from tests.conftest import GitRepo
from tests.fakesinks import GITHUB_CREATED, RECEIVED, SLACK_OK, Reply, fake_forge

HOSTILE = "<!channel> <!here|here> <https://evil.example/login|click here> @everyone & <@U024BE7LH>\r\nX-Injected: 1"


def test_slack_text_escapes_every_control_sequence() -> None:
    text = slack_text({"event": "training-failed", "repository": "demo", "model": "<!channel>", "reason": "<!here>",
                       "message": HOSTILE, "commit": "a" * 40})  # fmt: skip
    assert "<" not in text and ">" not in text, text
    assert "&lt;!channel&gt;" in text and "&lt;https://evil.example/login|click here&gt;" in text
    assert "@everyone" not in text and "@\u200beveryone" in text
    assert "&amp;" in text and "\n" not in text and "\r" not in text
    assert slack_escape("a&lt;b") == "a&amp;lt;b", "an entity written by the attacker stays literal"


def test_a_status_cannot_be_aimed_at_another_path_and_a_description_is_bounded() -> None:
    sink = NotificationConfig.model_validate({"name": "gh", "kind": "github", "project": "octo/models",
                                              "token": "env:T"})  # fmt: skip
    for sha in ("../../../orgs/octo/actions/secrets", "a" * 39 + "/", "A" * 40, "a" * 40 + "?x=1"):
        with pytest.raises(ValueError, match="not a commit id"):
            status_request(sink, "t", {"sha": sha, "state": "failure", "description": "x"}, "demo")
    request = status_request(sink, "t", {"sha": "a" * 40, "state": "failure", "description": HOSTILE * 100}, "demo")
    assert len(json.loads(request.body)["description"]) == 140
    assert "X-Injected" not in request.headers


def test_a_huge_event_message_is_bounded() -> None:
    row = {"seq": 1, "at": 1.0, "model": "m", "run_id": "m-1", "kind": "Failed", "reason": "TrainingFailed",
           "message": "A" * 1_000_000, "commit_id": "a" * 40, "version": None}  # fmt: skip
    found, _ = notices(
        NotificationConfig.model_validate({"name": "w", "kind": "webhook", "url": "https://h.example/",
                                           "secret": "env:S"}),
        Cursor(event_seq=0),
        Facts(repository="demo", events=[row], applied=None, conditions={}, last_seq=1),
        now=0.0,
    )  # fmt: skip
    assert len(found[0].payload["message"]) <= 1000


def test_a_hostile_rejected_commit_reaches_slack_and_the_webhook_as_inert_text(
    reconciler: Reconciler, demo_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET", "s" * 32)
    monkeypatch.setenv("TOKEN", "t" * 32)
    with fake_forge(SLACK_OK) as slack, fake_forge(RECEIVED) as hook, fake_forge(GITHUB_CREATED) as forge:
        monkeypatch.setenv("SLACK_URL", slack.url + "/services/T/B/X")
        sinks = [
            NotificationConfig.model_validate({"name": "chat", "kind": "slack", "url": "env:SLACK_URL"}),
            NotificationConfig.model_validate({"name": "hook", "kind": "webhook", "url": hook.url + "/in",
                                               "secret": "env:SECRET"}),
            NotificationConfig.model_validate({"name": "gh", "kind": "github", "url": forge.url,
                                               "project": "octo/models", "token": "env:TOKEN"}),
        ]  # fmt: skip
        courier = Courier("demo", reconciler.paths.state_db, sinks, clock=time.time)
        reconciler.reconcile_until_settled(timeout_s=120)
        spec = demo_repo.path.joinpath("models/blobs.yaml").read_text()
        demo_repo.write("models/blobs.yaml", spec.replace("kind: Model", f"kind: {json.dumps(HOSTILE)}"))
        demo_repo.commit(HOSTILE)
        reconciler.reconcile()
        courier.enqueue()
        courier.deliver_due()
        texts = [seen.json()["text"] for seen in slack.requests]
        rejected = [t for t in texts if "commit rejected" in t]
        assert rejected and "evil.example" in rejected[0], texts  # the text arrived, as text
        for text in texts:
            assert "<" not in text and "@everyone" not in text and "\n" not in text
        assert {seen.path for seen in slack.requests} == {"/services/T/B/X"}
        assert {seen.path for seen in hook.requests} == {"/in"}
        assert all(seen.path.startswith("/repos/octo/models/statuses/") for seen in forge.requests)
        for seen in [*slack.requests, *hook.requests, *forge.requests]:
            assert "x-injected" not in seen.headers
        events = {seen.headers["x-gitopsd-event"] for seen in hook.requests}
        assert events <= {"version-registered", "gate-failed", "training-failed", "alias-moved", "commit-rejected"}


def test_a_redirect_is_not_followed_so_the_token_goes_nowhere_else(
    reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", "t" * 32)
    with fake_forge(GITHUB_CREATED) as elsewhere:
        redirect = Reply(302, b"", {"Location": elsewhere.url + "/steal"})
        with fake_forge(redirect) as forge:
            sink = NotificationConfig.model_validate({"name": "gh", "kind": "github", "url": forge.url,
                                                      "project": "octo/models", "token": "env:TOKEN"})  # fmt: skip
            courier = Courier("demo", reconciler.paths.state_db, [sink], clock=time.time)
            reconciler.reconcile_until_settled(timeout_s=120)
            courier.enqueue()
            courier.deliver_due()
            assert len(forge.requests) == 1 and elsewhere.requests == []
            (entry,) = read_status(reconciler.state_dir)["notifications"]
            assert entry["stalled"] and "set `url` to the final address" in entry["error"]
