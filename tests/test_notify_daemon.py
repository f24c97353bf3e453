"""Notifications from a real `gitopsd run` with the local backend: a commit trains, a fake GitHub sees pending
then success on that commit, a webhook receiver sees "version registered" signed; undelivered notifications wait
in state.db over a restart and arrive once; a hanging sink neither blocks the passes nor the shutdown; the
daemon's log never holds a token."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gitopsd.reconcile.statusview import read_status, render
from tests.conftest import GIT_ENV, gitopsd
from tests.fakesinks import GITHUB_401, GITHUB_CREATED, RECEIVED, UNAVAILABLE, Reply, fake_forge
from tests.test_daemon import SECRETS, RunningDaemon, start_daemon

TOKEN = "ghp_" + "Zz9" * 12
SECRET = "hook-" + "s3" * 16


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_TOKEN", TOKEN)
    monkeypatch.setenv("NOTIFY_SECRET", SECRET)


def sinks(github_url: str, hook_url: str, *, hook_timeout: int = 10) -> str:
    return (
        f'\n[[notifications]]\nname = "gh"\nkind = "github"\nurl = "{github_url}"\nproject = "octo/models"\n'
        f'token = "env:NOTIFY_TOKEN"\n'
        f'\n[[notifications]]\nname = "hook"\nkind = "webhook"\nurl = "{hook_url}/hooks/gitopsd"\n'
        f'secret = "env:NOTIFY_SECRET"\nevents = ["version-registered"]\ntimeout = {hook_timeout}\n'
    )


def drain(daemon: RunningDaemon) -> None:
    """Read what the daemon said on its notify socket: unread datagrams would fill it and block the daemon."""
    daemon.notify.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            daemon.messages.append(daemon.notify.recv(4096).decode())


def wait_until(daemon: RunningDaemon, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        drain(daemon)
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def stop(daemon: RunningDaemon, timeout: float = 20) -> float:
    """SIGTERM; the exit status must be 0. Returns how long the daemon took to stop."""
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    wait_until(daemon, "the daemon stops", lambda: daemon.process.poll() is not None, timeout)
    assert daemon.process.returncode == 0
    return time.monotonic() - started


def signed(seen_headers: dict[str, str], body: bytes) -> bool:
    timestamp = seen_headers["x-gitopsd-timestamp"]
    expected = "sha256=" + hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, seen_headers["x-gitopsd-signature-256"])


def test_a_commit_trains_and_github_sees_pending_then_success_and_the_webhook_a_signed_version(
    tmp_path: Path,
) -> None:
    with fake_forge(GITHUB_CREATED) as forge, fake_forge(RECEIVED) as receiver:
        with start_daemon(tmp_path, extra=sinks(forge.url, receiver.url)) as daemon:
            sha = daemon.work.git("rev-parse", "HEAD")
            wait_until(daemon, "a success status", lambda: any(s.json()["state"] == "success" for s in forge.requests))
            assert [(s.path, s.json()["state"]) for s in forge.requests] == [
                (f"/repos/octo/models/statuses/{sha}", "pending"),
                (f"/repos/octo/models/statuses/{sha}", "success"),
            ]
            assert all(s.headers["authorization"] == f"Bearer {TOKEN}" for s in forge.requests)
            (seen,) = receiver.wait_for(1)
            assert seen.path == "/hooks/gitopsd" and signed(seen.headers, seen.body)
            assert seen.json()["event"] == "version-registered" and seen.json()["commit"] == sha
            stop(daemon)
        log = daemon.log.read_text()
        assert TOKEN not in log and SECRET not in log


def restart(daemon: RunningDaemon) -> None:
    """`gitopsd run` again on the same configuration and state directory, as systemd would."""
    env = {**os.environ, **GIT_ENV, "NOTIFY_SOCKET": str(daemon.notify.getsockname()), "WATCHDOG_USEC": "600000"}
    env.update({f"HOOK_{name.upper()}": secret for name, secret in SECRETS.items()})
    with daemon.log.open("ab") as out:
        daemon.process = subprocess.Popen([sys.executable, "-m", "gitopsd", "run", "--config", str(daemon.config)],
                                          env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    daemon.messages.clear()
    daemon.read_notify("READY=1", timeout=30)


def waiting(state_dir: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{state_dir / 'state.db'}?mode=ro", uri=True)
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT sink, kind FROM deliveries ORDER BY seq")]
    finally:
        conn.close()


def test_undelivered_notifications_survive_a_restart_and_a_hanging_sink_blocks_neither_passes_nor_shutdown(
    tmp_path: Path,
) -> None:
    with fake_forge(UNAVAILABLE) as forge, fake_forge(Reply(200, b"{}", delay_s=30)) as receiver:
        with start_daemon(tmp_path, extra=sinks(forge.url, receiver.url, hook_timeout=20)) as daemon:
            state = daemon.state_dir / "demo"
            wait_until(daemon, "the version registered", lambda: read_status(state)["models"][0]["latest_version"] == 1)
            wait_until(
                daemon, "the success status tried", lambda: any(s.json()["state"] == "success" for s in forge.requests)
            )
            (first,) = receiver.wait_for(1)  # hangs, longer than the daemon's stop grace
            trained = daemon.work.git("rev-parse", "HEAD")
            pushed = daemon.push("a push while a sink hangs")
            wait_until(daemon, "the pushed commit applied while the webhook hangs",
                       lambda: read_status(state)["repository"]["applied_commit"] == pushed, timeout=15)  # fmt: skip
            wait_until(daemon, "its status queued", lambda: len(waiting(state)) == 3)
            assert "notifications: 2 waiting for gh: HTTP 503: Service Unavailable, next retry at" in render(
                read_status(state)
            )
            assert stop(daemon) < 15, "a request in flight does not hold the shutdown"
            assert sorted(waiting(state)) == [("gh", "status"), ("gh", "status"), ("hook", "event")]

            forge.default, receiver.default = GITHUB_CREATED, RECEIVED
            tried = len(forge.requests)
            restart(daemon)
            wait_until(daemon, "the queue is empty", lambda: waiting(state) == [], timeout=90)
            after = sorted((s.path, s.json()["state"]) for s in forge.requests[tried:])
            assert after == sorted([(f"/repos/octo/models/statuses/{trained}", "success"),
                                    (f"/repos/octo/models/statuses/{pushed}", "success")])  # fmt: skip
            redelivered = receiver.requests[1:]
            assert len(redelivered) == 1, "the one in flight at the stop is sent again, once"
            assert redelivered[0].headers["x-gitopsd-delivery"] == first.headers["x-gitopsd-delivery"]
            assert signed(redelivered[0].headers, redelivered[0].body)
            (gh,) = [e for e in read_status(state)["notifications"] if e["sink"] == "gh"]
            assert gh["delivered"] == 2 and gh["failed"] >= 1
            _, metrics = daemon.get("/metrics")
            assert 'gitopsd_notifications_total{repository="demo",result="delivered",sink="gh"} 2.0' in metrics
            assert 'gitopsd_notifications_pending{repository="demo",sink="gh"}' not in metrics
            stop(daemon)
        log = daemon.log.read_text()
        assert TOKEN not in log and SECRET not in log
        assert "notifications: status" in log and "to gh failed (attempt 1" in log


def test_a_refused_token_stalls_the_sink_and_the_rotated_one_is_used_after_sighup(tmp_path: Path) -> None:
    old, new = "ghp_old" + "o" * 30, "ghp_new" + "n" * 30
    token_file = tmp_path / "github-token"
    token_file.write_text(old + "\n")
    with fake_forge(GITHUB_401) as forge:
        extra = (f'\n[[notifications]]\nname = "gh"\nkind = "github"\nurl = "{forge.url}"\n'
                 f'project = "octo/models"\ntoken = "file:{token_file}"\n')  # fmt: skip
        with start_daemon(tmp_path, extra=extra) as daemon:
            state = daemon.state_dir / "demo"
            wait_until(daemon, "the version registered", lambda: read_status(state)["models"][0]["latest_version"] == 1)
            wait_until(daemon, "the success status refused",
                       lambda: any(s.json()["state"] == "success" for s in forge.requests))  # fmt: skip
            wait_until(daemon, "the sink stalled", lambda: read_status(state)["notifications"][0]["stalled"])
            shown = gitopsd(state, "status").stdout
            assert "notifications: 1 waiting for gh: HTTP 401: Bad credentials (the token was refused: set `token` " \
                   "to a valid one, then reload (SIGHUP)), stalled until a reload (SIGHUP) or " in shown  # fmt: skip
            assert all(s.headers["authorization"] == f"Bearer {old}" for s in forge.requests)
            tried = len(forge.requests)
            token_file.write_text(new + "\n")
            forge.default = GITHUB_CREATED
            daemon.reload()
            wait_until(daemon, "the status delivered", lambda: read_status(state)["notifications"][0]["waiting"] == 0)
            sha = daemon.work.git("rev-parse", "HEAD")
            resent = forge.requests[tried:]
            assert [(s.path, s.json()["state"]) for s in resent] == [(f"/repos/octo/models/statuses/{sha}", "success")]
            assert resent[0].headers["authorization"] == f"Bearer {new}"
            stop(daemon)
        log = daemon.log.read_text()
        assert old not in log and new not in log
        assert "notifications: gh stalled: HTTP 401: Bad credentials" in log
