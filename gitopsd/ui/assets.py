"""The dashboard's static files: read from the installed package, by name from an allow-list, never by path.

The allow-list is the package's `static/` directory as it is at import: plain files whose names are made of
`[A-Za-z0-9._-]` (no subdirectory, no leading dot), so no request can name anything else, whatever it holds.
Each file is read once and kept in memory with its gzip form (the directory holds a few hundred KiB: the
page, its script and style, and the charting library with its licence). Nothing here comes from a network.
"""

from __future__ import annotations

import gzip
import re
import threading
from dataclasses import dataclass
from importlib.resources import files

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".license": "text/plain; charset=utf-8",  # a vendored library's licence, e.g. uPlot.LICENSE
}
_COMPRESSIBLE = ("text/", "application/json", "image/svg+xml")


@dataclass(frozen=True)
class Asset:
    name: str
    content_type: str
    body: bytes
    gzipped: bytes | None  # None when compressing would not pay


def content_type(name: str) -> str:
    """The Content-Type of a static file by its extension; a licence file without one is plain text."""
    dot = name.rfind(".")
    if dot <= 0:
        return "text/plain; charset=utf-8"
    return _TYPES.get(name[dot:].lower(), "application/octet-stream")


def _listing() -> frozenset[str]:
    try:
        root = files("gitopsd.ui").joinpath("static")
        if not root.is_dir():
            return frozenset()
        return frozenset(e.name for e in root.iterdir() if _NAME.fullmatch(e.name) and e.is_file())
    except OSError:
        return frozenset()


ALLOWED = _listing()
_cache: dict[str, Asset] = {}
_lock = threading.Lock()


def asset(name: str) -> Asset | None:
    """The static file `name` if it is on the allow-list, else None."""
    if name not in ALLOWED:
        return None
    with _lock:
        found = _cache.get(name)
        if found is None:
            try:
                body = files("gitopsd.ui").joinpath("static").joinpath(name).read_bytes()
            except OSError:  # removed since the import (a package upgrade under a running daemon)
                return None
            kind = content_type(name)
            packed = gzip.compress(body, 6, mtime=0) if kind.startswith(_COMPRESSIBLE) and len(body) > 1024 else None
            found = _cache[name] = Asset(name, kind, body, packed if packed and len(packed) < len(body) else None)
        return found
