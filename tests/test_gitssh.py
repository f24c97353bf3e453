"""Private repositories over SSH, against a real OpenSSH server on 127.0.0.1 with its own host key.

What a user relies on: a deploy key and a pinned host key fetch the repository and push the audit tags; an
unknown or changed host key, or a key the server refuses, stops the fetch with a message that says what to do,
and nothing is fetched; an encrypted key works with its passphrase from the environment. In CI the server must
run (make test installs openssh-server); elsewhere these tests skip, saying how to enable them.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitopsd.cli.scaffold import init_demo
from gitopsd.errors import SourceUnavailable
from gitopsd.source.mirror import Source
from gitopsd.source.ssh import is_ssh_url
from tests.conftest import GIT_ENV, gitopsd
from tests.ports import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PASSPHRASE = "correct horse battery staple"


@dataclass(frozen=True)
class SshServer:
    url: str
    repo: Path
    work: Path
    known_hosts: Path
    other_host_key: Path
    key: Path
    encrypted_key: Path
    stranger_key: Path


def _keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if not os.path.exists(SSHD) or not shutil.which("ssh-keygen"):
        message = "no OpenSSH server here: install openssh-server (make test does) to run the SSH tests"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("ssh")
    host_key = _keygen(root / "host_key")
    key, encrypted = _keygen(root / "deploy_key"), _keygen(root / "encrypted_key", PASSPHRASE)
    (root / "authorized_keys").write_text(Path(f"{key}.pub").read_text() + Path(f"{encrypted}.pub").read_text())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {root}/authorized_keys\n"
        f"PidFile {root}/sshd.pid\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n"
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    log = (root / "sshd.log").open("wb")
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, (root / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not start listening"
            time.sleep(0.05)
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {Path(f'{host_key}.pub').read_text()}")
    init_demo(root / "work")
    subprocess.run(["git", "clone", "-q", "--bare", str(root / "work"), str(root / "ml.git")], check=True)
    yield SshServer(
        url=f"ssh://{getpass.getuser()}@127.0.0.1:{port}{root}/ml.git",
        repo=root / "ml.git",
        work=root / "work",
        known_hosts=known_hosts,
        other_host_key=_keygen(root / "other_host_key"),
        key=key,
        encrypted_key=encrypted,
        stranger_key=_keygen(root / "stranger_key"),
    )
    server.terminate()
    server.wait(timeout=10)
    log.close()


def branches(source: Source) -> list[str]:
    return [name for name in source.repo.references if name.startswith("refs/heads/")]


@pytest.fixture
def ssh_env(ssh_server: SshServer, monkeypatch: pytest.MonkeyPatch) -> SshServer:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("GITOPSD_GIT_SSH_KEY", str(ssh_server.key))
    monkeypatch.setenv("GITOPSD_GIT_KNOWN_HOSTS", str(ssh_server.known_hosts))
    return ssh_server


def test_a_deploy_key_and_a_pinned_host_key_fetch_the_repository_and_its_new_commits(
    ssh_env: SshServer, tmp_path: Path
) -> None:
    source = Source(ssh_env.url, tmp_path / "mirror.git")
    source.fetch()
    first = source.resolve(None)
    assert "models/blobs.yaml" in source.spec_files(first)

    env = {**os.environ, **GIT_ENV}
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ssh_env.repo), str(clone)], check=True, env=env)
    (clone / "NOTES.md").write_text("new\n")
    for args in (["add", "-A"], ["commit", "-q", "-m", "notes"], ["push", "-q", "origin", "HEAD"]):
        subprocess.run(["git", *args], cwd=clone, check=True, env=env)
    source.fetch()
    assert source.resolve(None) != first
    assert source.read(source.resolve(None), "NOTES.md") == b"new\n"


def test_the_demo_trains_from_an_ssh_remote_and_its_tag_is_pushed_back_over_ssh(
    ssh_env: SshServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    gitopsd(state, "reconcile", "--repo", ssh_env.url, "--wait")
    assert '"ready": true' in gitopsd(state, "status", "blobs", "--json").stdout
    tags = subprocess.run(["git", "--git-dir", str(ssh_env.repo), "tag"], capture_output=True, text=True, check=True)
    assert "models/blobs/v1" in tags.stdout.split()


def test_an_unknown_host_key_is_refused_and_says_how_to_pin_it(
    ssh_env: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    monkeypatch.setenv("GITOPSD_GIT_KNOWN_HOSTS", str(empty))
    source = Source(ssh_env.url, tmp_path / "mirror.git")
    with pytest.raises(SourceUnavailable, match=r"host key .* is not known") as raised:
        source.fetch()
    assert "ssh-keyscan" in str(raised.value) and str(empty) in str(raised.value)
    assert branches(source) == []


def test_a_changed_host_key_is_refused_as_a_possible_interception(
    ssh_env: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = ssh_env.url.split(":")[2].split("/")[0]
    pinned = tmp_path / "known_hosts"
    pinned.write_text(f"[127.0.0.1]:{port} {Path(f'{ssh_env.other_host_key}.pub').read_text()}")
    monkeypatch.setenv("GITOPSD_GIT_KNOWN_HOSTS", str(pinned))
    source = Source(ssh_env.url, tmp_path / "mirror.git")
    with pytest.raises(SourceUnavailable, match="CHANGED"):
        source.fetch()
    assert branches(source) == []


def test_a_key_the_server_does_not_accept_is_a_clear_error(
    ssh_env: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITOPSD_GIT_SSH_KEY", str(ssh_env.stranger_key))
    with pytest.raises(SourceUnavailable, match="refused the key: set GITOPSD_GIT_SSH_KEY"):
        Source(ssh_env.url, tmp_path / "mirror.git").fetch()


def test_an_encrypted_key_works_with_its_passphrase_from_the_environment(
    ssh_env: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITOPSD_GIT_SSH_KEY", str(ssh_env.encrypted_key))
    monkeypatch.setenv("GITOPSD_GIT_SSH_PASSPHRASE", "wrong")
    with pytest.raises(SourceUnavailable, match="refused the key"):
        Source(ssh_env.url, tmp_path / "wrong.git").fetch()
    monkeypatch.setenv("GITOPSD_GIT_SSH_PASSPHRASE", PASSPHRASE)
    source = Source(ssh_env.url, tmp_path / "mirror.git")
    source.fetch()
    assert "models/blobs.yaml" in source.spec_files(source.resolve(None))


@pytest.mark.parametrize(
    ("url", "ssh"),
    [
        ("ssh://git@example.org/team/ml.git", True),
        ("ssh://example.org:2222/srv/ml.git", True),
        ("git+ssh://git@example.org/ml.git", True),
        ("git@github.com:team/ml.git", True),
        ("login01:/srv/git/ml.git", True),
        ("user@[::1]:ml.git", True),
        ("https://github.com/team/ml.git", False),
        ("file:///srv/git/ml.git", False),
        ("/srv/git/ml.git", False),
        ("./ml.git", False),
        ("ml.git", False),
        ("dir/with:colon/ml.git", False),
    ],
)
def test_which_urls_go_through_openssh(url: str, ssh: bool) -> None:
    assert is_ssh_url(url) is ssh
