"""The dashboard's HTTP shell: a WSGI application answering `/ui/...`, mounted by the daemon and `gitopsd ui`.

It routes (`gitopsd.ui.routing`), authenticates (`gitopsd.ui.session`), serves the package's static files
(`gitopsd.ui.assets`) and turns the documents of `gitopsd.ui.views` into JSON; it reads nothing itself and
changes nothing anywhere. Every answer carries a Content-Security-Policy that allows no inline script and no
other origin, `nosniff` and `no-referrer`; API answers are never cached; answers over 1 KiB are gzipped for a
client that accepts it. Errors are JSON `{"error": ...}` naming what was wrong, never a traceback.

`__call__` is the guarded application: with a token (the daemon's `http.token`, or `gitopsd ui --token-file`)
a request needs it as a bearer token or the login cookie; without one it serves no dashboard, like the API.
`local` serves without a token, for the daemon's loopback-only `local_listen` and a loopback `gitopsd ui`.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

from gitopsd.ui import assets, views
from gitopsd.ui.loginpage import login_form, no_token_page
from gitopsd.ui.routing import Refused, Route, resolve
from gitopsd.ui.session import Throttle, bearer_ok, clear_cookie, cookie_ok, safe_next, same_origin, set_cookie
from gitopsd.ui.session import token_ok as login_matches

log = logging.getLogger("gitopsd")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
]
GZIP_OVER = 1024
LOGIN_BODY_MAX = 4096
_REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}  # fmt: skip
_HTML = "text/html; charset=utf-8"
NO_TOKEN = "this gitopsd has no [http] token, so this listener serves no dashboard (see http.token, local_listen)"
_WHAT = {"model": "model", "version_page": "version", "metrics": "run", "log": "run"}


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    cache: str = "no-store"
    gzipped: bytes | None = None  # a precomputed gzip form (static files)

    @classmethod
    def json(cls, status: int, doc: Any) -> Answer:
        return cls(status, "application/json", _dumps(doc))

    @classmethod
    def redirect(cls, location: str, *headers: tuple[str, str]) -> Answer:
        return cls(303, "text/plain; charset=utf-8", b"", [("Location", location), *headers])


class UiApp:
    """The dashboard: `context()` says where the data is (read on every request, so a reload takes effect),
    `token()` the secret that guards `__call__` (None: no token, no dashboard there), `on_unauthorized(endpoint)`
    counts a refusal."""

    def __init__(
        self,
        context: Callable[[], views.UiContext],
        *,
        token: Callable[[], bytes | None] = lambda: None,
        on_unauthorized: Callable[[str], None] = lambda endpoint: None,
    ) -> None:
        self.context = context
        self.token = token
        self.on_unauthorized = on_unauthorized
        self._refusals = Throttle(every_s=10.0)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The guarded application: a token is needed (as a bearer token or the login cookie)."""
        return self.serve(environ, start_response, authenticate=True)

    def local(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The same application without a token, for a loopback-only listener."""
        return self.serve(environ, start_response, authenticate=False)

    def serve(self, environ: dict[str, Any], start_response: StartResponse, *, authenticate: bool) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        raw_path = _raw_path(environ)
        try:
            route = resolve(method, raw_path, environ.get("QUERY_STRING", ""))
            answer = self._answer(route, method, environ, authenticate=authenticate)
        except Refused as exc:
            answer = Answer.json(exc.status, {"error": exc.message})
            if exc.allow:
                answer.headers.append(("Allow", exc.allow))
            if authenticate and exc.status == 404 and raw_path.startswith("/ui/api/"):
                # what the API answers is not for a client without the token, not even which routes it has
                answer = self._refuse(Route("api"), method, environ, self.token()) or answer
        except Exception:
            log.exception("HTTP %s %s failed", method, raw_path[:200])
            answer = Answer.json(500, {"error": "internal error; the gitopsd log says more"})
        return _send(answer, method, environ, start_response)

    # -- routes ------------------------------------------------------------------------------------------------
    def _answer(self, route: Route, method: str, environ: dict[str, Any], *, authenticate: bool) -> Answer:
        if route.kind == "redirect":
            return Answer.redirect(route.name)
        if route.kind == "static":  # public code only: served to anyone
            return _static(route.name)
        token = self.token() if authenticate else None
        if route.kind == "login":
            if not authenticate:
                return Answer.redirect("/ui/")
            return self._login(method, environ, token)
        if route.kind == "logout":
            secure = environ.get("wsgi.url_scheme") == "https"
            return Answer.redirect("/ui/login" if authenticate else "/ui/", ("Set-Cookie", clear_cookie(secure=secure)))
        if authenticate:
            refusal = self._refuse(route, method, environ, token)
            if refusal is not None:
                return refusal
        if route.kind == "page":
            page = assets.asset("index.html")
            if page is None:
                return Answer.json(503, {"error": "the dashboard's files (gitopsd/ui/static) are not installed"})
            return Answer(200, page.content_type, page.body, cache="no-cache", gzipped=page.gzipped)
        return self._api(route)

    def _refuse(self, route: Route, method: str, environ: dict[str, Any], token: bytes | None) -> Answer | None:
        """The answer to a request without a valid token or cookie, or None when it has one."""
        if token is not None and (
            bearer_ok(environ.get("HTTP_AUTHORIZATION", ""), token) or cookie_ok(environ.get("HTTP_COOKIE", ""), token)
        ):
            return None
        self.on_unauthorized("/ui")
        if token is None:
            why = NO_TOKEN
            if route.kind == "page":
                return Answer(401, _HTML, no_token_page())
            self._log_refusal(method, "/ui/api", environ, why)
            return Answer.json(401, {"error": why})
        if route.kind == "page":  # a browser following a link: to the form, and back here afterwards
            target = _raw_path(environ)
            query = environ.get("QUERY_STRING", "")
            target += f"?{query}" if query else ""
            return Answer.redirect("/ui/login?next=" + quote(safe_next(target), safe=""))
        sent = environ.get("HTTP_AUTHORIZATION") or environ.get("HTTP_COOKIE")
        why = "the token does not match" if sent else "send Authorization: Bearer <token>, or log in at /ui/login"
        self._log_refusal(method, "/ui/api", environ, why)
        answer = Answer.json(401, {"error": why})
        answer.headers.append(("WWW-Authenticate", 'Bearer realm="gitopsd"'))
        return answer

    def _login(self, method: str, environ: dict[str, Any], token: bytes | None) -> Answer:
        if token is None:
            return Answer(401, _HTML, no_token_page())
        if method != "POST":
            try:
                query = dict(parse_qsl(environ.get("QUERY_STRING", ""), max_num_fields=20))
            except ValueError:  # over 20 fields: nobody's login link
                query = {}
            next_path = safe_next(query.get("next"))
            if cookie_ok(environ.get("HTTP_COOKIE", ""), token):
                return Answer.redirect(next_path)
            return Answer(200, _HTML, login_form(next_path=next_path), cache="no-store")
        if not same_origin(environ.get("HTTP_ORIGIN"), environ.get("HTTP_REFERER"), environ.get("HTTP_HOST")):
            return Answer(403, _HTML, login_form(problem="refused: the form was sent from another site"))
        form = _form(environ)
        if form is None:
            return Answer(413, _HTML, login_form(problem=f"the form is over {LOGIN_BODY_MAX} bytes"))
        next_path = safe_next(form.get("next"))
        given = form.get("token", "")
        if not given.strip():
            return Answer(400, _HTML, login_form(next_path=next_path, problem="type the token"))
        if not login_matches(given, token):
            self.on_unauthorized("/ui/login")
            self._log_refusal("POST", "/ui/login", environ, "the token does not match")
            return Answer(401, _HTML, login_form(next_path=next_path, problem="the token does not match"))
        secure = environ.get("wsgi.url_scheme") == "https"
        return Answer.redirect(next_path, ("Set-Cookie", set_cookie(token, secure=secure)))

    def _log_refusal(self, method: str, endpoint: str, environ: dict[str, Any], why: str) -> None:
        """One line per 10 s at most, with nothing the client sent but its address."""
        quiet = self._refusals.due()
        if quiet is not None:
            more = f" ({quiet} more since the last line)" if quiet else ""
            log.warning("HTTP %s %s from %s refused (401): %s%s", method, endpoint, environ.get("REMOTE_ADDR", "?"),
                        why, more)  # fmt: skip

    def _api(self, route: Route) -> Answer:
        ctx = self.context()
        args, params = route.args, route.params
        doc: dict[str, Any] | None
        if route.name == "overview":
            doc = views.overview(ctx)
        elif route.name == "cluster":
            doc = views.cluster(ctx)
        elif route.name == "version":
            doc = views.heartbeat(ctx)
        elif route.name == "model":
            doc = views.model_page(ctx, args[0], args[1])
        elif route.name == "version_page":
            doc = views.version_page(ctx, args[0], args[1], params["n"])
        elif route.name == "metrics":
            doc = views.run_metrics(ctx, args[0], args[1], points=params["points"], since=params["since"])
        else:  # "log"
            doc = views.run_log(ctx, args[0], args[1], nbytes=params["bytes"])
        if doc is None:
            return Answer.json(404, {"error": _not_found(route, known=args[0] in ctx.sources)})
        return Answer.json(200, doc)


def _not_found(route: Route, *, known: bool) -> str:
    repo = route.args[0][:100]
    if not known:
        return f"no repository {repo!r}"
    name = route.args[1][:100]
    if route.name == "version_page":
        return f"no version {route.params['n']} of model {name!r} in repository {repo!r}"
    return f"no {_WHAT[route.name]} {name!r} in repository {repo!r}"


def _static(name: str) -> Answer:
    found = assets.asset(name)
    if found is None:
        return Answer.json(404, {"error": "no such static file"})
    return Answer(200, found.content_type, found.body, cache="public, max-age=3600", gzipped=found.gzipped)


def _form(environ: dict[str, Any]) -> dict[str, str] | None:
    """The login form's fields (first value of each), None when the body is over LOGIN_BODY_MAX."""
    length = environ.get("CONTENT_LENGTH") or ""
    if length.isdigit() and int(length) > LOGIN_BODY_MAX:
        return None
    body = environ["wsgi.input"].read(int(length) if length.isdigit() else LOGIN_BODY_MAX + 1)
    if len(body) > LOGIN_BODY_MAX:
        return None
    try:
        pairs = parse_qsl(body.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return {}
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _send(answer: Answer, method: str, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    body = answer.body
    headers = [("Content-Type", answer.content_type), ("Cache-Control", answer.cache), *SECURITY_HEADERS]
    compressible = answer.gzipped is not None or (len(body) > GZIP_OVER and answer.content_type.startswith(
        ("application/json", "text/")))  # fmt: skip
    if compressible:
        headers.append(("Vary", "Accept-Encoding"))
        if accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
            body = answer.gzipped if answer.gzipped is not None else gzip.compress(body, 5)
            headers.append(("Content-Encoding", "gzip"))
    headers += [*answer.headers, ("Content-Length", str(len(body)))]
    start_response(f"{answer.status} {_REASONS.get(answer.status, 'Error')}", headers)
    return [b""] if method == "HEAD" else [body]


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header accepts gzip (`gzip;q=0` refuses it, `*` accepts it unless refused)."""
    verdict: dict[str, bool] = {}
    for item in header.lower().split(",")[:30]:
        coding, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        verdict[coding.strip()] = quality > 0 and not math.isnan(quality)
    return verdict.get("gzip", verdict.get("x-gzip", verdict.get("*", False)))


def _raw_path(environ: dict[str, Any]) -> str:
    """The request path as sent (still percent-encoded), so that an encoded slash stays inside its segment."""
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if isinstance(raw, str) and raw:
        if not raw.startswith("/"):  # absolute-form: http://host/path
            raw = "/" + raw.split("://", 1)[-1].partition("/")[2]
        return raw.partition("?")[0].partition("#")[0]
    path = environ.get("PATH_INFO", "/") or "/"
    return quote(path.encode("latin-1", "replace"), safe="/")


def _dumps(doc: Any) -> bytes:
    """JSON a browser can parse: a NaN or infinity a training wrote becomes null (JSON has neither)."""
    try:
        return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        return json.dumps(_finite(doc), allow_nan=False, separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
