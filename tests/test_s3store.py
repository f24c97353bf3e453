"""Both artifact stores keep the same promises, and the S3 store keeps them over HTTP against a real server.

The contract class runs once per store (a local `FileStore`, an `S3Store` on a SeaweedFS server on 127.0.0.1):
digest-named objects, dedupe without overwrite, detected tampering, write-once version records. The tests
after it cover what only S3 has: conditional writes racing another writer, streamed multipart uploads with
bounded memory, Object Lock, and the translation of S3 failures into transient and permanent errors.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gitopsd.errors import IntegrityError, PermanentError, TransientError
from gitopsd.registry.filestore import FileStore
from gitopsd.registry.store import ArtifactStore
from gitopsd.registry.stores import open_store
from tests.s3server import s3_client

MiB = 1 << 20


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def client(s3_server: str) -> Any:
    return s3_client(s3_server)


@pytest.fixture
def bucket(s3_bucket: str) -> str:
    return s3_bucket


def _s3store(endpoint: str, bucket: str, **kwargs: Any) -> Any:
    from gitopsd.registry.s3store import MIN_PART_SIZE, S3Store

    return S3Store(bucket, "team/models", endpoint_url=endpoint, part_size=MIN_PART_SIZE, **kwargs)


@pytest.fixture
def s3store(s3_server: str, bucket: str) -> Any:
    return _s3store(s3_server, bucket)


Tamper = Callable[[str, bytes], None]


@pytest.fixture(params=["file", "s3"])
def store_and_tamper(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ArtifactStore, Tamper]:
    """A store, and a way to replace a stored object's bytes behind its back (bit rot, a careless admin)."""
    if request.param == "file":
        fstore = FileStore(tmp_path / "store")

        def tamper_file(sha256: str, data: bytes) -> None:
            path = fstore.path(sha256)
            path.chmod(0o644)
            path.write_bytes(data)

        return fstore, tamper_file
    endpoint: str = request.getfixturevalue("s3_server")
    raw = s3_client(endpoint)
    sstore = _s3store(endpoint, request.getfixturevalue("bucket"))

    def tamper_s3(sha256: str, data: bytes) -> None:
        raw.put_object(Bucket=sstore.bucket, Key=sstore.key(sha256), Body=data)

    return sstore, tamper_s3


@pytest.fixture
def store(store_and_tamper: tuple[ArtifactStore, Tamper]) -> ArtifactStore:
    return store_and_tamper[0]


def _make_tree(root: Path) -> None:
    _write(root / "weights" / "model.bin", b"\x00\x01" * 1000)
    _write(root / "config.json", b'{"layers": 2}')
    (root / "empty").mkdir()
    (root / "latest").symlink_to("weights/model.bin")


