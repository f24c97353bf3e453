"""A real S3 endpoint for tests: `moto_server` (from moto[server]) on 127.0.0.1, one per test session.

The S3 store is tested over HTTP against a server, not with an in-process mock, so boto3's real request,
retry, checksum and streaming paths run. Test modules import the fixtures by name
(`from tests.s3server import s3_server  # noqa: F401`); the session's environment gets dummy credentials and
no AWS config files, so nothing on the machine or in the user's home can leak into a test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

START_TIMEOUT_S = 30.0

TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
UNSET_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def moto_server_command() -> list[str] | None:
    """The `moto_server` console script next to this interpreter (or on PATH), or None if moto is missing."""
    beside = Path(sys.executable).parent / "moto_server"
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    return [found] if found else None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=1) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


class MotoServer:
    """One `moto_server` process listening on 127.0.0.1; its output goes to a log file for failures."""

    def __init__(self, log: Path) -> None:
        command = moto_server_command()
        if command is None:
            raise FileNotFoundError("moto_server")
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [*command, "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            if _answers(self.url):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"moto_server did not answer at {self.url} within {timeout:.0f}s: {self.log.read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def require_moto() -> None:
    """Fail (in CI) or skip (on a developer's machine) when moto[server] is not installed."""
    if moto_server_command() is not None:
        return
    message = "moto_server not found: the S3 tests need moto[server]; install with `pip install -e '.[test]'`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a running moto S3 server; dummy credentials are set for the whole session."""
    require_moto()
    with tempfile.TemporaryDirectory(prefix="gitopsd-moto-") as scratch, pytest.MonkeyPatch.context() as patch:
        for name, value in TEST_ENV.items():
            patch.setenv(name, value)
        for name in UNSET_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", str(Path(scratch) / "no-config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(Path(scratch) / "no-credentials"))
        server = MotoServer(Path(scratch) / "moto.log")
        try:
            server.wait_ready()
            yield server.url
        finally:
            server.stop()


def s3_client(endpoint_url: str) -> Any:
    """A raw boto3 client on the test server, for setting up and tampering behind the store's back."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, config=Config(s3={"addressing_style": "path"}))


def new_bucket(client: Any, *, object_lock: bool = False) -> str:
    """A fresh, uniquely named bucket (optionally with Object Lock enabled)."""
    name = f"gitopsd-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
    return name
