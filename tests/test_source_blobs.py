"""`Source.blob_bytes` and `Source.blob_size` on a real mirror: a spec file's bytes, and a clear error for an
object that is not a blob (a tree, a commit, an id the mirror lacks) instead of whatever pygit2 raises."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitopsd.errors import SourceUnavailable
from gitopsd.source.mirror import Source
from tests.conftest import GitRepo


@pytest.fixture
def source(demo_repo: GitRepo, tmp_path: Path) -> Source:
    demo_repo.write("models/binary.yaml", "")
    (demo_repo.path / "models" / "binary.yaml").write_bytes(b"kind: Model\n\x00\xff\xfe\n")
    demo_repo.commit("A file that is not UTF-8")
    mirrored = Source(str(demo_repo.path), tmp_path / "mirror.git")
    mirrored.fetch()
    return mirrored


def test_a_blob_reads_as_its_bytes_and_its_header_gives_its_size(demo_repo: GitRepo, source: Source) -> None:
    commit = demo_repo.git("rev-parse", "HEAD")
    files = source.spec_files(commit)
    assert "models/binary.yaml" in files and "gitops.yaml" in files
    for path, blob in files.items():
        data = source.blob_bytes(blob)
        assert type(data) is bytes
        assert data == (demo_repo.path / path).read_bytes()
        assert source.blob_size(blob) == len(data)


@pytest.mark.parametrize("rev", ["HEAD", "HEAD^{tree}", "HEAD:models"])
def test_an_object_that_is_not_a_blob_is_refused(demo_repo: GitRepo, source: Source, rev: str) -> None:
    with pytest.raises(SourceUnavailable, match="is not a blob"):
        source.blob_bytes(demo_repo.git("rev-parse", rev))


def test_an_object_the_mirror_lacks_is_refused(source: Source) -> None:
    with pytest.raises(SourceUnavailable, match="is not a blob"):
        source.blob_bytes("0123456789abcdef0123456789abcdef01234567")
