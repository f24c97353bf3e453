"""Faults of a real S3 server (SeaweedFS of this module's own, stopped, killed and restarted at will): what the
user sees for each, that nothing stored is lost, and that once the fault is removed everything is clean again,
with no unfinished multipart upload left behind.

Each failure must arrive as one line that names the bucket (and key, and endpoint) and what to fix, classified
the way the reconciler acts on it: `is_permanent` for wrong credentials, a missing bucket, Object Lock on a bucket
without it and tampered bytes (stall until a human fixes it), not for a server that is down (retry with backoff).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitopsd.errors import GitopsdError, IntegrityError, PermanentError, TransientError, is_permanent
from gitopsd.registry.s3store import MIN_PART_SIZE, S3Store
from tests.conftest import gitopsd
from tests.s3server import (
    S3Endpoint,
    SeaweedServer,
    aws_environment,
    drop_bucket,
    endpoint_client,
    new_bucket,
    require_weed,
)

MiB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A private SeaweedFS: these tests stop and kill it, which the shared one must never suffer."""
    weed = require_weed()
    private = SeaweedServer(tmp_path_factory.mktemp("seaweed-faults"), weed)
    private.start()
    yield private
    private.stop(purge=True)


@pytest.fixture
def endpoint(server: SeaweedServer, tmp_path: Path) -> Iterator[S3Endpoint]:
    found = server.start()  # idempotent: brings it back if an earlier test left it stopped
    with aws_environment(found, tmp_path):
        yield found


@pytest.fixture
def admin(endpoint: S3Endpoint) -> Any:
    return endpoint_client(endpoint)


@pytest.fixture
def bucket(admin: Any) -> Iterator[str]:
    name = new_bucket(admin)
    yield name
    drop_bucket(admin, name)


def _store(endpoint: S3Endpoint, bucket: str, **kwargs: Any) -> S3Store:
    """The store as the daemon builds it, with a client that gives up quickly on a stopped server."""
    credentials = {k: kwargs.pop(k) for k in ("access_key", "secret_key") if k in kwargs}
    client = endpoint_client(endpoint, retries=2, timeout=5, **credentials)
    return S3Store(bucket, "team", client=client, part_size=MIN_PART_SIZE, **kwargs)


