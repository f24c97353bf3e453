"""Who may see the dashboard: the API's bearer token, or the cookie a browser got by typing that token once.

A browser cannot send `Authorization: Bearer` when it follows a link, so `POST /ui/login` (form field `token`)
sets the cookie `gitopsd_ui`. Its value is HMAC-SHA256(token, "gitopsd-ui-session") in hex: the token itself
never reaches the browser's storage, and a rotated token ends every session at once. Everything is compared in
constant time. The cookie is `HttpOnly; SameSite=Strict; Path=/ui` (`Secure` over https), and the login POST
is refused unless the browser says it came from this origin (`Sec-Fetch-Site: same-origin`) or, from a
browser that does not send that header, its Origin (or Referer) names the request's Host, so no other site can
log a browser in. The dashboard only reads, so a session grants nothing the token does not.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from urllib.parse import urlsplit

COOKIE = "gitopsd_ui"
_CONTEXT = b"gitopsd-ui-session"
_NEXT = re.compile(r"/ui/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,500}")


def session_value(token: bytes) -> str:
    """The cookie value that stands for `token`: hex HMAC-SHA256(token, "gitopsd-ui-session")."""
    return hmac.new(token, _CONTEXT, hashlib.sha256).hexdigest()


def bearer_ok(header: str, token: bytes) -> bool:
    """Whether an Authorization header carries `token` (constant time, whatever the length sent)."""
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return _same(given.strip(), token)


def token_ok(given: str, token: bytes) -> bool:
    """Whether a token typed into the login form is `token` (constant time)."""
    return _same(given.strip(), token)


def cookie_ok(header: str, token: bytes) -> bool:
    """Whether a Cookie header holds a `gitopsd_ui` cookie for `token` (any of several, constant time each)."""
    expected = session_value(token).encode()
    found = False
    for part in header.split(";")[:50]:
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE:
            found |= hmac.compare_digest(value.strip().strip('"').encode("latin-1", "replace"), expected)
    return found


def set_cookie(token: bytes, *, secure: bool) -> str:
    """The Set-Cookie value after a good login: a session cookie (gone when the browser closes)."""
    return f"{COOKIE}={session_value(token)}; Path=/ui; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def clear_cookie(*, secure: bool) -> str:
    """The Set-Cookie value of a logout."""
    return f"{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def same_origin(origin: str | None, referer: str | None, host: str | None, fetch_site: str | None = None) -> bool:
    """Whether a POST comes from a page of this host. A browser's `Sec-Fetch-Site` (which no page can forge) says
    it when sent: only `same-origin` passes. That header is needed because the dashboard's own
    `Referrer-Policy: no-referrer` makes a browser send its login form with `Origin: null` and no Referer.
    Without it, the Origin (else the Referer) must name `host`; a request with neither (a script, curl) passes;
    an opaque `Origin: null` does not."""
    if fetch_site is not None:
        return fetch_site.strip().lower() == "same-origin"
    if not host:
        return origin is None and referer is None
    claimed = origin if origin is not None else referer
    if claimed is None:
        return True
    try:
        netloc = urlsplit(claimed).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.strip().lower()


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a dashboard path of this host (never another origin), else /ui/."""
    if target and _NEXT.fullmatch(target) and "//" not in target and "/../" not in target:
        return target
    return "/ui/"


def _same(given: str, token: bytes) -> bool:
    try:
        candidate = given.encode("latin-1")
    except UnicodeEncodeError:
        return False
    # Digests first, so that the comparison takes as long whatever the length of what was sent.
    return hmac.compare_digest(hashlib.sha256(candidate).digest(), hashlib.sha256(token).digest())


class Throttle:
    """At most one log line per `every_s` seconds: a client guessing tokens must not flood the journal."""

    def __init__(self, *, every_s: float) -> None:
        self._every_s = every_s
        self._last = -float("inf")
        self._skipped = 0
        self._lock = threading.Lock()

    def due(self) -> int | None:
        """None while quiet; else how many lines were skipped since the last one (and the clock restarts)."""
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._every_s:
                self._skipped += 1
                return None
            skipped, self._skipped, self._last = self._skipped, 0, now
            return skipped
