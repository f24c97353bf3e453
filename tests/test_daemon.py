"""`gitopsd run` as a real process: systemd notify on a real socket, signals, pushes to a bare repo, HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gitopsd.cli.scaffold import init_demo
from tests.conftest import GIT_ENV, GitRepo
from tests.ports import free_port


@dataclass
class RunningDaemon:
    process: subprocess.Popen[bytes]
    url: str
    state_dir: Path
    notify: socket.socket
    work: GitRepo
    config: Path
    log: Path
    token: str = ""
    messages: list[str] = field(default_factory=list)

    def get(self, path: str, *, token: str | None = None, url: str | None = None) -> tuple[int, str]:
        """GET with the daemon's API token (`token=""`: none; another string: that one)."""
        sent = self.token if token is None else token
        headers = {"Authorization": f"Bearer {sent}"} if sent else {}
        request = urllib.request.Request((url or self.url) + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """POST exactly these headers (no API token unless they carry one): webhooks sign their bodies."""
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw or b"{}")
            except ValueError:  # waitress answers an oversized body itself, in plain text
                return exc.code, {"text": raw.decode(errors="replace")}

    def read_notify(self, until: str, timeout: float = 20) -> list[str]:
        """Collect notify datagrams until one contains `until`; a daemon that exits meanwhile fails at once,
        with the end of its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                datagram = self.notify.recv(4096).decode()
            except TimeoutError:
                if self.process.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
                    raise AssertionError(
                        f"the daemon exited {self.process.returncode} before {until!r}; got {self.messages}; "
                        f"its log ends:\n{tail}"
                    ) from None
                continue
            self.messages.append(datagram)
            if until in datagram:
                return self.messages
        raise AssertionError(f"no {until!r} from the daemon in {timeout} s; got {self.messages}")

    def passes(self, trigger: str, repository: str | None = None) -> float:
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            counted = line.startswith("gitopsd_reconcile_passes_total{") and f'trigger="{trigger}"' in line
            if counted and (repository is None or f'repository="{repository}"' in line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def reload(self) -> None:
        """SIGHUP, and wait until the daemon says it is ready again."""
        self.messages.clear()
        self.process.send_signal(signal.SIGHUP)
        self.read_notify("RELOADING=1")
        self.read_notify("READY=1")

    def source(self) -> dict[str, Any]:
        conn = sqlite3.connect(f"file:{self.state_dir / 'demo' / 'state.db'}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM sources WHERE id = 1").fetchone()
        conn.close()
        return dict(row) if row else {}

    def push(self, message: str) -> str:
        self.work.write("NOTES.md", f"{message}\n")
        commit = self.work.commit(message)
        self.work.git("push", "-q", "origin", "HEAD:main")
        return commit


SECRETS = {"github": "gh-secret", "gitlab": "gl-token", "gitea": "gt-secret", "bitbucket": "bb-secret",
           "generic": "gn-secret"}  # fmt: skip


def demo_remote(tmp_path: Path) -> tuple[GitRepo, Path]:
    """The demo repository as a working clone and the bare repository it pushes to."""
    work = GitRepo(tmp_path / "work")
    init_demo(work.path)
    bare = tmp_path / "demo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work.path), str(bare)], check=True)
    work.git("remote", "add", "origin", str(bare))
    return work, bare


@contextlib.contextmanager
def start_daemon(tmp_path: Path, *, http: str = "", url: str | None = None, wait: str = "READY=1",
                 token: str | None = None, hooks: str | None = None, extra: str = "",
                 branches: tuple[str, ...] = ()) -> Iterator[RunningDaemon]:  # fmt: skip
    """`gitopsd run` on the demo repository (or `url`) with the forge secrets of SECRETS and an API token.

    `http` adds lines to the `[http]` section; `token` (default: a random one) is read from a file; `token=""`
    configures none. `hooks` replaces the `[repositories.webhooks]` lines; `extra` is appended to the file (more
    repositories: `{bare}` is the bare repository); `branches` are pushed to the bare repository first.
    Yields once the daemon said `wait` on its notify socket.
    """
    work, bare = demo_remote(tmp_path)
    for branch in branches:
        work.git("push", "-q", "origin", f"HEAD:{branch}")
    port = free_port()
    token = secrets.token_hex(16) if token is None else token
    token_line = ""
    if token:
        (tmp_path / "api-token").write_text(token + "\n")
        token_line = f'token = "file:{tmp_path / "api-token"}"\n'
    if hooks is None:
        hooks = "\n".join(f'{name} = "env:HOOK_{name.upper()}"' for name in SECRETS)
    config = tmp_path / "gitopsd.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\nlog_format = "json"\n[http]\nlisten = "127.0.0.1:{port}"\n'
        f'max_body_bytes = 4096\n{token_line}{http}\n[[repositories]]\nname = "demo"\nurl = "{url or bare}"\n'
        f'branch = "main"\npoll_interval = "1h"\n[repositories.webhooks]\n{hooks}\n'
        + extra.replace("{bare}", str(bare))
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify.sock"
    notify.bind(str(notify_path))
    env = {**os.environ, **GIT_ENV, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "600000"}
    env.update({f"HOOK_{name.upper()}": secret for name, secret in SECRETS.items()})
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gitopsd", "run", "--config", str(config)], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    running = RunningDaemon(process=process, url=f"http://127.0.0.1:{port}", state_dir=tmp_path / "state",
                            notify=notify, work=work, config=config, log=log, token=token)  # fmt: skip
    try:
        running.read_notify(wait, timeout=30)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        notify.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    with start_daemon(tmp_path) as running:
        yield running


def test_ready_watchdog_reload_and_graceful_stop_over_the_notify_socket(daemon: RunningDaemon) -> None:
    assert any("READY=1" in m and "STATUS=demo: " in m and "ready at" in m for m in daemon.messages)
    daemon.read_notify("WATCHDOG=1", timeout=5)
    assert daemon.get("/readyz")[0] == 200 and daemon.get("/healthz") == (200, "ok\n")

    daemon.process.send_signal(signal.SIGHUP)
    daemon.read_notify("RELOADING=1")
    daemon.read_notify("READY=1")
    assert daemon.process.poll() is None, "SIGHUP reloads; it does not stop the daemon"

    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    daemon.read_notify("STOPPING=1")
    assert daemon.process.wait(timeout=10) == 0
    assert time.monotonic() - started < 10


def test_an_invalid_configuration_on_reload_keeps_the_running_one(daemon: RunningDaemon) -> None:
    daemon.config.write_text(daemon.config.read_text().replace('poll_interval = "1h"', 'poll_interval = "soon"'))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.read_notify("READY=1")
    assert daemon.get("/readyz")[0] == 200
    assert "reload refused" in daemon.log.read_text() and "poll_interval" in daemon.log.read_text()


def test_a_git_push_to_the_bare_repository_starts_a_pass_within_a_second(daemon: RunningDaemon) -> None:
    before = time.time()
    commit = daemon.push("A push the daemon must see at once")
    deadline = time.monotonic() + 5
    while daemon.source().get("fetched_commit") != commit:
        assert time.monotonic() < deadline, "the push was never seen"
        time.sleep(0.02)
    row = daemon.source()
    assert row["trigger"] == "push"
    assert row["fetched_at"] - before < 1.0, f"pass started {row['fetched_at'] - before:.2f} s after the push"


def test_ten_pushes_in_a_second_lead_to_one_or_two_passes_ending_at_the_newest(daemon: RunningDaemon) -> None:
    before = daemon.passes("push")
    started = time.monotonic()
    commits = [daemon.push(f"burst {i}") for i in range(10)]
    assert time.monotonic() - started < 2.0
    deadline = time.monotonic() + 10
    while daemon.source().get("fetched_commit") != commits[-1]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    assert 1 <= daemon.passes("push") - before <= 2


def test_status_api_is_the_status_json_and_the_cli_reads_it_while_the_daemon_runs(daemon: RunningDaemon) -> None:
    code, text = daemon.get("/api/v1/status")
    doc = json.loads(text)
    assert code == 200 and doc["models"][0]["name"] == "blobs" and doc["repository"]["trigger"] == "startup"
    cli = subprocess.run([sys.executable, "-m", "gitopsd", "status", "--config", str(daemon.config), "--json"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(cli.stdout)["models"][0]["name"] == "blobs"
    manual = subprocess.run([sys.executable, "-m", "gitopsd", "trigger", "--config", str(daemon.config)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert "triggered: demo" in manual.stdout
    _, metrics = daemon.get("/metrics")
    for name in ("gitopsd_reconcile_duration_seconds_bucket", "gitopsd_runs{", "gitopsd_versions_registered",
                 "gitopsd_last_applied_commit_timestamp_seconds"):  # fmt: skip
        assert name in metrics
    log = daemon.log.read_text()
    assert all(secret not in log for secret in SECRETS.values()), "secrets never reach the log"
    lines = [json.loads(line) for line in log.splitlines()]
    assert lines[0]["level"] == "info"
    submitted = next(line for line in lines if "submitted run" in line["message"])
    assert submitted["model"] == "blobs" and submitted["run_id"].startswith("blobs-") and len(submitted["commit"]) == 12


def test_a_secret_that_cannot_be_resolved_on_reload_is_one_line_and_the_daemon_keeps_running(
    daemon: RunningDaemon,
) -> None:
    daemon.config.write_text(daemon.config.read_text() + '\n[environment]\nFOO = "env:GITOPSD_TEST_UNSET"\n')
    daemon.reload()
    assert daemon.process.poll() is None and daemon.get("/readyz")[0] == 200
    refused = [line for line in daemon.log_lines() if "reload refused" in line["message"]]
    assert len(refused) == 1 and "[environment] FOO" in refused[0]["message"], refused
    assert "GITOPSD_TEST_UNSET" in refused[0]["message"] and "error" not in refused[0]
    assert "Traceback" not in daemon.log.read_text()


def test_a_secret_that_cannot_be_resolved_at_start_is_one_line_and_a_failure(tmp_path: Path) -> None:
    config = tmp_path / "gitopsd.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[environment]\nFOO = "env:GITOPSD_TEST_UNSET"\n'
                      f'[[repositories]]\nname = "demo"\nurl = "{tmp_path}"\n')  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "gitopsd", "run", "--config", str(config)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: [environment] FOO: secret env:GITOPSD_TEST_UNSET: the variable is not set"
    ]


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ("max_paralel = 2", "backend 'local': unknown setting(s) max_paralel (known: max_parallel, "),
        ('max_parallel = "lots"', "backend 'local' setting max_parallel: expected a positive integer, got 'lots'"),
        ('confine = "maybe"', "backend 'local' setting confine: expected true or false, got 'maybe'"),
    ],
)
def test_a_bad_backend_setting_of_the_operator_stops_the_start_naming_it(
    tmp_path: Path, settings: str, said: str
) -> None:
    """The operator's typo is the operator's: the daemon does not start, rather than ignore it or blame every
    repository's next commit for it."""
    config = tmp_path / "gitopsd.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[[repositories]]\nname = "demo"\nurl = "{tmp_path}"\n'
                      f'[backends.local]\ntype = "local"\nsettings = {{ {settings} }}\n')  # fmt: skip
    for command in (["run", "--config", str(config)], ["doctor", "--config", str(config)]):
        done = subprocess.run([sys.executable, "-m", "gitopsd", *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert done.stderr.startswith(f"error: {config}: backends.local.settings: {said}"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state").exists()


def test_a_rotated_webhook_secret_file_is_read_again_on_sighup(tmp_path: Path) -> None:
    from tests.test_webhooks import delivery

    secret_file = tmp_path / "github-secret"
    secret_file.write_text("the-old-secret\n")
    with start_daemon(tmp_path, hooks=f'github = "file:{secret_file}"') as running:
        body, headers = delivery("github", secret="the-old-secret")
        assert running.post("/hooks/github", body, headers)[0] == 202
        secret_file.write_text("the-new-secret\n")
        running.reload()
        body, headers = delivery("github", secret="the-old-secret")
        assert running.post("/hooks/github", body, headers)[0] == 401, "the revoked secret still works"
        body, headers = delivery("github", secret="the-new-secret")
        assert running.post("/hooks/github", body, headers)[0] == 202


def test_a_changed_listen_address_is_bound_on_sighup(daemon: RunningDaemon) -> None:
    old_url = daemon.url
    port = free_port()
    text = daemon.config.read_text()
    daemon.config.write_text(
        text.replace(f'listen = "{old_url.removeprefix("http://")}"', f'listen = "127.0.0.1:{port}"')
    )
    daemon.reload()
    daemon.url = f"http://127.0.0.1:{port}"
    assert daemon.get("/healthz") == (200, "ok\n")
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # refused, or reset while it closes
        urllib.request.urlopen(old_url + "/healthz", timeout=5)
    assert any(f"127.0.0.1:{port}" in line["message"] for line in daemon.log_lines())


def test_a_listen_address_that_cannot_be_bound_on_sighup_keeps_the_old_one(daemon: RunningDaemon) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        text = daemon.config.read_text()
        daemon.config.write_text(text.replace(f'listen = "{daemon.url.removeprefix("http://")}"',
                                              f'listen = "127.0.0.1:{busy}"'))  # fmt: skip
        daemon.reload()
        assert daemon.get("/healthz") == (200, "ok\n"), "the old address still serves"
        errors = [line for line in daemon.log_lines() if line["level"] == "error"]
        assert any("http.listen" in line["message"] and f"127.0.0.1:{busy}" in line["message"] for line in errors)
