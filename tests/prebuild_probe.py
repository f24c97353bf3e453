"""Run by the tests of `gitopsd.spec.prebuild` in a process of its own, which has one thread as a command has (the
helper is only ever forked from such a process): load a commit with the helper and without it, and print, as
JSON, whether both gave the same state or the same problems, and what the helper built.

    python -m tests.prebuild_probe REPO MIRROR COMMIT [HOW]

Without HOW the loader waits until the helper has taken every file, so that what the helper builds is known;
HOW `race` lets the two meet where they do, as in gitopsd. HOW `tree` compares `gitopsd validate`'s reading of
the working tree REPO instead; `offered` and `stale` load with a helper started before the load (`offer`), for
the files of the commit or for other blobs of them; `budget` gives the helper a node budget of 50,000 (its
`MAX_NODES`, too many to test quickly); any other HOW makes the helper misbehave once it has taken every file
(`killed`, `garbage`, `short`, `mistyped`, `terminated`) or tests a load that stops early (`early`).
"""

from __future__ import annotations

import json
import marshal
import os
import resource
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from gitopsd.errors import SpecError
from gitopsd.reconcile import desired
from gitopsd.reconcile.desired import DesiredLoader
from gitopsd.source.mirror import Source
from gitopsd.spec import prebuild
from gitopsd.spec.load import load_model
from gitopsd.spec.prebuild import _HELPER_FROM
from gitopsd.spec.schema import ModelSpec
from gitopsd.spec.worktree import load_tree
from gitopsd.spec.yamlplain import Plain

# Each misbehaving helper first takes every file, so that the loader leaves them all to it.


def _killed(paths: Sequence[str], read: Callable[[str], str], out: int, counts: memoryview) -> None:
    counts[_HELPER_FROM] = 0
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would


def _garbage(paths: Sequence[str], read: Callable[[str], str], out: int, counts: memoryview) -> None:
    counts[_HELPER_FROM] = 0
    os.write(out, b"\xff\x00 not marshal")


def _short(paths: Sequence[str], read: Callable[[str], str], out: int, counts: memoryview) -> None:
    counts[_HELPER_FROM] = 0
    os.write(out, marshal.dumps((0, [None])))


def _mistyped(paths: Sequence[str], read: Callable[[str], str], out: int, counts: memoryview) -> None:
    counts[_HELPER_FROM] = 0
    os.write(out, marshal.dumps((0, [({"kind": "Model"}, "yes")] * len(paths))))


def _terminated(paths: Sequence[str], read: Callable[[str], str], out: int, counts: memoryview) -> None:
    counts[_HELPER_FROM] = 0
    os.kill(os.getpid(), signal.SIGTERM)  # as `kill` of the process group would
    time.sleep(60)


MISBEHAVING = {
    "killed": _killed,
    "garbage": _garbage,
    "short": _short,
    "mistyped": _mistyped,
    "terminated": _terminated,
}


def outcome(source: Source, commit: str) -> object:
    """Everything a loaded state holds (its models in their order), or the problems of a rejected commit."""
    try:
        state = DesiredLoader(source).load(commit)
    except SpecError as exc:
        return [str(p) for p in exc.problems]
    models = [
        (name, m.path, m.spec, m.spec.model_fields_set, m.train, m.code_tree, m.run_key, m.spec_digest)
        for name, m in state.models.items()
    ]
    return state.commit, state.repo, models


def early(source: Source, commit: str) -> dict[str, object]:
    """A load that stops while its helper still works: the helper is killed and reaped at once."""
    prebuild._build = lambda paths, read, out, counts: time.sleep(60)
    start = time.monotonic()
    pid = None
    try:
        with prebuild.helper([f"models/m{i}.yaml" for i in range(prebuild.MIN_FILES)], lambda p: "") as helper:
            pid = helper.pid
            raise RuntimeError("the load stops")
    except RuntimeError:
        pass
    try:
        os.kill(pid or 0, 0)
        reaped = False
    except ProcessLookupError:
        reaped = True
    return {"started": pid is not None, "reaped": reaped, "seconds": time.monotonic() - start}


