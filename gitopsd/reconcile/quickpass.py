"""`gitopsd reconcile --once` with nothing to do, decided before any heavy import.

A settled state directory (`settled.py`) already lets a new process skip loading the specs, but only after it
has imported pydantic, PyYAML, pygit2 and sqlite-utils, parsed the operator's configuration, built a whole
`Reconciler` and fetched with pygit2: about 0.4 s of a pass that does nothing. This module makes the same
decision with the standard library, sqlite3 and gitopsd's light modules, and returns the applied commit when
it can show that the full pass would return at once with nothing done; otherwise None, and the caller runs the
full pass exactly as before. It applies only where everything the full pass reads can be checked here:

- no signature policy, and either no operator configuration (`settled.DEFAULT_SETUP`: the built-in `local`
  backend, a file store in the state directory, the default output limits) or a configuration file that
  `configsource.plain` accepts (only `local` backends, no `runs_dir`, no `[standby]`, no `[environment]`, no
  secret reference, no `verify`, a local artifact store; its module docstring says why each), whose digest
  (`configsource.setup_of`: the file's path and text, the repository entry serving the state directory) the
  record's fingerprint then holds, and whose repository entry, if one serves this state directory, names the
  tracked URL and branch;
- a local repository (a path or file:// URL): its heads and its HEAD are listed by `git ls-remote`, and so are
  the mirror's; they must be equal (a full pass would then fetch nothing) and give the commit of the record. A
  remote URL always takes the full pass: the network round trip, not the imports, dominates there;
- the record reads and verifies (`settled.read`, same key and code generation), the tracked URL is the one
  asked for, no run is in flight, no trouble waits for the operator (a new process forgives those), the
  registry holds versions or its store holds no record to restore, the fingerprint (`settled.fingerprint`,
  the very function of the full pass) is the record's, and every backend of the record is a built-in `local`
  one that checks out as it did.

Then it does what the full pass does on that shortcut: it writes the source row (fetched commit, time,
trigger `cli`, no error) to state.db and sweeps the store's stale uploads. What it skips is harmless: the parse
cache is not opened (it is an optimisation only) and the mirror is not touched (it already equals the remote).
It takes no pass lock (`passlock.py`): it acts on nothing it read, and a pass of another process in progress
has either changed what the fingerprint covers (then this is not settled, and the full pass waits for the lock)
or not yet. `gitopsd plan` asks the same question (`settled_record`, `settled_source`: they only read) of the
databases, opened read-only.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import subprocess
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitopsd.errors import GitopsdError
from gitopsd.reconcile import configsource, settled
from gitopsd.reconcile.configsource import Plain
from gitopsd.reconcile.outbox import Outbox
from gitopsd.reconcile.state import SourceRow, StateStore
from gitopsd.reconcile.statekey import state_key
from gitopsd.reconcile.troubles import RetryBook
from gitopsd.registry.aliases import AliasBook
from gitopsd.registry.versions import Registry
from gitopsd.source.urls import is_git_repository, local_path, normalise_url

if TYPE_CHECKING:
    from gitopsd.registry.store import ArtifactStore

__all__ = ["Listing", "local_commit", "parse_listing", "quick_reconcile", "settled_record", "settled_source"]

log = logging.getLogger("gitopsd")

#: How long one `git ls-remote` of a local repository may take before the full pass is left to decide.
LIST_TIMEOUT_S = 30.0
_OID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_NAME = re.compile(r"[^\s\x00-\x1f\x7f]+")

#: No operator configuration: the built-in setup.
BUILT_IN = Plain(setup=settled.DEFAULT_SETUP, store=None, repository=None)
#: A repository's listing: its HEAD's symbolic target (None when HEAD is detached or unborn) and its branches.
Listing = tuple[str | None, dict[str, str]]


def quick_reconcile(
    state_dir: Path, repo: str | None, branch: str | None, *, config: Path | None, verified: bool
) -> str | None:
    """The commit a full `reconcile` pass of `state_dir` would report with no action and no run in flight,
    when that can be shown without the full pass (see the module docstring); None when not, or not sure.
    `repo`, `branch`: as given on the command line; `config`: the operator's configuration file in force, if
    any; `verified`: a signature policy was given."""
    found = settled_record(state_dir, config, verified)
    if found is None:
        return None
    record, setup = found
    try:
        state = StateStore(state_dir / "state.db")
    except GitopsdError:
        return None
    try:
        with Registry(state_dir / "registry.db") as registry:
            source = settled_source(state, registry, state_dir, record, repo, branch, setup)
        if source is None:
            return None
        commit, row = source
        log.debug("commit %s: settled since the last pass (%s), nothing to load", commit[:12], settled.RECORD_FILE)
        state.set_source(row)
        _sweep_uploads(state_dir, setup)
        return commit
    except (GitopsdError, OSError, ValueError, sqlite3.Error):  # whatever the full pass meets, it reports itself
        return None
    finally:
        state.close()


def settled_record(state_dir: Path, config: Path | None, verified: bool) -> tuple[settled.Settled, Plain] | None:
    """The state directory's settled-pass record and the setup it was made under, when the quick path applies
    to this setup (see the module docstring) and the record reads and verifies; None otherwise."""
    if verified:
        return None
    setup = BUILT_IN if config is None else configsource.plain(config, state_dir)
    if setup is None:
        return None
    if not (state_dir / "state.db").is_file() or not (state_dir / settled.RECORD_FILE).is_file():
        return None
    key = state_key(state_dir, create=False)
    if key is None:
        return None
    record = settled.read(state_dir, key, settled.code_generation())
    return None if record is None else (record, setup)


def settled_source(
    state: StateStore,
    registry: Registry,
    state_dir: Path,
    record: settled.Settled,
    repo: str | None,
    branch: str | None,
    setup: Plain,
) -> tuple[str, SourceRow] | None:
    """The commit a full pass would fetch and find settled, and the source row it would then write, when `state`
    and `registry` (the state directory's databases, read-write or read-only) show it; None otherwise.
    Reads only: the caller writes the row if it is a pass."""
    known = state.source()
    if known is None:
        return None
    url = normalise_url(known.url if repo is None else repo)
    branch = (branch or known.branch) if repo is None else branch
    path = local_path(url)
    if url != known.url or path is None or not is_git_repository(path):
        return None
    if branch is not None and branch.startswith("-"):
        return None
    if setup.repository is not None and (normalise_url(setup.repository[0]), setup.repository[1]) != (url, branch):
        return None  # the configuration serves this state directory with another repository
    troubles = RetryBook(state.conn, time.time)
    if any(trouble.permanent for trouble in troubles.all().values()):  # a new Reconciler forgives them
        return None
    if registry.empty() and next(iter(_store(state_dir, setup, create=False).records()), None):
        return None  # a lost registry that the full pass restores from its store
    row = replace(known, branch=branch, trigger="cli")
    commit = remote_commit(str(path), state_dir / "source.git", branch)
    if commit is None or commit != row.applied_commit or record.commit != commit:
        return None
    row = replace(row, fetched_commit=commit, fetched_at=time.time(), error_reason="", error="")
    if state.active_runs():
        return None
    found = settled.fingerprint(
        row, state=state, troubles=troubles, outbox=Outbox(state.conn, time.time), registry=registry,
        aliases=AliasBook(registry.conn), setup=setup.setup,
    )  # fmt: skip
    if found != record.fingerprint or local_unavailable(record.backends) != dict(record.unavailable):
        return None
    return commit, row


def _store(state_dir: Path, setup: Plain, *, create: bool = True) -> ArtifactStore:
    """The artifact store of the state directory: the default one in it, or the configuration's local one
    (`create`: False to look without making its folders). Imported here: a settled `plan` asks for it only
    when the registry is empty."""
    from gitopsd.registry.stores import open_store

    return open_store(setup.store, state_dir / "artifacts", create=create)


def _sweep_uploads(state_dir: Path, setup: Plain) -> None:
    """As a new process's first full pass does: abort the uploads a killed writer left unfinished."""
    from gitopsd.registry.store import sweep_stale_uploads

    sweep_stale_uploads(lambda: _store(state_dir, setup))


def local_unavailable(needed: Mapping[str, tuple[str, Mapping[str, Any]]]) -> dict[str, str] | None:
    """Why each needed backend cannot be used now (as `Observer.check` says it), or None when one is not of the
    built-in `local` type (only the full pass looks plugins up)."""
    if any(type_ != "local" for type_, _ in needed.values()):
        return None
    from gitopsd.backends.local.readiness import unavailable

    found = {name: unavailable(name, dict(given)) for name, (_, given) in sorted(needed.items())}
    return {name: why for name, why in found.items() if why is not None}


def remote_commit(remote: str, mirror: Path, branch: str | None) -> str | None:
    """The commit a full pass would fetch and resolve for `branch` (default: the remote's HEAD), when the
    mirror already holds exactly the remote's branches and HEAD, so that the fetch would transfer nothing;
    None otherwise or when either cannot be listed."""
    if not (mirror / "HEAD").is_file():
        return None
    listings = _list_both(remote, str(mirror))
    if listings is None:
        return None
    (head, heads), mirrored = listings
    if head is None or (head, heads) != mirrored:
        return None
    return heads.get(f"refs/heads/{branch}" if branch else head)


def local_commit(repo: Path, ref: str) -> str | None:
    """The commit `ref` names in the local repository `repo` (as `gitopsd plan --branch` resolves it: a branch,
    a tag, a commit id, HEAD), or None."""
    if ref.startswith("-"):
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=LIST_TIMEOUT_S,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = done.stdout.strip()
    return found if done.returncode == 0 and _OID.fullmatch(found) else None


def _list_both(remote: str, mirror: str) -> tuple[Listing, Listing] | None:
    """`git ls-remote --symref` of both repositories, run side by side."""
    if remote.startswith("-") or mirror.startswith("-"):
        return None
    running: list[subprocess.Popen[str]] = []
    try:
        for where in (remote, mirror):
            running.append(_ls_remote(where))
    except OSError:
        for process in running:
            process.kill()
            process.communicate()
        return None
    outputs: list[str | None] = []
    for process in running:
        try:
            out, _ = process.communicate(timeout=LIST_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            out = None
        outputs.append(out if process.returncode == 0 else None)
    remote_out, mirror_out = outputs
    if remote_out is None or mirror_out is None:
        return None
    first, second = parse_listing(remote_out), parse_listing(mirror_out)
    if first is None or second is None:
        return None
    return first, second


def _ls_remote(where: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["git", "ls-remote", "--symref", "--", where], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, errors="replace",
    )  # fmt: skip


def parse_listing(text: str) -> Listing | None:
    """`git ls-remote --symref` output as (HEAD's target, branch -> commit); None for anything that is not
    exactly that form (a garbled or hostile listing: the full pass decides)."""
    head: str | None = None
    heads: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 2 or not _NAME.fullmatch(parts[1]):
            return None
        value, name = parts
        if value.startswith("ref: "):
            target = value.removeprefix("ref: ")
            if name != "HEAD" or head is not None or not target.startswith("refs/heads/"):
                return None
            if not _NAME.fullmatch(target):
                return None
            head = target
            continue
        if not _OID.fullmatch(value):
            return None
        if name.startswith("refs/heads/"):
            if name in heads:
                return None
            heads[name] = value
    return head, heads
