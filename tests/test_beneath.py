"""Opening what a training wrote: no symbolic link followed on the way, nothing that blocks, trees walked in
exactly the sorted order the tar packer has always used."""

from __future__ import annotations

import io
import os
import socket
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitopsd.registry.beneath import MAX_TREE_DEPTH, OutputRefused, open_beneath, walk_tree
from gitopsd.registry.tarpack import pack_directory


def _root(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def _open(root: Path, rel: str, **kwargs: bool) -> os.stat_result:
    fd = _root(root)
    try:
        opened, st = open_beneath(fd, rel, "$OUT", **kwargs)
        os.close(opened)
        return st
    finally:
        os.close(fd)


def test_regular_files_and_directories_below_the_root_are_opened(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "model.bin").write_bytes(b"12345")
    assert _open(tmp_path, "a/b/model.bin").st_size == 5
    assert _open(tmp_path, "a/b", directory=True).st_nlink >= 2
    with pytest.raises(OutputRefused, match=r"\$OUT/a/b/model.bin is a regular file, not a directory"):
        _open(tmp_path, "a/b/model.bin", directory=True)
    with pytest.raises(FileNotFoundError):
        _open(tmp_path, "a/missing")


def test_a_link_anywhere_on_the_way_is_refused_with_its_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    root = tmp_path / "out"
    (root / "real").mkdir(parents=True)
    (root / "file-link").symlink_to(outside / "secret")
    (root / "dir-link").symlink_to(outside)
    (root / "real" / "inner-link").symlink_to("../file-link")
    (root / "relative").symlink_to("real")  # even a link that stays inside
    for rel, shown in [
        ("file-link", "$OUT/file-link"),
        ("dir-link/secret", "$OUT/dir-link"),
        ("real/inner-link", "$OUT/real/inner-link"),
        ("relative/inner-link", "$OUT/relative"),
    ]:
        with pytest.raises(OutputRefused, match="is a symbolic link") as refused:
            _open(root, rel)
        assert str(refused.value).startswith(f"{shown} is a symbolic link (to ")


def test_fifos_and_sockets_are_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(OutputRefused, match=r"\$OUT/pipe is a FIFO \(named pipe\): only regular files"):
            _open(tmp_path, "pipe")
        with pytest.raises(OutputRefused, match=r"\$OUT/sock is a socket"):
            _open(tmp_path, "sock")


@pytest.mark.parametrize("rel", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/."])
def test_paths_that_are_not_plainly_inside_are_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(OutputRefused, match="must be relative and inside"):
        _open(tmp_path, rel)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_output_is_refused_not_raised(tmp_path: Path) -> None:
    (tmp_path / "locked").write_text("x")
    (tmp_path / "locked").chmod(0)
    with pytest.raises(OutputRefused, match=r"\$OUT/locked cannot be read: permission denied"):
        _open(tmp_path, "locked")


NAMES = st.sampled_from(["a", "a.txt", "a-b", "a0", "A", "b", "é", "z", "a b"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(st.lists(NAMES, min_size=1, max_size=4), min_size=1, max_size=12))
def test_the_walk_yields_every_entry_in_sorted_path_order(tmp_path: Path, paths: list[list[str]]) -> None:
    root = tmp_path / f"tree-{len(list(tmp_path.iterdir()))}"
    root.mkdir()
    expected: set[str] = set()
    for parts in paths:
        for depth in range(1, len(parts)):
            directory = root.joinpath(*parts[:depth])
            if directory.is_file():
                break
            directory.mkdir(exist_ok=True)
            expected.add("/".join(parts[:depth]))
        else:
            target = root.joinpath(*parts)
            if not target.exists():
                target.write_text("x")
            expected.add("/".join(parts))
    fd = _root(root)
    try:
        walked = [entry.rel for entry in walk_tree(fd, "$OUT")]
    finally:
        os.close(fd)
    assert walked == sorted(expected)


def test_a_tree_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d"] * (MAX_TREE_DEPTH + 2))
    deep.mkdir(parents=True)
    fd = _root(tmp_path)
    try:
        with pytest.raises(OutputRefused, match=f"nested more than {MAX_TREE_DEPTH} directories deep"):
            list(walk_tree(fd, "$OUT"))
    finally:
        os.close(fd)


def test_a_link_to_a_directory_outside_is_packed_as_a_link_and_its_content_left_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("canary")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "weights.bin").write_bytes(b"w")
    (tree / "elsewhere").symlink_to(outside)
    out = io.BytesIO()
    pack_directory(tree, out)
    assert b"canary" not in out.getvalue()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["elsewhere", "weights.bin"]
    assert members["elsewhere"].issym()
    assert members["elsewhere"].linkname == str(outside)
