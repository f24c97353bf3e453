"""The dashboard is guarded like the API: the token, as a bearer header or as the cookie its login form sets.

The threat: anyone who reaches the port (every user of a login node reaches 127.0.0.1) reads every model's
state, metrics and training logs; a page of another site logs a browser in or frames the dashboard; a crafted
path reads a file beside the static ones or outside the state directory; a guessed token floods the journal or
is written to it. Now /ui and /ui/api answer only a request with `Authorization: Bearer TOKEN` or the
`gitopsd_ui` cookie (an HMAC of the token, never the token); the login form refuses a cross-site POST; static
files come from a fixed list of names and reveal nothing; every answer forbids framing and inline script.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from gitopsd.ui import assets
from gitopsd.ui.session import COOKIE, cookie_ok, safe_next, same_origin, session_value
from tests.ports import free_port
from tests.uiserve import Reply, call, reconciled_demo, serving

TOKEN = secrets.token_hex(16)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def demo_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reconciled_demo(tmp_path_factory.mktemp("ui-auth"))


@pytest.fixture(scope="module")
def port(demo_state: Path) -> Iterator[int]:
    with serving(demo_state, token=TOKEN.encode()) as bound:
        yield bound


def _login(port: int, token: str, *, headers: dict[str, str] | None = None, next_path: str | None = None) -> Reply:
    fields = {"token": token, **({"next": next_path} if next_path is not None else {})}
    return call(port, "/ui/login", method="POST", body=urlencode(fields).encode(),
                headers={**FORM, "Host": f"127.0.0.1:{port}", **(headers or {})})  # fmt: skip


def _cookie(reply: Reply) -> str:
    """name=value of the reply's Set-Cookie."""
    return reply.headers["set-cookie"].split(";", 1)[0]


# -- the pure parts --------------------------------------------------------------------------------------------


def test_the_session_cookie_is_an_hmac_of_the_token_not_the_token() -> None:
    value = session_value(TOKEN.encode())
    assert re.fullmatch(r"[0-9a-f]{64}", value) and TOKEN not in value
    assert value != session_value(b"another-token-0123456789"), "a rotated token ends every session"
    assert cookie_ok(f"a=b; {COOKIE}={value}; c=d", TOKEN.encode())
    assert cookie_ok(f'{COOKIE}="{value}"', TOKEN.encode())
    assert cookie_ok(f"{COOKIE}=stale; {COOKIE}={value}", TOKEN.encode()), "a stale cookie beside a good one"
    assert not cookie_ok(f"{COOKIE}={TOKEN}", TOKEN.encode()), "the token itself is not a session"
    assert not cookie_ok(f"x{COOKIE}={value}", TOKEN.encode())
    assert not cookie_ok(f"{COOKIE}={value[:-1]}", TOKEN.encode())
    assert not cookie_ok("", TOKEN.encode())
    assert not cookie_ok(f"{COOKIE}=\u20ac; ;;==; {COOKIE}", TOKEN.encode())


@pytest.mark.parametrize(
    ("origin", "referer", "host", "ok"),
    [(None, None, "h:1", True), ("http://h:1", None, "h:1", True), ("http://H:1", None, "h:1", True),
     (None, "http://h:1/ui/login?next=/ui/", "h:1", True), ("https://h:1", "http://evil/", "h:1", True),
     ("http://evil.example", None, "h:1", False), ("http://h:2", None, "h:1", False), ("null", None, "h:1", False),
     (None, "http://evil.example/h:1", "h:1", False), ("http://h:1.evil", None, "h:1", False),
     ("http://evil", "http://h:1/", "h:1", False), ("http://h:1", None, None, False), ("", None, "h:1", False)],
)  # fmt: skip
def test_same_origin(origin: str | None, referer: str | None, host: str | None, ok: bool) -> None:
    assert same_origin(origin, referer, host) is ok


@pytest.mark.parametrize(
    ("target", "goes"),
    [("/ui/models/demo/blobs?runs=a,b", "/ui/models/demo/blobs?runs=a,b"), ("/ui/cluster", "/ui/cluster"),
     (None, "/ui/"), ("", "/ui/"), ("//evil.example/ui/", "/ui/"), ("https://evil.example/ui/", "/ui/"),
     ("/ui//evil.example", "/ui/"), ("/ui/../api/v1/trigger", "/ui/"), ("/ui/\r\nSet-Cookie: x=1", "/ui/"),
     ("/ui/\\evil", "/ui/"), ("/api/v1/status", "/ui/"), ("/ui/" + "a" * 600, "/ui/")],
)  # fmt: skip
def test_after_login_only_a_dashboard_path_of_this_host(target: str | None, goes: str) -> None:
    assert safe_next(target) == goes


# -- over HTTP -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ui/api/overview", "/ui/api/models/x/y", "/ui/api/cluster", "/ui/api/version",
                                  "/ui/api/runs/x/y/log", "/ui/api/nothing"])  # fmt: skip
