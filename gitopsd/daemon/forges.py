"""What one notification looks like on the wire, and what an answer means. Pure: no I/O, no clock, no secrets kept.

A queued delivery (`daemon/deliveries.py`) holds only what gitopsd knows (a commit status or an event); this
module turns it into the request of the sink's kind at send time, with the credential the courier just resolved:
GitHub, GitLab and Gitea/Forgejo commit statuses (each forge's documented path, auth header and body), a generic
JSON webhook signed with HMAC-SHA256 over a timestamp and the body, and a Slack-compatible incoming webhook whose
text has every control sequence of the untrusted parts escaped. `classify` reads the answer: delivered, retry
(5xx, 429, 408, a timeout, a refused connection) or stall (a refusal that waiting cannot mend: 401, 403, 404,
422 and other 4xx), with a message that names the fix and never the credential.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from gitopsd import __version__
from gitopsd.daemon.config import NotificationConfig

WEBHOOK_SCHEMA = "gitopsd.notification/v1"
GITHUB_API_VERSION = "2022-11-28"
DESCRIPTION_MAX = 140  # GitHub refuses a longer status description (422); GitLab and Gitea take it as well
RETRY_AFTER_MAX_S = 3600.0
SIGNATURE_HEADER = "X-Gitopsd-Signature-256"
TIMESTAMP_HEADER = "X-Gitopsd-Timestamp"
DELIVERY_HEADER = "X-Gitopsd-Delivery"
EVENT_HEADER = "X-Gitopsd-Event"
USER_AGENT = f"gitopsd/{__version__}"

#: The forge's word for each of gitopsd's three status states.
_STATES = {
    "github": {"pending": "pending", "success": "success", "failure": "failure"},
    "gitea": {"pending": "pending", "success": "success", "failure": "failure"},
    "gitlab": {"pending": "running", "success": "success", "failure": "failed"},
}


@dataclass(frozen=True, kw_only=True)
class Request:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What an answer (or its absence) means for a delivery."""

    delivered: bool = False
    stall: bool = False
    sink_wide: bool = False  # the refusal concerns every delivery of the sink (a bad token), not this one
    retry_after_s: float | None = None  # what the sink asked for (Retry-After), for a retry
    message: str = ""


