"""The settled-pass record: what lets a new process see that a pass would change nothing, without loading specs.

A daemon keeps its desired state in memory and, when a pass finds the same commit, no run in flight, no backend
newly unavailable and no new event since a pass that did nothing, it returns at once (`Reconciler.reconcile`).
Every `gitopsd reconcile --once` is a new process: it has no memory, so it would load and validate every spec of
the commit (most of a second at 10,000 specs) only to find again that nothing is to be done.

This module keeps that "nothing to do" across processes. A full pass that ends settled (no action, nothing
tried, no run in flight, no alias moved, no retry or budget look due, no model refused by a budget) writes one
record to `STATE_DIR/settled.json`: the commit, the backends that pass needed (their names, types and settings,
so the next process can check them again), which of them were unavailable, and a fingerprint of everything else
a pass reads (`fingerprint`: the source row, the event log's last id, the attempts, the failures, the retry
book, the outbox, the registry's newest version and alias move, the operator's setup). A new process whose fetched
commit, fingerprint and backend check all equal the record's skips the load and returns what the daemon's own
shortcut returns; any difference runs the full pass. `gitopsd reconcile --once` goes further
(`reconcile/quickpass.py`): with the built-in setup (`DEFAULT_SETUP`) and a local repository it checks the
record before importing pydantic, PyYAML, pygit2 or sqlite-utils at all.

It is an optimisation only. The record is keyed by the *generation* of the code (`code_generation`: gitopsd's
version, the source of the pass and of spec loading, the versions of the spec libraries) and carries a keyed
BLAKE2b MAC with the parse cache's key (`speccache.key`). A missing, truncated, garbled, foreign or forged record,
or one from other code, is ignored, and the full pass runs (and writes a fresh record when it ends settled).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gitopsd
from gitopsd.reconcile.canonical import canonical_json

if TYPE_CHECKING:
    from gitopsd.reconcile.outbox import Outbox
    from gitopsd.reconcile.state import SourceRow, StateStore
    from gitopsd.reconcile.troubles import RetryBook
    from gitopsd.registry.aliases import AliasBook
    from gitopsd.registry.versions import Registry

__all__ = ["DEFAULT_SETUP", "RECORD_FILE", "Settled", "code_generation", "fingerprint", "forget", "read", "write"]

RECORD_FILE = "settled.json"
#: The layout of the record and its MAC.
FORMAT = 1
#: A record larger than this is not read (it holds a few lines per backend, not per model).
MAX_BYTES = 1 << 20
#: The operator part of the fingerprint of a pass with the built-in defaults: no operator configuration (one
#: `local` backend, a file store in the state directory), the default output limits, no signature policy. The
#: quick path (`quickpass`) can show that without pydantic; any other setup is its configuration's JSON.
DEFAULT_SETUP = "default"
#: How an operator's configuration is validated and applied to a state directory: a record made under a
#: configuration (`configsource.setup_of`) is used only by the code that validated that configuration.
CONFIG_SOURCES = ("daemon/config.py", "cli/common.py")
#: Installed libraries whose version changes how specs load, and the file of each that holds its version.
LIBRARY_VERSION_FILES = (("pydantic", "version.py"), ("yaml", "__init__.py"))


@dataclass(frozen=True, kw_only=True)
class Settled:
    """What a settled pass saw: its commit, the backends it needed (name: [type, settings]), those unavailable
    (name: why), and the fingerprint of the rest of the state it read."""

    commit: str
    backends: Mapping[str, tuple[str, Mapping[str, Any]]]
    unavailable: Mapping[str, str]
    fingerprint: str

    def payload(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "backends": {name: [type_, dict(settings)] for name, (type_, settings) in sorted(self.backends.items())},
            "unavailable": dict(sorted(self.unavailable.items())),
            "fingerprint": self.fingerprint,
        }


def code_generation() -> str:
    """What a record must have been written by to be used: this gitopsd (its version and the source of the pass:
    reconcile, registry, backends, spec loading, the Git source, how a configuration is validated) and the
    libraries that load specs (the bytes of pydantic's and PyYAML's version files, read without importing them,
    so that `quickpass` can compute this before any heavy import). A record is used only by the code that wrote it."""
    package = Path(__file__).resolve().parent.parent
    source = hashlib.sha256()
    for folder in ("reconcile", "registry", "backends", "spec", "source"):
        for path in sorted((package / folder).rglob("*.py")):
            source.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    for name in CONFIG_SOURCES:
        source.update(name.encode() + b"\0" + (package / name).read_bytes() + b"\0")
    for library, version_file in LIBRARY_VERSION_FILES:
        source.update(library.encode() + b"\0" + _library_file(library, version_file) + b"\0")
    return f"settled {FORMAT}; gitopsd {gitopsd.__version__}; pass {source.hexdigest()[:16]}"


def _library_file(library: str, name: str) -> bytes:
    """The bytes of a file of an installed package, found without importing the package (b"" when there is
    none: then the full pass fails to import it anyway)."""
    try:
        spec = importlib.util.find_spec(library)
        if spec is None or spec.origin is None:
            return b""
        return (Path(spec.origin).parent / name).read_bytes()
    except (ImportError, ValueError, OSError):
        return b""


def fingerprint(
    row: SourceRow,
    *,
    state: StateStore,
    troubles: RetryBook,
    outbox: Outbox,
    registry: Registry,
    aliases: AliasBook,
    setup: object,
) -> str:
    """A digest of everything a pass reads besides the commit's specs and the backends' health: the source row,
    the event log, the failed attempts at the run keys the models want, the retry book, the outbox, the
    registry's versions and aliases, and the operator's `setup` (`DEFAULT_SETUP`, or its configuration and output
    limits). The same function for the full pass (`Reconciler`) and the quick one (`quickpass`), so they cannot
    disagree on what it covers. Versions and alias moves are only ever added, so their count and newest row stand
    for all of them: the cost does not grow with the registry's history (100,000 versions took 0.3 s to digest
    whole), nor with the runs' (each model's wanted key is looked up in the index of failed runs)."""
    value = {
        "source": [row.url, row.branch, row.applied_commit],
        "event": state.last_event(),
        "failed": list(state.failed().items()),  # of the run keys the models' rows want: all a pass reads
        "troubles": sorted((k, asdict(t)) for k, t in troubles.all().items()),
        "outbox": [asdict(e) for e in outbox.entries()],
        "versions": registry.newest_row(),  # append-only tables: their newest row, not their whole history
        "aliases": aliases.newest_move(),
        "setup": setup,
    }
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _mac(key: bytes, generation: str, text: str) -> str:
    return hashlib.blake2b(f"{generation}\0{text}".encode(), key=key, digest_size=32).hexdigest()


def _canonical(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def read(state_dir: Path, key: bytes, generation: str) -> Settled | None:
    """The record of `state_dir`, or None when there is none or it does not check out in every respect."""
    path = state_dir / RECORD_FILE
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            return None
        doc = json.loads(raw)
        if not isinstance(doc, dict) or set(doc) != {"generation", "payload", "mac"}:
            return None
        payload, mac = doc["payload"], doc["mac"]
        if doc["generation"] != generation or not isinstance(payload, dict) or not isinstance(mac, str):
            return None
        if not hmac.compare_digest(mac, _mac(key, generation, _canonical(payload))):
            return None
        return _settled_of(payload)
    except (OSError, ValueError, TypeError, KeyError):  # missing, unreadable, not JSON, not this shape
        return None


def _settled_of(payload: Mapping[str, Any]) -> Settled | None:
    commit, backends, unavailable, fingerprint = (
        payload["commit"], payload["backends"], payload["unavailable"], payload["fingerprint"],
    )  # fmt: skip
    if not (isinstance(commit, str) and isinstance(fingerprint, str)):
        return None
    if not (isinstance(backends, dict) and isinstance(unavailable, dict)):
        return None
    parsed: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for name, value in backends.items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
            return None
        if not isinstance(value[1], dict):
            return None
        parsed[name] = (value[0], value[1])
    if not all(isinstance(why, str) for why in unavailable.values()):
        return None
    return Settled(commit=commit, backends=parsed, unavailable=dict(unavailable), fingerprint=fingerprint)


def write(state_dir: Path, key: bytes, generation: str, settled: Settled) -> bool:
    """Store `settled` atomically (mode 0600); False, and no record, when it cannot be stored exactly (a backend
    setting JSON would change, a full disk)."""
    payload = settled.payload()
    try:
        text = _canonical(payload)
    except (TypeError, ValueError):  # a setting JSON cannot hold
        forget(state_dir)
        return False
    if _settled_of(json.loads(text)) != _settled_of(payload):  # e.g. a tuple or a date in a backend setting
        forget(state_dir)
        return False
    doc = json.dumps({"generation": generation, "payload": payload, "mac": _mac(key, generation, text)})
    path = state_dir / RECORD_FILE
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(doc)
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        forget(state_dir)
        return False
    return True


def forget(state_dir: Path) -> None:
    """No record: the next new process runs a full pass."""
    with contextlib.suppress(OSError):
        (state_dir / RECORD_FILE).unlink(missing_ok=True)
