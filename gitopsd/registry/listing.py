"""The registry's listings as streams: each version and history entry turned into output as it is read.

`gitopsd registry list --json` on 100,000 versions used to decode every version, build one list of documents,
then one indented string: gigabytes, seconds of the cyclic GC and of the pure-Python indenting encoder. Here
each row comes from a cursor and leaves as text before the next is read, so memory stays flat whatever the
registry's size (`gitopsd.cli.jsonstream` writes the array around the rows), and the collector finds nothing
to do (pausing it measured no difference).

The fast path. A version's metrics, gates and lineage are stored as JSON text that `Registry.register` encoded
itself (`json.dumps`, finite numbers only), and rows are immutable. When SQLite's `json_valid` (C, in the same
query; strict RFC 8259, which is Python's parser less NaN and Infinity) says the three stored texts are JSON,
they are written as they are instead of being decoded into Python objects and encoded again, which was most of
the cost; a JSON parser reads the same values from them. The one field the old listing changed is
`lineage.repo` (a URL registered before URL redaction may carry a credential): a row takes the fast path only
when its lineage is an object whose `repo`, as SQLite reads it, is absent or a URL `redact_url` leaves alone.
Any other row (not JSON, NaN, a URL to redact, a value that is not text, a time that is not finite) takes the
old way through `version_doc`: the same document, and the same error for a row that cannot be read. Indented
text (what a terminal gets) always takes the old way, byte for byte.

Where SQLite and Python could read one text differently: a duplicated key (SQLite takes the first, Python the
last). `json.dumps` never writes one, so only a hand edit of `registry.db` makes one, and `registry.db` is the
service account's (docs/security.md); checking every text for it would cost a third of the listing.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

from gitopsd.registry.aliases import AliasBook, AliasRecord
from gitopsd.registry.versions import Registry, Version, version_from_row
from gitopsd.source.redact import redact_url

_CHECKS = (
    # CASE, not AND: json_type and json_extract raise on text that is not JSON, and only CASE is evaluated lazily.
    "CASE WHEN json_valid(metrics) AND json_valid(gates) AND json_valid(lineage) THEN json_type(lineage) END",
    "CASE WHEN json_valid(lineage) THEN json_extract(lineage, '$.repo') END",
)

_encode = json.JSONEncoder().encode
"""The C encoder with json.dumps' defaults: one line, `", "` and `": "`, as `gitopsd status --json` piped."""
_string = json.encoder.encode_basestring_ascii
"""How json.dumps writes a string (C): quoted, escaped, ASCII only."""


def version_doc(v: Version) -> dict[str, Any]:
    """The JSON document of one version (`registry list --json`, `registry show`)."""
    lineage = dict(v.lineage)
    if isinstance(lineage.get("repo"), str):  # versions registered before URLs were redacted in lineage
        lineage["repo"] = redact_url(lineage["repo"])
    return {
        "model": v.model,
        "version": v.number,
        "label": v.label,
        "run_id": v.run_id,
        "run_key": v.run_key,
        "artifact": {"sha256": v.artifact.sha256, "size": v.artifact.size, "uri": v.artifact.uri},
        "metrics": v.metrics,
        "gates": v.gates,
        "lineage": lineage,
        "created_at": v.created_at,
    }


def stored_text(row: tuple[Any, ...]) -> str | None:
    """The JSON text of a row of `version_texts`' query with its stored JSON written as it is, or None when the
    row must take the old way (see the module docstring)."""
    name, number, run_id, run_key, sha, size, uri, metrics, gates, lineage, created_at, kind, repo = row
    if kind != "object" or type(metrics) is not str or type(gates) is not str or type(lineage) is not str:
        return None
    if repo is not None and (type(repo) is not str or not _left_alone(repo)):
        return None
    if not (type(name) is str and type(run_id) is str and type(run_key) is str and type(sha) is str
            and type(uri) is str and type(number) is int and type(size) is int):  # fmt: skip
        return None  # what json.dumps would write otherwise (or refuse) is the old way's to say
    if type(created_at) is not float or not math.isfinite(created_at):
        return None
    return (f'{{"model": {_string(name)}, "version": {number!r}, "label": {_string(f"{name}@{number}")}, '
            f'"run_id": {_string(run_id)}, "run_key": {_string(run_key)}, "artifact": {{"sha256": {_string(sha)}, '
            f'"size": {size!r}, "uri": {_string(uri)}}}, "metrics": {metrics}, "gates": {gates}, '
            f'"lineage": {lineage}, "created_at": {created_at!r}}}')  # fmt: skip


