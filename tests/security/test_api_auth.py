"""The HTTP API is authenticated: `/api/v1/*` and `/metrics` want the operator's bearer token.

The threat: anyone who can reach the daemon's port (every user of a shared login node reaches 127.0.0.1) could
read the status of every model, start passes at will, and scrape metrics. Now only a request with
`Authorization: Bearer TOKEN` is served, or one on the loopback-only listener the operator opted into
(`http.local_listen`); `/healthz`, `/readyz` and signed forge webhooks need no token; a `listen` address other
hosts can reach is refused without a token; and the token is never logged or echoed.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gitopsd.daemon.apiauth import bearer_matches, is_loopback, listen_problem
from tests.ports import free_port
from tests.security.conftest import Canary
from tests.test_daemon import RunningDaemon, start_daemon
from tests.test_webhooks import delivery

PROTECTED = [("GET", "/api/v1/status"), ("POST", "/api/v1/trigger"), ("GET", "/metrics"), ("GET", "/api/v2/x")]


def _call(url: str, method: str = "GET", token: str = "") -> tuple[int, dict[str, str], str]:
    """(status, headers by lower-case name, body) of one request; `Authorization: Bearer TOKEN` if a token is given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


def _metric(daemon: RunningDaemon, name: str, labels: str) -> float:
    text = daemon.get("/metrics")[1]
    match = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _trigger(daemon: RunningDaemon, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GITOPSD_API_TOKEN"}
    if token is not None:
        env["GITOPSD_API_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "gitopsd", "trigger", *args], env=env, capture_output=True,
                          text=True, timeout=30)  # fmt: skip


def _run_refused(tmp_path: Path, http: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`gitopsd run` with this `[http]` section; it must stop at once (exit 1)."""
    config = tmp_path / "gitopsd.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[http]\n{http}\n[[repositories]]\nname = "demo"\n'
                      f'url = "{tmp_path / "nowhere.git"}"\n')  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "gitopsd", "run", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists(), "nothing started"
    return done


# -- the pure parts ----------------------------------------------------------------------------------------

TOKEN = b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN.decode()}", True),
        (f"bearer {TOKEN.decode()}", True),
        (f"  Bearer   {TOKEN.decode()}  ", True),
        (f"Bearer {TOKEN.decode()}x", False),
        (f"Bearer {TOKEN.decode()[:-1]}", False),
        ("Bearer ", False),
        ("", False),
        (f"Basic {TOKEN.decode()}", False),
        (TOKEN.decode(), False),
        ("Bearer \u20ac", False),
    ],
)
def test_bearer_matches(header: str, ok: bool) -> None:
    assert bearer_matches(header, TOKEN) is ok
    assert bearer_matches(header, None) is False, "without a configured token nothing matches"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("::", False), ("10.0.0.5", False), ("login01.cluster", False), ("", False), ("::ffff:10.0.0.1", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_reachable_listen_address_needs_a_token() -> None:
    assert listen_problem("127.0.0.1:9090", has_token=False) is None
    assert listen_problem("[::1]:9090", has_token=False) is None
    assert listen_problem("0.0.0.0:9090", has_token=True) is None
    problem = listen_problem("0.0.0.0:9090", has_token=False)
    assert problem and "http.token" in problem and "127.0.0.1" in problem


# -- the real daemon ---------------------------------------------------------------------------------------


def test_the_api_and_metrics_answer_only_the_right_bearer_token(tmp_path: Path, canary: Canary) -> None:
    wrong = canary.token  # a secret-looking wrong token must not be echoed either
    with start_daemon(tmp_path) as daemon:
        for method, path in PROTECTED:
            for sent in ("", wrong, daemon.token[:-1], daemon.token + "0"):
                code, headers, body = _call(daemon.url + path, method, sent)
                assert code == 401, (method, path, sent)
                assert headers["www-authenticate"].startswith("Bearer")
                canary.assert_not_in(body)
                assert daemon.token not in body
        assert _call(daemon.url + "/api/v1/status", token=daemon.token)[0] == 200
        assert _call(daemon.url + "/metrics", token=daemon.token)[0] == 200
        code, _, body = _call(daemon.url + "/api/v1/trigger", "POST", daemon.token)
        assert (code, json.loads(body)) == (202, {"triggered": ["demo"]})
        assert _call(daemon.url + "/api/v2/x", token=daemon.token)[0] == 404
        for path in ("/healthz", "/readyz"):
            assert _call(daemon.url + path)[0] == 200, "probes stay open"
        assert _metric(daemon, "gitopsd_http_unauthorized_total", 'endpoint="/api/v1/status"') == 4
        assert _metric(daemon, "gitopsd_http_unauthorized_total", 'endpoint="/api/v1/trigger"') == 4
        log = daemon.log.read_text()
    assert "refused (401)" in log, "a refusal is logged"
    assert daemon.token not in log and wrong not in log, "no token, right or wrong, reaches the log"
    canary.assert_not_in(log)


def test_signed_webhooks_need_no_bearer_token(tmp_path: Path) -> None:
    with start_daemon(tmp_path) as daemon:
        body, headers = delivery("github")
        assert daemon.post("/hooks/github", body, headers) == (
            202,
            {"result": "accepted", "message": "push to refs/heads/main"},
        )
        bad_body, bad_headers = delivery("github", secret="wrong")
        bad_headers["Authorization"] = f"Bearer {daemon.token}"  # the API token does not sign a delivery
        assert daemon.post("/hooks/github", bad_body, bad_headers)[0] == 401


def test_the_loopback_listener_serves_the_api_without_a_token(tmp_path: Path) -> None:
    port = free_port()
    with start_daemon(tmp_path, http=f'local_listen = "127.0.0.1:{port}"') as daemon:
        local = f"http://127.0.0.1:{port}"
        assert _call(local + "/api/v1/status")[0] == 200
        assert "gitopsd_reconcile_passes_total" in _call(local + "/metrics")[2]
        assert _call(local + "/api/v1/trigger", "POST")[0] == 202
        assert _call(daemon.url + "/api/v1/status")[0] == 401, "the main listener still wants the token"
        # `gitopsd trigger --config` goes to the loopback listener: it needs no token, not even a readable one.
        (tmp_path / "api-token").unlink()
        done = _trigger(daemon, "--config", str(daemon.config))
        assert done.returncode == 0 and "triggered: demo" in done.stdout, done.stderr


@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3", "[::]", "login01.example.org"])
def test_the_loopback_listener_refuses_other_addresses(tmp_path: Path, address: str) -> None:
    done = _run_refused(tmp_path, f'local_listen = "{address}:{free_port()}"')
    assert "local_listen" in done.stderr and "loopback" in done.stderr


def test_a_reachable_listen_address_without_a_token_is_refused_at_start(tmp_path: Path) -> None:
    port = free_port()
    done = _run_refused(tmp_path, f'listen = "0.0.0.0:{port}"')
    assert f"listen = '0.0.0.0:{port}' is reachable from other hosts" in done.stderr
    assert 'http.token = "credential:api-token"' in done.stderr
    done = _run_refused(tmp_path, "", "--listen", f"0.0.0.0:{port}")  # the command-line override too
    assert "--listen" in done.stderr and "http.token" in done.stderr


def test_a_reachable_listen_address_with_a_token_is_served(tmp_path: Path) -> None:
    with start_daemon(tmp_path) as daemon:
        pass
    port = free_port()
    config = daemon.config.read_text().replace(daemon.url.removeprefix("http://"), f"0.0.0.0:{port}")
    daemon.config.write_text(config)
    process = subprocess.Popen([sys.executable, "-m", "gitopsd", "run", "--config", str(daemon.config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if _call(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        assert _call(f"http://127.0.0.1:{port}/api/v1/status")[0] == 401
        assert _call(f"http://127.0.0.1:{port}/api/v1/status", token=daemon.token)[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


@pytest.mark.parametrize(
    ("token", "said"),
    [("canary-api short", "printable ASCII without spaces"), ("tooshort", "use at least 16"), ("", "at least 16")],
)
def test_an_unusable_token_is_refused_at_start_without_being_shown(tmp_path: Path, token: str, said: str) -> None:
    (tmp_path / "api-token").write_text(token + "\n")
    done = _run_refused(tmp_path, f'token = "file:{tmp_path / "api-token"}"')
    assert said in done.stderr and f"file:{tmp_path / 'api-token'}" in done.stderr
    if token:
        assert token not in done.stdout + done.stderr


def test_a_token_reference_that_cannot_be_read_is_refused_at_start(tmp_path: Path) -> None:
    done = _run_refused(tmp_path, 'token = "credential:api-token"')
    assert "credential:api-token" in done.stderr and "LoadCredential=" in done.stderr
    done = _run_refused(tmp_path, 'token = "hunter2hunter2hunter2"')
    assert "http.token" in done.stderr and "hunter2" not in done.stderr, "a plain token is refused unechoed"


def test_without_a_token_the_api_is_closed_but_probes_and_webhooks_work(tmp_path: Path) -> None:
    with start_daemon(tmp_path, token="") as daemon:
        code, _, body = _call(daemon.url + "/api/v1/status")
        assert code == 401 and "no [http] token" in json.loads(body)["error"]
        assert _call(daemon.url + "/metrics", token="anything-at-all-0123456789")[0] == 401
        assert _call(daemon.url + "/readyz")[0] == 200
        body_, headers = delivery("gitlab")
        assert daemon.post("/hooks/gitlab", body_, headers)[0] == 202


def test_a_rotated_token_takes_effect_on_sighup(tmp_path: Path) -> None:
    with start_daemon(tmp_path) as daemon:
        old, new = daemon.token, "rotated-" + daemon.token
        (tmp_path / "api-token").write_text(new + "\n")
        daemon.process.send_signal(signal.SIGHUP)
        daemon.read_notify("RELOADING=1")
        daemon.read_notify("READY=1")
        assert _call(daemon.url + "/api/v1/status", token=old)[0] == 401
        assert _call(daemon.url + "/api/v1/status", token=new)[0] == 200
        assert old not in daemon.log.read_text() and new not in daemon.log.read_text()


def test_gitopsd_trigger_sends_the_token(tmp_path: Path, canary: Canary) -> None:
    with start_daemon(tmp_path) as daemon:
        by_config = _trigger(daemon, "--config", str(daemon.config))
        assert by_config.returncode == 0 and "triggered: demo" in by_config.stdout, by_config.stderr
        by_env = _trigger(daemon, "--url", daemon.url, "--repo", "demo", token=daemon.token)
        assert by_env.returncode == 0 and "triggered: demo" in by_env.stdout, by_env.stderr
        without = _trigger(daemon, "--url", daemon.url)
        assert without.returncode == 1 and "401" in without.stderr and "GITOPSD_API_TOKEN" in without.stderr
        assert '{"error"' not in without.stderr, "the API's answer in words, not its JSON"
        wrong = _trigger(daemon, "--url", daemon.url, token=canary.token)
        assert wrong.returncode == 1 and "401" in wrong.stderr
        canary.assert_not_in(wrong.stdout, wrong.stderr)
        (tmp_path / "api-token").unlink()  # --config names a token this user cannot read: say what to do
        unreadable = _trigger(daemon, "--config", str(daemon.config))
        assert unreadable.returncode == 1 and "GITOPSD_API_TOKEN" in unreadable.stderr
        assert "Traceback" not in unreadable.stderr
    gone = _trigger(daemon, "--url", daemon.url, token=daemon.token)  # the daemon has stopped
    assert gone.returncode == 1 and "Connection refused (is `gitopsd run` running" in gone.stderr
    assert "urlopen" not in gone.stderr


def test_unknown_webhook_paths_add_no_time_series_to_metrics(tmp_path: Path) -> None:
    with start_daemon(tmp_path) as daemon:
        for i in range(20):
            code, answer = daemon.post(f"/hooks/probe-{i}%0Aevil", b"{}", {"Content-Type": "application/json"})
            assert code == 404 and answer["result"] == "unknown_provider"
        metrics = daemon.get("/metrics")[1]
    assert "probe-" not in metrics and "evil" not in metrics
    assert 'gitopsd_webhook_deliveries_total{provider="unknown",result="unknown_provider"} 20.0' in metrics


def test_gitopsd_trigger_never_follows_a_redirect_with_the_token(tmp_path: Path, canary: Canary) -> None:
    """A daemon URL that answers with a redirect (a proxy, a typo, a hostile host) does not get the token sent on."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"{canary.url}/api/v1/trigger")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = subprocess.run([sys.executable, "-m", "gitopsd", "trigger", "--url",
                               f"http://127.0.0.1:{server.server_address[1]}"],
                              env={**os.environ, "GITOPSD_API_TOKEN": canary.token}, capture_output=True, text=True,
                              timeout=30)  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 1 and "302" in done.stderr, done.stderr
    canary.assert_not_in(done.stdout, done.stderr)
    canary.assert_untouched()
