"""The HTTP side of `gitopsd comment`: find our plan comment on a pull request and edit it, or post a new one.

Standard-library HTTP with an explicit timeout on every request, no redirects (the token goes with every
request, and a redirect could carry it to another host), bounded answers, and a few retries with backoff when
the forge answers 5xx or 429, or does not answer in time. A retry starts again from listing the comments, so a
POST that reached the forge before its answer was lost is found and edited, not posted twice. The decisions
(which comment, what body, which page, what an error means) are `prcomment.py`'s.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gitopsd.cli.prcomment import (
    Comment,
    CommentError,
    Target,
    choose_ours,
    forge_message,
    next_page,
    parse_comments,
    refusal,
    user_login,
)

BACKOFF_S = (2.0, 4.0, 8.0)  # the waits before the retries: at most four tries, about 15 s of waiting
MAX_ANSWER_BYTES = 16 * 1024 * 1024
MAX_PAGES = 200  # 20,000 comments at 100 a page


class Transient(CommentError):
    """A failure worth another try: 5xx, 429, a timeout, a refused or reset connection."""


@dataclass(frozen=True, kw_only=True)
class Posted:
    """What the command did: `updated` an existing comment or `created` one, and its id (and web URL if known)."""

    action: str
    comment_id: int
    url: str | None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx stays an answer: the token is never sent on to where it points


_OPENER = urllib.request.build_opener(_NoRedirect())


@dataclass(frozen=True, kw_only=True)
class _Answer:
    status: int
    headers: dict[str, str]
    payload: Any


def _request(target: Target, method: str, url: str, body: dict[str, Any] | None, timeout: float) -> _Answer:
    """One request; a 4xx/3xx is returned as it is, a transient failure raises `Transient`."""
    data = json.dumps(body).encode() if body is not None else None
    headers = target.headers()
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, answer_headers, raw = response.status, dict(response.headers), response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        status, answer_headers = exc.code, dict(exc.headers or {})
        try:
            raw = exc.read(MAX_ANSWER_BYTES + 1)
        except OSError:
            raw = b""
    except TimeoutError as exc:
        raise Transient(f"the {target.forge} API did not answer {method} {url} within {timeout:g} s") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):  # no retry makes a certificate valid
            raise CommentError(f"the {target.forge} API at {url} has a certificate this host does not trust: "
                               f"{reason.verify_message}") from None  # fmt: skip
        if isinstance(reason, TimeoutError):
            raise Transient(f"the {target.forge} API did not answer {method} {url} within {timeout:g} s") from exc
        raise Transient(f"cannot reach the {target.forge} API at {url}: {reason}") from exc
    except (OSError, http.client.HTTPException) as exc:  # reset mid-answer, a broken pipe, a garbled answer
        raise Transient(f"the connection to the {target.forge} API broke during {method} {url}: {exc}") from exc
    if len(raw) > MAX_ANSWER_BYTES:
        raise CommentError(f"the {target.forge} API answered {method} {url} with more than {MAX_ANSWER_BYTES} bytes")
    try:
        payload = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        payload = None
    if 300 <= status < 400:
        where = answer_headers.get("Location") or answer_headers.get("location") or "elsewhere"
        raise CommentError(f"the {target.forge} API answered {status} to {method} {url}, a redirect to {where}: not "
                           "following it with the token (is the API URL right?)")  # fmt: skip
    if status >= 500 or status == 429:
        said = forge_message(payload)
        raise Transient(f"the {target.forge} API answered {status} to {method} {url}" + (f" ({said})" if said else ""))
    return _Answer(status=status, headers={k.lower(): v for k, v in answer_headers.items()}, payload=payload)


def _ok(answer: _Answer, target: Target, method: str, url: str, *expected: int) -> Any:
    if answer.status not in expected:
        raise CommentError(refusal(answer.status, method, url, target, forge_message(answer.payload)))
    return answer.payload


def _whoami(target: Target, timeout: float) -> str | None:
    """The token's user, or None where the forge will not say (GitHub's Actions token answers 403). A bad token
    is refused again by the requests that follow, which say so."""
    answer = _request(target, "GET", target.user_url, None, timeout)
    return user_login(target.forge, answer.payload) if answer.status == 200 else None


def _list(target: Target, timeout: float) -> list[Comment]:
    """Every comment of the request, following GitLab's X-Next-Page, else `Link: rel="next"`."""
    comments: list[Comment] = []
    url: str | None = target.list_url
    for _ in range(MAX_PAGES):
        if url is None:
            return comments
        answer = _request(target, "GET", url, None, timeout)
        comments += parse_comments(target.forge, _ok(answer, target, "GET", url, 200))
        following = answer.headers.get("x-next-page", "").strip()
        if target.forge == "gitlab" and following.isdigit():  # built on our own URL: right behind a proxy too
            url = f"{target.list_url}&page={int(following)}"
        else:
            url = next_page(answer.headers.get("link"), target.api)
    raise CommentError(f"{target.what} has more than {MAX_PAGES} pages of comments: not reading further")


def upsert_once(target: Target, body: str, timeout: float) -> Posted:
    """Edit our plan comment if there is one, else post it: one try."""
    me = _whoami(target, timeout)
    ours = choose_ours(_list(target, timeout), me)
    if ours is not None:
        url = target.comment_url(ours.id)
        answer = _request(target, target.edit_method, url, {"body": body}, timeout)
        payload = _ok(answer, target, target.edit_method, url, 200)
        return Posted(action="updated", comment_id=ours.id, url=_web_url(payload))
    answer = _request(target, "POST", target.comments_url, {"body": body}, timeout)
    payload = _ok(answer, target, "POST", target.comments_url, 200, 201)
    ident = payload.get("id") if isinstance(payload, dict) else None
    return Posted(action="created", comment_id=ident if isinstance(ident, int) else 0, url=_web_url(payload))


def _web_url(payload: Any) -> str | None:
    url = payload.get("html_url") if isinstance(payload, dict) else None
    return url if isinstance(url, str) else None


def upsert(
    target: Target,
    body: str,
    *,
    timeout: float = 30.0,
    backoff: tuple[float, ...] = BACKOFF_S,
    sleep: Callable[[float], None] = time.sleep,
    warn: Callable[[str], None] = lambda _: None,
) -> Posted:
    """`upsert_once`, tried again after each wait of `backoff` while the failure is transient."""
    for wait in (*backoff, None):
        try:
            return upsert_once(target, body, timeout)
        except Transient as exc:
            if wait is None:
                raise CommentError(f"{exc}; gave up after {len(backoff) + 1} tries") from None
            warn(f"{exc}; trying again in {wait:g} s")
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