def _left_alone(url: str) -> bool:
    """Whether `redact_url` returns `url` unchanged (it changes only a URL with `@`, `?` or `#` in it)."""
    return ("@" not in url and "?" not in url and "#" not in url) or redact_url(url) == url


def version_texts(registry: Registry, model: str | None = None, *, indent: int | None = None) -> Iterator[str]:
    """Each version (of `model`, or all by model then number) as JSON text, one at a time.

    With `indent`: `json.dumps(version_doc(v), indent=indent)`. Without: one line, which a JSON parser reads as
    `version_doc(v)`."""
    for row in registry.rows(model, extra=", ".join(_CHECKS)):
        text = stored_text(row) if indent is None else None
        if text is None:
            doc = version_doc(version_from_row(row[:11]))
            text = _encode(doc) if indent is None else json.dumps(doc, indent=indent)
        yield text


class Summary(NamedTuple):
    """What the text listing shows of a version (a tuple: one is made per row)."""

    label: str
    sha256: str
    size: int
    commit: Any  # lineage["commit"], else "" (the listing shortens it)
    metrics: dict[str, Any]


_SUMMARY_CHECKS = (
    "CASE WHEN json_valid(gates) AND json_valid(lineage) AND json_type(lineage) = 'object' "
    "THEN coalesce(json_type(lineage, '$.commit'), 'absent') END",
    "CASE WHEN json_valid(lineage) THEN json_extract(lineage, '$.commit') END",
)


def summaries(registry: Registry, model: str | None = None) -> Iterator[Summary]:
    """Each version (of `model`, or all by model then number) as the text listing shows it, one at a time.

    A row whose gates and lineage are JSON, with a text commit or none, is not decoded beyond its metrics:
    SQLite reads the commit. Any other row is decoded whole, as before (and fails as before)."""
    for row in registry.rows(model, extra=", ".join(_SUMMARY_CHECKS)):
        name, number, sha, size, metrics, commit_type, commit = row[0], row[1], row[4], row[5], row[7], *row[11:]
        if commit_type in ("text", "absent"):
            yield Summary(label=f"{name}@{number}", sha256=sha, size=size, commit=commit or "",
                          metrics=json.loads(metrics))  # fmt: skip
        else:
            v = version_from_row(row[:11])
            yield Summary(label=v.label, sha256=v.artifact.sha256, size=v.artifact.size,
                          commit=v.lineage.get("commit", ""), metrics=v.metrics)  # fmt: skip


def history(registry: Registry, model: str) -> Iterator[dict[str, Any]]:
    """`model`'s registrations and alias moves as `gitopsd history` shows them, oldest first, one at a time.

    The order is that of a stable sort by time of all registrations (by number) then all moves (in the order
    made): SQLite gives each kind ordered by (time, number) and (time, move), and the merge takes a
    registration before a move of the same time."""
    registered = (_registered(v) for v in map(version_from_row, registry.rows(model, by_time=True)))
    moved = (_moved(m) for m in AliasBook(registry.conn).moves(model, by_time=True))
    return heapq.merge(registered, moved, key=lambda entry: entry["at"])


def _registered(v: Version) -> dict[str, Any]:
    return {"at": v.created_at, "event": "registered", "version": v.number, "commit": v.lineage.get("commit", ""),
            "subject": v.lineage.get("commit_info", {}).get("subject", ""), "run_key": v.run_key,
            "artifact": v.artifact.sha256}  # fmt: skip


def _moved(m: AliasRecord) -> dict[str, Any]:
    return {"at": m.at, "event": f"alias {m.kind}", "alias": m.alias, "version": m.version, "previous": m.previous,
            "commit": m.commit_id, "subject": m.subject}  # fmt: skip