class TestArtifactStoreContract:
    """What the registry relies on from any store, checked on each implementation."""

    def test_is_an_artifact_store(self, store: ArtifactStore) -> None:
        assert isinstance(store, ArtifactStore)

    def test_put_names_bytes_by_digest_and_copy_out_returns_them(self, store: ArtifactStore, tmp_path: Path) -> None:
        data = os.urandom(2 * MiB + 17)
        ref = store.put(_write(tmp_path / "run" / "model.bin", data))
        assert ref.sha256 == hashlib.sha256(data).hexdigest()
        assert ref.size == len(data)
        assert ref.uri.startswith(store.uri + "/sha256/" + ref.sha256[:2] + "/")
        assert store.exists(ref.sha256)
        assert not store.exists("ab" * 32)
        store.verify(ref.sha256, ref.size)
        dest = tmp_path / "deploy" / "model.bin"
        dest.parent.mkdir()
        store.copy_out(ref.sha256, dest)
        assert dest.read_bytes() == data
        assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin"]

    def test_same_bytes_under_another_name_are_stored_once(self, store: ArtifactStore, tmp_path: Path) -> None:
        first = store.put(_write(tmp_path / "one" / "m.bin", b"weights"))
        second = store.put(_write(tmp_path / "two" / "other.bin", b"weights"))
        assert first == second

    def test_directory_artifact_round_trips_as_a_tar(self, store: ArtifactStore, tmp_path: Path) -> None:
        _make_tree(tmp_path / "tree")
        ref = store.put(tmp_path / "tree")
        assert ref == store.put(tmp_path / "tree")
        store.copy_out(ref.sha256, tmp_path / "tree.tar")
        with tarfile.open(tmp_path / "tree.tar") as tar:
            assert tar.getnames() == ["config.json", "empty", "latest", "weights", "weights/model.bin"]
            extracted = tar.extractfile("weights/model.bin")
            assert extracted is not None
            assert extracted.read() == b"\x00\x01" * 1000
            assert tar.getmember("latest").linkname == "weights/model.bin"

    def test_missing_source_is_named(self, store: ArtifactStore, tmp_path: Path) -> None:
        with pytest.raises(PermanentError, match=r"nope\.bin does not exist"):
            store.put(tmp_path / "nope.bin")

    def test_verify_reports_missing_and_resized_objects(self, store: ArtifactStore, tmp_path: Path) -> None:
        ref = store.put(_write(tmp_path / "m.bin", b"0123456789"))
        with pytest.raises(IntegrityError, match=r"expected 11 bytes with sha256 .* found 10 bytes"):
            store.verify(ref.sha256, 11)
        with pytest.raises(IntegrityError, match=f"expected sha256 {'cd' * 32}, found missing"):
            store.verify("cd" * 32)
        with pytest.raises(IntegrityError, match="missing"):
            store.copy_out("cd" * 32, tmp_path / "out.bin")
        assert list(tmp_path.glob("*out.bin*")) == []

    def test_tampered_object_is_detected_and_never_overwritten(
        self, store_and_tamper: tuple[ArtifactStore, Tamper], tmp_path: Path
    ) -> None:
        store, tamper = store_and_tamper
        src = _write(tmp_path / "m.bin", b"the real weights")
        ref = store.put(src)
        tamper(ref.sha256, b"the real weightZ")
        altered = hashlib.sha256(b"the real weightZ").hexdigest()
        with pytest.raises(IntegrityError) as info:
            store.verify(ref.sha256, ref.size)
        assert f"expected sha256 {ref.sha256}, found sha256 {altered}" in str(info.value)
        with pytest.raises(IntegrityError, match=f"found sha256 {altered}"):
            store.put(src)  # no silent dedupe against bad bytes, and no silent repair either
        deploy = _write(tmp_path / "deploy" / "model.bin", b"previous deployment")
        with pytest.raises(IntegrityError, match="not copied to"):
            store.copy_out(ref.sha256, deploy)
        assert deploy.read_bytes() == b"previous deployment"
        assert list(deploy.parent.iterdir()) == [deploy]
        with pytest.raises(IntegrityError):
            store.verify(ref.sha256)  # still the tampered bytes: evidence kept

    def test_records_are_written_once(self, store: ArtifactStore) -> None:
        assert store.get_record("iris", 1) is None
        store.put_record("iris", 1, b'{"number": 1}')
        store.put_record("iris", 1, b'{"number": 1}')  # a retry after a crash: fine
        with pytest.raises(IntegrityError, match=r"iris@1 is already stored with other bytes") as info:
            store.put_record("iris", 1, b'{"number": 1, "forged": true}')
        assert "00000001.json" in str(info.value)
        assert store.get_record("iris", 1) == b'{"number": 1}'

    def test_records_list_in_model_then_number_order(self, store: ArtifactStore) -> None:
        for model, number in [("resnet", 10), ("iris", 2), ("resnet", 2), ("iris", 1), ("resnet", 9)]:
            store.put_record(model, number, f"{model}@{number}".encode())
        assert list(store.records()) == [
            ("iris", 1, b"iris@1"),
            ("iris", 2, b"iris@2"),
            ("resnet", 2, b"resnet@2"),
            ("resnet", 9, b"resnet@9"),
            ("resnet", 10, b"resnet@10"),
        ]

    def test_an_empty_store_has_no_records(self, store: ArtifactStore) -> None:
        assert list(store.records()) == []

    @pytest.mark.parametrize(("model", "number"), [("../etc", 1), ("a/b", 1), ("", 1), (".hidden", 1), ("m", 0)])
    def test_record_names_cannot_escape_the_store(self, store: ArtifactStore, model: str, number: int) -> None:
        with pytest.raises(ValueError, match="record"):
            store.put_record(model, number, b"{}")


# --- S3 only -----------------------------------------------------------------------------------------------


def _keys(client: Any, bucket: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed}


def test_probe_write_of_gitopsd_doctor_leaves_nothing_behind(store_and_tamper: tuple[ArtifactStore, Tamper]) -> None:
    store, _ = store_and_tamper
    store.probe_write()
    store.probe_write()  # twice: nothing of the first is in the way
    assert list(store.records()) == [] and store.stale_uploads(0) == []


