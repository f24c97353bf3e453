"""Which paths a training may touch, worked out from the run's facts: the pure half of training confinement.

A training runs as the daemon's service account, so without more it could read everything that account can:
`state.db`, `registry.db`, the artifact store, the Git mirror, other runs, `$CREDENTIALS_DIRECTORY`, the
operator's configuration. The local supervisor therefore confines it with a Landlock ruleset (see `landlock`,
the system-call half). Landlock is an allow-list in which a rule on a directory covers its whole subtree, so the
policy is built from what a training needs and nothing that contains a secret:

- read and execute: the system (`/usr`, `/lib*`, `/bin`, `/sbin`, `/etc`, `/opt`, `/sys`), the Python
  installations (the supervisor's prefixes, every directory on the daemon's PATH, and the whole installation a
  PATH directory belongs to when it is a virtualenv, a conda environment or a pyenv root), the run directory
  (its exported tree, inputs, base artifact) and the operator's `confine_read` paths;
- read and write: the run's writable parts (tree, output directory, metrics, its own temporary directory and
  its log file), `/dev` (GPUs, `/dev/null`, `/dev/shm`) and the operator's `confine_write` paths;
- `/proc`: read and write for a service account, read only for root. CUDA names its threads by writing
  `/proc/self/task/TID/comm` and gives up when it cannot (seen on an H200: error 304), and Landlock cannot name
  the `/proc` entries of a process that does not exist yet, so the grant is on all of `/proc`. For another
  process's entries Landlock's ptrace rule still applies (no `mem`, `environ` or `fd` of the daemon), and file
  modes keep a service account out of `/proc/sys`; root would pass those modes (`/proc/sys/kernel/modprobe`
  alone would hand it the host), so a root daemon's trainings keep `/proc` read-only and cannot use CUDA.

Protected paths (the state directories, the credentials directory, the runs directory that holds every other
run, `/etc/gitopsd` and the operator's `confine_deny`) are never granted: a broader grant that contains one is
replaced by grants on its entries, all but the one that leads to the protected path (so `/etc` becomes every
entry of `/etc` but `gitopsd`; `/etc` itself may still be listed, so the names in `/etc/gitopsd` show, but not
their content). The service account's home is not granted either, nor any directory above it.

Everything here is pure but for the `FsView` it is handed (which entries a directory has, where a path really
leads), so the rules are tested on a made-up file system. Standard library and `gitopsd.errors` only: the
supervisor imports it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from gitopsd.errors import PermanentError

MIN_ABI = 3  # truncate(2) is handled from ABI 3 (Linux 6.2) on; before it a training could empty state.db
NETWORK_ABI = 4  # TCP bind and connect can be handled from ABI 4 (Linux 6.7) on
SYSTEM_READ = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/sys")
SYSTEM_WRITE = ("/dev",)
PROC = "/proc"
CONFIG_DIRS = ("/etc/gitopsd",)
#: Granted entry by entry, each where it really leads, so that `/etc/resolv.conf -> /run/...` stays readable.
EXPANDED = ("/etc",)
#: What makes the parent of a PATH directory a Python installation whose whole tree a training needs.
INSTALL_MARKERS = ("pyvenv.cfg", "conda-meta", "libexec/pyenv")
KEYS = ("confine", "confine_read", "confine_write", "confine_deny", "confine_network")


class ConfinementError(PermanentError):
    """A training cannot be confined as its backend's settings demand; it is not started."""


class Access(StrEnum):
    LIST = "list"  # list directories, read no file
    READ = "read"  # read files, list directories, execute
    WRITE = "write"  # read, and create, write, truncate, rename and remove


_STRENGTH = {Access.LIST: 0, Access.READ: 1, Access.WRITE: 2}


@dataclass(frozen=True, kw_only=True)
class Rule:
    path: str
    access: Access


@dataclass(frozen=True, kw_only=True)
class ConfineSettings:
    """The operator's choices: confine at all, extra paths to read, write or hide, and TCP too."""

    enabled: bool = True
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    network: bool = False  # also refuse TCP bind and connect (Landlock ABI 4+)


