"""The S3 artifact store: the same write-once, digest-checked contract as `FileStore`, on any S3 endpoint.

Teams on several clusters share one registry bucket, so the store must hold the same promises over a network
and against concurrent writers: a key is never overwritten (conditional writes, `If-None-Match: *`, and a
check before each write for servers that ignore it), bytes are hashed before they leave and again after they
land, memory stays bounded whatever the artifact's size (streamed multipart upload, chunked reads), and errors
arrive as the two kinds the reconciler understands: transient (network, throttling, 5xx) or permanent (denied,
no such bucket, altered bytes). Credentials come only from the standard AWS chain, never from the repository.
This module imports boto3, so `gitopsd.registry.stores.open_store` imports it only for `s3://` URIs.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)

from gitopsd.errors import GitopsdError, IntegrityError, PermanentError, TransientError
from gitopsd.registry.store import (
    CHUNK,
    STALE_UPLOAD_S,
    ArtifactRef,
    check_digest,
    copy_chunks_hashing,
    create_temp,
    parse_record_name,
    record_conflict,
    record_name,
)
from gitopsd.registry.tarpack import pack_directory

MIN_PART_SIZE = 5 << 20
"""S3's smallest part (all but the last) of a multipart upload."""
DEFAULT_PART_SIZE = 16 << 20
"""Bytes per uploaded part: one part is in memory at a time."""
MAX_PARTS = 10_000

