"""A repository's lease as files in a directory all login nodes share (NFS, Lustre, GPFS, or a local one).

No flock and no fcntl lock: they are not reliable across hosts on every shared filesystem. What is used instead
works on any POSIX filesystem and on NFS with its default close-to-open consistency:

- `claim.N`: generation N is claimed by creating this file with link(2) from a complete temporary file.
  link() fails with EEXIST when the name exists, so of two daemons racing for generation N exactly one gets it
  (NFS: a retransmitted link that did succeed is recognised by the link count of the temporary file).
- `lease`: the holder's current record (generation, holder, renewed_at, expires_at, beat), replaced by
  rename(2) of a complete temporary file at every renewal, so a reader sees the old record or the new one.

The newest generation is the largest N among the claim files; the current record is `lease` when it belongs to
that generation, else the claim itself (a claimer that died before writing `lease`). Old claims are removed by
the holder, keeping the last few as a history of who held the lease.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from pathlib import Path

from gitopsd.daemon.lease import LeaseRecord
from gitopsd.errors import TransientError

LEASE = "lease"
CLAIM = re.compile(r"^claim\.([0-9]{1,18})$")
KEEP_CLAIMS = 5
MAX_RECORD = 64 * 1024


class LeaseDir:
    """The files of one repository's lease. Every method may raise `TransientError` (the directory cannot be
    read or written now: a shared filesystem that hangs or is gone)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def newest(self) -> int:
        """The newest claimed generation (0: never claimed)."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise TransientError(f"lease directory {self.path} cannot be read: {exc.strerror or exc}") from exc
        return max((int(m.group(1)) for name in names if (m := CLAIM.match(name))), default=0)

    def read(self) -> LeaseRecord | None:
        """The current record (None: never claimed). A record that cannot be parsed is a TransientError: it is
        never taken for an absent one."""
        generation = self.newest()
        if generation == 0:
            return None
        lease = self._load(self.path / LEASE, missing_ok=True)
        if lease is not None and lease.generation == generation:
            return lease
        claimed = self._load(self.path / f"claim.{generation}", missing_ok=False)
        assert claimed is not None
        return claimed

    def claim(self, record: LeaseRecord) -> bool:
        """Claim `record.generation`; True if this call got it, False if another claimer did."""
        target = self.path / f"claim.{record.generation}"
        tmp = self._temporary(record)
        try:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            except OSError as exc:
                # NFS: a link whose reply was lost may have been done; the temporary file's link count says.
                if os.stat(tmp).st_nlink != 2:
                    raise TransientError(f"cannot claim the lease in {self.path}: {exc.strerror or exc}") from exc
        except OSError as exc:
            raise TransientError(f"cannot claim the lease in {self.path}: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.write(record)
        return True

    def write(self, record: LeaseRecord) -> None:
        """Replace `lease` with `record` (renewals, release)."""
        tmp = self._temporary(record)
        try:
            tmp.replace(self.path / LEASE)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise TransientError(f"cannot renew the lease in {self.path}: {exc.strerror or exc}") from exc

    def prune(self, generation: int) -> None:
        """Remove claims older than the last KEEP_CLAIMS before `generation` (best effort)."""
        with contextlib.suppress(OSError):
            for name in os.listdir(self.path):
                m = CLAIM.match(name)
                if m and int(m.group(1)) <= generation - KEEP_CLAIMS:
                    (self.path / name).unlink(missing_ok=True)

    def _temporary(self, record: LeaseRecord) -> Path:
        self._ensure()
        tmp = self.path / f".tmp.{record.holder.host}.{record.holder.pid}.{secrets.token_hex(4)}"
        data = (json.dumps(record.to_json(), sort_keys=True) + "\n").encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise TransientError(f"cannot write to the lease directory {self.path}: {exc.strerror or exc}") from exc
        return tmp

    def _ensure(self) -> None:
        """Make the repository's directory inside `lease_dir`, never `lease_dir` itself: a lease directory
        created on a node's own disk (the shared filesystem not mounted yet) would give that node a lease of
        its own, and two daemons would act."""
        try:
            self.path.mkdir(exist_ok=True)
        except FileNotFoundError:
            raise TransientError(
                f"lease_dir {self.path.parent} does not exist: is the shared filesystem mounted? (gitopsd never "
                "creates it; create it once on the filesystem every login node shares)"
            ) from None
        except OSError as exc:
            raise TransientError(f"cannot create {self.path}: {exc.strerror or exc}") from exc

    def _load(self, path: Path, *, missing_ok: bool) -> LeaseRecord | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                raw = handle.read(MAX_RECORD + 1)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise TransientError(f"lease record {path} vanished while it was read") from None
        except OSError as exc:
            what = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be read: {exc.strerror or exc}"
            raise TransientError(f"lease record {path} {what}") from exc
        try:
            if len(raw) > MAX_RECORD:
                raise ValueError(f"over {MAX_RECORD} bytes")
            return LeaseRecord.from_json(json.loads(raw))
        except (ValueError, RecursionError) as exc:
            raise TransientError(f"lease record {path} is not a gitopsd lease record: {exc}") from None
