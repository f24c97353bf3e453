"""Who may use the daemon's HTTP API: a bearer token, or a loopback-only listener the operator opted into.

`/api/v1/*` (status, trigger) and `/metrics` answer only a request that carries `Authorization: Bearer TOKEN`,
where TOKEN is the operator's secret named by `[http] token` (a `file:`, `env:` or `credential:` reference).
`[http] local_listen` adds a second listener, loopback only, that serves the same API without a token, for
`gitopsd trigger` and a Prometheus on the same host. `/healthz` and `/readyz` stay open (they reveal nothing),
and forge webhooks are authenticated by their own signatures. A `listen` address that other hosts can reach
needs a token, or the configuration is refused. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import ipaddress
import string

from gitopsd.errors import PermanentError
from gitopsd.ui.session import bearer_ok

MIN_TOKEN_BYTES = 16
_TOKEN_CHARS = frozenset((string.ascii_letters + string.digits + string.punctuation).encode())
PROTECTED = ("/api/", "/metrics")


def is_loopback(host: str) -> bool:
    """Whether `host` (an address as `listen` gives it, brackets stripped) is reachable from this host only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_problem(listen: str, *, has_token: bool) -> str | None:
    """Why `listen` may not serve the API as configured, or None."""
    host = listen.rpartition(":")[0].strip("[]")
    if has_token or is_loopback(host):
        return None
    return (
        f"listen = {listen!r} is reachable from other hosts, so the API (/api/v1/*, /metrics) needs a token: "
        'set http.token = "credential:api-token" (or file:/path, env:NAME) to a secret of at least '
        f"{MIN_TOKEN_BYTES} random characters, or listen on 127.0.0.1"
    )


def local_listen_problem(local_listen: str, listen: str) -> str | None:
    """Why `local_listen` (served without a token) is refused, or None."""
    host = local_listen.rpartition(":")[0].strip("[]")
    if not is_loopback(host):
        return (
            f"local_listen = {local_listen!r} is served without a token, so it must be a loopback address "
            "(127.0.0.1:PORT or [::1]:PORT); use http.token for an address other hosts can reach"
        )
    if local_listen == listen and not local_listen.endswith(":0"):
        return f"local_listen = {local_listen!r} is also http.listen: give it a port of its own"
    return None


def check_token(token: bytes, ref: str) -> bytes:
    """`token` if it can serve as a bearer token; PermanentError naming `ref` (never the token) otherwise."""
    if len(token) < MIN_TOKEN_BYTES:
        raise PermanentError(
            f"http.token {ref}: the token has {len(token)} characters; use at least {MIN_TOKEN_BYTES} random "
            "ones (e.g. `openssl rand -hex 32`)"
        )
    if not set(token) <= _TOKEN_CHARS:
        raise PermanentError(f"http.token {ref}: the token must be printable ASCII without spaces (it is a header)")
    return token


def is_protected(path: str) -> bool:
    """Whether `path` needs the token on the authenticated listener."""
    return path == "/metrics" or path.startswith(PROTECTED[0])


def bearer_matches(header: str, token: bytes | None) -> bool:
    """Whether an Authorization header carries `token`; constant time, and never true without a token. The same
    check as the dashboard's (`gitopsd.ui.session.bearer_ok`), which the daemon serves with the API."""
    return token is not None and bearer_ok(header, token)