def wait_for_the_helper(mine: Callable[[prebuild.Helper], Iterator[str]]) -> Callable[[prebuild.Helper], Iterator[str]]:
    """`Helper.mine`, once the helper has stopped taking files (or a minute has passed): it writes to its pipe
    only then, or dies."""

    def waiting(self: prebuild.Helper) -> Iterator[str]:
        if self._pipe is not None:
            select.select([self._pipe], [], [], 60)
        return mine(self)

    return waiting


def offered(source: Source, commit: str, *, stale: bool) -> dict[str, object]:
    """A load of `commit` with a helper started and offered before it, as `gitopsd plan` starts one: the loader
    takes it over when it works on exactly the blobs of the commit (`stale`: one of them is another), else it
    is stopped and reaped and the loader starts its own."""
    blobs = {p: b for p, b in source.spec_files(commit).items() if p != "gitops.yaml"}
    if stale:
        blobs[min(blobs)] = "0" * 40
    first = prebuild.start(sorted(blobs), lambda p: source.blob_bytes(blobs[p]).decode())
    used: list[int | None] = []
    real = prebuild.Helper.results

    def results(self: prebuild.Helper) -> Mapping[str, Plain | None]:
        used.append(self.pid)
        return real(self)

    prebuild.Helper.results = results  # type: ignore[method-assign]
    with prebuild.offer(first, blobs):
        helped = outcome(source, commit)
    try:
        os.kill(first.pid or 0, 0)
        reaped = False
    except ProcessLookupError:
        reaped = True
    prebuild.Helper.results = real  # type: ignore[method-assign]
    prebuild.MIN_FILES = 10**9
    alone = outcome(source, commit)
    return {"same": helped == alone, "taken": used == [first.pid], "pids": len(used), "reaped": reaped,
            "started": first.pid is not None}  # fmt: skip


def tree_outcome(root: Path) -> object:
    """What `gitopsd validate` makes of a working tree: its specs in their order, or its problems."""
    try:
        specs = load_tree(root)
    except SpecError as exc:
        return [str(p) for p in exc.problems]
    return specs.repo, [(rel, m, m.model_fields_set) for rel, m in specs.models.items()]


def main() -> None:
    repo, mirror, commit, *how = sys.argv[1:]
    source = Source(repo, Path(mirror))
    prebuild.MIN_FILES = 4
    if how != ["race"]:
        prebuild.Helper.mine = wait_for_the_helper(prebuild.Helper.mine)  # type: ignore[method-assign,assignment]
    if how == ["tree"]:  # the working tree, as `gitopsd validate` reads it
        helped = tree_outcome(Path(repo))
        prebuild.MIN_FILES = 10**9
        alone = tree_outcome(Path(repo))
        print(json.dumps({"same": helped == alone, "problems": alone if isinstance(alone, list) else None}))
        return
    if how == ["early"]:
        print(json.dumps(early(source, commit)))
        return
    if how and how[0] in ("offered", "stale"):
        print(json.dumps(offered(source, commit, stale=how[0] == "stale")))
        return
    built: list[int] = []
    real = prebuild.Helper.results

    def results(self: prebuild.Helper) -> Mapping[str, Plain | None]:
        out = real(self)
        if self.pid is not None:  # a helper was forked
            built.append(sum(1 for plain in out.values() if plain is not None))
        return out

    prebuild.Helper.results = results  # type: ignore[method-assign]
    from_text: list[str] = []

    def counted(text: str, file: str, plain: Plain | None = None) -> ModelSpec:
        from_text.append(file)
        return load_model(text, file, plain)

    vars(desired)["load_model"] = counted  # the name the loader calls
    # A handler, as the daemon has: one that ran in the helper would say so on the stderr both processes share.
    signal.signal(signal.SIGTERM, lambda signum, frame: os.write(2, f"SIGTERM handled in {os.getpid()}\n".encode()))
    if how == ["budget"]:
        prebuild.MAX_NODES = 50_000
    if how and how[0] in MISBEHAVING:
        prebuild._build = MISBEHAVING[how[0]]
    helped = outcome(source, commit)
    helped_from_text = len(from_text)
    prebuild.MIN_FILES = 10**9
    alone = outcome(source, commit)
    report = {
        "same": helped == alone,
        "built": built,
        "from_text": [helped_from_text, len(from_text) - helped_from_text],
        "threads": threading.active_count(),
        "problems": alone if isinstance(alone, list) else None,
        "helper_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
