"""STATE_DIR/pass.lock as something hostile may have written it.

Its text is printed to a terminal (`waiting for pid N (...)`) and logged by the daemon. Only gitopsd writes it,
but anything that can write the state directory (a training where the platform cannot confine it) could leave
escape sequences or garbage there: a waiter shows only digits and a known role.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gitopsd.reconcile.passlock import LOCK_NAME, holder_of


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        (b"", "another process"),
        (b"not a pid\n", "another process"),
        (b"4242 reconcile\n", "pid 4242 (gitopsd reconcile)"),
        (b"4242 \x1b[31mred\n", "pid 4242 (gitopsd)"),
        (b"4242 daemon\x07 and more\n", "pid 4242 (gitopsd)"),
        (b"\xff\xfe 1\n", "another process"),
    ],
)
def test_who_holds_the_lock_is_only_ever_a_pid_and_a_known_role(tmp_path: Path, content: bytes, shown: str) -> None:
    (tmp_path / LOCK_NAME).write_bytes(content)
    assert holder_of(tmp_path / LOCK_NAME) == shown
