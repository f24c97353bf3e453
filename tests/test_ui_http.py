"""The dashboard's HTTP shell: routes, static files, page fallbacks, 404/400/405, gzip, HEAD, `gitopsd ui` and
the daemon's /ui, over real waitress and a state directory the real reconciler filled."""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import pytest

from gitopsd.ui import assets
from gitopsd.ui.app import CSP, _dumps, accepts_gzip
from gitopsd.ui.routing import LOG_BYTES_DEFAULT, POINTS_DEFAULT, Refused, Route, resolve, segments
from tests.ports import free_port
from tests.test_daemon import start_daemon
from tests.uiserve import call, reconciled_demo, serving

STATIC = files("gitopsd.ui").joinpath("static")


@pytest.fixture(scope="module")
def demo_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reconciled_demo(tmp_path_factory.mktemp("ui-demo"))


@pytest.fixture(scope="module")
def port(demo_state: Path) -> Iterator[int]:
    with serving(demo_state) as bound:
        yield bound


def _repo(demo_state: Path) -> str:
    from gitopsd.ui.sources import discover

    (name,) = discover(demo_state)
    return name


# -- routing, the pure part -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "route"),
    [
        ("/", "", Route("redirect", "/ui/")),
        ("/ui", "", Route("redirect", "/ui/")),
        ("/ui/", "", Route("page", "overview")),
        ("/ui/", "team=vision&backend=local&condition=Ready", Route("page", "overview")),
        ("/ui/cluster", "", Route("page", "cluster")),
        ("/ui/cluster/", "", Route("page", "cluster")),
        ("/ui/models/demo/blobs", "runs=a,b", Route("page", "model", ("demo", "blobs"))),
        ("/ui/models/de%20mo/bl%C3%B6bs", "", Route("page", "model", ("de mo", "blöbs"))),
        ("/ui/versions/demo/blobs/3", "", Route("page", "version", ("demo", "blobs", "3"))),
        ("/ui/static/app.js", "", Route("static", "app.js")),
        ("/ui/login", "", Route("login")),
        ("/ui/logout", "", Route("logout")),
        ("/ui/api/overview", "", Route("api", "overview")),
        ("/ui/api/cluster", "", Route("api", "cluster")),
        ("/ui/api/version", "", Route("api", "version")),
        ("/ui/api/models/demo/blobs", "", Route("api", "model", ("demo", "blobs"))),
        ("/ui/api/versions/demo/blobs/12", "", Route("api", "version_page", ("demo", "blobs"), {"n": 12})),
        ("/ui/api/runs/demo/r-1/metrics", "", Route("api", "metrics", ("demo", "r-1"),
                                                    {"points": POINTS_DEFAULT, "since": 0})),
        ("/ui/api/runs/demo/r-1/metrics", "points=5000&since=123&_=99", Route("api", "metrics", ("demo", "r-1"),
                                                                             {"points": 5000, "since": 123})),
        ("/ui/api/runs/demo/r-1/metrics", "points=1&points=9", Route("api", "metrics", ("demo", "r-1"),
                                                                    {"points": 1, "since": 0})),
        ("/ui/api/runs/demo/r-1/log", "", Route("api", "log", ("demo", "r-1"), {"bytes": LOG_BYTES_DEFAULT})),
        ("/ui/api/runs/demo/r-1/log", "bytes=262144", Route("api", "log", ("demo", "r-1"), {"bytes": 262144})),
    ],
)  # fmt: skip
def test_routes(path: str, query: str, route: Route) -> None:
    assert resolve("GET", path, query) == route


