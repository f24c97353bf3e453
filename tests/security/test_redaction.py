"""Secrets are never printed: a credential in a repository URL, or a line of a file outside the repository.

The operator may write `https://user:token@host/repo.git` (libgit2 uses it as it is); gitopsd must fetch and push
with it and never show it: not in logs, `gitopsd status` (text or JSON), the HTTP API, /metrics, lineage, audit
tag messages or what a training can read. And a setting that names a file outside the repository (Slurm's
`slurm_conf`) must not bring that file's lines into an error message.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gitopsd.daemon.logs import JsonFormatter, RedactUrls
from gitopsd.source.redact import REDACTED, is_secret_name, redact_text, redact_url
from tests.conftest import GitRepo, gitopsd
from tests.githttp import git_http_server
from tests.security.conftest import Canary
from tests.test_daemon import RunningDaemon, start_daemon

# -- the pure helper ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://alice:s3cret@git.example.org/ml.git", "https://***@git.example.org/ml.git"),
        ("https://ghp_tokenonly@github.com/org/ml.git", "https://***@github.com/org/ml.git"),
        ("http://oauth2:glpat-x@127.0.0.1:8080/ml.git", "http://***@127.0.0.1:8080/ml.git"),
        ("https://u:p%40ss@host/x", "https://***@host/x"),
        ("https://u:p@ss@host/x", "https://***@host/x"),  # an unencoded @ in the password: the last one ends it
        ("HTTPS://U:P@HOST/X", "HTTPS://***@HOST/X"),
        ("https://u:p@[::1]:8443/x", "https://***@[::1]:8443/x"),
        ("https://host/x?private_token=abc&ref=main", "https://host/x?private_token=***&ref=main"),
        ("https://host/x?access_token=abc", "https://host/x?access_token=***"),
        ("https://host/x?token=a;password=b", "https://host/x?token=***;password=***"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Signature=ff00&X-Amz-Expires=60",
         "https://b.s3.amazonaws.com/k?X-Amz-Signature=***&X-Amz-Expires=60"),
        ("https://b.s3/k?X-Amz-Credential=AKIA%2F1&X-Amz-Security-Token=t",
         "https://b.s3/k?X-Amz-Credential=***&X-Amz-Security-Token=***"),
        ("https://acct.blob.core.windows.net/c/b?sv=2022&sig=abc%3D", "https://acct.blob.core.windows.net/c/b?sv=2022&sig=***"),
        ("https://api.example.org/v1?key=AIza&api_key=1&client_secret=2",
         "https://api.example.org/v1?key=***&api_key=***&client_secret=***"),
        ("https://host/cb#access_token=zz&state=1", "https://host/cb#access_token=***&state=1"),
        ("https://u:p@host/x?token=t#frag", "https://***@host/x?token=***#frag"),
        ("ssh://git@host:2222/org/ml.git", "ssh://git@host:2222/org/ml.git"),  # a login name is not a secret
        ("ssh://git:hunter2@host/org/ml.git", "ssh://***@host/org/ml.git"),
        ("git+ssh://deploy@host/ml.git", "git+ssh://deploy@host/ml.git"),
        ("git@github.com:org/ml.git", "git@github.com:org/ml.git"),
        ("/srv/git/ml.git", "/srv/git/ml.git"),
        ("file:///srv/git/ml.git", "file:///srv/git/ml.git"),
        ("https://git.example.org/ml.git", "https://git.example.org/ml.git"),
        ("https://host/x?ref=main&depth=1", "https://host/x?ref=main&depth=1"),
        ("https://host/x?token=", "https://host/x?token="),  # nothing to hide
        ("https://host/x?token", "https://host/x?token"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("", ""),
    ],
)  # fmt: skip
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown, "redacting twice changes nothing"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("cannot fetch http://a:b@h/x: http://a:b@h/x needs credentials",
         "cannot fetch http://***@h/x: http://***@h/x needs credentials"),
        ("failed to fetch 'https://u:p@h/r.git' (401)", "failed to fetch 'https://***@h/r.git' (401)"),
        ('remote "https://h/r?private_token=t" said no', 'remote "https://h/r?private_token=***" said no'),
        ("no URL here: just a:b@c", "no URL here: just a:b@c"),
        ("line one https://u:p@h/x\nline two https://u:p@h/y", "line one https://***@h/x\nline two https://***@h/y"),
    ],
)  # fmt: skip
def test_redact_text(text: str, shown: str) -> None:
    assert redact_text(text) == shown


@pytest.mark.parametrize(
    "name", ["token", "access_token", "Private-Token", "password", "passwd", "X-Amz-Signature", "sig", "key",
             "apiKey", "client_secret", "X-Goog-Credential", "jwt", "session_id", "auth"],
)  # fmt: skip
def test_credential_parameter_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["ref", "branch", "depth", "service", "X-Amz-Expires", "page", "format"])
def test_ordinary_parameter_names(name: str) -> None:
    assert not is_secret_name(name)


def test_the_log_filter_redacts_messages_arguments_and_tracebacks() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactUrls())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gitopsd.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("fetching %s", "https://alice:hunter2-canary@host/x.git")
        logger.warning("direct https://h/x?private_token=hunter2-canary")
        try:
            raise RuntimeError("libgit2 said: https://bob:hunter2-canary@host/y.git refused")
        except RuntimeError:
            logger.exception("pass failed")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "hunter2-canary" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["message"] == f"fetching https://{REDACTED}@host/x.git"
    assert "private_token=***" in lines[1]["message"]
    assert f"https://{REDACTED}@host/y.git refused" in lines[2]["error"]


def test_a_text_log_line_escapes_control_characters_and_indents_what_could_pass_for_another_line() -> None:
    """A log message may quote a name a training or a pusher chose: on a terminal, an escape sequence would act
    and a newline could forge a line of its own. The daemon's text logs and the command line's both escape."""
    from gitopsd.cli.args import Context
    from gitopsd.cli.main import setup_logging
    from gitopsd.daemon import logs

    record = logging.LogRecord("gitopsd", logging.ERROR, __file__, 1, "run r failed: out/%s is a FIFO", (
        "\x1b]0;owned\x07x\n12:00:00 INFO blobs@9 registered",), None)  # fmt: skip
    text = logs.TextFormatter().format(record)
    first, second = text.split("\n")
    assert first.endswith("run r failed: out/\\x1b]0;owned\\x07x") and "\x1b" not in text
    assert second == "    12:00:00 INFO blobs@9 registered is a FIFO"
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        for daemon in (True, False):
            root.handlers[:] = []
            if daemon:
                logs.setup("info", "text")
            else:
                setup_logging(Context(state_dir=Path("."), config=None, verbose=False))
            assert [type(h.formatter) for h in root.handlers] == [logs.TextFormatter]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_a_pass_error_reaches_the_terminal_escaped(state_dir: Path) -> None:
    """A pass's error quotes what it could not reach (a path, a remote's own message): `reconcile` printed it
    and its log line raw. Both escape it, as `plan` does."""
    target = "/nonexistent/\x1b]0;owned\x07"
    for command in ("reconcile", "plan"):
        done = gitopsd(state_dir, command, "--repo", target, check=False)
        assert done.returncode == 1 and "/nonexistent/\\x1b]0;owned\\x07" in done.stderr, done.stderr
        assert "\x1b" not in done.stdout + done.stderr


# -- a credential in the repository URL, through the real daemon -------------------------------------------


def _wait_ready(daemon: RunningDaemon, timeout: float = 90) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, text = daemon.get("/api/v1/status")
        doc = json.loads(text) if code == 200 else {}
        if doc and doc["models"] and all(m["ready"] for m in doc["models"]):
            return doc
        time.sleep(0.2)
    raise AssertionError(f"the model never became Ready: {daemon.log.read_text()[-2000:]}")


def _everything_shown(daemon: RunningDaemon) -> dict[str, str]:
    """Every place a person or a program sees: logs, status, API, metrics, lineage, registry, plan."""
    shown = {
        "log": daemon.log.read_text(),
        "api": daemon.get("/api/v1/status")[1],
        "metrics": daemon.get("/metrics")[1],
    }
    config = ["--config", str(daemon.config)]
    for name, args in (("status", ["status", *config]), ("json", ["status", *config, "--json"]),
                       ("wide", ["status", *config, "--wide"])):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "gitopsd", *args], capture_output=True, text=True, check=True)
        shown[name] = done.stdout + done.stderr
    for args in (["lineage", "blobs@1"], ["registry", "--json"], ["history", "blobs"], [*config, "plan"]):
        done = gitopsd(daemon.state_dir / "demo", *args, check=False)  # a plan judges by the daemon's config
        shown[args[-1] if args[-1] == "plan" else args[0]] = done.stdout + done.stderr
    return shown


def test_a_password_in_the_repository_url_fetches_pushes_and_is_never_shown(tmp_path: Path, canary: Canary) -> None:
    with git_http_server(tmp_path, user="alice", password=canary.token) as server:
        url = server.url("demo.git")
        with start_daemon(tmp_path, url=url) as daemon:
            status = _wait_ready(daemon)
            assert status["repository"]["url"] == f"http://***@127.0.0.1:{server.port}/demo.git"  # type: ignore[index]
            shown = _everything_shown(daemon)
            canary.assert_not_in(*shown.values())
            assert "registered blobs@1" in shown["log"], "the training ran and was registered"
            assert f"http://***@127.0.0.1:{server.port}/demo.git" in shown["log"]
            assert f"repository http://***@127.0.0.1:{server.port}/demo.git" in shown["status"]
            assert json.loads(shown["json"])["repository"]["url"] == status["repository"]["url"]  # type: ignore[index]
            assert f"http://***@127.0.0.1:{server.port}/demo.git" in shown["lineage"]
        # The audit tag reached the remote through the credentials, and says nothing of them.
        bare = GitRepo(tmp_path / "demo.git")
        assert "models/blobs/v1" in bare.git("tag", "-l")
        canary.assert_not_in(bare.git("for-each-ref", "--format=%(contents)", "refs/tags"))
        # Nothing a training can read carries the credential (its run directory: tree, snapshot, logs).
        for path in (tmp_path / "state" / "demo" / "runs").rglob("*"):
            if path.is_file():
                canary.assert_not_in(path.read_bytes())


@pytest.mark.parametrize("where", ["userinfo", "query"])
def test_a_refused_or_unreachable_url_is_shown_without_its_credential(
    tmp_path: Path, canary: Canary, where: str
) -> None:
    with git_http_server(tmp_path, user="alice", password="the-right-password") as server:
        if where == "userinfo":  # the server refuses it (and then GITOPSD_GIT_TOKEN): the error names the URL
            url, expected = server.url("demo.git", f"alice:{canary.aws_secret}"), "were refused"
        else:  # not a Git server at all: libgit2's own message
            url, expected = f"{canary.url}/demo.git?private_token={canary.aws_secret}", "cannot fetch"
        with start_daemon(tmp_path, url=url) as daemon:
            code, text = daemon.get("/api/v1/status")
            repository = json.loads(text)["repository"]
            assert code == 200 and repository["error_reason"] == "SourceUnavailable"
            assert expected in repository["error"] and REDACTED in repository["error"], repository["error"]
            shown = _everything_shown(daemon)
    canary.assert_not_in(*shown.values())
    assert "SourceUnavailable" in shown["status"] and expected in shown["plan"]


def test_the_command_line_never_prints_the_credential(tmp_path: Path, state_dir: Path, canary: Canary) -> None:
    """plan, reconcile and status on a URL whose password the server refuses (and then GITOPSD_GIT_TOKEN)."""
    with git_http_server(tmp_path, user="alice", password="the-right-password") as server:
        url = server.url("demo.git", f"alice:{canary.aws_secret}")
        said = [gitopsd(state_dir, *args, check=False) for args in (["plan", "--repo", url],
                ["reconcile", "--repo", url], ["status"], ["status", "--json"], ["reconcile"])]  # fmt: skip
    for done in said:
        canary.assert_not_in(done.stdout, done.stderr)
    assert said[1].returncode == 1 and f"http://***@127.0.0.1:{server.port}/demo.git" in said[1].stderr
    assert f"repository http://***@127.0.0.1:{server.port}/demo.git" in said[2].stdout


# -- a file outside the repository, named by a setting ------------------------------------------------------


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="Slurm's client tools are not installed")
def test_slurm_conf_naming_a_secret_file_does_not_print_its_lines(
    demo_repo: GitRepo, state_dir: Path, canary: Canary
) -> None:
    # Slurm's own tools quote the first lines of a configuration file they cannot parse.
    said = subprocess.run(["scontrol", "ping"], env={"SLURM_CONF": str(canary.file), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert canary.file_secret in said.stdout + said.stderr, "the attack needs Slurm to quote the file"
    # A repository cannot name slurm_conf (the operator's configuration owns it); an operator's slip, a file
    # that is not a Slurm configuration, must not have its lines shown either.
    operator = state_dir.parent / "operator.toml"
    operator.write_text(f'[backends.hpc]\ntype = "slurm"\nsettings = {{ slurm_conf = "{canary.file}" }}\n')
    demo_repo.edit("gitops.yaml", "  backend: local", "  backend: hpc")
    demo_repo.commit("train on a Slurm whose configuration is a secret file")
    done = gitopsd(state_dir, "--config", str(operator), "reconcile", "--repo", str(demo_repo.path), check=False)
    status = gitopsd(state_dir, "status", "--wide")
    status_json = gitopsd(state_dir, "status", "--json")
    canary.assert_not_in(done.stdout, done.stderr, status.stdout, status.stderr, status_json.stdout)
    model = json.loads(status_json.stdout)["models"][0]
    assert model["reason"] == "BackendUnavailable"
    assert "cannot parse the Slurm configuration file" in model["message"]
    canary.assert_untouched()
