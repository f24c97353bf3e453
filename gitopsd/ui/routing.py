"""Which answer a dashboard request asks for: the pure part of the HTTP shell (`gitopsd.ui.app`).

A request path is split into segments on the raw `/` and each segment is percent-decoded once, so `..%2F..`
is one segment holding a slash, never two, and is refused like `.`, `..`, a NUL or a segment that is not
UTF-8. The routes: pages that all answer `index.html`, static files by
name, the JSON API, and the login form. Query parameters the API reads are checked here (whole decimal numbers
in range); a bad one is refused naming the parameter. Nothing here touches a file or the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote_to_bytes

PREFIX = "/ui"
Kind = Literal["page", "static", "api", "login", "logout", "redirect"]

POINTS_MAX = 5000
POINTS_DEFAULT = 1000
LOG_BYTES_MAX = 262_144
LOG_BYTES_DEFAULT = 16_384
_WHOLE = re.compile(r"[0-9]{1,12}")  # no sign, no `_`, no spaces: what int() would also take is not enough


class Refused(Exception):
    """A request the shell answers with `status` and `message` (400 bad input, 404 no such route, 405 method)."""

    def __init__(self, status: int, message: str, *, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


@dataclass(frozen=True)
class Route:
    """What to answer: a page, a static file, an API document (`name` and its path `args`), the login form."""

    kind: Kind
    name: str = ""
    args: tuple[str, ...] = ()
    params: dict[str, int] = field(default_factory=dict)


def segments(raw_path: str) -> list[str]:
    """The path's segments, each percent-decoded once; Refused(400) for one that could name another path."""
    parts = raw_path.split("/")
    if parts[0] != "":
        raise Refused(400, "path: it must start with /")
    out = []
    for raw in parts[1:]:
        try:
            part = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(400, "path: a segment is not UTF-8") from None
        if part in (".", "..") or "/" in part or "\\" in part or "\x00" in part:
            raise Refused(400, "path: a segment may not be '.', '..' or hold '/', '\\' or NUL")
        out.append(part)
    return out


def resolve(method: str, raw_path: str, query: str) -> Route:
    """The route of a request; Refused for anything the dashboard does not answer."""
    parts = segments(raw_path)
    if parts in ([""], ["ui"]):
        return Route("redirect", f"{PREFIX}/")
    if not parts or parts[0] != "ui":
        raise Refused(404, f"no route {raw_path[:200]}")
    rest = parts[1:]
    if rest[:1] == ["login"] and len(rest) == 1:
        _method(method, "GET, HEAD, POST")
        return Route("login")
    _method(method, "GET, HEAD")
    if rest[:1] == ["static"]:
        if len(rest) != 2 or not rest[1]:
            raise Refused(404, "no such static file")
        return Route("static", rest[1])
    if rest[:1] == ["api"]:
        return _api(rest[1:], _query(query))
    if rest == ["logout"]:
        return Route("logout")
    return _page(rest)


def _method(method: str, allowed: str) -> None:
    if method not in allowed.split(", "):
        raise Refused(405, f"{method} is not answered here; use {allowed}", allow=allowed)


def _page(rest: list[str]) -> Route:
    """The pages: each answers index.html (the page's script reads location.pathname); a trailing / is fine."""
    if len(rest) > 1 and rest[-1] == "":
        rest = rest[:-1]
    if rest in ([""], ["cluster"]):
        return Route("page", rest[0] or "overview")
    if len(rest) == 3 and rest[0] == "models" and all(rest[1:]):
        return Route("page", "model", tuple(rest[1:]))
    if len(rest) == 4 and rest[0] == "versions" and all(rest[1:3]):
        return Route("page", "version", (rest[1], rest[2], str(_whole("n", rest[3], low=1))))
    raise Refused(404, "no such page")


def _api(rest: list[str], query: dict[str, str]) -> Route:
    if rest in (["overview"], ["cluster"], ["version"]):
        return Route("api", rest[0])
    if len(rest) == 3 and rest[0] == "models" and all(rest[1:]):
        return Route("api", "model", (rest[1], rest[2]))
    if len(rest) == 4 and rest[0] == "versions" and all(rest[1:3]):
        return Route("api", "version_page", (rest[1], rest[2]), {"n": _whole("n", rest[3], low=1)})
    if len(rest) == 4 and rest[0] == "runs" and all(rest[1:3]) and rest[3] == "metrics":
        points = _param(query, "points", POINTS_DEFAULT, low=1, high=POINTS_MAX)
        since = _param(query, "since", 0, low=0, high=None)
        return Route("api", "metrics", (rest[1], rest[2]), {"points": points, "since": since})
    if len(rest) == 4 and rest[0] == "runs" and all(rest[1:3]) and rest[3] == "log":
        nbytes = _param(query, "bytes", LOG_BYTES_DEFAULT, low=1, high=LOG_BYTES_MAX)
        return Route("api", "log", (rest[1], rest[2]), {"bytes": nbytes})
    raise Refused(404, "no such API route")


def _query(query: str) -> dict[str, str]:
    """The first value of each query parameter (unknown ones are ignored: a cache-buster does no harm)."""
    out: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict", max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "query: not UTF-8, or more than 50 parameters") from None
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _param(query: dict[str, str], name: str, default: int, *, low: int, high: int | None) -> int:
    if name not in query:
        return default
    return _whole(name, query[name], low=low, high=high)


def _whole(name: str, text: str, *, low: int, high: int | None = None) -> int:
    """`text` as a whole number in [low, high]; Refused(400) naming `name` otherwise."""
    span = f"{low}..{high}" if high is not None else f">= {low}"
    if not _WHOLE.fullmatch(text):
        raise Refused(400, f"{name}: expected a whole number {span}, got {text[:40]!r}")
    value = int(text)
    if value < low or (high is not None and value > high):
        raise Refused(400, f"{name}: {value} is out of range, expected {span}")
    return value