@pytest.mark.parametrize(
    ("path", "query", "status", "said"),
    [
        ("/api/v1/status", "", 404, "no route"),
        ("/uix/", "", 404, "no route"),
        ("/ui/nothing", "", 404, "no such page"),
        ("/ui/models/demo", "", 404, "no such page"),
        ("/ui/models/demo/blobs/extra", "", 404, "no such page"),
        ("/ui/models//blobs", "", 404, "no such page"),
        ("/ui/versions/demo/blobs/x", "", 400, "n: expected a whole number"),
        ("/ui/versions/demo/blobs/0", "", 400, "n: 0 is out of range"),
        ("/ui/static/", "", 404, "no such static file"),
        ("/ui/static/a/b.js", "", 404, "no such static file"),
        ("/ui/api/", "", 404, "no such API route"),
        ("/ui/api/models/demo", "", 404, "no such API route"),
        ("/ui/api/runs/demo/r-1/other", "", 404, "no such API route"),
        ("/ui/api/versions/demo/blobs/-1", "", 400, "n: expected a whole number"),
        ("/ui/api/versions/demo/blobs/1.0", "", 400, "n: expected a whole number"),
        ("/ui/api/runs/demo/r/metrics", "points=0", 400, "points: 0 is out of range"),
        ("/ui/api/runs/demo/r/metrics", "points=5001", 400, "points: 5001 is out of range"),
        ("/ui/api/runs/demo/r/metrics", "points=1e3", 400, "points: expected a whole number"),
        ("/ui/api/runs/demo/r/metrics", "points=+5", 400, "points: expected a whole number"),
        ("/ui/api/runs/demo/r/metrics", "points=1_000", 400, "points: expected a whole number"),
        ("/ui/api/runs/demo/r/metrics", "points=%205", 400, "points: expected a whole number"),
        ("/ui/api/runs/demo/r/metrics", "points=", 400, "points: expected a whole number"),
        ("/ui/api/runs/demo/r/metrics", "points=" + "9" * 40, 400, "points: expected a whole number"),
        ("/ui/api/runs/demo/r/metrics", "since=-1", 400, "since: expected a whole number"),
        ("/ui/api/runs/demo/r/metrics", "since=x", 400, "since: expected a whole number"),
        ("/ui/api/runs/demo/r/log", "bytes=0", 400, "bytes: 0 is out of range"),
        ("/ui/api/runs/demo/r/log", "bytes=262145", 400, "bytes: 262145 is out of range"),
        ("/ui/api/runs/demo/r/log", "bytes=%FF", 400, "query: not UTF-8"),
        ("/ui/api/overview", "&".join(f"k{i}=1" for i in range(60)), 400, "more than 50 parameters"),
    ],
)
def test_refused_routes_name_what_is_wrong(path: str, query: str, status: int, said: str) -> None:
    with pytest.raises(Refused) as caught:
        resolve("GET", path, query)
    assert (caught.value.status, said in caught.value.message) == (status, True), caught.value.message


@pytest.mark.parametrize(
    "path",
    ["/ui/static/..", "/ui/static/.", "/ui/static/..%2Fapp.py", "/ui/static/%2e%2e", "/ui/static/%2E%2e",
     "/ui/api/runs/x/..%2F..%2Fetc/log", "/ui/api/models/%2e%2e/x", "/ui/models/a%00b/c", "/ui/models/a%5Cb/c",
     "/ui/static/%C0%AE%C0%AE", "ui/", "/ui/static/..\\app.py"],
)  # fmt: skip
def test_segments_that_could_name_another_path_are_refused(path: str) -> None:
    with pytest.raises(Refused) as caught:
        resolve("GET", path, "")
    assert caught.value.status == 400 and caught.value.message.startswith("path:")


def test_a_segment_is_decoded_once() -> None:
    assert segments("/ui/static/%252e%252e") == ["ui", "static", "%2e%2e"], "not twice: %25 stays a percent sign"
    assert segments("/ui/a%2Bb/c+d") == ["ui", "a+b", "c+d"], "a + in a path is a plus"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("POST", "/ui/", "GET, HEAD"), ("PUT", "/ui/api/overview", "GET, HEAD"),
     ("DELETE", "/ui/login", "GET, HEAD, POST"), ("POST", "/ui/static/app.js", "GET, HEAD"),
     ("OPTIONS", "/ui/api/cluster", "GET, HEAD")],
)  # fmt: skip
def test_only_get_and_head_are_answered_and_post_only_at_login(method: str, path: str, allowed: str) -> None:
    with pytest.raises(Refused) as caught:
        resolve(method, path, "")
    assert (caught.value.status, caught.value.allow) == (405, allowed)
    assert resolve("HEAD", path, "").kind != "redirect"


