"""`registry verify`: every version checked against the store it was stored in, and every store's health.

A version records the URI of its artifact (`s3://bucket/prefix/sha256/ab/...`, `file:///dir/sha256/ab/...`).
When the operator moves `[registry] artifacts`, older versions stay where they were written, so each version is
verified in the store its own URI names, not only in the configured one. Every store involved is first checked
for reachability with the configured credentials (so a wrong secret is an error even with no versions), and
its unfinished uploads are listed (and aborted on request). A store that cannot be reached gives one line, and
its versions are counted as unchecked, not as intact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gitopsd.errors import GitopsdError, IntegrityError
from gitopsd.registry import environments
from gitopsd.registry.recovery import version_record
from gitopsd.registry.store import ArtifactStore
from gitopsd.registry.versions import Version

_OBJECT_URI = re.compile(r"^(?P<store>.+)/sha256/[0-9a-f]{2}/[0-9a-f]{62}$")


def store_uri_of(artifact_uri: str) -> str | None:
    """The URI of the store an artifact was stored in (`s3://b/p/sha256/ab/cd...` -> `s3://b/p`), or None."""
    found = _OBJECT_URI.match(artifact_uri)
    return found.group("store") if found else None


@dataclass(kw_only=True)
class Report:
    """What `verify` found: problems (exit 1), notes (informational), and what was checked."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    versions: int = 0
    stores: list[str] = field(default_factory=list)
    aborted_uploads: int = 0


def verify(
    versions: Iterable[Version],
    configured: ArtifactStore,
    open_uri: Callable[[str], ArtifactStore],
    *,
    own_store: bool = True,
    stale_after_s: float,
    abort_stale: bool = False,
) -> Report:
    """Check every store, then every version's artifact and record in its own store (`own_store`), else all in
    `configured`. `open_uri` opens the store for a URI found in a version; an error opening it is a problem."""
    report = Report()
    stores: dict[str, ArtifactStore | None] = {configured.uri: configured}
    by_store: dict[str, list[Version]] = {configured.uri: []}
    for version in versions:
        report.versions += 1
        uri = (store_uri_of(version.artifact.uri) if own_store else None) or configured.uri
        by_store.setdefault(uri, []).append(version)
    for uri, members in by_store.items():
        if uri not in stores:
            try:
                stores[uri] = open_uri(uri)
            except GitopsdError as exc:
                stores[uri] = None
                report.problems.append(f"store {uri} of {_labels(members)}: {exc}")
                continue
        store = stores[uri]
        assert store is not None
        report.stores.append(store.uri)
        if not _check_store(store, members, stale_after_s, abort_stale, report):
            continue
        _verify_versions(store, members, report)
    return report


def _labels(versions: list[Version]) -> str:
    if not versions:
        return "no version"
    shown = ", ".join(v.label for v in versions[:3])
    return shown + (f" and {len(versions) - 3} more" if len(versions) > 3 else "")


def _check_store(
    store: ArtifactStore, members: list[Version], stale_after_s: float, abort_stale: bool, report: Report
) -> bool:
    """Whether the store can be read; its unfinished uploads become problems (or are aborted)."""
    try:
        store.check()
        stale = store.stale_uploads(stale_after_s)
        if stale and abort_stale:
            report.aborted_uploads += store.abort_stale_uploads(stale_after_s)
            for line in stale:
                report.notes.append(f"aborted unfinished upload {line}")
        else:
            for line in stale:
                report.problems.append(
                    f"unfinished upload {line} in {store.uri}: its writer was killed or cut off; abort it with "
                    "`gitopsd registry verify --abort-stale-uploads`"
                )
    except GitopsdError as exc:
        unchecked = f"; {len(members)} version(s) not checked ({_labels(members)})" if members else ""
        report.problems.append(f"store {store.uri}: {exc}{unchecked}")
        return False
    return True


def _verify_versions(store: ArtifactStore, members: list[Version], report: Report) -> None:
    checked: set[str] = set()
    for index, version in enumerate(members):
        try:
            try:
                store.verify(version.artifact.sha256, version.artifact.size)
            except IntegrityError as exc:
                report.problems.append(f"{version.label}: {exc}")
            if store.get_record(version.model, version.number) != version_record(version):
                report.problems.append(
                    f"{version.label}: its record in {store.uri} is missing or differs from the registry"
                )
            _verify_environment(store, version, checked, report)
        except GitopsdError as exc:  # the store failed midway (an outage, revoked credentials)
            rest = members[index:]
            report.problems.append(f"store {store.uri}: {exc}; {len(rest)} version(s) not checked ({_labels(rest)})")
            return


def _verify_environment(store: ArtifactStore, version: Version, checked: set[str], report: Report) -> None:
    """The environment a version names by digest must be in its store, intact (each digest read once)."""
    hex_digest = environments.hex_of(version.lineage.get("environment"))
    if hex_digest is None or hex_digest in checked:
        return
    checked.add(hex_digest)
    raw = store.get_record(environments.PREFIX + hex_digest, 1)
    try:
        if raw is None:
            raise IntegrityError("missing")
        environments.parse_record(raw, hex_digest)
    except IntegrityError as exc:
        report.problems.append(f"{version.label}: its environment record sha256:{hex_digest} in {store.uri}: {exc}")
