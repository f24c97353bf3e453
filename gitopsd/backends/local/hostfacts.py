"""What the confinement policy needs to know about this host, read from the daemon's process and file system.

`confine.build_policy` is pure; this is where its inputs come from: the Python installations (the prefixes of
the interpreter the daemon and supervisors run, the directories on the daemon's PATH), the service account's
home, and the paths no training may reach (the state directories, and the credentials directory systemd
hands the daemon). The training's own environment is never consulted: a model's `env` must not be able to
widen what its training may read. Every path is absolute with its symlinks resolved, as Landlock sees it.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from gitopsd.backends.local.confine import HostFacts
from gitopsd.backends.protocol import SHARED_STATE_ENV

#: Directories the daemon's environment names that hold its state or its secrets.
PROTECTED_ENV = ("GITOPSD_STATE_DIR", SHARED_STATE_ENV, "CREDENTIALS_DIRECTORY")


class RealFs:
    """The host's file system, as `confine.FsView`."""

    def listdir(self, path: str) -> list[str] | None:
        try:
            return os.listdir(path)
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def resolve(self, path: str) -> str:
        return os.path.realpath(path)


def _absolute(paths: Iterable[str | os.PathLike[str] | None]) -> tuple[str, ...]:
    found = {os.path.realpath(p) for p in paths if p and os.path.isabs(p)}
    return tuple(sorted(found))


def host_facts(*, protected: Iterable[Path], environ: Mapping[str, str] | None = None) -> HostFacts:
    """The facts of this host; `protected` adds the backend's own state directories to those the
    environment names."""
    env = os.environ if environ is None else environ
    home = env.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
    return HostFacts(
        python_prefixes=_absolute({sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}),
        path_dirs=_absolute(env.get("PATH", os.defpath).split(os.pathsep)),
        home=os.path.realpath(home) if home else None,
        protected=_absolute([*protected, *(env.get(name) for name in PROTECTED_ENV)]),
        root=os.geteuid() == 0,
    )