def test_s3_layout_is_prefix_sha256_and_records(s3store: Any, client: Any, bucket: str, tmp_path: Path) -> None:
    ref = s3store.put(_write(tmp_path / "m.bin", b"weights"))
    s3store.put_record("iris", 3, b"{}")
    digest = ref.sha256
    assert s3store.uri == f"s3://{bucket}/team/models"
    assert ref.uri == f"s3://{bucket}/team/models/sha256/{digest[:2]}/{digest[2:]}"
    assert _keys(client, bucket) == {
        f"team/models/sha256/{digest[:2]}/{digest[2:]}": b"weights",
        "team/models/records/iris/00000003.json": b"{}",
    }


def test_s3_store_without_prefix_uses_the_bucket_root(s3_server: str, client: Any, bucket: str, tmp_path: Path) -> None:
    from gitopsd.registry.s3store import S3Store

    store = S3Store(bucket, endpoint_url=s3_server)
    ref = store.put(_write(tmp_path / "m.bin", b"x"))
    assert store.uri == f"s3://{bucket}"
    assert list(_keys(client, bucket)) == [f"sha256/{ref.sha256[:2]}/{ref.sha256[2:]}"]


def test_same_tree_gives_the_same_digest_in_both_stores(s3store: Any, tmp_path: Path) -> None:
    _make_tree(tmp_path / "tree")
    assert s3store.put(tmp_path / "tree") == s3store.put(tmp_path / "tree")
    assert s3store.put(tmp_path / "tree").sha256 == FileStore(tmp_path / "fs").put(tmp_path / "tree").sha256


def _lose_the_race(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the store miss an object written by someone else between its existence check and its write."""
    monkeypatch.setattr(store, "exists", lambda sha256: False)


@pytest.mark.parametrize("size", [100, 11 * MiB], ids=["put-object", "multipart"])
def test_conditional_write_never_overwrites_a_concurrent_writers_object(
    s3store: Any, client: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    key = s3store.key(digest)
    client.put_object(Bucket=bucket, Key=key, Body=b"someone else's wrong bytes")
    _lose_the_race(s3store, monkeypatch)
    with pytest.raises(IntegrityError) as info:
        s3store.put(_write(tmp_path / "m.bin", data))
    assert key in str(info.value)
    assert f"expected {size} bytes" in str(info.value)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"someone else's wrong bytes"
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("size", [100, 11 * MiB], ids=["put-object", "multipart"])
def test_losing_the_race_to_the_same_bytes_is_success(
    s3store: Any, client: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    data = os.urandom(size)
    src = _write(tmp_path / "m.bin", data)
    first = s3store.put(src)
    _lose_the_race(s3store, monkeypatch)
    assert s3store.put(src) == first
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("size", [100, 11 * MiB], ids=["put-object", "multipart"])
def test_a_source_changing_during_upload_writes_nothing(
    s3store: Any, client: Any, bucket: str, tmp_path: Path, size: int
) -> None:
    src = _write(tmp_path / "m.bin", os.urandom(size))
    claimed = hashlib.sha256(b"what the file held when it was hashed").hexdigest()
    with pytest.raises(IntegrityError, match=r"m\.bin changed while it was being stored"):
        s3store._put_file(src, claimed, size, src)
    assert _keys(client, bucket) == {}
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


_UPLOAD_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from gitopsd.registry.s3store import S3Store

    def peak_kib():  # this process's own high-water mark (ru_maxrss would include the parent's since exec)
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    bucket, endpoint, src, dest = sys.argv[1:]
    store = S3Store(bucket, "big", endpoint_url=endpoint, part_size=5 << 20)
    store.exists("00" * 32)  # the client and its connection are set up before the baseline
    before = peak_kib()
    ref = store.put(Path(src))
    store.copy_out(ref.sha256, Path(dest))
    after = peak_kib()
    print(json.dumps({"sha256": ref.sha256, "growth_kib": after - before}))
    """
)