def shorten(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters with "..." when longer."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def status_request(sink: NotificationConfig, token: str, payload: Mapping[str, Any], repository: str) -> Request:
    """The commit-status request of a github, gitlab or gitea sink for `payload` (sha, state, description)."""
    sha = str(payload["sha"])
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha):
        raise ValueError(f"not a commit id: {sha!r}")
    state = _STATES[sink.kind][str(payload["state"])]
    description = shorten(str(payload["description"]), DESCRIPTION_MAX)
    context = sink.context_for(repository)
    body: dict[str, str] = {"state": state, "description": description}
    if sink.target_url:
        body["target_url"] = sink.target_url
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Accept": "application/json"}
    project = str(sink.project)
    if sink.kind == "github":
        url = f"{sink.api()}/repos/{project}/statuses/{sha}"
        headers |= {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": GITHUB_API_VERSION}  # fmt: skip
        body["context"] = context
    elif sink.kind == "gitlab":
        url = f"{sink.api()}/api/v4/projects/{quote(project, safe='')}/statuses/{sha}"
        headers["PRIVATE-TOKEN"] = token
        body["name"] = context
    else:
        url = f"{sink.api()}/api/v1/repos/{project}/statuses/{sha}"
        headers["Authorization"] = f"token {token}"
        body["context"] = context
    return Request(method="POST", url=url, headers=headers, body=_json(body))


def webhook_body(payload: Mapping[str, Any], *, delivery: str) -> bytes:
    """The generic webhook's JSON document (schema `gitopsd.notification/v1`, docs/notifications.md)."""
    return _json({"schema": WEBHOOK_SCHEMA, "id": delivery, **payload})


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of `<timestamp>.<body>` under the sink's secret."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def webhook_request(url: str, secret: bytes, payload: Mapping[str, Any], *, delivery: str, now: float) -> Request:
    """The signed generic-webhook request; the timestamp is the send time, covered by the signature."""
    body = webhook_body(payload, delivery=delivery)
    timestamp = str(int(now))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: str(payload["event"]),
        DELIVERY_HEADER: delivery,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
    return Request(method="POST", url=url, headers=headers, body=body)


def slack_escape(text: str) -> str:
    """Untrusted text for Slack: `&`, `<`, `>` escaped as Slack asks (so `<!channel>` and `<http://x|y>` are
    shown, not acted on), and a bare @channel/@here/@everyone broken by a zero-width space."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"@(channel|here|everyone)\b", "@\u200b\\1", text, flags=re.IGNORECASE)


def slack_text(payload: Mapping[str, Any]) -> str:
    """One line for a Slack channel; every part that came from a repository or a training is escaped."""
    repo = slack_escape(str(payload.get("repository", "")))
    model = slack_escape(str(payload.get("model") or ""))
    commit = str(payload.get("commit") or "")[:12]
    message = slack_escape(shorten(str(payload.get("message", "")), 500))
    event = payload["event"]
    if event == "version-registered":
        head = f"{model} version {payload.get('version')} registered"
    elif event == "gate-failed":
        head = f"{model}: a validation gate failed"
    elif event == "training-failed":
        head = f"{model}: training failed ({slack_escape(str(payload.get('reason', '')))})"
    elif event == "alias-moved":
        head = f"{model}: alias moved"
    else:
        head = "commit rejected"
    where = f" at {commit}" if commit else ""
    return f"[{repo}] {head}{where}: {message}" if message else f"[{repo}] {head}{where}"


def slack_request(url: str, payload: Mapping[str, Any]) -> Request:
    body = _json({"text": slack_text(payload)})
    return Request(method="POST", url=url, headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
                   body=body)  # fmt: skip


def classify(sink: NotificationConfig, status: int | None, body: bytes, headers: Mapping[str, str],
             error: str = "", *, now: float) -> Outcome:  # fmt: skip
    """What an answer means: `status` None when no answer came (`error` says why: timeout, refused)."""
    if status is None:
        return Outcome(message=error or "no answer")
    if 200 <= status < 300:
        return Outcome(delivered=True)
    text = _excerpt(body)
    said = f"HTTP {status}" + (f": {text}" if text else "")
    if sink.kind == "gitlab" and status == 400 and "cannot transition status" in text.lower():
        return Outcome(delivered=True, message="the commit already had this status")
    lowered = {k.lower(): v for k, v in headers.items()}
    retry_after = _retry_after(lowered.get("retry-after", ""), now)
    if status == 429 or (status == 403 and (retry_after is not None or lowered.get("x-ratelimit-remaining") == "0")):
        return Outcome(retry_after_s=retry_after, message=f"{said} (rate limited)")
    if status == 408 or status >= 500:
        return Outcome(retry_after_s=retry_after, message=said)
    fix = (
        _FIX.get((sink.kind, status))
        or _FIX.get(("*", status))
        or (
            "redirected, and not followed (it would carry the credential): set `url` to the final address, then reload"
            if 300 <= status < 400
            else "the request was refused; see the answer"
        )
    )
    return Outcome(stall=True, sink_wide=status in (401, 403, 404) or 300 <= status < 400, message=f"{said} ({fix})")


_FIX = {
    ("*", 401): "the token was refused: set `token` to a valid one, then reload (SIGHUP)",
    ("*", 403): "the token lacks permission: it needs to write commit statuses of `project`, then reload",
    ("*", 404): "no such project, or the token cannot see it: check `url` and `project`, then reload",
    ("*", 422): "the forge refused the status: is the commit pushed to `project`?",
    ("github", 403): "the token lacks permission: a fine-grained token needs 'Commit statuses: write' "
    "(classic: repo:status) on `project`, then reload",
    ("gitlab", 403): "the token lacks permission: it needs the api scope and at least the Developer role, then reload",
    ("gitea", 403): "the token lacks permission: it needs write:repository and write access to `project`, then reload",
    ("slack", 403): "Slack refused the webhook (invalid_token or action_prohibited): set a new `url`, then reload",
    ("slack", 404): "Slack knows no such webhook (no_service or channel_not_found): set a new `url`, then reload",
    ("slack", 410): "the Slack channel is archived: set a new `url`, then reload",
    ("webhook", 401): "the receiver refused the signature: check `secret` on both sides, then reload",
    ("webhook", 404): "the receiver has no such path: check `url`, then reload",
}


def _retry_after(value: str, now: float) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date, capped at an hour); None when absent."""
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():  # not str.isdigit alone: "²" is a digit that float() refuses
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        return max(0.0, min(parsedate_to_datetime(value).timestamp() - now, RETRY_AFTER_MAX_S))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _excerpt(body: bytes) -> str:
    """The part of an answer worth showing: a JSON `message`/`error`, or the first 200 characters of text."""
    text = body[:4096].decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return shorten(re.sub(r"<[^>]*>", " ", text), 200)
    if isinstance(data, dict):
        for key in ("message", "error", "error_description"):
            value = data.get(key)
            if isinstance(value, str | list | dict):
                return shorten(value if isinstance(value, str) else json.dumps(value), 200)
    return shorten(text, 200)


def _json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
