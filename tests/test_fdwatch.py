"""The suite's stale-close diagnostic (`tests/fdwatch.py`): a second close of a descriptor names the first."""

from __future__ import annotations

import os
import socket

import pytest

from tests.fdwatch import StaleCloseWarning

#: Far above any descriptor the suite holds: numbers are handed out lowest first, so nothing can reuse it
#: between the two closes (which would make the second close a stranger's descriptor, the very bug watched for).
UNUSED = 900


def test_a_second_os_close_names_the_first() -> None:
    read, write = os.pipe()
    os.close(read)
    os.dup2(write, UNUSED)
    os.close(write)
    os.close(UNUSED)  # the first close: this line is the culprit the second one names
    named = r"test_fdwatch.py:\d+ \(test_a_second_os_close_names_the_first\)"
    with pytest.warns(StaleCloseWarning, match=named), pytest.raises(OSError, match="Bad file descriptor") as failed:
        os.close(UNUSED)
    assert f"fd {UNUSED} closed again by" in failed.value.__notes__[0]


def test_a_socket_closed_under_its_owner_is_named() -> None:
    """A socket whose descriptor someone closed with os.close: the socket's own close fails, and names that."""
    first, second = socket.socketpair()
    second.close()
    os.dup2(first.fileno(), UNUSED)
    first.close()
    sock = socket.socket(fileno=UNUSED)
    os.close(UNUSED)  # closed under the socket's feet
    with (
        pytest.warns(StaleCloseWarning, match=r"last closed by .*test_fdwatch.py:\d+"),
        pytest.raises(OSError, match="Bad file descriptor"),
    ):
        sock.close()


def test_a_write_to_a_closed_descriptor_names_who_closed_it() -> None:
    """What waitress's wake-up pipe met: its write end closed by someone else, then written to."""
    read, write = os.pipe()
    os.dup2(write, UNUSED)
    os.close(write)
    os.close(UNUSED)  # the culprit
    with (
        pytest.warns(StaleCloseWarning, match=r"written to after it was closed .*last closed by .*test_fdwatch.py"),
        pytest.raises(OSError, match="Bad file descriptor"),
    ):
        os.write(UNUSED, b"x")
    os.close(read)


def test_a_file_object_that_closed_a_descriptor_is_named_where_it_was_made() -> None:
    """A file object closes its descriptor in C: the note names where it was made of the bare number."""
    read, write = os.pipe()
    os.dup2(write, UNUSED)
    os.close(write)
    os.fdopen(UNUSED, "wb").close()  # closes UNUSED in C
    with (
        pytest.warns(StaleCloseWarning, match=r"file object made of it .* came from .*test_fdwatch.py:\d+"),
        pytest.raises(OSError, match="Bad file descriptor"),
    ):
        os.write(UNUSED, b"x")
    os.close(read)