@dataclass(frozen=True, kw_only=True)
class Probe:
    """What the kernel offers: the Landlock ABI version, 0 when there is none, and why not."""

    abi: int
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class RunPaths:
    """The run's own paths (absolute, symlinks resolved), all inside `run_dir`."""

    run_dir: str
    tree_dir: str
    output_dir: str
    metrics_dir: str
    log_file: str
    tmp_dir: str
    inputs: tuple[str, ...] = ()  # the run's declared data outside its tree (file:// under the data roots)


@dataclass(frozen=True, kw_only=True)
class HostFacts:
    """What the policy needs to know about the daemon's host (absolute paths, symlinks resolved)."""

    python_prefixes: tuple[str, ...]
    path_dirs: tuple[str, ...]
    home: str | None
    protected: tuple[str, ...]  # the state directories and the credentials directory
    root: bool = False  # the trainings run as root: `/proc` stays read-only


class FsView(Protocol):
    """The file system as the policy builder may see it."""

    def listdir(self, path: str) -> list[str] | None:
        """The entry names of directory `path`; None when it is not a directory or cannot be listed."""

    def exists(self, path: str) -> bool: ...

    def resolve(self, path: str) -> str:
        """Where `path` really leads (every symlink followed), as `os.path.realpath` says."""


@dataclass(frozen=True, kw_only=True)
class Policy:
    """The rules one training runs under, and what was carved out of them (for the run's log)."""

    rules: tuple[Rule, ...]
    tmp_dir: str
    deny_tcp: bool = False
    hidden: tuple[str, ...] = field(default=())

    def paths(self, access: Access) -> list[str]:
        return [rule.path for rule in self.rules if rule.access is access]

    def with_read(self, path: str) -> Policy:
        """The policy with one more path to read, for what the supervisor learns late (the run's virtualenv)."""
        return replace(self, rules=_minimal([*self.rules, Rule(path=path, access=Access.READ)]))

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": [{"path": rule.path, "access": str(rule.access)} for rule in self.rules],
            "tmp_dir": self.tmp_dir,
            "deny_tcp": self.deny_tcp,
            "hidden": list(self.hidden),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        return cls(
            rules=tuple(Rule(path=str(r["path"]), access=Access(r["access"])) for r in data["rules"]),
            tmp_dir=str(data["tmp_dir"]),
            deny_tcp=bool(data.get("deny_tcp", False)),
            hidden=tuple(str(p) for p in data.get("hidden", ())),
        )

    def summary(self) -> str:
        """One line for the run's log: what the training may read and write."""
        text = f"it may read {_show(self.paths(Access.READ))}; read and write {_show(self.paths(Access.WRITE))}"
        if self.paths(Access.LIST):
            text += f"; list {_show(self.paths(Access.LIST))}"
        if self.hidden:
            text += f"; hidden from it: {', '.join(self.hidden)}"
        if self.deny_tcp:
            text += "; no TCP bind or connect"
        return text


def _show(paths: Iterable[str]) -> str:
    """Paths for a log line, with the entries of an expanded directory (`/etc`) counted rather than listed."""
    shown: list[str] = []
    counted: dict[str, int] = {}
    for path in paths:
        parent = posixpath.dirname(path)
        if parent in EXPANDED:
            counted[parent] = counted.get(parent, 0) + 1
        else:
            shown.append(path)
    shown += [f"{parent}/* ({count} entries)" for parent, count in counted.items()]
    return ", ".join(sorted(shown)) or "nothing"


# -- settings ------------------------------------------------------------------------------------------------


def _fail(backend: str, key: str, value: Any, expected: str) -> ConfinementError:
    return ConfinementError(f"backend {backend!r} setting {key}: expected {expected}, got {value!r}")


def _paths(settings: Mapping[str, Any], key: str, backend: str) -> tuple[str, ...]:
    value = settings.get(key, [])
    expected = "a list of absolute paths"
    if not isinstance(value, list | tuple):
        raise _fail(backend, key, value, expected)
    for item in value:
        if not isinstance(item, str) or not item.startswith("/"):
            raise _fail(backend, key, item, expected)
    return tuple(posixpath.normpath(item) for item in value)


