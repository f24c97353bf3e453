"""A local forge API for `gitopsd comment`: GitHub, GitLab or Gitea/Forgejo pull-request comments over real HTTP.

It answers the documented requests only (method, path, query, the token in each forge's header, a JSON body with
a string `body`) and keeps the comments in memory, so a test sees what a reviewer would see. Pages are small
(`page_size`) so that pagination is followed for real (GitHub, GitLab; Gitea lists an issue's comments whole).
`script` answers the next matching requests otherwise: a status with a JSON body, "hang" (no answer until the
test ends: a timeout), or "lost" (done as usual, but the answer never comes: a POST whose answer a timeout
lost). A 3xx status sends its payload as the Location.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "s3cr3t-forge-token-0123456789"
PREFIX = {"github": "", "gitlab": "/api/v4", "gitea": "/api/v1"}
PROJECT = {"github": "repos/ml/demo/issues", "gitlab": "projects/42/merge_requests", "gitea": "repos/ml/demo/issues"}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeForge:
    forge: str
    me: str = "gitopsd-bot"
    me_is_bot: bool = True
    app_token: bool = False  # an Actions token: GET /user answers 403 (GitHub) or 401 (Gitea, as a worst case)
    page_size: int = 2
    comments: list[dict[str, Any]] = field(default_factory=list)
    script: list[tuple[str, int | str, Any]] = field(default_factory=list)  # (method, status | "hang", payload)
    seen: list[Seen] = field(default_factory=list)
    next_id: int = 1000
    url: str = ""
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def api(self) -> str:
        return self.url + PREFIX[self.forge]

    def add(self, body: str, author: str, *, bot: bool = False, system: bool = False) -> int:
        self.next_id += 1
        self.comments.append(self._shape(self.next_id, body, author, bot=bot, system=system))
        return self.next_id

    def _shape(self, ident: int, body: str, author: str, *, bot: bool, system: bool = False) -> dict[str, Any]:
        if self.forge == "gitlab":
            return {"id": ident, "body": body, "author": {"username": author, "bot": bot}, "system": system}
        kind = "Bot" if bot else "User"
        return {"id": ident, "body": body, "user": {"login": author, "type": kind},
                "html_url": f"{self.url}/ml/demo/pull/7#issuecomment-{ident}"}  # fmt: skip

    def bodies(self) -> list[str]:
        return [c["body"] for c in self.comments]

    def authorized(self, headers: dict[str, str]) -> bool:
        if self.forge == "github":
            return headers.get("authorization") == f"Bearer {TOKEN}" and headers.get("x-github-api-version") == (
                "2022-11-28"
            )
        if self.forge == "gitlab":
            return headers.get("private-token") == TOKEN
        return headers.get("authorization") == f"token {TOKEN}"

    def answer(self, seen: Seen) -> tuple[int, Any, dict[str, str]]:
        """The forge's answer: (status, JSON payload, extra headers)."""
        for i, (method, status, payload) in enumerate(self.script):
            if method == seen.method:
                del self.script[i]
                if status == "lost":
                    self.answer(seen)
                    return 0, None, {}
                if isinstance(status, int) and 300 <= status < 400:
                    return status, {}, {"Location": str(payload)}
                return (status if isinstance(status, int) else 0), payload, {}
        if not self.authorized(seen.headers):
            return 401, {"message": "Bad credentials" if self.forge != "gitlab" else "401 Unauthorized"}, {}
        prefix = PREFIX[self.forge]
        list_path = f"{prefix}/{PROJECT[self.forge]}/7/" + ("notes" if self.forge == "gitlab" else "comments")
        if seen.path == f"{prefix}/user" and seen.method == "GET":
            if self.app_token and self.forge == "gitea":
                return 401, {"message": "token is required"}, {}
            if self.app_token:
                return 403, {"message": "Resource not accessible by integration"}, {}
            return 200, ({"username": self.me} if self.forge == "gitlab" else {"login": self.me}), {}
        if seen.path == list_path and seen.method == "GET":
            return self._page(seen)
        if seen.path == list_path and seen.method == "POST":
            if seen.query:
                return 400, {"message": f"unexpected query {seen.query}"}, {}
            body = self._body(seen)
            if isinstance(body, tuple):
                return body
            self.next_id += 1
            made = self._shape(self.next_id, body, self.me, bot=self.me_is_bot)
            self.comments.append(made)
            return 201, made, {}
        edit_base = list_path + "/" if self.forge == "gitlab" else f"{prefix}/repos/ml/demo/issues/comments/"
        edit_method = "PUT" if self.forge == "gitlab" else "PATCH"
        if seen.path.startswith(edit_base) and seen.method == edit_method:
            ident = seen.path[len(edit_base) :]
            found = [c for c in self.comments if str(c["id"]) == ident]
            if not found:
                return 404, {"message": "Not Found"}, {}
            who = found[0]["author"]["username"] if self.forge == "gitlab" else found[0]["user"]["login"]
            if who != self.me:
                return 403, {"message": "403 Forbidden"}, {}
            body = self._body(seen)
            if isinstance(body, tuple):
                return body
            found[0]["body"] = body
            return 200, found[0], {}
        return 404, {"message": "Not Found"}, {}

    def _body(self, seen: Seen) -> str | tuple[int, Any, dict[str, str]]:
        if seen.headers.get("content-type") != "application/json" or not isinstance(seen.body, dict):
            return 400, {"message": "Problems parsing JSON"}, {}
        body = seen.body.get("body")
        if not isinstance(body, str) or not body:
            return 422, {"message": "Validation Failed"}, {}
        if self.forge == "github" and len(body) > 65536:
            return 422, {"message": "Validation Failed",
                         "errors": [{"message": "Body is too long (maximum is 65536 characters)"}]}, {}  # fmt: skip
        return body

    def _page(self, seen: Seen) -> tuple[int, Any, dict[str, str]]:
        if self.forge == "gitea":  # Gitea and Forgejo list an issue's comments whole (only since/before)
            return 200, self.comments, {}
        page = int(seen.query.get("page", ["1"])[0])
        start = (page - 1) * self.page_size
        items = self.comments[start : start + self.page_size]
        headers: dict[str, str] = {}
        if start + self.page_size < len(self.comments):
            query = "&".join(f"{k}={v[0]}" for k, v in seen.query.items() if k != "page")
            headers["Link"] = f'<{self.url}{seen.path}?{query}&page={page + 1}>; rel="next"'
            if self.forge == "gitlab":
                headers["X-Next-Page"] = str(page + 1)
        return 200, items, headers


