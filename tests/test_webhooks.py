"""Forge webhooks: real payload shapes and real signatures, judged purely and delivered over HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from gitopsd.daemon.webhooks import judge
from tests.test_daemon import SECRETS, RunningDaemon, daemon, start_daemon  # noqa: F401

SHA = "4f2a9c0e1b7d3a5c6e8f0a1b2c3d4e5f6a7b8c9d"


def _sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery(provider: str, kind: str = "push", *, ref: str = "refs/heads/main", form: bool = False,
             secret: str | None = None, delivery_id: str | None = None,
             changes: list[dict[str, Any]] | None = None) -> tuple[bytes, dict[str, str]]:  # fmt: skip
    """A delivery as the forge sends it: (body, headers). A form-encoded one is signed as each forge signs it:
    Gitea and Forgejo sign the JSON payload, the others the body. `changes`: Bitbucket Server's list."""
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
        if changes is not None:
            payload["changes"] = changes
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
        headers |= {"X-Gitea-Event": event, "X-Gitea-Delivery": ident, "X-Gitea-Signature": _sign(secret, raw)}
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


def _change(ref: str, kind: str) -> dict[str, Any]:
    return {"ref": {"id": ref, "displayId": ref.rsplit("/", 1)[-1], "type": "BRANCH"}, "refId": ref,
            "fromHash": SHA, "toHash": "0" * 40 if kind == "DELETE" else SHA, "type": kind}  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "triggers"),
    [
        ([_change("refs/heads/old", "DELETE"), _change("refs/heads/main", "UPDATE")], True),
        ([_change("refs/heads/feature", "UPDATE"), _change("refs/heads/main", "ADD")], True),
        ([_change("refs/heads/main", "DELETE"), _change("refs/heads/feature", "UPDATE")], False),
        ([], False),
    ],
)
def test_a_bitbucket_delivery_triggers_when_any_of_its_changes_updates_the_tracked_branch(
    changes: list[dict[str, Any]], triggers: bool
) -> None:
    body, headers = delivery("bitbucket", changes=changes)
    verdict = judge("bitbucket", [SECRETS["bitbucket"].encode()], headers, body, "main")
    assert verdict.trigger is triggers, verdict
    assert verdict.status == 202


@pytest.mark.parametrize("header", ["X-Gitea-Signature", "X-Forgejo-Signature"])
def test_gitea_and_forgejo_form_deliveries_are_verified_over_their_json_payload(header: str) -> None:
    secret = SECRETS["gitea"]
    body, headers = delivery("gitea", form=True)
    if header != "X-Gitea-Signature":
        headers[header] = headers.pop("X-Gitea-Signature")
    verdict = judge("gitea", [secret.encode()], headers, body, "main")
    assert (verdict.status, verdict.result, verdict.trigger) == (202, "accepted", True), verdict

    raw = json.loads(dict(urllib.parse.parse_qsl(body.decode()))["payload"])
    forged = urlencode({"payload": json.dumps(raw | {"ref": "refs/heads/main", "evil": 1})}).encode()
    signed_body = {**headers, header: _sign(secret, body)}  # a signature of the form body is not Gitea's
    unsigned = {k: v for k, v in headers.items() if k != header}
    twice = body + b"&" + forged  # two payloads: which one was signed?
    for bad_body, bad_headers in ((forged, headers), (body, signed_body), (body, unsigned), (twice, headers)):
        assert judge("gitea", [secret.encode()], bad_headers, bad_body, "main").status == 401


def test_an_empty_secret_verifies_nothing() -> None:
    for provider in PROVIDERS:
        body, headers = delivery(provider, secret="")
        assert judge(provider, [b""], headers, body, "main").status == 401, provider


def test_a_form_delivery_over_http_from_gitea_triggers(daemon: RunningDaemon) -> None:  # noqa: F811
    before = daemon.passes("webhook")
    body, headers = delivery("gitea", form=True)
    assert daemon.post("/hooks/gitea", body, headers)[0] == 202
    _wait_for_pass(daemon, "webhook", before)
    forged = body.replace(b"main", b"mainx")
    assert daemon.post("/hooks/gitea", forged, headers)[0] == 401


def test_one_delivery_reaches_every_repository_its_secret_verifies(tmp_path: Path) -> None:
    second = ('\n[[repositories]]\nname = "demo-dev"\nurl = "{bare}"\nbranch = "dev"\npoll_interval = "1h"\n'
              '[repositories.webhooks]\ngithub = "env:HOOK_GITHUB"\nbitbucket = "env:HOOK_BITBUCKET"\n')  # fmt: skip
    with start_daemon(tmp_path, extra=second, branches=("dev",)) as running:
        for provider, ref in (("github", "refs/heads/dev"), ("bitbucket", "refs/heads/dev"),
                              ("github", "refs/heads/main")):  # fmt: skip
            repository = "demo-dev" if ref.endswith("dev") else "demo"
            other = "demo" if repository == "demo-dev" else "demo-dev"
            before, before_other = running.passes("webhook", repository), running.passes("webhook", other)
            body, headers = delivery(provider, ref=ref)
            assert running.post(f"/hooks/{provider}", body, headers) == (
                202,
                {"result": "accepted", "message": f"push to {ref}"},
            )
            deadline = time.monotonic() + 5
            while running.passes("webhook", repository) <= before:
                assert time.monotonic() < deadline, f"{provider} push to {ref} did not reach {repository}"
                time.sleep(0.05)
            assert running.passes("webhook", other) == before_other, f"{ref} is not {other}'s branch"


def _raw_request(url: str, head: bytes, chunks: list[bytes]) -> bytes:
    """Send a request's head and then as many body chunks as the server reads; its answer (or b"")."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(head)
        try:
            for chunk in chunks:
                conn.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed the connection: what was left is never read
        answer = b""
        try:
            while data := conn.recv(65536):
                answer += data
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


def test_an_oversized_body_is_refused_before_it_is_read(daemon: RunningDaemon) -> None:  # noqa: F811
    # A declared 300 MB body: 413 at once, without the server waiting for (or spooling) a byte of it.
    head = (b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 300000000\r\n\r\n")  # fmt: skip
    assert _raw_request(daemon.url, head, []).startswith(b"HTTP/1.1 413 ")
    # A chunked body that never ends: cut off once it passes max_body_bytes (4096), long before its end.
    head = (b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    chunks = [b"400\r\n" + b"x" * 1024 + b"\r\n"] * 8
    assert _raw_request(daemon.url, head, chunks).startswith(b"HTTP/1.1 413 ")
    assert daemon.get("/healthz") == (200, "ok\n")