def parse_settings(settings: Mapping[str, Any], *, backend: str) -> ConfineSettings:
    """The confinement settings among a backend's settings (others are the backend's own business)."""
    enabled = settings.get("confine", True)
    if not isinstance(enabled, bool):
        raise _fail(backend, "confine", enabled, "true or false")
    network = settings.get("confine_network", False)
    if not isinstance(network, bool):
        raise _fail(backend, "confine_network", network, "true or false")
    return ConfineSettings(
        enabled=enabled,
        read=_paths(settings, "confine_read", backend),
        write=_paths(settings, "confine_write", backend),
        deny=_paths(settings, "confine_deny", backend),
        network=network,
    )


def refusal(settings: ConfineSettings, probe: Probe, *, backend: str) -> str | None:
    """Why trainings of this backend cannot start here, or None. Confinement is required unless turned off."""
    if not settings.enabled:
        return None
    remedy = (
        f"set `confine: false` in the settings of backend {backend!r} to run trainings unconfined "
        "(they can then read the daemon's state, registry and credentials)"
    )
    if probe.abi <= 0:
        return f"backend {backend!r}: trainings run confined by Landlock, but {probe.reason}; {remedy}"
    if probe.abi < MIN_ABI:
        return (
            f"backend {backend!r}: trainings run confined by Landlock, but this kernel has Landlock ABI "
            f"{probe.abi} and confinement needs ABI {MIN_ABI} (Linux 6.2 or later), the first that stops "
            f"truncate(2) outside the run; {remedy}"
        )
    if settings.network and probe.abi < NETWORK_ABI:
        return (
            f"backend {backend!r} setting confine_network: refusing TCP needs Landlock ABI {NETWORK_ABI} "
            f"(Linux 6.7 or later), this kernel has ABI {probe.abi}; set `confine_network: false`"
        )
    return None


ROOT_NOTICE = (
    "running as root: /proc stays read-only for this training (root could change kernel settings there), so "
    "CUDA, which names its threads through /proc, cannot start; run the daemon as its service account"
)

UNCONFINED_NOTICE = (
    "not confined: the backend setting `confine` is false, so this training can read and write everything "
    "the daemon's account can (its state, registry, artifacts, credentials and other runs)"
)


# -- the policy ----------------------------------------------------------------------------------------------