def test_the_api_needs_the_token(port: int, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Cookie": f"{COOKIE}={TOKEN}"}, {"Cookie": f"{COOKIE}={session_value(b'x' * 32)}"}):  # fmt: skip
        reply = call(port, path, headers=headers)
        assert reply.status == 401, (path, headers)
        assert reply.headers["www-authenticate"] == 'Bearer realm="gitopsd"'
        assert reply.headers["content-type"] == "application/json"
        assert b"models" not in reply.body and b"blobs" not in reply.body


@pytest.mark.parametrize("path", ["/ui/", "/ui/cluster", "/ui/models/demo/blobs?runs=a", "/ui/versions/d/m/1"])
def test_a_page_without_the_token_goes_to_the_login_form_and_back(port: int, path: str) -> None:
    reply = call(port, path)
    assert reply.status == 303
    assert reply.headers["location"] == "/ui/login?next=" + quote(path, safe="")
    assert call(port, path, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200


def test_bearer_token_is_enough(port: int) -> None:
    reply = call(port, "/ui/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200 and b"blobs" in reply.body


def test_login_sets_a_cookie_that_is_not_the_token_and_opens_pages_and_api(port: int) -> None:
    form = call(port, "/ui/login?next=%2Fui%2Fcluster")
    assert form.status == 200 and b"<script" not in form.body.lower()
    assert b'name="next" value="/ui/cluster"' in form.body and b'type="password"' in form.body
    done = _login(port, TOKEN, next_path="/ui/cluster")
    assert (done.status, done.headers["location"]) == (303, "/ui/cluster")
    set_cookie = done.headers["set-cookie"]
    assert TOKEN not in set_cookie
    assert set_cookie == f"{COOKIE}={session_value(TOKEN.encode())}; Path=/ui; HttpOnly; SameSite=Strict"
    cookie = {"Cookie": _cookie(done)}
    assert call(port, "/ui/", headers=cookie).status == 200
    overview = call(port, "/ui/api/overview", headers=cookie)
    assert overview.status == 200 and b"blobs" in overview.body
    assert call(port, "/ui/login", headers=cookie).headers["location"] == "/ui/", "logged in: straight on"
    out = call(port, "/ui/logout", headers=cookie)
    assert out.status == 303 and "Max-Age=0" in out.headers["set-cookie"]


def test_the_cookie_is_secure_over_https() -> None:
    from gitopsd.ui.session import set_cookie

    assert set_cookie(b"t" * 16, secure=True).endswith("; Secure")


def test_a_wrong_token_is_refused_and_never_logged(demo_state: Path, caplog: pytest.LogCaptureFixture) -> None:
    guess = "guess-" + secrets.token_hex(12)
    with caplog.at_level(logging.INFO, logger="gitopsd"), serving(demo_state, token=TOKEN.encode()) as port:
        replies = [_login(port, guess) for _ in range(5)]
        api = call(port, "/ui/api/overview", headers={"Authorization": f"Bearer {guess}"})
    for reply in replies:
        assert reply.status == 401 and "set-cookie" not in reply.headers
        assert b"the token does not match" in reply.body
        assert guess.encode() not in reply.body, "the guess is not echoed"
    assert api.status == 401
    text = caplog.text
    assert guess not in text and TOKEN not in text
    lines = [r for r in caplog.records if "refused (401)" in r.getMessage()]
    assert 1 <= len(lines) <= 2, "throttled: one line per 10 s, whatever the number of guesses"
    assert "the token does not match" in lines[0].getMessage()


def test_a_login_posted_from_another_site_is_refused(port: int) -> None:
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Referer": "http://evil.example/page"}):  # fmt: skip
        reply = _login(port, TOKEN, headers=headers)
        assert reply.status == 403 and "set-cookie" not in reply.headers, headers
        assert b"another site" in reply.body
    same = _login(port, TOKEN, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status == 303 and same.headers["set-cookie"].startswith(COOKIE)


def test_after_login_no_redirect_leaves_the_dashboard(port: int) -> None:
    for target in ("//evil.example/", "https://evil.example/ui/", "/ui/\\\\evil.example"):
        reply = _login(port, TOKEN, next_path=target)
        assert (reply.status, reply.headers["location"]) == (303, "/ui/")


def test_an_oversized_or_empty_login_is_refused(port: int) -> None:
    crowded = call(port, "/ui/login?" + "&".join(f"k{i}=v" for i in range(30)))
    assert crowded.status == 200 and b'name="next" value="/ui/"' in crowded.body
    big = call(port, "/ui/login", method="POST", body=b"token=" + b"a" * 5000, headers=FORM)
    assert big.status == 413 and "set-cookie" not in big.headers
    empty = call(port, "/ui/login", method="POST", body=b"", headers=FORM)
    assert empty.status == 400 and b"type the token" in empty.body
    binary = call(port, "/ui/login", method="POST", body=b"token=%FF%FE", headers=FORM)
    assert binary.status in (400, 401) and "set-cookie" not in binary.headers


def test_static_files_are_served_without_the_token_and_reveal_nothing(port: int, demo_state: Path) -> None:
    assert assets.ALLOWED
    for name in assets.ALLOWED:
        reply = call(port, f"/ui/static/{name}")
        assert reply.status == 200, name
        for secret in (TOKEN.encode(), str(demo_state).encode(), b"blobs-", b"5deb9af"):
            assert secret not in reply.body, (name, secret)


@pytest.mark.parametrize(
    "path",
    ["/ui/static/../../pyproject.toml", "/ui/static/..%2F..%2Fpyproject.toml", "/ui/static/%2e%2e%2fapp.py",
     "/ui/static/..%5Capp.py", "/ui/static/%2e%2e/%2e%2e/etc/passwd", "/ui/api/runs/x/..%2F..%2Fstate.db/log",
     "/ui/api/runs/x/..%2F../metrics", "/ui/api/models/..%2F..%2F/x", "/ui/api/runs/x/%00/log",
     "/ui/static/index.html%00.js"],
)  # fmt: skip
def test_path_traversal_is_refused_before_any_file_is_looked_at(port: int, path: str) -> None:
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        reply = call(port, path, headers=headers)
        assert reply.status == 400, (path, reply.body)
        assert reply.headers["content-type"] == "application/json"
        assert b"[tool" not in reply.body and b"root:" not in reply.body


@pytest.mark.parametrize("name", ["app.py", "__init__.py", "session.py", "../app.py", ".hidden", "static"])
def test_only_listed_static_names_are_served(port: int, name: str) -> None:
    reply = call(port, f"/ui/static/{quote(name, safe='')}")
    assert reply.status in (400, 404) and reply.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "path", ["/ui/", "/ui/login", "/ui/api/overview", "/ui/static/index.html", "/ui/nothing", "/ui/static/.."]
)
def test_every_answer_forbids_framing_and_inline_script(port: int, path: str) -> None:
    headers = call(port, path).headers
    csp = headers["content-security-policy"]
    assert csp.startswith("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                          "frame-ancestors 'none'")  # fmt: skip
    assert "script-src" not in csp and "http" not in csp, "scripts only from this origin (default-src 'self')"
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"


def test_a_hostile_name_in_a_path_comes_back_as_json_only(port: int) -> None:
    reply = call(port, "/ui/api/models/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E/x",
                 headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert reply.status == 404 and reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == {"error": "no repository '<img src=x onerror=alert(1)>'"}
    assert reply.headers["x-content-type-options"] == "nosniff"


def test_without_a_token_the_guarded_listener_serves_no_dashboard(demo_state: Path) -> None:
    with serving(demo_state, token=None, guarded=True) as bound:
        page = call(bound, "/ui/")
        assert page.status == 401 and b"http.token" in page.body and b"<script" not in page.body.lower()
        assert call(bound, "/ui/api/overview").status == 401
        assert call(bound, "/ui/login").status == 401
        assert call(bound, "/ui/login", method="POST", body=b"token=x", headers=FORM).status == 401
        assert call(bound, "/ui/static/index.html").status == 200
    with serving(demo_state, token=None, guarded=False) as bound:
        assert call(bound, "/ui/api/overview").status == 200, "a loopback-only listener needs no token"
        assert call(bound, "/ui/login").status == 303


def test_many_cookies_or_a_huge_cookie_header_do_not_break_the_check(port: int) -> None:
    junk = "; ".join(f"c{i}={'x' * 50}" for i in range(200))
    assert call(port, "/ui/api/overview", headers={"Cookie": junk}).status == 401


# -- gitopsd ui ----------------------------------------------------------------------------------------------


def _ui(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gitopsd", "--state-dir", str(state), "ui", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "example.org:8089", "10.0.0.1:8089"])
def test_gitopsd_ui_refuses_an_address_other_hosts_reach_without_a_token_file(demo_state: Path, listen: str) -> None:
    done = _ui(demo_state, "--listen", listen)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "reachable from other hosts" in done.stderr and "--token-file" in done.stderr


def test_gitopsd_ui_refuses_a_weak_or_unreadable_token_file(demo_state: Path, tmp_path: Path) -> None:
    weak = tmp_path / "weak"
    weak.write_text("short\n")
    done = _ui(demo_state, "--listen", "0.0.0.0:0", "--token-file", str(weak))
    assert done.returncode == 1 and "the token has 5 characters" in done.stderr and "short" not in done.stderr
    missing = _ui(demo_state, "--token-file", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_gitopsd_ui_with_a_token_file_wants_it(demo_state: Path, tmp_path: Path) -> None:
    import signal
    import socket
    import time

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "gitopsd", "--state-dir", str(demo_state), "ui",
                                "--listen", f"127.0.0.1:{port}", "--token-file", str(token_file)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert call(port, "/ui/api/overview").status == 401
        assert call(port, "/ui/api/overview", headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
        assert call(port, "/ui/").status == 303
    finally:
        process.send_signal(signal.SIGTERM)
        out = process.communicate(timeout=20)[0]
    assert TOKEN not in out
