"""Training environments by digest: the packages a version was trained with, stored once, named in lineage.

Most versions of a team's models are trained in a handful of environments, and a package list is most of a
lineage's bytes (5,970 of them with 103 packages, the list held twice). So an environment, the training's
Python version and every installed package with its version, is stored once, as a record whose name is the
SHA-256 of its own canonical bytes (compact JSON, sorted keys), and a version's lineage says only
`"environment": "sha256:<hex>"`. The same environment always gives the same record and digest; another
environment, another digest.

Like everything `registry rebuild` must restore, an environment is kept twice: a row of `environments` in
`registry.db` (what `registry show` and `lineage` read; rows are write-once, SQLite triggers refuse changes)
and a write-once record in the artifact store, `records/ENVIRONMENT.<hex>/00000001.json` beside the version
records (upper-case, so it never collides with a model), written before the version that names it. A record
read back is trusted only if it hashes to its name.

Versions registered before environments existed have their packages inline (`lineage.packages` and
`lineage.job.packages`); `packages_of` reads either kind.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gitopsd.errors import IntegrityError
from gitopsd.registry.store import ArtifactStore

PREFIX = "ENVIRONMENT."
"""Record names of environments in the store: `ENVIRONMENT.<hex>`, number 1."""

DIGEST_PREFIX = "sha256:"

MOST_PACKAGES = 100_000
"""The most packages an environment record may list: far above any real environment, finite for hostile input."""

MOST_TEXT = 1_000
"""The longest package name, version or Python version kept in a record."""


@dataclass(frozen=True, kw_only=True)
class Environment:
    """A training's Python version and its installed packages (name -> version)."""

    python: str | None
    packages: dict[str, str]

    def record(self) -> bytes:
        """The canonical bytes: what is stored, and what the digest is the SHA-256 of."""
        data = {"record": "environment", "python": self.python, "packages": dict(sorted(self.packages.items()))}
        return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @property
    def hex(self) -> str:
        return hashlib.sha256(self.record()).hexdigest()

    @property
    def digest(self) -> str:
        """`sha256:<hex>`, as lineage names it."""
        return DIGEST_PREFIX + self.hex


def _text(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MOST_TEXT


def from_job(job: Mapping[str, Any]) -> Environment | None:
    """The environment a backend's job description lists (`python`, `packages`), or None when it lists no
    packages, or packages of a shape a record cannot hold (they then stay inline in the lineage, as before)."""
    packages, python = job.get("packages"), job.get("python")
    if not isinstance(packages, dict) or not packages or len(packages) > MOST_PACKAGES:
        return None
    if not all(_text(k) and _text(v) for k, v in packages.items()):
        return None
    return Environment(python=python if _text(python) else None, packages=dict(packages))


def parse_record(raw: bytes, hex_digest: str) -> Environment:
    """The environment in a stored record; raises `IntegrityError` unless it hashes to `hex_digest` and has the
    shape of one (a record read back from a store or a database is not trusted further than that)."""
    if hashlib.sha256(raw).hexdigest() != hex_digest:
        raise IntegrityError(f"environment record sha256:{hex_digest} does not hash to its name: it was altered")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"environment record sha256:{hex_digest} is not JSON: {exc}") from None
    environment = from_job(data) if isinstance(data, dict) and data.get("record") == "environment" else None
    if environment is None or environment.record() != raw:
        raise IntegrityError(f"environment record sha256:{hex_digest} is not an environment record")
    return environment


def hex_of(digest: object) -> str | None:
    """The hex of a lineage's `sha256:<hex>` environment digest; None for anything else."""
    if not isinstance(digest, str) or not digest.startswith(DIGEST_PREFIX):
        return None
    hex_digest = digest.removeprefix(DIGEST_PREFIX)
    return hex_digest if len(hex_digest) == 64 and all(c in "0123456789abcdef" for c in hex_digest) else None


def save(store: ArtifactStore, conn: sqlite3.Connection, environment: Environment) -> None:
    """Keep `environment` in the store, then in the registry database (both idempotent, write-once)."""
    store.put_record(PREFIX + environment.hex, 1, environment.record())
    insert(conn, [environment])


def insert(conn: sqlite3.Connection, environments: list[Environment]) -> None:
    """Add environment rows (one already there is left as it is: same digest, same content)."""
    conn.executemany(
        "INSERT INTO environments (digest, python, packages) VALUES (?, ?, ?)",
        [(e.digest, e.python, json.dumps(dict(sorted(e.packages.items())), sort_keys=True)) for e in environments],
    )


def lookup(conn: sqlite3.Connection | None, digest: object) -> Environment | None:
    """The environment a lineage's digest names, from the registry database; None when it holds no such row
    (a registry older than environments, or one whose row does not hash to its digest)."""
    hex_digest = hex_of(digest)
    if conn is None or hex_digest is None:
        return None
    try:
        row = conn.execute("SELECT python, packages FROM environments WHERE digest = ?", (digest,)).fetchone()
    except sqlite3.OperationalError:
        return None  # no such table: a read-only registry written before environments
    if row is None:
        return None
    try:
        packages = json.loads(row[1])
    except (ValueError, RecursionError, TypeError):
        return None
    environment = from_job({"python": row[0], "packages": packages})
    return environment if environment is not None and environment.hex == hex_digest else None


def packages_of(lineage: Mapping[str, Any], conn: sqlite3.Connection | None) -> dict[str, str] | None:
    """The packages a version was trained with: inline in old lineage, else resolved by its digest; None when a
    digest names an environment the registry does not hold."""
    if "environment" not in lineage:
        inline = lineage.get("packages")
        return dict(inline) if isinstance(inline, Mapping) else {}
    environment = lookup(conn, lineage["environment"])
    return None if environment is None else environment.packages