def _file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def _uploads(admin: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _objects(admin: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in admin.list_objects_v2(Bucket=bucket).get("Contents", [])]


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.mark.parametrize(
    ("credentials", "says"),
    [
        ({"secret_key": "not-the-secret"}, "the secret access key is wrong"),
        ({"access_key": "nobody-knows-me"}, "the access key ID is unknown"),
    ],
)
def test_wrong_credentials_are_refused_permanently_and_nothing_is_stored(
    endpoint: S3Endpoint, admin: Any, bucket: str, tmp_path: Path, credentials: dict[str, str], says: str
) -> None:
    src = _file(tmp_path / "model.bin", 1000)
    wrong = _store(endpoint, bucket, **credentials)
    with pytest.raises(PermanentError) as info:
        wrong.put(src)
    message = _one_line(info.value)
    assert says in message and f"bucket {bucket!r}" in message and "AWS_ACCESS_KEY_ID" in message
    assert is_permanent(info.value)
    with pytest.raises(PermanentError, match=says):
        wrong.check()
    assert _objects(admin, bucket) == []
    # The fault removed (the right credentials): the same put succeeds and verifies.
    ref = _store(endpoint, bucket).put(src)
    _store(endpoint, bucket).verify(ref.sha256, ref.size)


def test_a_missing_bucket_says_to_create_it_and_works_once_created(
    endpoint: S3Endpoint, admin: Any, tmp_path: Path
) -> None:
    name = f"gitopsd-missing-{uuid.uuid4().hex[:12]}"
    store = _store(endpoint, name)
    src = _file(tmp_path / "model.bin", 1000)
    for attempt in (lambda: store.put(src), store.check, lambda: store.verify("ab" * 32)):
        with pytest.raises(PermanentError) as info:
            attempt()
        message = _one_line(info.value)
        assert f"S3 bucket {name!r} does not exist at {endpoint.url}: create it, or fix [registry] artifacts" in message
        assert is_permanent(info.value)
    admin.create_bucket(Bucket=name)
    try:
        ref = store.put(src)
        store.verify(ref.sha256, ref.size)
    finally:
        drop_bucket(admin, name)


def test_a_stopped_server_is_transient_and_the_retry_succeeds_with_nothing_lost(
    server: SeaweedServer, endpoint: S3Endpoint, admin: Any, bucket: str, tmp_path: Path
) -> None:
    store = _store(endpoint, bucket)
    before = store.put(_file(tmp_path / "before.bin", 2000))
    store.put_record("iris", 1, b"{}")
    src = _file(tmp_path / "model.bin", 1000)
    server.stop()
    for attempt in (lambda: store.put(src), store.check):
        with pytest.raises(TransientError) as info:
            attempt()
        message = _one_line(info.value)
        assert f"s3://{bucket}/team/" in message and endpoint.url in message and "will retry" in message
        assert not is_permanent(info.value)
    server.start()
    ref = store.put(src)
    for stored in (before, ref):
        store.verify(stored.sha256, stored.size)
    assert store.get_record("iris", 1) == b"{}"


def _kill_after_first_part(store: S3Store, kill: Any) -> None:
    """Make the server die right after the first part of a multipart upload has landed."""
    client = store._client
    upload_part = client.upload_part

    def then_die(**kwargs: Any) -> Any:
        response = upload_part(**kwargs)
        kill()
        return response

    client.upload_part = then_die


def test_a_server_killed_mid_upload_leaves_no_upload_once_back(
    server: SeaweedServer, endpoint: S3Endpoint, admin: Any, bucket: str, tmp_path: Path
) -> None:
    store = _store(endpoint, bucket)
    kept = store.put(_file(tmp_path / "kept.bin", 1000))
    src = _file(tmp_path / "big.bin", 2 * MIN_PART_SIZE + MiB)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    _kill_after_first_part(store, server.kill)
    with pytest.raises(TransientError) as info:
        store.put(src)
    assert store.key(digest) in _one_line(info.value)
    server.start()
    assert _uploads(admin, bucket) == [store.key(digest)], "the upload the outage cut off is still there"
    # The next put (the reconciler's retry) aborts what it could not abort during the outage, then stores.
    fresh = _store(endpoint, bucket)
    store._client = fresh._client
    ref = store.put(src)
    assert ref.sha256 == digest
    assert _uploads(admin, bucket) == []
    store.verify(kept.sha256, kept.size)
    store.verify(ref.sha256, ref.size)


_KILLED_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from gitopsd.registry.s3store import S3Store

    bucket, endpoint, src = sys.argv[1:]
    store = S3Store(bucket, "team", endpoint_url=endpoint, part_size=5 << 20)
    upload_part = store._client.upload_part

    def upload_then_die(**kwargs):
        upload_part(**kwargs)
        os._exit(9)  # gitopsd killed (OOM, SIGKILL, power cut) between two parts

    store._client.upload_part = upload_then_die
    store.put(Path(src))
    """
)


def _configure(tmp_path: Path, endpoint: S3Endpoint, artifacts: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[registry]\nartifacts = "{artifacts}"\nendpoint_url = "{endpoint.url}"\n')
    return config


def test_an_upload_left_by_a_killed_writer_is_reported_and_aborted(
    endpoint: S3Endpoint, admin: Any, bucket: str, tmp_path: Path
) -> None:
    src = _file(tmp_path / "big.bin", 2 * MIN_PART_SIZE + MiB)
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, bucket, endpoint.url, str(src)], capture_output=True, text=True
    )
    assert done.returncode == 9, done.stderr
    assert len(_uploads(admin, bucket)) == 1
    state = tmp_path / "state"
    config = _configure(tmp_path, endpoint, f"s3://{bucket}/team")
    found = gitopsd(state, "--config", str(config), "registry", "verify", "--stale-after", "0", check=False)
    assert found.returncode == 1
    assert "Traceback" not in found.stderr
    assert f"unfinished upload s3://{bucket}/team/sha256/" in found.stderr
    assert "--abort-stale-uploads" in found.stderr
    assert len(_uploads(admin, bucket)) == 1, "verify alone changes nothing"
    fixed = gitopsd(state, "--config", str(config), "registry", "verify", "--stale-after", "0", "--abort-stale-uploads")
    assert "aborted unfinished upload" in fixed.stdout
    assert _uploads(admin, bucket) == []
    clean = gitopsd(state, "--config", str(config), "registry", "verify", "--stale-after", "0")
    assert "0 version(s) verified" in clean.stdout


def test_the_store_sweep_aborts_only_uploads_older_than_asked(endpoint: S3Endpoint, admin: Any, bucket: str) -> None:
    store = _store(endpoint, bucket)
    admin.create_multipart_upload(Bucket=bucket, Key="team/sha256/ab/" + "c" * 62)
    admin.create_multipart_upload(Bucket=bucket, Key="elsewhere/not-ours")
    assert store.abort_stale_uploads(3600) == 0, "a recent upload may be another writer's, still running"
    assert len(store.stale_uploads(0)) == 1
    assert store.abort_stale_uploads(0) == 1
    assert _uploads(admin, bucket) == ["elsewhere/not-ours"], "only uploads under the store's prefix"


def test_a_tampered_object_is_an_integrity_error_read_once_per_put(
    endpoint: S3Endpoint, admin: Any, bucket: str, tmp_path: Path
) -> None:
    store = _store(endpoint, bucket)
    src = _file(tmp_path / "model.bin", 3000)
    ref = store.put(src)
    admin.put_object(Bucket=bucket, Key=store.key(ref.sha256), Body=os.urandom(3000))  # same size, other bytes
    reads: list[str] = []
    get_object = store._client.get_object

    def counting(**kwargs: Any) -> Any:
        reads.append(kwargs["Key"])
        return get_object(**kwargs)

    store._client.get_object = counting
    with pytest.raises(IntegrityError) as info:
        store.put(src)
    message = _one_line(info.value)
    assert store.key(ref.sha256) in message and f"expected sha256 {ref.sha256}" in message
    assert is_permanent(info.value)
    assert reads == [store.key(ref.sha256)], "the tampered object is downloaded once per put, not again and again"
    # Evidence kept; once an operator removes the bad object, the next put stores the right bytes again.
    with pytest.raises(IntegrityError):
        store.verify(ref.sha256, ref.size)
    admin.delete_object(Bucket=bucket, Key=store.key(ref.sha256))
    assert store.put(src) == ref
    store.verify(ref.sha256, ref.size)


@pytest.mark.parametrize("size", [1000, 2 * MIN_PART_SIZE + 1], ids=["put-object", "multipart"])
def test_object_lock_on_a_bucket_without_it_says_how_to_fix(
    endpoint: S3Endpoint, admin: Any, bucket: str, tmp_path: Path, size: int
) -> None:
    store = _store(endpoint, bucket, object_lock_days=3)
    src = _file(tmp_path / "model.bin", size)
    for attempt in (lambda: store.put(src), lambda: store.put_record("iris", 1, b"{}")):
        with pytest.raises(PermanentError) as info:
            attempt()
        message = _one_line(info.value)
        assert f"S3 bucket {bucket!r}" in message
        assert "has no Object Lock; create the bucket with Object Lock enabled, or remove [registry] " in message
        assert "object_lock_days" in message
    assert _objects(admin, bucket) == [] and _uploads(admin, bucket) == []
    locked = new_bucket(admin, object_lock=True)
    try:
        ref = _store(endpoint, locked, object_lock_days=3).put(src)
        assert admin.head_object(Bucket=locked, Key=store.key(ref.sha256))["ObjectLockMode"] == "GOVERNANCE"
    finally:
        drop_bucket(admin, locked)


# --- `gitopsd registry verify` ---------------------------------------------------------------------------------


def _register(state: Path, store: Any, src: Path, model: str = "iris") -> Any:
    from gitopsd.registry.recovery import save_version
    from gitopsd.registry.versions import Registry

    ref = store.put(src)
    state.mkdir(parents=True, exist_ok=True)
    with Registry(state / "registry.db") as reg:
        version = reg.register(model=model, run_id=uuid.uuid4().hex, run_key=uuid.uuid4().hex, artifact=ref,
                               metrics={}, gates=[], lineage={}, created_at=time.time())  # fmt: skip
    save_version(store, version)
    return version


@pytest.mark.parametrize("wrong", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_verify_with_no_versions_and_bad_credentials_is_an_error_not_intact(
    endpoint: S3Endpoint, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wrong: str
) -> None:
    config = _configure(tmp_path, endpoint, f"s3://{bucket}/team")
    assert "0 version(s) verified" in gitopsd(tmp_path / "state", "--config", str(config), "registry", "verify").stdout
    monkeypatch.setenv(wrong, "wrong")
    done = gitopsd(tmp_path / "state", "--config", str(config), "registry", "verify", check=False)
    assert done.returncode == 1
    assert "intact" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr  # the problem, and the summary: no log noise, no traceback
    assert any(f"store s3://{bucket}/team: S3 at {endpoint.url} refused the credentials" in line for line in lines)
    assert lines[-1].startswith("error: 1 problem(s) in 0 version(s)")


def test_verify_of_a_missing_bucket_is_one_line(endpoint: S3Endpoint, tmp_path: Path) -> None:
    config = _configure(tmp_path, endpoint, "s3://gitopsd-never-made/team")
    done = gitopsd(tmp_path / "state", "--config", str(config), "registry", "verify", check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "S3 bucket 'gitopsd-never-made' does not exist" in done.stderr


def test_verify_checks_each_version_in_the_store_it_was_stored_in(
    endpoint: S3Endpoint, admin: Any, bucket: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    old = _store(endpoint, bucket)
    first = _register(state, old, _file(tmp_path / "one.bin", 1000))
    moved = new_bucket(admin)
    try:
        second = _register(state, _store(endpoint, moved), _file(tmp_path / "two.bin", 1000))
        # The operator moved [registry] artifacts to the new bucket: iris@1 stays where it was written.
        config = _configure(tmp_path, endpoint, f"s3://{moved}/team")
        done = gitopsd(state, "--config", str(config), "registry", "verify")
        assert f"2 version(s) verified: artifacts and records intact in s3://{moved}/team, s3://{bucket}/team" in (
            done.stdout
        )
        admin.put_object(Bucket=bucket, Key=old.key(first.artifact.sha256), Body=os.urandom(1000))
        tampered = gitopsd(state, "--config", str(config), "registry", "verify", check=False)
        assert tampered.returncode == 1 and "Traceback" not in tampered.stderr
        assert f"iris@{first.number}: artifact s3://{bucket}/team/sha256/" in tampered.stderr
        assert f"iris@{second.number}" not in tampered.stderr
    finally:
        drop_bucket(admin, moved)


def test_verify_on_a_stopped_server_is_one_line_and_clean_once_back(
    server: SeaweedServer, endpoint: S3Endpoint, bucket: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    _register(state, _store(endpoint, bucket), _file(tmp_path / "one.bin", 1000))
    config = _configure(tmp_path, endpoint, f"s3://{bucket}/team")
    server.stop()
    try:
        down = gitopsd(state, "--config", str(config), "registry", "verify", check=False, timeout=300)
    finally:
        server.start()
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert f"store s3://{bucket}/team: S3 list s3://{bucket}/team/ at {endpoint.url} failed" in down.stderr
    assert "1 version(s) not checked (iris@1)" in down.stderr
    assert "1 version(s) verified" in gitopsd(state, "--config", str(config), "registry", "verify").stdout


def test_errors_are_gitopsd_errors_never_botocore(endpoint: S3Endpoint, bucket: str) -> None:
    store = _store(endpoint, bucket, secret_key="wrong")
    for attempt in (store.check, lambda: list(store.records()), lambda: store.exists("ab" * 32)):
        with pytest.raises(GitopsdError):
            attempt()
