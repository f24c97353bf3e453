"""The daemon's waitress server starts and stops cleanly: after `stop()` no thread of it runs and none of its file
descriptors is open, so nothing of it can write into a descriptor number the process reuses."""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from gitopsd.daemon.httpapi import HttpServer, StartResponse


def _hello(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"hello\n"]


def _get(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read()
    finally:
        conn.close()


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def test_stop_ends_the_loop_and_its_workers_and_closes_every_descriptor() -> None:
    before_fds, before_threads = _open_fds(), set(threading.enumerate())
    server = HttpServer(_hello, "127.0.0.1", 0)
    server.start()
    assert _get(server.port) == b"hello\n"
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    idle.connect()  # a connection still open when the server stops
    server.stop()
    idle.close()
    assert not server.thread.is_alive()
    assert set(threading.enumerate()) <= before_threads, "no loop or worker thread outlives stop()"
    # waitress's own close() left the workers and the loop running and closed only the wake-up pipe: a worker that
    # finished a request later wrote its wake-up byte to whatever reused the descriptor (a client read `xHTTP/1.1`).
    assert _open_fds() <= before_fds, "the listener, the connections and the wake-up pipe are closed"


def test_a_server_never_started_stops_too() -> None:
    before = _open_fds()
    HttpServer(_hello, "127.0.0.1", 0).stop()
    assert _open_fds() <= before


def test_stop_writes_its_wake_up_byte_before_the_loop_can_close_the_pipe() -> None:
    """A byte already waiting in the wake-up pipe (a worker's, as it finished a request) wakes the loop while stop()
    hands over the closing task: the loop must not run that task, which closes the pipe, before stop() has written
    its own byte, or the write meets a closed descriptor, or one the process has since reused."""
    server = HttpServer(_hello, "127.0.0.1", 0)
    server.start()
    assert _get(server.port) == b"hello\n"
    trigger = server._server.trigger
    real_pull = trigger._physical_pull

    def slow_pull() -> None:  # a byte is already there, and this thread is slow to write its own
        os.write(trigger.trigger, b"x")
        time.sleep(0.5)
        real_pull()

    trigger._physical_pull = slow_pull
    server.stop()  # raised OSError: [Errno 9] Bad file descriptor, from the write after the loop closed the pipe
    assert not server.thread.is_alive()
