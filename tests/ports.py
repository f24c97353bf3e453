"""A free TCP port on 127.0.0.1 for the servers the tests start (sshd, the daemon's HTTP API)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now; the caller's server binds it right after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
