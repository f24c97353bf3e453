"""Forge webhooks: verify a delivery, parse it, and say whether it should trigger a pass. Pure.

GitHub (`X-Hub-Signature-256`), Gitea/Forgejo (`X-Gitea-Signature` / `X-Forgejo-Signature`), Bitbucket Server
(`X-Hub-Signature`, sha256) and a generic HMAC (`X-Gitopsd-Signature`) sign the body; GitLab sends a token
(`X-Gitlab-Token`). Every comparison is constant-time. Only a push to the tracked branch triggers; pings are
answered, tags, deletions and other branches are acknowledged and ignored. A Bitbucket Server delivery lists
several changes: it triggers when any of them updates the tracked branch. A form-encoded delivery carries the
JSON in its one `payload` field; Gitea and Forgejo sign that JSON (not the form body), GitHub signs the body.
This module never reconciles: the HTTP layer enqueues a trigger and answers at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

PROVIDERS = ("github", "gitlab", "gitea", "bitbucket", "generic")
ZERO = "0" * 40


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """What to answer and whether to trigger a pass."""

    status: int
    result: str
    message: str
    trigger: bool = False
    delivery: str = ""
    commit: str = ""


def _header(headers: Mapping[str, str], name: str) -> str:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), "")


def _hmac_ok(secret: bytes, body: bytes, signature: str, *, prefix: str) -> bool:
    if prefix:
        if not signature.startswith(prefix):
            return False
        signature = signature[len(prefix) :]
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.strip().lower())


def _is_form(headers: Mapping[str, str]) -> bool:
    return "application/x-www-form-urlencoded" in _header(headers, "Content-Type").lower()


def _form_payload(body: bytes) -> bytes | None:
    """The bytes of the one `payload` field of a form-encoded body (None: none, or more than one)."""
    values = [
        unquote_to_bytes(value.replace(b"+", b" "))
        for name, _, value in (field.partition(b"=") for field in body.split(b"&") if field)
        if unquote_to_bytes(name.replace(b"+", b" ")) == b"payload"
    ]
    return values[0] if len(values) == 1 else None


def _signed_bytes(provider: str, headers: Mapping[str, str], body: bytes) -> bytes | None:
    """What the forge signed: the body, except for a Gitea/Forgejo form delivery, which signs its JSON payload."""
    if provider == "gitea" and _is_form(headers):
        return _form_payload(body)
    return body


def authentic(provider: str, secret: bytes, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether the delivery carries a valid signature (or token) for `secret`."""
    if not secret:  # an empty secret would let anyone sign
        return False
    if provider == "github":
        return _hmac_ok(secret, body, _header(headers, "X-Hub-Signature-256"), prefix="sha256=")
    if provider == "gitlab":
        return hmac.compare_digest(_header(headers, "X-Gitlab-Token").encode(), secret)
    if provider == "gitea":
        signature = _header(headers, "X-Gitea-Signature") or _header(headers, "X-Forgejo-Signature")
        signed = _signed_bytes(provider, headers, body)
        return signed is not None and _hmac_ok(secret, signed, signature, prefix="")
    if provider == "bitbucket":
        return _hmac_ok(secret, body, _header(headers, "X-Hub-Signature"), prefix="sha256=")
    if provider == "generic":
        return _hmac_ok(secret, body, _header(headers, "X-Gitopsd-Signature"), prefix="sha256=")
    return False


def _payload(headers: Mapping[str, str], body: bytes) -> dict[str, Any] | None:
    """The JSON payload, sent as JSON or form-encoded (`payload=...`)."""
    try:
        if _is_form(headers):
            payload = _form_payload(body)
            data = json.loads(payload) if payload is not None else None
        else:
            data = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _event(provider: str, headers: Mapping[str, str]) -> str:
    names = {
        "github": "X-GitHub-Event",
        "gitlab": "X-Gitlab-Event",
        "gitea": "X-Gitea-Event",
        "bitbucket": "X-Event-Key",
        "generic": "X-Gitopsd-Event",
    }
    event = _header(headers, names[provider])
    if provider == "gitea" and not event:
        event = _header(headers, "X-Forgejo-Event")
    return event.strip()


