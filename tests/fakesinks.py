"""A real HTTP server on 127.0.0.1 standing in for the sinks of notifications: GitHub, GitLab, Gitea, a webhook
receiver and Slack.

It records every request (method, path, headers, body) and answers from a script of recorded responses, in
order, then with the default one; a reply may wait before answering (longer than the client's timeout: a
timeout). The notification tests check each request against the forge's documented shape.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def json_reply(status: int, data: Any, **headers: str) -> Reply:
    return Reply(status, json.dumps(data).encode(), {"Content-Type": "application/json", **headers})


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# Answers as the forges document (or return) them.
GITHUB_CREATED = json_reply(201, {
    "url": "https://api.github.com/repos/octo/models/statuses/6dcb09b5b57875f334f61aebed695e2e4193db5e",
    "id": 1, "node_id": "MDY6U3RhdHVzMQ==", "state": "pending", "description": "training",
    "target_url": None, "context": "gitopsd/demo", "created_at": "2026-12-01T05:00:00Z",
    "updated_at": "2026-12-01T05:00:00Z", "creator": {"login": "gitopsd-bot", "id": 7, "type": "Bot"},
})  # fmt: skip
GITHUB_401 = json_reply(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest",
                              "status": "401"})  # fmt: skip
GITHUB_404 = json_reply(404, {"message": "Not Found", "status": "404",
                              "documentation_url": "https://docs.github.com/rest/commits/statuses"})  # fmt: skip
GITLAB_CREATED = json_reply(201, {
    "id": 93, "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e", "ref": "main", "status": "running",
    "name": "gitopsd/demo", "target_url": None, "description": "training", "created_at": "2026-12-01T05:00:00Z",
    "started_at": "2026-12-01T05:00:00Z", "finished_at": None, "allow_failure": False, "coverage": None,
    "pipeline_id": 11, "author": {"id": 1, "username": "gitopsd-bot", "state": "active"},
})  # fmt: skip
GITLAB_401 = json_reply(401, {"message": "401 Unauthorized"})
GITLAB_404 = json_reply(404, {"message": "404 Project Not Found"})
GITLAB_SAME_STATE = json_reply(
    400, {"message": 'Cannot transition status via :run from :running (Reason(s): Status cannot transition via "run")'}
)
GITEA_CREATED = json_reply(201, {
    "id": 4, "status": "success", "target_url": "", "description": "1 model(s) ready",
    "url": "https://gitea.example/api/v1/repos/octo/models/statuses/6dcb09b5", "context": "gitopsd/demo",
    "creator": {"id": 1, "login": "gitopsd-bot"}, "created_at": "2026-12-01T05:00:00Z",
    "updated_at": "2026-12-01T05:00:00Z",
})  # fmt: skip
GITEA_401 = json_reply(401, {"message": "token is required", "url": "https://gitea.example/api/swagger"})
SLACK_OK = Reply(200, b"ok", {"Content-Type": "text/html"})
SLACK_NO_SERVICE = Reply(404, b"no_service", {"Content-Type": "text/html"})
BAD_GATEWAY = Reply(502, b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
                    {"Content-Type": "text/html"})  # fmt: skip
UNAVAILABLE = json_reply(503, {"message": "Service Unavailable"})
SERVER_ERROR = json_reply(500, {"message": "Server Error"})
RECEIVED = json_reply(200, {"ok": True})


class FakeForge:
    def __init__(self, default: Reply) -> None:
        self.default = default
        self.script: list[Reply] = []
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self.arrived = threading.Condition(self._lock)
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with forge._lock:
                    forge.requests.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                               body))  # fmt: skip
                    reply = forge.script.pop(0) if forge.script else forge.default
                    forge.arrived.notify_all()
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up (its timeout)
                    self.wfile.write(reply.body)

            do_GET = do_POST  # a redirected client may come back with a GET: recorded too

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def wait_for(self, count: int, timeout: float = 60) -> list[Seen]:
        """The requests, once at least `count` have arrived (AssertionError after `timeout`)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} request(s) arrived, expected {count}: {self.requests}")
            return list(self.requests)


@contextmanager
def fake_forge(default: Reply) -> Iterator[FakeForge]:
    forge = FakeForge(default)
    forge.thread.start()
    try:
        yield forge
    finally:
        forge.server.shutdown()
        forge.server.server_close()