@pytest.mark.parametrize(
    ("header", "ok"),
    [("gzip", True), ("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.8", True), ("GZIP", True),
     ("gzip;q=0", False), ("gzip;q=0.0, *;q=1", False), ("*", True), ("*;q=0", False), ("identity", False),
     ("", False), ("deflate", False), ("x-gzip", True), ("gzip;q=abc", False), ("gzip;q=nan", False)],
)  # fmt: skip
def test_accepts_gzip_reads_quality_values(header: str, ok: bool) -> None:
    assert accepts_gzip(header) is ok


def test_json_never_holds_nan_or_infinity() -> None:
    doc = {"metrics": {"loss": math.nan, "acc": 0.5, "up": math.inf}, "series": [[1, -math.inf], [2, 3.0]]}
    assert json.loads(_dumps(doc)) == {"metrics": {"loss": None, "acc": 0.5, "up": None},
                                       "series": [[1, None], [2, 3.0]]}  # fmt: skip
    assert json.loads(_dumps({"a": [1.5]})) == {"a": [1.5]}


# -- over HTTP ------------------------------------------------------------------------------------------------


def test_the_static_allow_list_is_the_package_directory_of_plain_names() -> None:
    on_disk = {p.name for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else set()
    assert "index.html" in assets.ALLOWED, "the page itself ships with the package"
    assert {n for n in on_disk if not n.startswith(".")} == assets.ALLOWED
    assert all("/" not in n and ".." not in n for n in assets.ALLOWED)


def test_every_static_file_is_served_with_its_type_and_an_hour_of_cache(port: int) -> None:
    expected = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in sorted(assets.ALLOWED):
        reply = call(port, f"/ui/static/{name}")
        assert reply.status == 200, name
        assert reply.body == STATIC.joinpath(name).read_bytes(), name
        assert reply.headers["cache-control"] == "public, max-age=3600"
        assert reply.headers["content-type"] == assets.content_type(name)
        suffix = name[name.rfind(".") :]
        if suffix in expected:
            assert reply.headers["content-type"].startswith(expected[suffix]), name
    missing = call(port, "/ui/static/nothing.js")
    assert (missing.status, json.loads(missing.body)) == (404, {"error": "no such static file"})
    assert call(port, "/ui/static/__init__.py").status == 404, "package files beside static/ are not on the list"


@pytest.mark.parametrize(
    "path", ["/ui/", "/ui/cluster", "/ui/models/demo/blobs?runs=a,b", "/ui/versions/demo/blobs/1", "/ui/?team=x"]
)
def test_every_page_answers_index_html(port: int, path: str) -> None:
    reply = call(port, path)
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert reply.body == STATIC.joinpath("index.html").read_bytes()
    assert reply.headers["cache-control"] == "no-cache", "a new version of the page is seen at once"


@pytest.mark.parametrize("path", ["/", "/ui"])
def test_the_root_leads_to_the_overview(port: int, path: str) -> None:
    reply = call(port, path)
    assert (reply.status, reply.headers["location"]) == (303, "/ui/")


def test_the_api_answers_json_never_cached(port: int, demo_state: Path) -> None:
    reply = call(port, "/ui/api/overview")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    doc = json.loads(reply.body)
    assert [(m["repository"], m["name"]) for m in doc["models"]] == [(_repo(demo_state), "blobs")]
    assert json.loads(call(port, "/ui/api/version").body)["started_at"] == 1.0


@pytest.mark.parametrize(
    ("path", "said"),
    [("/ui/api/models/nope/blobs", "no repository 'nope'"),
     ("/ui/api/models/{repo}/nope", "no model 'nope' in repository '{repo}'"),
     ("/ui/api/runs/{repo}/nope/metrics", "no run 'nope' in repository '{repo}'"),
     ("/ui/api/runs/{repo}/nope/log", "no run 'nope' in repository '{repo}'"),
     ("/ui/api/versions/{repo}/blobs/99", "no version 99 of model 'blobs' in repository '{repo}'"),
     ("/ui/api/nothing", "no such API route"),
     ("/ui/api/runs/{repo}/x/metrics?points=0", "points: 0 is out of range, expected 1..5000")],
)  # fmt: skip
def test_unknown_things_are_404_and_bad_queries_400_in_json(port: int, demo_state: Path, path: str, said: str) -> None:
    repo = _repo(demo_state)
    reply = call(port, path.format(repo=repo))
    assert reply.status == (400 if "points" in path else 404)
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == {"error": said.format(repo=repo)}


def test_a_405_names_the_methods_allowed(port: int) -> None:
    reply = call(port, "/ui/api/overview", method="POST", body=b"")
    assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD"
    assert "POST is not answered here" in json.loads(reply.body)["error"]


@pytest.mark.parametrize(
    "path", ["/ui/", "/ui/api/overview", "/ui/api/nothing", "/ui/static/index.html", "/ui", "/ui/static/..",
             "/ui/login", "/ui/api/runs/x/y/log?bytes=0"],
)  # fmt: skip
def test_every_answer_carries_the_security_headers(port: int, path: str) -> None:
    headers = call(port, path).headers
    assert headers["content-security-policy"] == CSP
    assert "script-src" not in CSP and "'unsafe-inline'" not in CSP.split("style-src")[0], "no inline script"
    assert "frame-ancestors 'none'" in CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


def test_large_answers_are_gzipped_when_the_client_accepts_it(port: int, demo_state: Path) -> None:
    big = max(assets.ALLOWED, key=lambda n: len(STATIC.joinpath(n).read_bytes()))
    plain = call(port, f"/ui/static/{big}")
    packed = call(port, f"/ui/static/{big}", headers={"Accept-Encoding": "gzip, br"})
    assert len(plain.body) > 1024 and "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(packed.body) == plain.body and len(packed.body) < len(plain.body)
    assert int(packed.headers["content-length"]) == len(packed.body)
    refused = call(port, f"/ui/static/{big}", headers={"Accept-Encoding": "gzip;q=0"})
    assert refused.body == plain.body and "content-encoding" not in refused.headers
    model = call(port, f"/ui/api/models/{_repo(demo_state)}/blobs", headers={"Accept-Encoding": "gzip"})
    assert json.loads(model.text())["name"] == "blobs"
    if len(model.text()) > 1024:
        assert model.headers["content-encoding"] == "gzip"
    small = call(port, "/ui/api/version", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers, "under 1 KiB compression does not pay"


@pytest.mark.parametrize("path", ["/ui/", "/ui/api/version", "/ui/static/index.html", "/ui/api/nothing", "largest"])
def test_head_has_the_headers_of_get_and_no_body(port: int, path: str) -> None:
    if path == "largest":
        path = "/ui/static/" + max(assets.ALLOWED, key=lambda n: len(STATIC.joinpath(n).read_bytes()))
    for encoding in ("", "gzip"):
        headers = {"Accept-Encoding": encoding} if encoding else {}
        got, head = call(port, path, headers=headers), call(port, path, method="HEAD", headers=headers)
        assert head.status == got.status and head.body == b""
        assert head.headers["content-length"] == got.headers["content-length"]
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers.get("content-encoding") == got.headers.get("content-encoding")


# -- gitopsd ui ----------------------------------------------------------------------------------------------


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and mtime, but SQLite's shared-memory index (`-shm`), which every reader of a WAL
    database maps and updates, read-only connections too, and an empty write-ahead log (`-wal`), which SQLite
    creates for a reader when the last writer removed it (a write would give it a size)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and not p.name.endswith("-shm")
            and not (p.name.endswith("-wal") and p.stat().st_size == 0)}  # fmt: skip


def _start_ui(state: Path, *args: str, own_option: bool = False) -> tuple[subprocess.Popen[str], int]:
    """`gitopsd --state-dir DIR ui`, or with `own_option` the command's own `gitopsd ui --state-dir DIR` (which
    wins over GITOPSD_STATE_DIR)."""
    port = free_port()
    where = ["ui", "--state-dir", str(state)] if own_option else ["--state-dir", str(state), "ui"]
    env = {**os.environ, "GITOPSD_STATE_DIR": "/nonexistent"} if own_option else None
    process = subprocess.Popen([sys.executable, "-m", "gitopsd", *where, "--listen", f"127.0.0.1:{port}", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.1)
    process.kill()
    raise AssertionError("gitopsd ui did not listen in 30 s")


def test_gitopsd_ui_serves_a_state_directory_read_only_until_sigterm(demo_state: Path) -> None:
    before = _listing(demo_state)
    process, port = _start_ui(demo_state)
    try:
        page = call(port, "/ui/")
        assert page.status == 200 and page.body == STATIC.joinpath("index.html").read_bytes()
        doc = json.loads(call(port, "/ui/api/overview").body)
        assert [m["name"] for m in doc["models"]] == ["blobs"]
    finally:
        process.send_signal(signal.SIGTERM)
        out = process.communicate(timeout=20)[0]
    assert process.returncode == 0, out
    assert f"open http://127.0.0.1:{port}/ui/" in out
    assert f"ssh -L {port}:127.0.0.1:{port} <login-node>" in out
    assert "every user of this host can open it" in out, "a shared login node is named as the risk it is"
    assert "Traceback" not in out
    assert _listing(demo_state) == before, "the dashboard writes nothing in the state directory"


def test_gitopsd_ui_finds_the_repositories_of_a_daemon_state_directory(demo_state: Path, tmp_path: Path) -> None:
    parent = tmp_path / "daemon-state"
    parent.mkdir()
    (parent / "vision").symlink_to(demo_state, target_is_directory=True)
    process, port = _start_ui(parent, own_option=True)
    try:
        doc = json.loads(call(port, "/ui/api/overview").body)
        assert {m["repository"] for m in doc["models"]} == {"vision"}
    finally:
        process.send_signal(signal.SIGINT)
        out = process.communicate(timeout=20)[0]
    assert process.returncode == 0, out
    assert "1 repository(ies) (vision)" in out


def _ui_fails(state: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gitopsd", "--state-dir", str(state), "ui", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def test_gitopsd_ui_without_any_state_says_what_to_do(tmp_path: Path) -> None:
    said = _ui_fails(tmp_path, "--listen", f"127.0.0.1:{free_port()}")
    assert f"no state.db in {tmp_path}" in said and "gitopsd reconcile" in said


def test_gitopsd_ui_on_a_port_in_use_says_so(demo_state: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        said = _ui_fails(demo_state, "--listen", f"127.0.0.1:{busy}")
    assert f"cannot listen on 127.0.0.1:{busy}" in said and "--listen 127.0.0.1:PORT" in said


def test_gitopsd_ui_refuses_a_malformed_listen_address(demo_state: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "gitopsd", "--state-dir", str(demo_state), "ui", "--listen",
                           "8089"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "expected HOST:PORT" in done.stderr


# -- the daemon ------------------------------------------------------------------------------------------------


def test_the_daemon_serves_the_dashboard_with_its_token_and_on_local_listen(tmp_path: Path) -> None:
    local = free_port()
    with start_daemon(tmp_path, http=f'local_listen = "127.0.0.1:{local}"') as daemon:
        status, text = daemon.get("/ui/api/overview")
        assert status == 200 and [m["name"] for m in json.loads(text)["models"]] == ["blobs"]
        assert [m["repository"] for m in json.loads(text)["models"]] == ["demo"], "named as the daemon names it"
        assert daemon.get("/ui/api/overview", token="")[0] == 401
        page = daemon.get("/ui/models/demo/blobs")
        assert page == (200, STATIC.joinpath("index.html").read_text())
        assert call(daemon_port(daemon.url), "/ui/").status == 303, "a browser without the cookie is sent to log in"
        open_status, open_text = daemon.get("/ui/api/overview", token="", url=f"http://127.0.0.1:{local}")
        assert open_status == 200 and json.loads(open_text)["models"][0]["name"] == "blobs"
        assert daemon.get("/api/v1/status")[0] == 200, "the API is as it was"


def test_a_daemon_without_a_token_serves_no_dashboard_like_no_api(tmp_path: Path) -> None:
    with start_daemon(tmp_path, token="") as daemon:
        page = call(daemon_port(daemon.url), "/ui/")
        assert page.status == 401 and b"http.token" in page.body and b"local_listen" in page.body
        status, text = daemon.get("/ui/api/overview")
        assert status == 401 and "no [http] token" in json.loads(text)["error"]
        assert daemon.get("/api/v1/status")[0] == 401
        assert call(daemon_port(daemon.url), "/ui/static/index.html").status == 200


@pytest.mark.parametrize("setting", ["listen", "local_listen"])
def test_a_daemon_whose_address_is_taken_stops_with_one_line_naming_the_setting(tmp_path: Path, setting: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        listen = busy if setting == "listen" else free_port()
        local = f'local_listen = "127.0.0.1:{busy}"\n' if setting == "local_listen" else ""
        config = tmp_path / "gitopsd.toml"
        config.write_text(f'state_dir = "{tmp_path / "state"}"\n[http]\nlisten = "127.0.0.1:{listen}"\n{local}'
                          f'[[repositories]]\nname = "demo"\nurl = "{tmp_path / "repo.git"}"\n')  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "gitopsd", "run", "--config", str(config)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr and "unexpected" not in done.stderr
    assert f"error: cannot listen on 127.0.0.1:{busy} (http.{setting} in {config}): " in done.stderr, done.stderr
    assert "choose another port" in done.stderr


def daemon_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_the_daemon_context_names_each_repository_its_link_backends_and_lease_book(tmp_path: Path) -> None:
    from gitopsd.daemon.config import load_config
    from gitopsd.daemon.service import ui_context

    config = tmp_path / "gitopsd.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[backends.local]\n[backends.gpu]\ntype = "nvidia"\n'
        f'settings = {{ leases = "{tmp_path / "leases.db"}" }}\n'
        '[[repositories]]\nname = "a"\nurl = "https://git.example.org/a.git"\n'
        'commit_url = "https://git.example.org/a/commit/{commit}"\n'
        '[[repositories]]\nname = "b"\nurl = "https://git.example.org/b.git"\n'
    )
    ctx = ui_context(load_config(config), started_at=5.0)
    assert ctx.sources == {"a": tmp_path / "state" / "a", "b": tmp_path / "state" / "b"}
    assert ctx.commit_urls == {"a": "https://git.example.org/a/commit/{commit}"}
    assert sorted(ctx.backends, key=str) == [{"name": "gpu", "type": "nvidia"}, {"name": "local", "type": "local"}]
    assert (ctx.lease_book, ctx.started_at) == (tmp_path / "leases.db", 5.0)
    plain = tmp_path / "plain.toml"
    plain.write_text(f'state_dir = "{tmp_path / "state"}"\n[[repositories]]\nname = "a"\nurl = "x"\n')
    assert ui_context(load_config(plain), started_at=0).lease_book == tmp_path / "state" / "nvidia" / "leases.db"


def test_nothing_under_static_is_hidden_or_nested() -> None:
    if STATIC.is_dir():
        assert not [p.name for p in STATIC.iterdir() if p.is_dir()], "static/ is flat: the allow-list has no paths"
    assert os.sep not in "".join(assets.ALLOWED)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("index.html", "text/html; charset=utf-8"), ("app.js", "text/javascript; charset=utf-8"),
     ("uPlot.iife.min.js", "text/javascript; charset=utf-8"), ("uPlot.min.css", "text/css; charset=utf-8"),
     ("uPlot.LICENSE", "text/plain; charset=utf-8"), ("LICENSE", "text/plain; charset=utf-8"),
     ("logo.svg", "image/svg+xml"), ("favicon.ico", "image/x-icon"), ("data.bin", "application/octet-stream")],
)  # fmt: skip
def test_content_types_by_extension(name: str, kind: str) -> None:
    assert assets.content_type(name) == kind
