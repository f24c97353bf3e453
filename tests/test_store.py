"""The artifact store keeps bytes by digest, never overwrites them, and notices when they change."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from gitopsd.errors import IntegrityError, PermanentError
from gitopsd.registry.filestore import FileStore
from gitopsd.registry.store import sha256_file
from gitopsd.registry.stores import open_store


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tamper(path: Path) -> None:
    """Flip the first byte of a read-only stored object, as a careless admin or bit rot would."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = _write(tmp_path / "model.bin", data)
    assert sha256_file(src) == hashlib.sha256(data).hexdigest()


def test_put_stores_a_read_only_object_named_by_its_digest(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)  # more than one copy chunk
    src = _write(tmp_path / "run" / "model.bin", data)
    store = FileStore(tmp_path / "store")
    ref = store.put(src)
    digest = hashlib.sha256(data).hexdigest()
    obj = tmp_path / "store" / "sha256" / digest[:2] / digest[2:]
    assert ref.sha256 == digest
    assert ref.size == len(data)
    assert ref.uri == f"file://{obj}"
    assert store.path(digest) == obj
    assert store.exists(digest)
    assert obj.read_bytes() == data
    assert stat.S_IMODE(obj.stat().st_mode) == 0o444
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_store_root_is_created_when_missing(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "store"
    store = FileStore(root)
    ref = store.put(_write(tmp_path / "x", b"x"))
    assert root.is_dir()
    assert store.exists(ref.sha256)


def test_put_twice_keeps_one_object(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    first = store.put(_write(tmp_path / "one" / "m.bin", b"weights"))
    second = store.put(_write(tmp_path / "two" / "other-name.bin", b"weights"))
    assert first == second
    objects = [p for p in (tmp_path / "store" / "sha256").rglob("*") if p.is_file()]
    assert objects == [store.path(first.sha256)]
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_put_refuses_to_dedupe_against_a_corrupt_object_and_never_overwrites_it(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    src = _write(tmp_path / "m.bin", b"the real weights")
    ref = store.put(src)
    obj = store.path(ref.sha256)
    _tamper(obj)
    corrupt = obj.read_bytes()
    with pytest.raises(IntegrityError) as info:
        store.put(src)
    assert str(obj) in str(info.value)
    assert obj.read_bytes() == corrupt  # evidence kept, not silently "repaired"
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_put_of_a_missing_source_names_it(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    with pytest.raises(PermanentError, match=r"nope\.bin does not exist"):
        store.put(tmp_path / "nope.bin")
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_verify_passes_on_intact_objects(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    ref = store.put(_write(tmp_path / "m.bin", b"intact"))
    store.verify(ref.sha256)
    store.verify(ref.sha256, ref.size)


def test_verify_reports_a_tampered_object_with_path_and_both_digests(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    ref = store.put(_write(tmp_path / "m.bin", b"0123456789"))
    obj = store.path(ref.sha256)
    _tamper(obj)
    with pytest.raises(IntegrityError) as info:
        store.verify(ref.sha256, ref.size)
    message = str(info.value)
    assert str(obj) in message
    assert ref.sha256 in message
    assert hashlib.sha256(obj.read_bytes()).hexdigest() in message


def test_verify_reports_missing_and_resized_objects(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    ref = store.put(_write(tmp_path / "m.bin", b"0123456789"))
    obj = store.path(ref.sha256)
    with pytest.raises(IntegrityError, match=r"expected 11 bytes .* found 10 bytes"):
        store.verify(ref.sha256, 11)
    obj.chmod(0o644)
    obj.unlink()
    with pytest.raises(IntegrityError, match="missing") as info:
        store.verify(ref.sha256)
    assert str(obj) in str(info.value)


def test_copy_out_delivers_the_stored_bytes(tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024 * 2 + 3)
    store = FileStore(tmp_path / "store")
    ref = store.put(_write(tmp_path / "m.bin", data))
    dest = tmp_path / "deploy" / "model.bin"
    dest.parent.mkdir()
    store.copy_out(ref.sha256, dest)
    assert dest.read_bytes() == data
    assert os.access(dest, os.W_OK)  # the user's copy is theirs to edit; the store's stays read-only
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin"]


def test_copy_out_of_a_corrupt_object_leaves_no_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    ref = store.put(_write(tmp_path / "m.bin", b"good bytes"))
    _tamper(store.path(ref.sha256))
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    with pytest.raises(IntegrityError, match="not copied to"):
        store.copy_out(ref.sha256, deploy / "model.bin")
    assert list(deploy.iterdir()) == []


def test_copy_out_of_a_corrupt_object_keeps_the_previous_dest(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    ref = store.put(_write(tmp_path / "m.bin", b"good bytes"))
    _tamper(store.path(ref.sha256))
    dest = _write(tmp_path / "deploy" / "model.bin", b"previous deployment")
    with pytest.raises(IntegrityError):
        store.copy_out(ref.sha256, dest)
    assert dest.read_bytes() == b"previous deployment"
    assert list(dest.parent.iterdir()) == [dest]


def test_copy_out_of_a_missing_object_raises(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    with pytest.raises(IntegrityError, match="missing"):
        store.copy_out("ab" * 32, tmp_path / "out.bin")
    assert list(tmp_path.glob("*out.bin*")) == []


def _make_tree(root: Path, order: list[str]) -> None:
    files = {"b.txt": b"bee", "a/x.bin": b"\x00\x01", "a/y/z.json": b"{}", "c.txt": b"sea"}
    for name in order:
        _write(root / name, files[name])
    (root / "empty").mkdir()
    (root / "link").symlink_to("b.txt")
    (root / "a" / "x.bin").chmod(0o755)


def test_directory_artifacts_are_deterministic(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    _make_tree(tmp_path / "one", ["b.txt", "a/x.bin", "a/y/z.json", "c.txt"])
    _make_tree(tmp_path / "two", ["c.txt", "a/y/z.json", "b.txt", "a/x.bin"])  # other creation order
    os.utime(tmp_path / "two" / "b.txt", (1_000_000, 1_000_000))  # other mtime
    first = store.put(tmp_path / "one")
    second = store.put(tmp_path / "two")
    assert first == second


def test_directory_artifact_is_a_normalised_tar_keeping_modes_and_links(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    _make_tree(tmp_path / "tree", ["b.txt", "a/x.bin", "a/y/z.json", "c.txt"])
    ref = store.put(tmp_path / "tree")
    with tarfile.open(fileobj=io.BytesIO(store.path(ref.sha256).read_bytes())) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert set(names) == {"a", "a/x.bin", "a/y", "a/y/z.json", "b.txt", "c.txt", "empty", "link"}
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
        by_name = {m.name: m for m in members}
        assert by_name["a/x.bin"].mode == 0o755
        assert by_name["link"].issym()
        assert by_name["link"].linkname == "b.txt"
        extracted = tar.extractfile("a/y/z.json")
        assert extracted is not None
        assert extracted.read() == b"{}"


def test_directory_digest_changes_with_content_and_mode(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    tree = tmp_path / "tree"
    _make_tree(tree, ["b.txt", "a/x.bin", "a/y/z.json", "c.txt"])
    base = store.put(tree).sha256
    (tree / "c.txt").chmod(0o600)
    after_mode = store.put(tree).sha256
    (tree / "c.txt").write_bytes(b"SEA")
    after_content = store.put(tree).sha256
    assert len({base, after_mode, after_content}) == 3


def test_directory_with_a_fifo_is_refused_by_name(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    os.mkfifo(tree / "pipe")
    store = FileStore(tmp_path / "store")
    with pytest.raises(PermanentError, match="pipe is neither a file"):
        store.put(tree)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


@pytest.mark.parametrize("bad", ["", "../" * 21 + "x", "A" * 64, "g" * 64, "a" * 63])
def test_object_paths_only_accept_sha256_digests(tmp_path: Path, bad: str) -> None:
    store = FileStore(tmp_path / "store")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.path(bad)


def _root(store: object) -> Path:
    assert isinstance(store, FileStore)
    return store.root


def test_open_store_resolves_uris(tmp_path: Path) -> None:
    assert _root(open_store(None, tmp_path / "default")) == tmp_path / "default"
    assert _root(open_store(f"file://{tmp_path}/shared%20store", tmp_path / "d")) == tmp_path / "shared store"
    assert _root(open_store(f"file://localhost{tmp_path}/s", tmp_path / "d")) == tmp_path / "s"


def test_a_file_store_uri_opens_the_same_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "shared store")
    assert store.uri == f"file://{tmp_path}/shared%20store"
    assert _root(open_store(store.uri, tmp_path / "elsewhere")) == store.root


def test_open_store_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"'https://example\.org/x' has an unknown scheme 'https': expected file"):
        open_store("https://example.org/x", tmp_path)
    with pytest.raises(PermanentError, match="absolute local directory"):
        open_store("file://relative/dir", tmp_path)
    with pytest.raises(PermanentError, match=r"'/srv/store' has no scheme: write file:///srv/store for a local"):
        open_store("/srv/store", tmp_path)


def test_file_stores_never_import_boto3(tmp_path: Path) -> None:
    """`gitopsd status` and every file:// registry must not pay boto3's import time."""
    code = (
        "import sys; from pathlib import Path; from gitopsd.registry.stores import open_store; "
        f"open_store(None, Path({str(tmp_path / 'a')!r})); open_store('file://{tmp_path}/b', Path('.')); "
        "print('boto3' in sys.modules, 'botocore' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_records_are_read_only_files_beside_the_objects(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.put_record("iris", 7, b'{"model": "iris", "number": 7}')
    path = tmp_path / "store" / "records" / "iris" / "00000007.json"
    assert store.record_path("iris", 7) == path
    assert path.read_bytes() == b'{"model": "iris", "number": 7}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_a_different_record_never_replaces_the_first(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.put_record("iris", 1, b"first")
    path = store.record_path("iris", 1)
    before = path.stat()
    with pytest.raises(IntegrityError, match=f"record {path}: iris@1 is already stored with other bytes"):
        store.put_record("iris", 1, b"second")
    assert path.read_bytes() == b"first"
    assert path.stat().st_ino == before.st_ino
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_a_record_lost_race_to_other_bytes_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer's record lands between our check and our link: ours must not replace it."""
    store = FileStore(tmp_path / "store")
    path = store.record_path("iris", 1)
    real_link = os.link

    def link_after_rival(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst) == path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"rival")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_rival)
    with pytest.raises(IntegrityError, match="already stored with other bytes"):
        store.put_record("iris", 1, b"mine")
    assert path.read_bytes() == b"rival"
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_file_store_records_ignore_other_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    store.put_record("iris", 2, b"two")
    records = tmp_path / "store" / "records"
    _write(records / "iris" / "notes.txt", b"x")
    _write(records / "iris" / ".00000003.json.tmp", b"x")
    _write(records / "iris" / "00000000.json", b"x")
    _write(records / ".hidden" / "00000001.json", b"x")
    _write(records / "README", b"x")
    assert list(store.records()) == [("iris", 2, b"two")]


def test_records_survive_reopening_the_store(tmp_path: Path) -> None:
    FileStore(tmp_path / "store").put_record("iris", 1, b"{}")
    reopened = open_store(f"file://{tmp_path}/store", tmp_path / "other")
    assert list(reopened.records()) == [("iris", 1, b"{}")]
    assert reopened.get_record("iris", 1) == b"{}"
    assert reopened.get_record("iris", 2) is None
