"""The systemd notify protocol: a reader that stopped reading never stalls the daemon."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from gitopsd.daemon.notify import Notifier


def test_a_full_notify_socket_never_blocks_the_sender(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as reader:
        reader.bind(str(path))  # bound, never read: its queue fills after a few hundred datagrams
        notifier = Notifier(str(path))

        def ping() -> None:
            for _ in range(5000):
                notifier.watchdog()

        sender = threading.Thread(target=ping, daemon=True)
        sender.start()
        sender.join(timeout=30)
        assert not sender.is_alive(), "the watchdog ping blocked on a socket nobody reads"
        assert reader.recv(100) == b"WATCHDOG=1", "what fits in the queue is still delivered"