def delivery_id(provider: str, headers: Mapping[str, str]) -> str:
    names = {
        "github": ("X-GitHub-Delivery",),
        "gitlab": ("X-Gitlab-Event-UUID", "Idempotency-Key"),
        "gitea": ("X-Gitea-Delivery", "X-Forgejo-Delivery"),
        "bitbucket": ("X-Request-Id",),
        "generic": ("X-Gitopsd-Delivery",),
    }
    return next((value for name in names[provider] if (value := _header(headers, name))), "")


Push = tuple[str, str, bool]  # (ref, new commit, deleted)


def _pushed(provider: str, event: str, payload: Mapping[str, Any]) -> list[Push] | str:
    """The refs a push moved, or the reason the event is not a push."""
    if provider == "bitbucket":
        if event != "repo:refs_changed":
            return f"event {event or '(none)'} is not a push"
        changes = payload.get("changes")
        pushes: list[Push] = []
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict):
                continue
            ref = change["ref"] if isinstance(change.get("ref"), dict) else {}
            pushes.append((str(ref.get("id", change.get("refId", ""))), str(change.get("toHash", "")),
                           change.get("type") == "DELETE"))  # fmt: skip
        return pushes
    push_events = {"github": ("push",), "gitlab": ("Push Hook",), "gitea": ("push",), "generic": ("push", "")}
    if event not in push_events[provider]:
        return f"event {event or '(none)'} is not a push"
    after = str(payload.get("after", "") or payload.get("checkout_sha", "") or "")
    deleted = bool(payload.get("deleted")) or after == ZERO
    return [(str(payload.get("ref", "")), after, deleted)]


def _why_not(push: Push, tracked: str | None) -> str:
    """Why a moved ref does not trigger a repository tracking `tracked` ("" when it does)."""
    ref, _, deleted = push
    if not ref.startswith("refs/heads/"):
        return f"{ref or 'no ref'} is not a branch"
    if deleted:
        return f"{ref} was deleted"
    if tracked and ref != f"refs/heads/{tracked}":
        return f"{ref} is not the tracked branch"
    return ""


def _default_branch(payload: Mapping[str, Any]) -> str | None:
    """The default branch a forge names in its payload (GitHub/Gitea `repository`, GitLab `project`)."""
    for key in ("repository", "project"):
        section = payload.get(key)
        if isinstance(section, dict) and isinstance(section.get("default_branch"), str):
            return str(section["default_branch"])
    return None


def judge(provider: str, secrets: list[bytes], headers: Mapping[str, str], body: bytes, branch: str | None) -> Verdict:
    """Decide what a delivery means for a repository that tracks `branch` (None: any default branch push)."""
    if provider not in PROVIDERS:
        return Verdict(status=404, result="unknown_provider", message=f"no webhook provider {provider!r}")
    if not secrets:
        return Verdict(status=404, result="not_configured", message=f"no {provider} webhook is configured")
    if not any(authentic(provider, secret, headers, body) for secret in secrets):
        return Verdict(status=401, result="bad_signature", message="signature or token does not match")
    event = _event(provider, headers)
    delivery = delivery_id(provider, headers)
    if event in ("ping", "diagnostics:ping") or (provider == "gitlab" and event == "System Hook"):
        return Verdict(status=200, result="ping", message="pong", delivery=delivery)
    payload = _payload(headers, body)
    if payload is None:
        return Verdict(status=400, result="bad_payload", message="body is not a JSON object", delivery=delivery)
    pushed = _pushed(provider, event, payload)
    if isinstance(pushed, str):
        return Verdict(status=202, result="ignored", message=pushed, delivery=delivery)
    tracked = branch or _default_branch(payload)
    reasons = []
    for push in pushed:
        reason = _why_not(push, tracked)
        if not reason:
            return Verdict(status=202, result="accepted", message=f"push to {push[0]}", trigger=True,
                           delivery=delivery, commit=push[1])  # fmt: skip
        reasons.append(reason)
    return Verdict(status=202, result="ignored", message="; ".join(reasons) or "no ref changed", delivery=delivery)