def _handler(forge: FakeForge) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            seen = Seen(method=self.command, path=parts.path, query=parse_qs(parts.query),
                        headers={k.lower(): v for k, v in self.headers.items()}, body=body)  # fmt: skip
            forge.seen.append(seen)
            status, payload, headers = forge.answer(seen)
            if status == 0:  # "hang": answer nothing until the test is over
                forge.release.wait(60)
                return
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serve(forge: FakeForge) -> Iterator[FakeForge]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(forge))
    server.daemon_threads = True
    forge.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield forge
    finally:
        forge.release.set()
        server.shutdown()
        server.server_close()


def ci_env(forge: FakeForge, event_path: str, *, token: str | None = TOKEN) -> dict[str, str]:
    """The variables each forge's CI sets for a job of pull/merge request 7 (and the token, as the templates pass
    it)."""
    if forge.forge == "gitlab":
        env = {"GITLAB_CI": "true", "CI_API_V4_URL": forge.api, "CI_PROJECT_ID": "42",
               "CI_MERGE_REQUEST_IID": "7", "CI_JOB_URL": f"{forge.url}/ml/demo/-/jobs/5",
               "CI_JOB_TOKEN": "job-token-cannot-write-notes"}  # fmt: skip
        if token is not None:
            env["GITOPSD_GITLAB_TOKEN"] = token
        return env
    env = {"GITHUB_ACTIONS": "true", "GITHUB_API_URL": forge.api, "GITHUB_REPOSITORY": "ml/demo",
           "GITHUB_EVENT_PATH": event_path, "GITHUB_SERVER_URL": forge.url, "GITHUB_RUN_ID": "99"}  # fmt: skip
    if forge.forge == "gitea":
        env["GITEA_ACTIONS"] = "true"
    if token is not None:
        env["GITHUB_TOKEN"] = token
    return env
