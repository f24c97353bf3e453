"""The daemon's HTTP face: health, readiness, Prometheus metrics, status, manual triggers, forge webhooks, and
the read-only dashboard under /ui (`gitopsd.ui.app`, mounted here on both listeners).

A small WSGI application served by waitress (a well-kept pure-Python production server) on a loopback address
by default. Handlers answer at once: a webhook is verified, deduplicated and turned into a trigger on the
repository's queue; the pass itself runs in the repository's worker. Bodies are capped before they are read.
The API and metrics need the bearer token (`apiauth`), except on the loopback-only listener the operator may
add; nothing here logs a request's headers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from gitopsd.daemon.apiauth import bearer_matches, is_protected
from gitopsd.daemon.webhooks import PROVIDERS, Verdict, judge
from gitopsd.ui.app import UiApp
from gitopsd.ui.session import Throttle

log = logging.getLogger("gitopsd")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 411: "Length Required", 413: "Content Too Large",
            503: "Service Unavailable"}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class HookTarget:
    """A repository as the webhook endpoint sees it."""

    name: str
    branch: str | None
    secrets: dict[str, list[bytes]]
    trigger: Callable[[str], None]


class Api:
    """Everything the HTTP layer needs from the daemon, behind callables so it stays a thin shell."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        targets: Callable[[], list[HookTarget]],
        ready: Callable[[], bool],
        status: Callable[[str | None], Any],
        max_body: Callable[[], int],
        on_delivery: Callable[[str, str], None],
        token: Callable[[], bytes | None] = lambda: None,
        on_unauthorized: Callable[[str], None] = lambda endpoint: None,
        ui: UiApp | None = None,
    ) -> None:
        self.registry = registry
        self.targets = targets
        self.ready = ready
        self.status = status
        self.max_body = max_body
        self.on_delivery = on_delivery
        self.token = token
        self.on_unauthorized = on_unauthorized
        self.ui = ui
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._seen_lock = threading.Lock()
        self._refusals = Throttle(every_s=10.0)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The authenticated application: the API and metrics need the bearer token."""
        return self._serve(environ, start_response, authenticate=True)

    def local(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The same application without the token, for the loopback-only listener (`http.local_listen`)."""
        return self._serve(environ, start_response, authenticate=False)

    def _serve(self, environ: dict[str, Any], start_response: StartResponse, *, authenticate: bool) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        if self.ui is not None and (path == "/ui" or path.startswith("/ui/")):
            # The dashboard authenticates itself: the same token, also as its login cookie (gitopsd.ui.session).
            return self.ui.serve(environ, start_response, authenticate=authenticate)
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        extra: list[tuple[str, str]] = []
        try:
            given = environ.get("HTTP_AUTHORIZATION", "")
            if authenticate and is_protected(path) and not bearer_matches(given, self.token()):
                status, content_type, body = self._unauthorized(method, path, environ)
                extra.append(("WWW-Authenticate", 'Bearer realm="gitopsd"'))
            else:
                status, content_type, body = self._route(method, path, query, environ)
        except Exception:
            log.exception("HTTP %s %s failed", method, path)
            status, content_type, body = 500, "text/plain", b"internal error\n"
        reason = _REASONS.get(status, "Internal Server Error")
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra]
        start_response(f"{status} {reason}", headers)
        return [body]

    def _unauthorized(self, method: str, path: str, environ: dict[str, Any]) -> tuple[int, str, bytes]:
        """401, counted by endpoint and logged (throttled) without anything the client sent but its address."""
        endpoint = path if path in ("/metrics", "/api/v1/status", "/api/v1/trigger") else "/api/other"
        self.on_unauthorized(endpoint)
        if self.token() is None:
            why = "the daemon has no [http] token, so this listener serves no API (see http.token, local_listen)"
        elif environ.get("HTTP_AUTHORIZATION"):
            why = "the bearer token does not match"
        else:
            why = "send Authorization: Bearer <token> (the daemon's http.token)"
        quiet = self._refusals.due()
        if quiet is not None:
            more = f" ({quiet} more since the last line)" if quiet else ""
            log.warning("HTTP %s %s from %s refused (401): %s%s", method, endpoint, environ.get("REMOTE_ADDR", "?"),
                        why, more)  # fmt: skip
        return 401, *_json({"error": why})

    def _route(self, method: str, path: str, query: dict[str, str], environ: dict[str, Any]) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            return (200, "text/plain", b"ready\n") if self.ready() else (503, "text/plain", b"first pass pending\n")
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/api/v1/status":
            doc = self.status(query.get("repo"))
            return (404, *_json({"error": "no such repository"})) if doc is None else (200, *_json(doc))
        if path == "/api/v1/trigger":
            if method != "POST":
                return 405, *_json({"error": "POST to trigger a pass"})
            chosen = [t for t in self.targets() if query.get("repo") in (None, t.name)]
            if not chosen:
                return 404, *_json({"error": "no such repository"})
            for target in chosen:
                target.trigger("manual")
            return 202, *_json({"triggered": [t.name for t in chosen]})
        if path.startswith("/hooks/"):
            if method != "POST":
                return 405, *_json({"error": "webhooks are POSTed"})
            return self._hook(path.removeprefix("/hooks/").strip("/"), environ)
        return 404, *_json({"error": f"no route {path}"})

    def _hook(self, provider: str, environ: dict[str, Any]) -> tuple[int, str, bytes]:
        limit = self.max_body()
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > limit:
            return self._answer(provider, Verdict(status=413, result="too_large", message=f"body over {limit} bytes"))
        body = environ["wsgi.input"].read(min(int(length), limit + 1) if length.isdigit() else limit + 1)
        if len(body) > limit:
            return self._answer(provider, Verdict(status=413, result="too_large", message=f"body over {limit} bytes"))
        headers = {k[5:].replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
        headers["Content-Type"] = environ.get("CONTENT_TYPE", "")
        if provider not in PROVIDERS:
            known = ", ".join(PROVIDERS)
            return self._answer(provider, Verdict(status=404, result="unknown_provider", message=f"expected {known}"))
        # A delivery reaches every repository whose secret verifies it: several repositories (branches) of one
        # forge repository share its webhook and secret, and each decides on its own branch.
        verdicts = [(target, judge(provider, target.secrets.get(provider, []), headers, body, target.branch))
                    for target in self.targets()]  # fmt: skip
        authentic = [(t, v) for t, v in verdicts if v.status != 401 and v.result != "not_configured"]
        if not authentic:
            unset = Verdict(status=404, result="not_configured", message=f"no {provider} webhook is configured")
            return self._answer(provider, next((v for _, v in verdicts if v.status == 401), unset))
        delivery = authentic[0][1].delivery
        if delivery and self._duplicate(provider, delivery):
            return self._answer(provider, Verdict(status=200, result="duplicate", message="already delivered"))
        accepted = [(t, v) for t, v in authentic if v.trigger]
        for target, verdict in accepted:
            log.info("webhook %s: %s for repository %s", provider, verdict.message, target.name,
                     extra={"repository": target.name})  # fmt: skip
            target.trigger(f"webhook:{provider}")
        return self._answer(provider, accepted[0][1] if accepted else authentic[0][1])

    def _duplicate(self, provider: str, delivery: str) -> bool:
        key = (provider, delivery)
        with self._seen_lock:
            if key in self._seen:
                return True
            self._seen[key] = None
            while len(self._seen) > 10_000:
                self._seen.popitem(last=False)
        return False

    def _answer(self, provider: str, verdict: Verdict) -> tuple[int, str, bytes]:
        # The provider comes from the request path: anything but a known one is counted as "unknown", so
        # that no client can add a time series to /metrics (or text to its labels) per request.
        self.on_delivery(provider if provider in PROVIDERS else "unknown", verdict.result)
        return verdict.status, *_json({"result": verdict.result, "message": verdict.message})


def _json(doc: Any) -> tuple[str, bytes]:
    return "application/json", json.dumps(doc).encode() + b"\n"


class HttpServer:
    """waitress in a thread.

    waitress reads a request's whole body (spooling it to a temporary file past 512 KiB) before the
    application sees it, so the body cap is waitress's own `max_request_body_size`: a declared Content-Length
    over it is answered 413 before a byte of the body is read, and a chunked body is cut off as soon as it
    passes it. The application checks again, for the JSON answer and the metric.
    """

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]], host: str, port: int,
                 *, max_body: int = 1 << 20) -> None:  # fmt: skip
        from waitress.server import create_server

        self._server = create_server(app, host=host, port=port, threads=4, ident="gitopsd", _start=True,
                                     max_request_body_size=_waitress_cap(max_body))  # fmt: skip
        self.host = host
        self.port = int(self._server.effective_port)
        self.thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    def set_max_body(self, max_body: int) -> None:
        """A new body cap (on reload); every connection reads it from the server's adjustments."""
        self._server.adj.max_request_body_size = _waitress_cap(max_body)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Finish the requests in progress (up to `timeout_s`), then close the listener, every connection and the
        loop's wake-up pipe from the loop's own thread, and wait for it to end.

        The order matters: a worker thread that finishes a request wakes the loop by writing a byte to that pipe.
        waitress's own `close()` shuts the pipe while workers and connections live on, so a late worker writes its
        byte to whatever file descriptor reused the pipe's number: a new client's socket (which then reads
        `xHTTP/1.1 ...`) or, in the daemon, an open database file.

        The closing task is handed over under the pipe's lock and the wake-up byte written before the lock is let
        go (what `pull_trigger` does in two steps): the loop runs its tasks under that lock, and a byte a worker
        left in the pipe would otherwise let it run this one, closing the pipe, before our own byte is written,
        which then met a closed descriptor, or a reused one.
        """
        from waitress import wasyncore

        server = self._server
        server.task_dispatcher.shutdown(timeout=timeout_s)  # no worker is left to wake the loop after this
        if self.thread.is_alive():
            trigger = server.trigger
            with trigger.lock:
                trigger.thunks.append(lambda: wasyncore.close_all(server._map))
                trigger._physical_pull()
            self.thread.join(timeout_s)
        else:
            wasyncore.close_all(server._map)


def _waitress_cap(max_body: int) -> int:
    # waitress refuses a body of `max_request_body_size` bytes or more; ours may be exactly `max_body` long.
    return max_body + 1
