"""Which artifact store a registry uses: its URI (`file://`, `s3://` or none) turned into an `ArtifactStore`.

The S3 store is imported only when a URI asks for it, because boto3 is slow to import and most commands never
need it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from gitopsd.errors import PermanentError
from gitopsd.registry.filestore import FileStore
from gitopsd.registry.store import ArtifactStore


def open_store(
    uri: str | None,
    default_root: Path,
    *,
    endpoint_url: str | None = None,
    object_lock_days: int | None = None,
    create: bool = True,
) -> ArtifactStore:
    """The store named by a registry's artifact URI.

    None -> a `FileStore` at `default_root`; `file:///abs/dir` -> a `FileStore` there; `s3://bucket/prefix` ->
    an `S3Store` (credentials from the standard AWS chain; `endpoint_url` else boto3's `AWS_ENDPOINT_URL`).
    `object_lock_days` applies to S3 only: a file store's objects are already read-only. `create`: False opens a
    file store without making its folders (to look only).
    """
    if uri is None:
        return FileStore(default_root, create=create)
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise PermanentError(f"artifact store URI {uri!r} names no bucket: expected s3://bucket/prefix")
        from gitopsd.registry.s3store import S3Store

        return S3Store(
            parsed.netloc,
            unquote(parsed.path).strip("/"),
            endpoint_url=endpoint_url,
            object_lock_days=object_lock_days,
        )
    if not parsed.scheme:
        raise PermanentError(f"artifact store URI {uri!r} has no scheme: write file://{uri} for a local directory "
                             "(an absolute one), or s3://bucket/prefix")  # fmt: skip
    if parsed.scheme != "file":
        raise PermanentError(
            f"artifact store URI {uri!r} has an unknown scheme {parsed.scheme!r}: "
            "expected file:///absolute/dir or s3://bucket/prefix"
        )
    if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
        raise PermanentError(
            f"artifact store URI {uri!r} does not name an absolute local directory: expected file:///absolute/dir"
        )
    return FileStore(Path(unquote(parsed.path)), create=create)
