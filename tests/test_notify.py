"""Notifications through the durable queue, against a real local HTTP server playing each forge: a real
reconciler on the demo repository, real SQLite, real HTTP; only the courier's clock is stepped, so retries and
stalls are checked without waiting for them."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gitopsd.daemon.config import NotificationConfig
from gitopsd.daemon.courier import Courier
from gitopsd.daemon.forges import RETRY_AFTER_MAX_S, _retry_after
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.reconcile.state import MIGRATIONS, StateStore, connect
from gitopsd.reconcile.statusview import read_status, render
from gitopsd.registry.sqlitedb import migrate
from tests.conftest import GitRepo
from tests.fakesinks import (
    BAD_GATEWAY,
    GITEA_CREATED,
    GITHUB_401,
    GITHUB_404,
    GITHUB_CREATED,
    GITLAB_CREATED,
    GITLAB_SAME_STATE,
    RECEIVED,
    SERVER_ERROR,
    SLACK_NO_SERVICE,
    SLACK_OK,
    UNAVAILABLE,
    FakeForge,
    Reply,
    fake_forge,
    json_reply,
)
from tests.ports import free_port

TOKEN = "ghp_" + "Q7" * 18
SECRET = "whsec-" + "k" * 26


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_TOKEN", TOKEN)
    monkeypatch.setenv("NOTIFY_SECRET", SECRET)


def github(forge_url: str, **extra: Any) -> NotificationConfig:
    fields = {"name": "gh", "kind": "github", "url": forge_url, "project": "octo/models", "token": "env:NOTIFY_TOKEN"}
    return NotificationConfig.model_validate({**fields, **extra})


def webhook(forge_url: str, **extra: Any) -> NotificationConfig:
    return NotificationConfig.model_validate({"name": "hook", "kind": "webhook", "url": forge_url + "/gitopsd",
                                              "secret": "env:NOTIFY_SECRET", **extra})  # fmt: skip


@pytest.fixture
def clock() -> Clock:
    return Clock()


def courier_for(reconciler: Reconciler, clock: Clock, *sinks: NotificationConfig) -> Courier:
    return Courier("demo", reconciler.paths.state_db, sinks, clock=clock)


def settle(reconciler: Reconciler) -> None:
    result = reconciler.reconcile_until_settled(timeout_s=120)
    assert result.active == 0 and not result.error


def statuses(forge: FakeForge) -> list[tuple[str, str]]:
    return [(seen.path.rsplit("/", 1)[1], seen.json()["state"]) for seen in forge.requests]


def test_github_sees_pending_then_success_on_the_applied_commit_in_its_documented_form(
    reconciler: Reconciler, demo_repo: GitRepo, clock: Clock
) -> None:
    with fake_forge(GITHUB_CREATED) as forge:
        courier = courier_for(reconciler, clock, github(forge.url))
        assert reconciler.reconcile().active == 1
        assert courier.enqueue() == 1
        courier.deliver_due()
        settle(reconciler)
        courier.enqueue()
        courier.deliver_due()
        sha = demo_repo.git("rev-parse", "HEAD")
        assert statuses(forge) == [(sha, "pending"), (sha, "success")]
        first, last = forge.requests
        assert (first.method, first.path) == ("POST", f"/repos/octo/models/statuses/{sha}")
        assert first.headers["authorization"] == f"Bearer {TOKEN}"
        assert first.headers["accept"] == "application/vnd.github+json"
        assert first.headers["x-github-api-version"] == "2022-11-28"
        assert first.headers["content-type"] == "application/json"
        assert first.json() == {"state": "pending", "context": "gitopsd/demo",
                                "description": "0/1 ready; training: blobs"}  # fmt: skip
        assert last.json()["description"] == "1 model(s) ready"
        courier.enqueue()
        courier.deliver_due()
        assert len(forge.requests) == 2, "an unchanged state is posted once"
        doc = read_status(reconciler.state_dir)
        assert doc["notifications"] == [{"sink": "gh", "waiting": 0, "attempts": 0, "stalled": False,
                                         "next_retry_at": None, "error": "", "delivered": 2, "failed": 0,
                                         "dropped": 0}]  # fmt: skip
        assert "notifications" not in render(doc), "status says nothing of a sink that works"


def test_gitlab_and_gitea_get_their_own_requests(reconciler: Reconciler, demo_repo: GitRepo, clock: Clock) -> None:
    with fake_forge(GITLAB_CREATED) as gitlab, fake_forge(GITEA_CREATED) as gitea:
        sinks = [
            NotificationConfig.model_validate({"name": "gl", "kind": "gitlab", "url": gitlab.url,
                                               "project": "ml/team/models", "token": "env:NOTIFY_TOKEN"}),
            NotificationConfig.model_validate({"name": "gt", "kind": "gitea", "url": gitea.url + "/",
                                               "project": "octo/models", "token": "env:NOTIFY_TOKEN",
                                               "context": "models"}),
        ]  # fmt: skip
        courier = courier_for(reconciler, clock, *sinks)
        settle(reconciler)
        courier.enqueue()
        gitlab.answer(GITLAB_SAME_STATE)  # posted before a crash, posted again after it: GitLab says 400
        courier.deliver_due()
        sha = demo_repo.git("rev-parse", "HEAD")
        (lab,) = gitlab.requests
        assert (lab.method, lab.path) == ("POST", f"/api/v4/projects/ml%2Fteam%2Fmodels/statuses/{sha}")
        assert lab.headers["private-token"] == TOKEN and "authorization" not in lab.headers
        assert lab.json() == {"state": "success", "name": "gitopsd/demo", "description": "1 model(s) ready"}
        (tea,) = gitea.requests
        assert (tea.method, tea.path) == ("POST", f"/api/v1/repos/octo/models/statuses/{sha}")
        assert tea.headers["authorization"] == f"token {TOKEN}"
        assert tea.json() == {"state": "success", "context": "models", "description": "1 model(s) ready"}
        assert read_status(reconciler.state_dir)["notifications"][0]["waiting"] == 0, "GitLab's 400 counts as done"


def test_the_webhook_gets_version_registered_signed_with_a_stable_delivery_id(
    reconciler: Reconciler, demo_repo: GitRepo, clock: Clock
) -> None:
    with fake_forge(RECEIVED) as receiver:
        courier = courier_for(reconciler, clock, webhook(receiver.url))
        settle(reconciler)
        courier.enqueue()
        courier.deliver_due()
        (seen,) = receiver.requests
        assert (seen.method, seen.path) == ("POST", "/gitopsd")
        timestamp = seen.headers["x-gitopsd-timestamp"]
        assert abs(int(timestamp) - clock.now) <= 1
        expected = "sha256=" + hmac.new(SECRET.encode(), timestamp.encode() + b"." + seen.body,
                                        hashlib.sha256).hexdigest()  # fmt: skip
        assert hmac.compare_digest(seen.headers["x-gitopsd-signature-256"], expected)
        body = seen.json()
        assert body["schema"] == "gitopsd.notification/v1" and body["id"] == seen.headers["x-gitopsd-delivery"]
        assert seen.headers["x-gitopsd-event"] == "version-registered"
        assert {k: body[k] for k in ("event", "repository", "model", "version", "commit")} == {
            "event": "version-registered", "repository": "demo", "model": "blobs", "version": 1,
            "commit": demo_repo.git("rev-parse", "HEAD")}  # fmt: skip
        assert body["message"].startswith("registered blobs@1")


def test_5xx_and_a_timeout_are_retried_with_backoff_and_delivered_once(
    reconciler: Reconciler, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gitopsd")
    with fake_forge(GITHUB_CREATED) as forge:
        forge.answer(UNAVAILABLE, BAD_GATEWAY, SERVER_ERROR, Reply(201, b"{}", delay_s=2.5))
        courier = courier_for(reconciler, clock, github(forge.url, timeout=1))
        settle(reconciler)
        courier.enqueue()
        waits = []
        for attempt, said in enumerate(["HTTP 503: Service Unavailable", "HTTP 502: 502 Bad Gateway",
                                        "HTTP 500: Server Error", "no answer within 1 s"], start=1):  # fmt: skip
            courier.deliver_due()
            assert len(forge.wait_for(attempt)) == attempt
            (entry,) = read_status(reconciler.state_dir)["notifications"]
            assert (entry["waiting"], entry["attempts"], entry["stalled"]) == (1, attempt, False)
            assert entry["error"].startswith(said), entry["error"]
            assert f"notifications: 1 waiting for gh: {said}" in render(read_status(reconciler.state_dir))
            waits.append(entry["next_retry_at"] - clock.now)
            courier.deliver_due()
            assert len(forge.requests) == attempt, "nothing is sent again before its retry is due"
            clock.advance(waits[-1] + 0.01)
        assert waits[0] <= 5.0 and waits[-1] >= 20.0, f"the waits grow: {waits}"
        courier.deliver_due()
        assert len(forge.wait_for(5)) == 5
        (entry,) = read_status(reconciler.state_dir)["notifications"]
        assert (entry["waiting"], entry["delivered"], entry["failed"]) == (0, 1, 4)
        assert "delivered to gh after 4 failed attempt(s)" in caplog.text
        assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), ("", None), ("soon", None), ("\u00b2", None), ("9" * 400, RETRY_AFTER_MAX_S)],
)
def test_a_retry_after_header_is_seconds_capped_at_an_hour_or_nothing(header: str, seconds: float | None) -> None:
    assert _retry_after(header, now=0.0) == seconds  # "\u00b2" is a digit to str.isdigit that float() refuses


def test_429_waits_as_long_as_retry_after_says(reconciler: Reconciler, clock: Clock) -> None:
    with fake_forge(GITHUB_CREATED) as forge:
        forge.answer(json_reply(429, {"message": "slow down"}, **{"Retry-After": "120"}))
        courier = courier_for(reconciler, clock, github(forge.url))
        settle(reconciler)
        courier.enqueue()
        courier.deliver_due()
        (entry,) = read_status(reconciler.state_dir)["notifications"]
        assert entry["next_retry_at"] - clock.now == pytest.approx(120, abs=0.01)
        clock.advance(119)
        courier.deliver_due()
        assert len(forge.requests) == 1
        clock.advance(2)
        courier.deliver_due()
        assert len(forge.requests) == 2 and read_status(reconciler.state_dir)["notifications"][0]["waiting"] == 0


def test_401_stalls_the_sink_until_a_reload_and_the_token_is_never_logged_or_stored(
    reconciler: Reconciler, demo_repo: GitRepo, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gitopsd")
    with fake_forge(GITHUB_CREATED) as forge:
        forge.answer(GITHUB_401)
        courier = courier_for(reconciler, clock, github(forge.url))
        reconciler.reconcile()
        courier.enqueue()
        settle(reconciler)
        courier.enqueue()  # the success supersedes the pending status that waits
        courier.deliver_due()
        assert len(forge.requests) == 1
        text = render(read_status(reconciler.state_dir))
        assert (
            "notifications: 1 waiting for gh: HTTP 401: Bad credentials (the token was refused: set `token` "
            "to a valid one, then reload (SIGHUP)), stalled until a reload (SIGHUP) or" in text
        )
        clock.advance(600)
        courier.deliver_due()
        assert len(forge.requests) == 1, "a stalled sink is not retried on the transient schedule"
        assert courier.retry_stalled() == 1  # what a SIGHUP does
        courier.deliver_due()
        sha = demo_repo.git("rev-parse", "HEAD")
        assert statuses(forge) == [(sha, "success"), (sha, "success")], "the waiting pending was superseded"
        assert read_status(reconciler.state_dir)["notifications"][0]["waiting"] == 0
    assert TOKEN not in caplog.text
    assert TOKEN.encode() not in reconciler.paths.state_db.read_bytes()


def test_404_stalls_the_whole_sink_until_a_reload(reconciler: Reconciler, clock: Clock) -> None:
    with fake_forge(GITHUB_CREATED) as forge:
        forge.answer(GITHUB_404)
        courier = courier_for(reconciler, clock, github(forge.url))
        settle(reconciler)
        courier.enqueue()
        courier.deliver_due()
        (entry,) = read_status(reconciler.state_dir)["notifications"]
        assert entry["stalled"] and entry["error"].startswith("HTTP 404: Not Found (no such project, or the token "
                                                              "cannot see it: check `url` and `project`")  # fmt: skip
        courier.retry_stalled()
        courier.deliver_due()
        assert len(forge.requests) == 2 and read_status(reconciler.state_dir)["notifications"][0]["waiting"] == 0


def add_alias(repo: GitRepo) -> str:
    spec = repo.path.joinpath("models/blobs.yaml").read_text()
    repo.write("models/blobs.yaml", spec.replace("spec:\n", "spec:\n  aliases: {production: 1}\n"))
    return repo.commit("production is 1")


def test_a_422_stalls_its_own_delivery_and_the_next_one_goes_through(
    reconciler: Reconciler, demo_repo: GitRepo, clock: Clock
) -> None:
    with fake_forge(RECEIVED) as receiver:
        receiver.answer(json_reply(422, {"error": "unknown event"}))
        courier = courier_for(reconciler, clock, webhook(receiver.url))
        settle(reconciler)
        add_alias(demo_repo)
        settle(reconciler)
        assert courier.enqueue() == 2
        courier.deliver_due()
        assert [seen.json()["event"] for seen in receiver.requests] == ["version-registered", "alias-moved"]
        (entry,) = read_status(reconciler.state_dir)["notifications"]
        assert (entry["waiting"], entry["stalled"]) == (1, True)
        assert entry["error"].startswith("HTTP 422: unknown event (the forge refused")


def test_nothing_is_lost_or_sent_twice_over_a_restart(reconciler: Reconciler, clock: Clock) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    before = courier_for(reconciler, clock, github(dead), webhook(dead))
    reconciler.reconcile()
    before.enqueue()
    settle(reconciler)
    before.enqueue()
    before.deliver_due()
    doc = read_status(reconciler.state_dir)
    assert [(e["sink"], e["waiting"], e["attempts"] > 0) for e in doc["notifications"]] == [
        ("gh", 1, True),
        ("hook", 1, True),
    ]
    assert "cannot connect" in doc["notifications"][0]["error"]
    with fake_forge(GITHUB_CREATED) as forge:
        after = courier_for(reconciler, clock, github(forge.url), webhook(forge.url))  # a new daemon
        assert after.enqueue() == 0, "what was queued before the restart is not queued again"
        clock.advance(3600)
        after.deliver_due()
        after.enqueue()
        after.deliver_due()
        paths = sorted(seen.path.split("/")[1] for seen in forge.requests)
        assert paths == ["gitopsd", "repos"], forge.requests
        event = next(seen for seen in forge.requests if seen.path == "/gitopsd")
        assert event.json()["event"] == "version-registered"


def test_a_sink_that_stays_down_keeps_at_most_max_pending(
    reconciler: Reconciler, demo_repo: GitRepo, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    courier = courier_for(reconciler, clock, webhook(dead, max_pending=2))
    settle(reconciler)
    for epochs in (41, 42, 43):
        demo_repo.write("models/blobs.yaml", demo_repo.path.joinpath("models/blobs.yaml").read_text()
                        .replace(f"--epochs {epochs - 1}", f"--epochs {epochs}"))  # fmt: skip
        demo_repo.commit(f"epochs {epochs}")
        settle(reconciler)
        courier.enqueue()
        courier.deliver_due()
    (entry,) = read_status(reconciler.state_dir)["notifications"]
    assert (entry["waiting"], entry["dropped"]) == (2, 2)
    assert "its 1 oldest undelivered notification(s) were dropped (max_pending = 2)" in caplog.text
    conn = sqlite3.connect(reconciler.paths.state_db)
    versions = [json.loads(p)["version"] for (p,) in conn.execute("SELECT payload FROM deliveries ORDER BY seq")]
    conn.close()
    assert versions == [3, 4], "the newest are kept"


def test_gate_failed_alias_moved_and_a_rejected_commit(reconciler: Reconciler, demo_repo: GitRepo,
                                                       clock: Clock) -> None:  # fmt: skip
    with fake_forge(RECEIVED) as receiver, fake_forge(GITHUB_CREATED) as forge:
        courier = courier_for(reconciler, clock, webhook(receiver.url), github(forge.url))
        settle(reconciler)
        add_alias(demo_repo)
        settle(reconciler)
        spec = demo_repo.path.joinpath("models/blobs.yaml").read_text()
        demo_repo.write("models/blobs.yaml", spec.replace("accuracy >= 0.9", "accuracy >= 1.5")
                        .replace("--epochs 40", "--epochs 39"))  # fmt: skip
        gated = demo_repo.commit("an impossible gate")
        settle(reconciler)
        courier.enqueue()
        demo_repo.write("models/blobs.yaml", spec.replace("kind: Model", "kind: Mode"))
        rejected = demo_repo.commit("broken")
        reconciler.reconcile()
        courier.enqueue()
        courier.deliver_due()
        events = [seen.json() for seen in receiver.requests]
        assert [e["event"] for e in events] == ["version-registered", "alias-moved", "gate-failed",
                                                "commit-rejected"]  # fmt: skip
        assert (events[1]["alias"], events[1]["from"], events[1]["to"]) == ("production", None, 1)
        assert events[2]["commit"] == gated and "accuracy" in events[2]["message"]
        assert events[3]["commit"] == rejected and events[3]["reason"] == "SpecInvalid"
        posted = statuses(forge)
        assert (gated, "failure") in posted and (rejected, "failure") in posted
        failure = next(s.json() for s in forge.requests if s.path.endswith(gated))
        assert failure["description"] == "failed: blobs (GateFailed)"
        bad = next(s.json() for s in forge.requests if s.path.endswith(rejected))
        assert bad["description"].startswith("spec invalid: ")


def test_a_slack_sink_gets_text_and_a_dead_webhook_url_stalls(reconciler: Reconciler, clock: Clock,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="gitopsd")
    with fake_forge(SLACK_OK) as slack:
        url = slack.url + "/services/T000/B000/XXXXSECRETXXXX"
        monkeypatch.setenv("SLACK_URL", url)
        sink = NotificationConfig.model_validate({"name": "chat", "kind": "slack", "url": "env:SLACK_URL"})
        courier = courier_for(reconciler, clock, sink)
        slack.answer(SLACK_NO_SERVICE)
        settle(reconciler)
        courier.enqueue()
        courier.deliver_due()
        (entry,) = read_status(reconciler.state_dir)["notifications"]
        assert entry["stalled"] and "Slack knows no such webhook" in entry["error"]
        courier.retry_stalled()
        courier.deliver_due()
        _, second = slack.requests
        assert second.path == "/services/T000/B000/XXXXSECRETXXXX"
        assert second.json()["text"].startswith("[demo] blobs version 1 registered at ")
    assert "XXXXSECRETXXXX" not in caplog.text
    assert b"XXXXSECRETXXXX" not in reconciler.paths.state_db.read_bytes()


def test_a_new_sink_starts_from_now_and_a_removed_one_drops_what_it_had_waiting(
    reconciler: Reconciler, demo_repo: GitRepo, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    settle(reconciler)  # version 1 registered before any sink was configured
    dead = f"http://127.0.0.1:{free_port()}"
    with fake_forge(RECEIVED) as receiver:
        clock.now = time.time()
        courier = courier_for(reconciler, clock, webhook(receiver.url), github(dead))
        assert courier.enqueue() == 1, "only the current status: the webhook is not sent the history"
        add_alias(demo_repo)
        settle(reconciler)
        courier.enqueue()
        courier.deliver_due()
        assert [seen.json()["event"] for seen in receiver.requests] == ["alias-moved"]
        waiting = {e["sink"]: e["waiting"] for e in read_status(reconciler.state_dir)["notifications"]}
        assert waiting == {"gh": 2, "hook": 0}, "the status of each commit waits for the dead forge"
        courier.configure([webhook(receiver.url)])  # a reload without the GitHub sink
        courier.enqueue()
        assert [e["waiting"] for e in read_status(reconciler.state_dir)["notifications"]] == [0, 0]
        assert "2 undelivered notification(s) of sinks no longer configured for demo dropped" in caplog.text
        courier.configure([github(dead)])  # a reload: GitHub back, the webhook gone
        courier.enqueue()
        demo_repo.write("models/blobs.yaml", demo_repo.path.joinpath("models/blobs.yaml").read_text()
                        .replace("  aliases: {production: 1}\n", ""))  # fmt: skip
        demo_repo.commit("no alias")  # the alias goes while the webhook is not configured
        settle(reconciler)
        clock.advance(1)
        courier.configure([github(dead), webhook(receiver.url)])  # the webhook is back
        assert courier.enqueue() == 1  # the status of the new commit to GitHub
        waiting = {e["sink"]: e["waiting"] for e in read_status(reconciler.state_dir)["notifications"]}
        assert waiting == {"gh": 2, "hook": 0}, "a sink configured again starts afresh, without the history"
        courier.configure([])  # a reload without any sink
        courier.enqueue()
        assert [e["waiting"] for e in read_status(reconciler.state_dir)["notifications"]] == [0, 0]


def test_a_restart_retries_what_stalled(reconciler: Reconciler, clock: Clock) -> None:
    with fake_forge(GITHUB_CREATED) as forge:
        forge.answer(GITHUB_401)
        before = courier_for(reconciler, clock, github(forge.url))
        settle(reconciler)
        before.enqueue()
        before.deliver_due()
        assert read_status(reconciler.state_dir)["notifications"][0]["stalled"]
        after = courier_for(reconciler, clock, github(forge.url))  # the token was fixed, the daemon restarted
        after.deliver_due()
        assert [seen.json()["state"] for seen in forge.requests] == ["success", "success"]
        assert read_status(reconciler.state_dir)["notifications"][0]["waiting"] == 0


def test_a_long_history_is_queued_whole_in_slices(
    reconciler: Reconciler, demo_repo: GitRepo, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gitopsd.daemon.deliveries.EVENTS_PER_ROUND", 2)
    monkeypatch.setattr("gitopsd.daemon.courier.EVENTS_PER_ROUND", 2)
    courier = courier_for(reconciler, clock, webhook(f"http://127.0.0.1:{free_port()}"))
    settle(reconciler)
    add_alias(demo_repo)
    settle(reconciler)
    assert courier.enqueue() == 2  # version-registered and alias-moved, among a dozen events
    conn = sqlite3.connect(reconciler.paths.state_db)
    try:
        (cursor,) = conn.execute("SELECT event_seq FROM delivery_cursors").fetchone()
        (last,) = conn.execute("SELECT max(seq) FROM events").fetchone()
    finally:
        conn.close()
    assert cursor == last


def test_status_reads_a_state_database_from_before_notifications(tmp_path: Path) -> None:
    conn = connect(tmp_path / "state.db")
    migrate(conn, [m for m in MIGRATIONS if m[0] < 5], what=str(tmp_path / "state.db"))
    conn.close()
    assert read_status(tmp_path)["notifications"] == []
    StateStore(tmp_path / "state.db").close()  # the daemon opens it: migration 5 adds the queue
    assert read_status(tmp_path)["notifications"] == []
    conn = connect(tmp_path / "state.db")
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0
    conn.close()


def test_a_label_only_commit_gets_its_own_success_though_nothing_trains(
    reconciler: Reconciler, demo_repo: GitRepo, clock: Clock
) -> None:
    with fake_forge(GITHUB_CREATED) as forge:
        courier = courier_for(reconciler, clock, github(forge.url))
        settle(reconciler)
        courier.enqueue()
        assert courier.enqueue() == 0, "a pass that recorded nothing queues nothing"
        spec = demo_repo.path.joinpath("models/blobs.yaml").read_text()
        demo_repo.write("models/blobs.yaml", spec.replace("team: demo", "team: vision"))
        labelled = demo_repo.commit("label only")
        result = reconciler.reconcile()
        assert result.actions == () and result.commit == labelled
        assert courier.enqueue() == 1
        courier.deliver_due()
        assert statuses(forge)[-1] == (labelled, "success")