def within(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies below it (both normalised absolute paths)."""
    return root in (path, "/") or path.startswith(root + "/")


def _install_roots(path_dirs: Iterable[str], fs: FsView) -> list[str]:
    """The whole installation a PATH directory belongs to, when it is a venv, conda env or pyenv root."""
    roots = []
    for directory in path_dirs:
        parent = posixpath.dirname(directory)
        if parent != "/" and any(fs.exists(posixpath.join(parent, marker)) for marker in INSTALL_MARKERS):
            roots.append(parent)
    return roots


def _carve(
    path: str, access: Access, covered: Sequence[str], fs: FsView, *, expand: bool = False
) -> tuple[list[Rule], list[str]]:
    """A rule on `path`; or, when a covered path lies below it (or `expand` asks), rules on its entries but
    the covered ones. An entry that is a symlink is granted where it leads: Landlock checks real locations."""
    if not expand and not any(c != path and within(c, path) for c in covered):
        return [Rule(path=path, access=access)], []
    entries = fs.listdir(path)
    if entries is None:
        return [], []
    rules: list[Rule] = []
    hidden: list[str] = []
    for name in sorted(entries):
        child = posixpath.join(path, name)
        real = fs.resolve(child)
        if real == "/" or any(within(real, c) for c in covered):
            hidden.append(child)
            continue
        more, also_hidden = _carve(real, access, covered, fs)
        rules += more
        hidden += also_hidden
    return rules, hidden


def _minimal(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """The rules without duplicates and without those that an ancestor rule with as much access covers. Each
    path looks up its own ancestors (as many as it has directories), not every other rule: a host's policy has
    a few hundred rules, and comparing each with all the others cost about 40 ms per training started."""
    strongest: dict[str, Access] = {}
    for rule in rules:
        held = strongest.get(rule.path)
        if held is None or _STRENGTH[rule.access] > _STRENGTH[held]:
            strongest[rule.path] = rule.access
    kept = []
    for path, access in sorted(strongest.items()):
        if not any(_STRENGTH[held] >= _STRENGTH[access] for held in _ancestors_held(path, strongest)):
            kept.append(Rule(path=path, access=access))
    return tuple(kept)


def _ancestors_held(path: str, granted: Mapping[str, Access]) -> Iterator[Access]:
    """The access `granted` gives each directory above `path` (a normalised absolute path), "/" included."""
    while (parent := posixpath.dirname(path)) != path:
        path = parent
        held = granted.get(path)
        if held is not None:
            yield held


def build_policy(settings: ConfineSettings, run: RunPaths, host: HostFacts, fs: FsView, *, backend: str) -> Policy:
    """The rules a training of this run is confined to. See the module docstring for what and why."""
    norm = posixpath.normpath
    own = {
        "tree": run.tree_dir,
        "output directory": run.output_dir,
        "metrics directory": run.metrics_dir,
        "log file": run.log_file,
        "temporary directory": run.tmp_dir,
    }
    run_dir = norm(run.run_dir)
    for what, path in own.items():
        if not within(norm(path), run_dir):
            raise ConfinementError(f"the run's {what} {path} is outside its run directory {run_dir}")
    runs_dir = posixpath.dirname(run_dir)
    protected = sorted({norm(p) for p in (*host.protected, *CONFIG_DIRS, *settings.deny, runs_dir)})
    home = norm(host.home) if host.home and norm(host.home) != "/" else None
    covered = [*protected, *([home] if home else [])]
    for key, paths in (("confine_read", settings.read), ("confine_write", settings.write), ("data", run.inputs)):
        for path in paths:
            real = fs.resolve(path)
            for guarded in protected:
                if within(real, guarded):
                    raise ConfinementError(
                        f"backend {backend!r} setting {key}: {path} is inside {guarded}, which trainings may "
                        "never reach (the daemon's state, credentials, configuration or other runs)"
                    )

    rules: list[Rule] = []
    hidden: list[str] = []

    def grant(paths: Iterable[str], access: Access, *, automatic: bool) -> None:
        for path in paths:
            real = fs.resolve(norm(path))
            if (automatic and real == "/") or not fs.exists(real):
                continue
            if automatic and (real == home or any(within(real, p) for p in protected)):
                continue  # e.g. a PATH entry inside the state directory: never granted by default
            if real in EXPANDED:
                rules.append(Rule(path=real, access=Access.LIST))
            more, also_hidden = _carve(real, access, covered, fs, expand=real in EXPANDED)
            rules.extend(more)
            hidden.extend(also_hidden)

    prefixes = [*host.python_prefixes, *host.path_dirs, *_install_roots(host.path_dirs, fs)]
    grant(SYSTEM_READ, Access.READ, automatic=True)
    grant(prefixes, Access.READ, automatic=True)
    grant(SYSTEM_WRITE, Access.WRITE, automatic=True)
    grant([PROC], Access.READ if host.root else Access.WRITE, automatic=True)
    grant(settings.read, Access.READ, automatic=False)
    grant(run.inputs, Access.READ, automatic=False)
    grant(settings.write, Access.WRITE, automatic=False)
    rules.append(Rule(path=run_dir, access=Access.READ))
    rules.extend(Rule(path=norm(path), access=Access.WRITE) for path in own.values())
    return Policy(
        rules=_minimal(rules),
        tmp_dir=norm(run.tmp_dir),
        deny_tcp=settings.network,
        hidden=tuple(sorted(set(hidden))),
    )


def training_tmpdir(policy: Policy, current: str | None) -> str:
    """The TMPDIR a confined training gets: its own, unless the one it has is writable under the policy."""
    if current and current.startswith("/"):
        path = posixpath.normpath(current)
        if any(within(path, root) for root in policy.paths(Access.WRITE)):
            return current
    return policy.tmp_dir
