"""A full file system, for real: the artifact store on a 1 MiB tmpfs mounted for the test (root only; CI runs as
root, so there it must run). While the disk is full, the run that finished waits in Validating and `status` says
why and when it is tried again; nothing half-written is left in the store; once space is freed the next due retry
registers the version, numbered 1, and `registry verify` is clean."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.spec.operator import Operator, OperatorRegistry
from tests.conftest import GitRepo, gitopsd
from tests.faults.test_registry import blobs, later, versions, wait_for_job_end


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, filled to the last byte by `filler`; unmounted afterwards whatever happened."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the full-disk fault test needs root to mount a tmpfs (CI runs as root)")
        pytest.skip("mounting a tmpfs needs root: run as root to include the full-disk fault test")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "gitopsd-test", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in `directory` until the file system has no byte left; the file, to delete later."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pytest.raises(OSError, match="No space left") as raised:  # noqa: PT012 (ends only when the disk is full)
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    assert raised.value.errno == errno.ENOSPC, raised.value
    return filler


def test_a_full_disk_under_the_store_is_retried_shown_and_converges_once_space_is_freed(
    demo_repo: GitRepo, state_dir: Path, small_disk: Path
) -> None:
    store = small_disk / "artifacts"
    operator = Operator(registry=OperatorRegistry(artifacts=f"file://{store}"))
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=operator)
    try:
        store.mkdir()
        filler = fill(small_disk)
        wait_for_job_end(rec)
        for _ in range(3):
            rec.reconcile()
        (trouble,) = rec.troubles.all().values()
        assert trouble.attempts == 1 and trouble.next_at is not None, "transient: retried after a backoff, once"
        entry = blobs(state_dir)
        assert (entry["condition"], entry["reason"]) == ("Reconciling", "RegistryFailed"), entry
        assert "No space left on device" in str(entry["message"]) and "next retry at" in str(entry["message"])
        assert versions(state_dir) == [], "nothing registered while the artifact could not be stored"

        filler.unlink()  # the operator frees space
        later(rec, 3600)
        rec.reconcile_until_settled(timeout_s=60)
        assert [label for label, _ in versions(state_dir)] == ["blobs@1"]
        assert blobs(state_dir)["condition"] == "Ready"
        verify = gitopsd(state_dir, "registry", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert not [p for p in store.rglob("*") if p.is_file() and ".tmp" in p.name], "no half-written object left"
    finally:
        rec.close()
