"""What every attack test needs: canary secrets, a canary file outside the repository, and a listener that
records any request a hostile repository manages to make gitopsd send.

A case passes only when the attack fails loudly (a clear error naming the file, line or field) and quietly for
the attacker: no canary left the process, nothing outside the run was read or written.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class Canary:
    """Secrets planted in the daemon's environment and files, and a loopback listener that records contact."""

    token: str
    aws_secret: str
    file: Path
    file_secret: str
    port: int
    received: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.token, self.aws_secret, self.file_secret)

    def assert_not_in(self, *texts: str | bytes) -> None:
        """None of the canary secrets appears in any of `texts` (output, logs, files)."""
        for text in texts:
            blob = text.decode(errors="replace") if isinstance(text, bytes) else text
            for secret in self.secrets:
                assert secret not in blob, f"a canary secret leaked: {blob[:400]!r}"

    def assert_untouched(self) -> None:
        """Nothing connected to the listener, and the canary file is as it was."""
        assert self.received == [], f"gitopsd contacted a host the repository named: {self.received[:3]!r}"
        assert self.file.read_text() == self.file_secret + "\n"


def _listen(sock: socket.socket, received: list[bytes], stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            conn.settimeout(1.0)
            data = b""
            try:
                while chunk := conn.recv(65536):
                    data += chunk
                    if b"\r\n\r\n" in data:
                        break
            except OSError:
                pass
            received.append(data or b"<connected>")
            with contextlib.suppress(OSError):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Canary]:
    """Canary credentials in the environment (as the daemon's operator would set them) and a listener."""
    token = "canary-git-" + secrets.token_hex(8)
    aws_secret = "canary-aws-" + secrets.token_hex(8)
    file_secret = "canary-file-" + secrets.token_hex(8)
    secret_file = tmp_path / "outside" / "secret.txt"
    secret_file.parent.mkdir()
    secret_file.write_text(file_secret + "\n")
    monkeypatch.setenv("GITOPSD_GIT_TOKEN", token)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    received: list[bytes] = []
    stop = threading.Event()
    thread = threading.Thread(target=_listen, args=(sock, received, stop), daemon=True)
    thread.start()
    try:
        yield Canary(token, aws_secret, secret_file, file_secret, sock.getsockname()[1], received)
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()