_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling", "ThrottlingException",
     "RequestLimitExceeded", "ConditionalRequestConflict", "OperationAborted", "RequestTimeTooSkewed"}
)  # fmt: skip
_DENIED_CODES = frozenset(
    {"AccessDenied", "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
     "InvalidObjectState"}
)  # fmt: skip
_WRONG_KEY_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch"})
_DIGEST_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})
_CREDENTIALS_HELP = (
    "credentials come from the standard AWS chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
    "AWS_SHARED_CREDENTIALS_FILE or instance metadata"
)
_CONFIG = "[registry] artifacts in the daemon configuration"
"""Age after which an unfinished multipart upload is taken as abandoned (its writer was killed or cut off)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def classify_client_error(
    exc: ClientError, *, action: str, bucket: str, key: str, endpoint: str, locking: bool = False
) -> GitopsdError:
    """What a failed S3 request means for gitopsd: transient (retry later), permanent (a human must fix the
    named thing) or an integrity error; one line naming the bucket, key and endpoint, and what to fix."""
    code, status = _code(exc), _status(exc)
    message = _one_line(exc.response.get("Error", {}).get("Message", ""))
    detail = f"{code or status}: {message}".rstrip(": ")
    where = f"s3://{bucket}/{key} at {endpoint}"
    if status >= 500 or status in (409, 429) or code in _TRANSIENT_CODES:
        return TransientError(f"S3 {action} {where} failed, will retry: {detail}")
    if code == "NoSuchBucket":
        return PermanentError(
            f"S3 bucket {bucket!r} does not exist at {endpoint}: create it, or fix {_CONFIG} (or [registry] "
            "endpoint_url)"
        )
    if code in _WRONG_KEY_CODES:
        which = "access key ID is unknown" if code == "InvalidAccessKeyId" else "secret access key is wrong"
        return PermanentError(
            f"S3 at {endpoint} refused the credentials for bucket {bucket!r} ({detail}): the {which}; fix them "
            f"({_CREDENTIALS_HELP})"
        )
    if status in (401, 403) or code in _DENIED_CODES:
        return PermanentError(
            f"S3 bucket {bucket!r} refused {action} {where}: {detail}; check that these credentials may {action} "
            f"objects in it ({_CREDENTIALS_HELP})"
        )
    if locking and code in ("InvalidRequest", "InvalidArgument", "ObjectLockConfigurationNotFoundError"):
        return PermanentError(
            f"S3 bucket {bucket!r} at {endpoint} refused Object Lock retention for {key} ({detail}): the bucket "
            "has no Object Lock; create the bucket with Object Lock enabled, or remove [registry] "
            "object_lock_days from the daemon configuration"
        )
    if code in _DIGEST_CODES:
        return IntegrityError(
            f"S3 {action} {where}: the bytes that arrived did not match their checksum ({detail}); nothing was "
            "stored under that key"
        )
    return PermanentError(f"S3 {action} {where} failed: {detail}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _not_found(exc: ClientError) -> bool:
    """A missing key (a missing bucket is not "not found": it is a configuration error)."""
    return _code(exc) != "NoSuchBucket" and (_status(exc) == 404 or _code(exc) in ("404", "NoSuchKey", "NotFound"))


def _precondition_failed(exc: ClientError) -> bool:
    return _status(exc) == 412 or _code(exc) == "PreconditionFailed"


def _default_client(endpoint_url: str | None) -> Any:
    """An S3 client from the standard credential chain; path-style addressing on a custom endpoint."""
    custom = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=120,
        s3={"addressing_style": "path"} if custom else None,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class S3Store:
    """A content-addressed store under `s3://bucket/prefix`: objects at `sha256/ab/cdef...`, records beside."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        object_lock_days: int | None = None,
        client: Any = None,
        part_size: int = DEFAULT_PART_SIZE,
        tmp_dir: Path | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise PermanentError(f"S3 bucket name {bucket!r} is invalid: expected a bucket name like 'ml-models'")
        if object_lock_days is not None and (isinstance(object_lock_days, bool) or object_lock_days < 1):
            raise PermanentError(f"S3 object lock of {object_lock_days!r} days: expected a whole number >= 1")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 part size {part_size} bytes: expected at least {MIN_PART_SIZE} (5 MiB)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.object_lock_days = object_lock_days
        self.part_size = part_size
        self.tmp_dir = tmp_dir
        self._client: Any = client if client is not None else _default_client(endpoint_url)
        self._unaborted: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def key(self, sha256: str) -> str:
        """The object key of the artifact with this digest (whether or not it exists)."""
        check_digest(sha256)
        return self._key(f"sha256/{sha256[:2]}/{sha256[2:]}")

    def object_uri(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self.key(sha256)}"

    @contextmanager
    def _calling(self, action: str, key: str, *, locking: bool = False) -> Iterator[None]:
        """Turn boto3's exceptions into gitopsd's transient and permanent errors, naming endpoint and bucket."""
        where = f"s3://{self.bucket}/{key} at {self.endpoint}"
        try:
            yield
        except GitopsdError:
            raise
        except ClientError as exc:
            raise classify_client_error(
                exc, action=action, bucket=self.bucket, key=key, endpoint=self.endpoint, locking=locking
            ) from exc
        except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError) as exc:
            raise PermanentError(
                f"no usable credentials for S3 bucket {self.bucket!r}: {_one_line(exc)}; {_CREDENTIALS_HELP}"
            ) from exc
        except (HTTPClientError, ConnectionError, IncompleteReadError, FlexibleChecksumError) as exc:
            raise TransientError(
                f"S3 {action} {where} failed (endpoint unreachable or cut off), will retry: {_one_line(exc)}; "
                "check that the S3 service is up and [registry] endpoint_url"
            ) from exc
        except BotoCoreError as exc:
            raise TransientError(f"S3 {action} {where} failed: {_one_line(exc)}") from exc

    def _lock_args(self) -> dict[str, Any]:
        if self.object_lock_days is None:
            return {}
        until = datetime.now(UTC) + timedelta(days=self.object_lock_days)
        return {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": until}

    def _get(self, key: str) -> Any | None:
        """The GetObject response for `key` (its body still unread), or None if there is no such object."""
        with self._calling("read", key):
            try:
                return self._client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _not_found(exc):
                    return None
                raise

    def _read(self, key: str) -> bytes | None:
        response = self._get(key)
        if response is None:
            return None
        with self._calling("read", key):
            data: bytes = response["Body"].read()
        return data

    def exists(self, sha256: str) -> bool:
        key = self.key(sha256)
        with self._calling("look up", key):
            try:
                self._client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _not_found(exc):
                    return False
                if _code(exc) == str(_status(exc)):  # a HEAD error has no body: ask once more, to say why
                    self.check()
                raise
        return True

    def _open_checked(self, sha256: str, size: int | None) -> tuple[Any, str]:
        """The streaming body of an object, after checking that it exists and has the expected size."""
        key = self.key(sha256)
        where = f"s3://{self.bucket}/{key}"
        response = self._get(key)
        if response is None:
            raise IntegrityError(f"artifact {where}: expected sha256 {sha256}, found missing")
        actual_size = int(response["ContentLength"])
        if size is not None and actual_size != size:
            response["Body"].close()
            raise IntegrityError(
                f"artifact {where}: expected {size} bytes with sha256 {sha256}, found {actual_size} bytes"
            )
        return response["Body"], key

    def verify(self, sha256: str, size: int | None = None) -> None:
        """Stream the object back and re-hash it (1 MiB at a time); `IntegrityError` if missing or altered."""
        body, key = self._open_checked(sha256, size)
        digest = hashlib.sha256()
        with self._calling("read", key):
            try:
                for chunk in body.iter_chunks(CHUNK):
                    digest.update(chunk)
            finally:
                body.close()
        if (actual := digest.hexdigest()) != sha256:
            raise IntegrityError(f"artifact s3://{self.bucket}/{key}: expected sha256 {sha256}, found sha256 {actual}")

    def copy_out(self, sha256: str, dest: Path) -> None:
        """Download a stored object to `dest`, hashing as it goes; on a mismatch raise and leave no `dest`."""
        dest = Path(dest)
        body, key = self._open_checked(sha256, None)
        tmp, out = create_temp(dest.parent, dest.name)
        try:
            with out:
                with self._calling("download", key):
                    try:
                        actual, _ = copy_chunks_hashing(body.iter_chunks(CHUNK), out)
                    finally:
                        body.close()
                out.flush()
                os.fsync(out.fileno())
            if actual != sha256:
                raise IntegrityError(
                    f"artifact s3://{self.bucket}/{key}: expected sha256 {sha256}, found sha256 {actual}; "
                    f"not copied to {dest}"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def put(self, src: Path) -> ArtifactRef:
        """Store a file, or a directory packed as a deterministic tar, and return its reference.

        The digest is computed locally first; an existing object under it is verified and kept, never replaced.
        Otherwise the bytes are streamed up (multipart above one part) with a conditional write, and the stored
        object is streamed back and re-hashed before the reference is returned.
        """
        src = Path(src)
        if src.is_dir():
            with tempfile.TemporaryDirectory(prefix="gitopsd-pack-", dir=self.tmp_dir) as scratch:
                packed = Path(scratch) / "artifact.tar"
                with open(packed, "wb") as out:
                    digest, size = pack_directory(src, out)
                return self._put_file(packed, digest, size, src)
        try:
            with open(src, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            raise PermanentError(f"artifact {src} does not exist: nothing to store") from None
        return self._put_file(src, digest, size, src)

    def _put_file(self, path: Path, digest: str, size: int, src: Path) -> ArtifactRef:
        ref = ArtifactRef(sha256=digest, size=size, uri=self.object_uri(digest))
        if self._unaborted:
            self._abort_remembered()
        if not self.exists(digest):
            if size <= self.part_size:
                self._upload_small(path, digest, src)
            else:
                self._upload_multipart(path, digest, size, src)
        # Ours, or a concurrent writer's (412) or an earlier one's: it must hold exactly these bytes.
        self.verify(digest, size)
        return ref

    def _changed(self, src: Path, digest: str, actual: str) -> IntegrityError:
        return IntegrityError(
            f"artifact {src} changed while it was being stored (sha256 {digest} when hashed, {actual} when "
            "uploaded); nothing was written: store it again once whatever writes it has finished"
        )

    def _upload_small(self, path: Path, digest: str, src: Path) -> None:
        with open(path, "rb") as f:
            body = f.read()
        if (actual := hashlib.sha256(body).hexdigest()) != digest:
            raise self._changed(src, digest, actual)
        key = self.key(digest)
        with self._calling("upload", key, locking=self.object_lock_days is not None):
            try:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*", **self._lock_args())
            except ClientError as exc:
                if not _precondition_failed(exc):
                    raise

    def _upload_multipart(self, path: Path, digest: str, size: int, src: Path) -> None:
        """Upload one part at a time (never the whole file in memory); complete only if the bytes still hash right."""
        key = self.key(digest)
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        with self._calling("start the upload of", key, locking=self.object_lock_days is not None):
            upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=key, **self._lock_args())[
                "UploadId"
            ]
        completed = False
        try:
            parts: list[dict[str, Any]] = []
            hasher = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(part_size):
                    hasher.update(chunk)
                    number = len(parts) + 1
                    with self._calling(f"upload part {number} of", key):
                        response = self._client.upload_part(
                            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                        )
                    part = {"ETag": response["ETag"], "PartNumber": number}
                    part.update({k: v for k, v in response.items() if k.startswith("Checksum") and k != "ChecksumType"})
                    parts.append(part)
                    del chunk, response
            if (actual := hasher.hexdigest()) != digest:
                raise self._changed(src, digest, actual)
            with self._calling("finish the upload of", key):
                try:
                    self._client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                        IfNoneMatch="*",
                    )
                    completed = True
                except ClientError as exc:  # 412: someone else stored the key first; ours is aborted below
                    if not _precondition_failed(exc):
                        raise
        finally:
            if not completed:  # an unfinished upload still costs storage until it is aborted
                self._abort(key, upload_id)

    def _abort(self, key: str, upload_id: str) -> bool:
        """Abort one multipart upload, best effort (never masking the error that led here); one that cannot be
        aborted now (the endpoint is down) is remembered and aborted by the next put or sweep."""
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload" and _status(exc) != 404:
                self._unaborted.add((key, upload_id))
                return False
        except Exception:
            self._unaborted.add((key, upload_id))
            return False
        self._unaborted.discard((key, upload_id))
        return True

    def _abort_remembered(self) -> int:
        return sum(self._abort(key, upload_id) for key, upload_id in sorted(self._unaborted))

    def stale_uploads(self, older_than_s: float) -> list[str]:
        """Each unfinished multipart upload under the store's prefix started at least `older_than_s` ago, as
        "s3://bucket/key (upload ID, started N s ago)"."""
        return [f"s3://{self.bucket}/{key} (upload {upload_id}, started {age:.0f} s ago)"
                for key, upload_id, age in self._stale(older_than_s)]  # fmt: skip

    def _stale(self, older_than_s: float) -> list[tuple[str, str, float]]:
        prefix = self._key("")
        now = datetime.now(UTC)
        found: list[tuple[str, str, float]] = []
        pages = self._client.get_paginator("list_multipart_uploads")
        with self._calling("list unfinished uploads under", prefix):
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    age = (now - upload["Initiated"]).total_seconds()
                    if age >= older_than_s:
                        found.append((str(upload["Key"]), str(upload["UploadId"]), age))
        return found

    def abort_stale_uploads(self, older_than_s: float = STALE_UPLOAD_S) -> int:
        """Abort every unfinished multipart upload under the store's prefix older than `older_than_s` (its
        writer was killed or cut off), and any this store failed to abort before; the number aborted."""
        aborted = self._abort_remembered()
        for key, upload_id, _ in self._stale(older_than_s):
            with self._calling("abort the unfinished upload of", key):
                try:
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                except ClientError as exc:
                    if _code(exc) != "NoSuchUpload" and _status(exc) != 404:
                        raise
                    continue
            aborted += 1
        return aborted

    def check(self) -> None:
        """Raise unless the bucket exists and these credentials may list it: one cheap request, no object read."""
        key = self._key("")
        with self._calling("list", key):
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)

    def probe_write(self) -> None:
        """Put and delete a small object under PREFIX/doctor-probe/ (no Object Lock on it)."""
        key = self._key(f"doctor-probe/{uuid.uuid4().hex}")
        with self._calling("write a probe object", key):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=b"gitopsd doctor\n")
        with self._calling("delete the probe object", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def put_record(self, model: str, number: int, record: bytes) -> None:
        """Write `model@number`'s record once (conditional PutObject); the same bytes again are a no-op."""
        key = self._key(record_name(model, number))
        existing = self._read(key)
        if existing is None:
            with self._calling("write record", key, locking=self.object_lock_days is not None):
                try:
                    self._client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=record,
                        IfNoneMatch="*",
                        ContentType="application/json",
                        **self._lock_args(),
                    )
                    return
                except ClientError as exc:
                    if not _precondition_failed(exc):
                        raise
            existing = self._read(key)  # a concurrent writer won the race: theirs must be the same
            if existing is None:
                raise TransientError(f"record s3://{self.bucket}/{key} was refused as existing but cannot be read")
        if existing != record:
            raise record_conflict(f"s3://{self.bucket}/{key}", model, number, existing, record)

    def get_record(self, model: str, number: int) -> bytes | None:
        return self._read(self._key(record_name(model, number)))

    def records(self) -> Iterator[tuple[str, int, bytes]]:
        """Every record as (model, number, bytes), in (model, number) order; other keys are ignored."""
        base = self._key("records/")
        found: list[tuple[str, int, str]] = []
        with self._calling("list records under", base):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    model, _, filename = str(item["Key"])[len(base) :].partition("/")
                    number = parse_record_name(model, filename)
                    if number is not None and "/" not in filename:
                        found.append((model, number, str(item["Key"])))
        for model, number, key in sorted(found):
            data = self._read(key)
            if data is not None:
                yield model, number, data
