"""Forge webhooks: real payload shapes and real signatures, judged purely and delivered over HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest

from gitopsd.daemon.webhooks import judge
from tests.test_daemon import SECRETS, RunningDaemon, daemon  # noqa: F401

SHA = "4f2a9c0e1b7d3a5c6e8f0a1b2c3d4e5f6a7b8c9d"


def _sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery(provider: str, kind: str = "push", *, ref: str = "refs/heads/main", form: bool = False,
             secret: str | None = None, delivery_id: str | None = None) -> tuple[bytes, dict[str, str]]:  # fmt: skip
    """A delivery as the forge sends it: (body, headers)."""
    secret = SECRETS[provider] if secret is None else secret
    ident = delivery_id or str(uuid.uuid4())
    payload: dict[str, Any]
    if provider == "bitbucket":
        payload = {"eventKey": "repo:refs_changed", "actor": {"name": "alice"},
                   "repository": {"slug": "demo", "project": {"key": "ML"}},
                   "changes": [{"ref": {"id": ref, "displayId": ref.rsplit("/", 1)[-1],
                                        "type": "TAG" if "/tags/" in ref else "BRANCH"},
                                "refId": ref, "fromHash": "0" * 40, "toHash": SHA,
                                "type": "DELETE" if kind == "delete" else "UPDATE"}]}  # fmt: skip
        event = {"push": "repo:refs_changed", "delete": "repo:refs_changed", "ping": "diagnostics:ping"}[kind]
    elif provider == "gitlab":
        payload = {"object_kind": "tag_push" if "/tags/" in ref else "push", "ref": ref, "before": "0" * 40,
                   "after": "0" * 40 if kind == "delete" else SHA, "checkout_sha": None if kind == "delete" else SHA,
                   "project": {"path_with_namespace": "ml/demo", "default_branch": "main"}}  # fmt: skip
        event = "Tag Push Hook" if "/tags/" in ref else "Push Hook"
    else:
        payload = {
            "ref": ref,
            "before": "0" * 40,
            "after": "0" * 40 if kind == "delete" else SHA,
            "deleted": kind == "delete",
            "created": False,
            "repository": {"full_name": "ml/demo", "default_branch": "main"},
            "pusher": {"name": "alice"},
        }
        if kind == "ping":
            payload = {"zen": "Design for failure.", "hook_id": 42}
        event = "ping" if kind == "ping" else "push"  # fmt: skip
    raw = json.dumps(payload).encode()
    body = urlencode({"payload": raw.decode()}).encode() if form else raw
    headers = {"Content-Type": "application/x-www-form-urlencoded" if form else "application/json"}
    if provider == "github":
        headers |= {"X-GitHub-Event": event, "X-GitHub-Delivery": ident,
                    "X-Hub-Signature-256": f"sha256={_sign(secret, body)}"}  # fmt: skip
    elif provider == "gitlab":
        headers |= {"X-Gitlab-Event": event, "X-Gitlab-Event-UUID": ident, "X-Gitlab-Token": secret}
    elif provider == "gitea":
        headers |= {"X-Gitea-Event": event, "X-Gitea-Delivery": ident, "X-Gitea-Signature": _sign(secret, body)}
    elif provider == "bitbucket":
        headers |= {"X-Event-Key": event, "X-Request-Id": ident, "X-Hub-Signature": f"sha256={_sign(secret, body)}"}
    else:
        headers |= {"X-Gitopsd-Event": event, "X-Gitopsd-Delivery": ident,
                    "X-Gitopsd-Signature": f"sha256={_sign(secret, body)}"}  # fmt: skip
    return body, headers


PROVIDERS = ["github", "gitlab", "gitea", "bitbucket", "generic"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_signed_push_to_the_tracked_branch_triggers(provider: str) -> None:
    body, headers = delivery(provider)
    verdict = judge(provider, [SECRETS[provider].encode()], headers, body, "main")
    assert (verdict.status, verdict.result, verdict.trigger) == (202, "accepted", True)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_wrong_signature_is_refused(provider: str) -> None:
    body, headers = delivery(provider, secret="not-the-secret")
    assert judge(provider, [SECRETS[provider].encode()], headers, body, "main").status == 401
    body, headers = delivery(provider)
    tampered = body.replace(b"main", b"mainx")
    if provider != "gitlab":  # GitLab sends a token, not a signature of the body
        assert judge(provider, [SECRETS[provider].encode()], headers, tampered, "main").status == 401


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("ref", "kind"), [("refs/tags/v1.0", "push"), ("refs/heads/feature", "push"),
                                           ("refs/heads/main", "delete")])  # fmt: skip
def test_tags_other_branches_and_deletions_do_nothing(provider: str, ref: str, kind: str) -> None:
    body, headers = delivery(provider, kind, ref=ref)
    verdict = judge(provider, [SECRETS[provider].encode()], headers, body, "main")
    assert verdict.result == "ignored" and not verdict.trigger, verdict


@pytest.mark.parametrize("provider", ["github", "bitbucket"])
def test_pings_are_answered(provider: str) -> None:
    body, headers = delivery(provider, "ping")
    verdict = judge(provider, [SECRETS[provider].encode()], headers, body, "main")
    assert (verdict.status, verdict.result, verdict.trigger) == (200, "ping", False)


def test_form_encoded_github_deliveries_are_understood() -> None:
    body, headers = delivery("github", form=True)
    assert judge("github", [SECRETS["github"].encode()], headers, body, "main").trigger


def test_without_a_tracked_branch_the_payloads_default_branch_is_used() -> None:
    body, headers = delivery("github", ref="refs/heads/feature")
    assert not judge("github", [SECRETS["github"].encode()], headers, body, None).trigger
    body, headers = delivery("github")
    assert judge("github", [SECRETS["github"].encode()], headers, body, None).trigger


def _wait_for_pass(daemon: RunningDaemon, trigger: str, before: float) -> None:  # noqa: F811
    deadline = time.monotonic() + 5
    while daemon.passes(trigger) <= before:
        assert time.monotonic() < deadline, f"no {trigger} pass"
        time.sleep(0.05)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_deliveries_over_http(daemon: RunningDaemon, provider: str) -> None:  # noqa: F811
    trigger = "webhook"
    before = daemon.passes(trigger)
    body, headers = delivery(provider, delivery_id="delivery-1")
    assert daemon.post(f"/hooks/{provider}", body, headers) == (
        202,
        {"result": "accepted", "message": "push to refs/heads/main"},
    )
    _wait_for_pass(daemon, trigger, before)
    assert daemon.post(f"/hooks/{provider}", body, headers)[1]["result"] == "duplicate"

    bad_body, bad_headers = delivery(provider, secret="wrong")
    assert daemon.post(f"/hooks/{provider}", bad_body, bad_headers)[0] == 401
    big = json.dumps({"ref": "refs/heads/main", "padding": "x" * 5000}).encode()
    assert daemon.post(f"/hooks/{provider}", big, headers)[0] == 413
    for ref in ("refs/tags/v1", "refs/heads/other"):
        ignored_body, ignored_headers = delivery(provider, ref=ref)
        assert daemon.post(f"/hooks/{provider}", ignored_body, ignored_headers)[0] == 202
    if provider in ("github", "bitbucket"):
        ping_body, ping_headers = delivery(provider, "ping")
        assert daemon.post(f"/hooks/{provider}", ping_body, ping_headers)[0] == 200
    time.sleep(0.5)
    after = daemon.passes(trigger)
    assert after == before + 1, "only the first, signed push to main caused a pass"
    _, metrics = daemon.get("/metrics")
    assert f'gitopsd_webhook_deliveries_total{{provider="{provider}",result="bad_signature"}} 1.0' in metrics