def test_large_artifact_streams_in_parts_with_bounded_memory(
    s3_server: str,
    client: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    import json

    block = os.urandom(MiB)
    src = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(src, "wb") as out:
        for i in range(64):
            chunk = block[i:] + block[:i]
            digest.update(chunk)
            out.write(chunk)
    done = subprocess.run(
        [sys.executable, "-c", _UPLOAD_CHILD, bucket, s3_server, str(src), str(tmp_path / "back.bin")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sha256"] == digest.hexdigest()
    # The whole file in memory would add 64 MiB; one 5 MiB part at a time (plus copies) stays under 4 parts.
    assert result["growth_kib"] < 4 * 5 * 1024, result
    head = client.head_object(Bucket=bucket, Key=f"big/sha256/{digest.hexdigest()[:2]}/{digest.hexdigest()[2:]}")
    assert head["ContentLength"] == 64 * MiB
    assert head["ETag"].endswith('-13"')  # 12 parts of 5 MiB and a last one of 4 MiB
    with open(tmp_path / "back.bin", "rb") as back:
        assert hashlib.file_digest(back, "sha256").hexdigest() == digest.hexdigest()


def test_object_lock_retains_objects_and_records(s3_server: str, client: Any, tmp_path: Path) -> None:
    from tests.s3server import drop_bucket, new_bucket

    locked = new_bucket(client, object_lock=True)
    try:
        store = _s3store(s3_server, locked, object_lock_days=3)
        ref = store.put(_write(tmp_path / "m.bin", b"keep me"))
        store.put_record("iris", 1, b"{}")
        for key in (store.key(ref.sha256), "team/models/records/iris/00000001.json"):
            head = client.head_object(Bucket=locked, Key=key)
            assert head["ObjectLockMode"] == "GOVERNANCE"
            retain = head["ObjectLockRetainUntilDate"] - datetime.now(UTC)
            assert timedelta(days=2, hours=23) < retain <= timedelta(days=3)
    finally:
        drop_bucket(client, locked)


def test_s3_records_skip_stray_keys(s3store: Any, client: Any, bucket: str) -> None:
    s3store.put_record("iris", 1, b"one")
    for stray in ("notes.txt", "sub/00000002.json", "00000000.json"):
        client.put_object(Bucket=bucket, Key=f"team/models/records/iris/{stray}", Body=b"x")
    client.put_object(Bucket=bucket, Key="team/models/records/README", Body=b"x")
    client.put_object(Bucket=bucket, Key="other/records/iris/00000005.json", Body=b"x")
    assert list(s3store.records()) == [("iris", 1, b"one")]


def test_open_store_resolves_s3_uris_and_sees_the_same_records(s3store: Any, s3_server: str, tmp_path: Path) -> None:
    s3store.put_record("iris", 1, b"{}")
    reopened = open_store(s3store.uri, tmp_path / "unused", endpoint_url=s3_server)
    assert reopened.uri == s3store.uri
    assert list(reopened.records()) == [("iris", 1, b"{}")]
    assert not (tmp_path / "unused").exists()


def test_endpoint_comes_from_aws_endpoint_url_when_not_given(
    s3store: Any,
    s3_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3store.put_record("iris", 1, b"{}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    assert list(open_store(s3store.uri, tmp_path).records()) == [("iris", 1, b"{}")]


def test_open_store_refuses_an_s3_uri_without_bucket(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="names no bucket"):
        open_store("s3:///models", tmp_path)


def test_a_missing_bucket_is_a_permanent_error_naming_it(s3_server: str, tmp_path: Path) -> None:
    from gitopsd.registry.s3store import S3Store

    store = S3Store("no-such-bucket-here", endpoint_url=s3_server)
    with pytest.raises(PermanentError, match=r"S3 bucket 'no-such-bucket-here' does not exist at http://127\.0\.0\.1"):
        store.put(_write(tmp_path / "m.bin", b"x"))
    with pytest.raises(PermanentError, match="no-such-bucket-here"):
        store.verify("ab" * 32)


def test_an_unreachable_endpoint_is_transient_and_names_endpoint_and_bucket(s3_server: str) -> None:
    from gitopsd.registry.s3store import S3Store

    store = S3Store("models", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(TransientError, match=r"s3://models/sha256/ab/.* at http://127\.0\.0\.1:9 .*will retry"):
        store.exists("ab" * 32)


def test_missing_credentials_are_permanent_and_say_where_they_come_from(
    s3_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gitopsd.registry.s3store import S3Store

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Store("models", endpoint_url=s3_server)
    with pytest.raises(PermanentError, match=r"no usable credentials for S3 bucket 'models'.*AWS_PROFILE"):
        store.exists("ab" * 32)


@pytest.mark.parametrize(
    ("code", "status", "kind", "message"),
    [
        ("AccessDenied", 403, PermanentError, r"S3 bucket 'models' refused look up .*AccessDenied.*standard AWS chain"),
        ("SlowDown", 503, TransientError, r"S3 look up s3://models/.* failed, will retry: SlowDown"),
        ("InternalError", 500, TransientError, "will retry"),
        ("InvalidArgument", 400, PermanentError, r"S3 look up s3://models/sha256/.* failed: InvalidArgument"),
    ],
)
def test_s3_error_responses_become_transient_or_permanent(
    s3_server: str,
    code: str,
    status: int,
    kind: type[Exception],
    message: str,
) -> None:
    from botocore.stub import Stubber

    from gitopsd.registry.s3store import S3Store

    raw = s3_client(s3_server)
    store = S3Store("models", client=raw)
    with Stubber(raw) as stub:
        stub.add_client_error("head_object", service_error_code=code, http_status_code=status)
        with pytest.raises(kind, match=message):
            store.exists("ab" * 32)


def test_part_size_below_the_s3_minimum_is_refused() -> None:
    from gitopsd.registry.s3store import S3Store

    with pytest.raises(ValueError, match="at least 5242880"):
        S3Store("models", client=object(), part_size=MiB)


def test_tar_of_a_directory_is_streamed_from_a_temporary_pack(s3store: Any, tmp_path: Path) -> None:
    _make_tree(tmp_path / "tree")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    s3store.tmp_dir = scratch
    ref = s3store.put(tmp_path / "tree")
    assert list(scratch.iterdir()) == []  # the pack is gone once stored
    dest = tmp_path / "out.tar"
    s3store.copy_out(ref.sha256, dest)
    with tarfile.open(fileobj=io.BytesIO(dest.read_bytes())) as tar:
        assert "config.json" in tar.getnames()


def _client_error(code: str, status: int, message: str = "says the server") -> Any:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    ("code", "status", "locking", "kind", "says"),
    [
        ("SlowDown", 503, False, TransientError, "will retry"),
        ("InternalError", 500, False, TransientError, "will retry"),
        ("RequestTimeout", 400, False, TransientError, "will retry"),
        ("TooManyRequests", 429, False, TransientError, "will retry"),
        ("NoSuchBucket", 404, False, PermanentError, "does not exist at http://s3: create it, or fix [registry]"),
        ("InvalidAccessKeyId", 403, False, PermanentError, "the access key ID is unknown"),
        ("SignatureDoesNotMatch", 403, False, PermanentError, "the secret access key is wrong"),
        ("AccessDenied", 403, False, PermanentError, "check that these credentials may upload objects"),
        ("403", 403, False, PermanentError, "refused upload"),
        ("InvalidRequest", 400, True, PermanentError, "has no Object Lock; create the bucket with Object Lock"),
        ("InvalidRequest", 400, False, PermanentError, "upload s3://b/k at http://s3 failed: InvalidRequest"),
        ("BadDigest", 400, False, IntegrityError, "did not match their checksum"),
        ("XAmzContentSHA256Mismatch", 400, False, IntegrityError, "did not match their checksum"),
    ],
)
def test_s3_errors_are_classified_in_one_line_naming_what_to_fix(
    code: str, status: int, locking: bool, kind: type[Exception], says: str
) -> None:
    from gitopsd.errors import is_permanent
    from gitopsd.registry.s3store import classify_client_error

    error = classify_client_error(
        _client_error(code, status, "multi\nline"), action="upload", bucket="b", key="k", endpoint="http://s3",
        locking=locking,
    )  # fmt: skip
    assert type(error) is kind
    assert says in str(error)
    assert "'b'" in str(error) or "s3://b/k" in str(error)
    assert "\n" not in str(error)
    assert is_permanent(error) == (kind is not TransientError)


def test_a_file_store_on_a_broken_path_names_it_and_is_permanent(tmp_path: Path) -> None:
    from gitopsd.errors import is_permanent

    (tmp_path / "mount").write_text("a file where the store's parent directory should be")
    with pytest.raises(PermanentError) as info:
        FileStore(tmp_path / "mount" / "store")
    assert f"artifact store {tmp_path}/mount/store: cannot create" in str(info.value)
    assert "fix its permissions or mount, or [registry] artifacts" in str(info.value)
    assert is_permanent(info.value)


def test_file_store_sweeps_temp_files_of_killed_puts(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    left = tmp_path / "store" / "tmp" / ".put.0123456789abcdef.part"
    left.write_bytes(b"half an artifact")
    assert store.stale_uploads(3600) == []
    assert len(store.stale_uploads(0)) == 1 and str(left) in store.stale_uploads(0)[0]
    assert store.abort_stale_uploads(0) == 1
    assert not left.exists()
