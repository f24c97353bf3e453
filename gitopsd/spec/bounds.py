"""How much of a repository gitopsd reads as specs, and how the bytes of a spec file become text.

Whoever can push to the tracked repository decides what the daemon reads, so reading is bounded before it
starts: a spec file larger than `max_file_bytes`, more than `max_files` spec files, or more than
`max_total_bytes` of spec files in one commit are refused from their sizes alone (Git and the file system know
a file's size without reading it), so no file is read whole only to be refused. A spec file must be UTF-8 text:
binary content and undecodable bytes are refused with the file named and the place of the first bad byte, so
a reviewer can find it. A spec file whose path holds a control character, or is not UTF-8 (Git allows any bytes
in a name), is refused too: the path is in every error message, event and log line about its model. Every
refusal is a `SpecError`: the commit is rejected whole and the last good commit stays in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gitopsd.errors import SpecError, SpecProblem
from gitopsd.spec.layout import SPEC_DIR
from gitopsd.spec.text import forbidden_char

__all__ = ["SpecLimits", "decode_spec", "size_problems", "too_many_entries", "too_many_files"]

_KIB = 1024
_MIB = 1024 * _KIB
#: Repository data up to this size is checked against the digest its spec pins when a commit or a working tree is
#: loaded (`validate`, `plan`, the daemon); a larger file when its run is submitted.
DATA_HASH_BYTES = 64 * _MIB


def _size(count: int) -> str:
    if count % _MIB == 0:
        return f"{count // _MIB} MiB"
    return f"{count // _KIB} KiB" if count % _KIB == 0 else f"{count} bytes"


@dataclass(frozen=True, kw_only=True)
class SpecLimits:
    """The bounds on reading one commit's specs; the defaults are far above any real repository."""

    #: One spec file (gitops.yaml or a model file). A model file is a few KiB; 256 KiB is a novel chapter.
    max_file_bytes: int = 256 * _KIB
    #: Spec files in one commit (gitops.yaml and every models/**/*.y(a)ml).
    max_files: int = 100_000
    #: All spec files of one commit together.
    max_total_bytes: int = 256 * _MIB
    #: Files and directories under models/ walked to find the spec files, spec files or not: a Git tree may name
    #: one subtree many times over, so a few objects can spell billions of paths.
    max_entries: int = 1_000_000


def _bad_path(path: str) -> str | None:
    """Why a spec file's path cannot be shown in errors, events and logs, or None. Git allows any bytes in a
    name; one that is not UTF-8 arrives here with its bad bytes as lone surrogates (shown as \\xNN)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "the file's name is not valid UTF-8 (its bytes are shown escaped); rename the file to a UTF-8 name"
    char = forbidden_char(path)
    return f"{char} in the file's path; rename the file" if char else None


def too_many_files(limits: SpecLimits) -> SpecError:
    """The error for a commit with more than `limits.max_files` spec files."""
    message = f"more than {limits.max_files} spec files; a repository may have at most {limits.max_files}"
    return SpecError([SpecProblem(file=SPEC_DIR + "/", line=None, field="", message=message)])


def too_many_entries(limits: SpecLimits) -> SpecError:
    """The error for a models/ directory with more than `limits.max_entries` files and directories."""
    message = (
        f"more than {limits.max_entries} files and directories under {SPEC_DIR}/ (spec files or not); a repository "
        f"may have at most {limits.max_entries} there"
    )
    return SpecError([SpecProblem(file=SPEC_DIR + "/", line=None, field="", message=message)])


def size_problems(sizes: Mapping[str, int], limits: SpecLimits) -> list[SpecProblem]:
    """Each spec file with an unprintable path or over the per-file bound, then the whole set over the count or
    total bound. The files named here must not be read."""
    problems = [
        SpecProblem(file=path, line=None, field="", message=why) for path in sorted(sizes) if (why := _bad_path(path))
    ]
    problems += [
        SpecProblem(
            file=path,
            line=None,
            field="",
            message=f"the file is {size} bytes; a spec file may have at most {_size(limits.max_file_bytes)}",
        )
        for path, size in sorted(sizes.items())
        if size > limits.max_file_bytes
    ]
    if len(sizes) > limits.max_files:
        problems.extend(too_many_files(limits).problems)
    total = sum(sizes.values())
    if total > limits.max_total_bytes:
        message = (
            f"spec files total {total} bytes; the spec files of a repository may have at most "
            f"{_size(limits.max_total_bytes)} together"
        )
        problems.append(SpecProblem(file=SPEC_DIR + "/", line=None, field="", message=message))
    return problems


def decode_spec(data: bytes, file: str) -> str:
    """The text of a spec file, or a SpecError naming the file and the first byte that makes it not text."""
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        message = f"binary content (a NUL byte at offset {nul}): a spec file is UTF-8 YAML text"
        raise SpecError([SpecProblem(file=file, line=line, field="", message=message)])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        message = f"not UTF-8 text: byte 0x{byte:02x} at offset {exc.start} cannot be decoded; save the file as UTF-8"
        raise SpecError([SpecProblem(file=file, line=line, field="", message=message)]) from None
