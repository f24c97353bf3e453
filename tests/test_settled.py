"""The settled-pass record (`gitopsd.reconcile.settled`): a new process that skips loading the commit gives exactly
what the full pass gives, and skips only when a full pass would do nothing.

Two state directories follow the same real repository through the same history, each pass made by a new
`Reconciler` (a new process, as `gitopsd reconcile --once` is): one may take the settled shortcut, the other
always runs the full pass. After every step the pass results, the conditions, the models, the events, the runs,
the versions and the aliases of both must be equal. Real Git, real SQLite, real trainings on the local backend.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from gitopsd.errors import SpecError
from gitopsd.reconcile import settled
from gitopsd.reconcile.outputs import OutputLimits
from gitopsd.reconcile.reconciler import PassResult, Reconciler
from gitopsd.reconcile.speccache import KEY_FILE
from gitopsd.reconcile.state import StateStore
from gitopsd.registry.aliases import AliasBook, AliasMove
from gitopsd.registry.store import ArtifactRef
from gitopsd.registry.versions import Registry
from tests.conftest import GitRepo

MODEL = "models/blobs.yaml"
RUN_IDS = re.compile(r"\b[0-9a-f]{8}\b|vm:\d+")


@dataclass
class Pair:
    """Two state directories of one repository: `quick` may skip loading, `full` never does."""

    repo: GitRepo
    root: Path
    limits: OutputLimits | None = None

    def new(self, which: str) -> Reconciler:
        """A reconciler (a new process) of the state directory `which`. Each directory follows its own bare copy
        of the repository, brought up to the same commits, so that the audit tags one pushes never meet the
        other's."""
        remote = self.root / f"{which}.git"
        if not remote.exists():
            self.repo.git("clone", "-q", "--bare", str(self.repo.path), str(remote))
        branch = self.repo.git("rev-parse", "--abbrev-ref", "HEAD")
        self.repo.git("push", "-q", "-f", str(remote), f"HEAD:refs/heads/{branch}")
        return Reconciler(state_dir=self.root / which, url=str(remote), limits=self.limits,
                          settled_pass=which == "quick")  # fmt: skip

    def settle(self) -> None:
        """Pass until no run is in flight, in each directory, then once more: the last pass leaves the record."""
        for which in ("quick", "full"):
            rec = self.new(which)
            try:
                rec.reconcile_until_settled(timeout_s=120)
                rec.reconcile()
            finally:
                rec.close()

    def suspend_and_settle(self) -> None:
        """Commit the model suspended and settle both directories on that commit."""
        self.repo.edit(MODEL, "  train:\n", "  suspend: true\n  train:\n")
        self.repo.commit("Suspended")
        self.settle()

    def probe(self) -> tuple[bool, bool]:
        """One pass in each directory, by a new reconciler; the results and the state must be equal. Returns
        whether each pass skipped the load."""
        results: dict[str, PassResult] = {}
        skipped: dict[str, bool] = {}
        for which in ("quick", "full"):
            rec = self.new(which)
            try:
                results[which] = rec.reconcile()
                skipped[which] = rec.loader.last_good is None and results[which].commit is not None
            finally:
                rec.close()
        assert shape(results["quick"]) == shape(results["full"])
        assert snapshot(self.root / "quick") == snapshot(self.root / "full")
        return skipped["quick"], skipped["full"]

    def after_change(self) -> None:
        """The first pass after a change runs in full; once a full pass ends settled, the next one skips."""
        assert self.probe() == (False, False)
        flags = [self.probe() for _ in range(2)]
        assert flags[-1] == (True, False), flags


def shape(result: PassResult) -> dict[str, Any]:
    return {
        "commit": result.commit,
        "actions": [type(a).__name__ + ":" + getattr(a, "model", "") for a in result.actions],
        "active": result.active,
        "error": result.error,
        "unavailable": dict(result.unavailable),
        "blocked": dict(result.blocked),
        "retry_at": result.retry_at,
    }


def snapshot(state_dir: Path) -> dict[str, Any]:
    """What a person or the planner can see of a state directory, without ids and times that differ by run."""
    with StateStore(state_dir / "state.db") as store:
        source = store.source()
        assert source is not None
        conditions = {name: _timeless(asdict(c)) for name, c in store.conditions().items()}
        models = {name: asdict(m) for name, m in store.models().items()}
        # whether a pass saw a training Running depends on how fast it ran, not on the path taken
        events = [(e["model"], e["kind"], e["reason"]) for e in store.events(limit=1000) if e["kind"] != "Running"]
        runs = sorted((r.model, r.run_key, str(r.phase)) for r in store.runs_of_commit(source.applied_commit or ""))
        failed = store.conn.execute("SELECT model, run_key FROM runs WHERE phase = 'Failed'")
        attempts = sorted(tuple(r) for r in failed)
    with Registry(state_dir / "registry.db") as registry:
        versions = sorted((v.model, v.number, v.run_key) for v in registry.list())
        aliases = AliasBook(registry.conn).current()
    return {
        "source": (source.branch, source.applied_commit, source.error_reason, source.error.replace(source.url, "")),
        "conditions": conditions,
        "models": models,
        "events": events,
        "runs": runs,
        "attempts": attempts,
        "versions": versions,
        "aliases": aliases,
    }


def _timeless(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its times, and with run and job ids (random per state directory) masked."""
    return {k: RUN_IDS.sub("#", v) if isinstance(v, str) else v for k, v in row.items()
            if not k.endswith(("_at", "since"))}  # fmt: skip


@pytest.fixture
def pair(demo_repo: GitRepo, tmp_path: Path) -> Pair:
    return Pair(repo=demo_repo, root=tmp_path)


def test_a_new_process_skips_the_load_only_when_the_full_pass_would_do_nothing(pair: Pair) -> None:
    repo = pair.repo
    pair.settle()  # trains blobs, registers version 1
    assert pair.probe() == (True, False)
    assert pair.probe() == (True, False)  # the skipping pass keeps the record valid

    repo.edit(MODEL, "  train:\n", "  aliases: {prod: 1}\n  train:\n")
    repo.commit("An alias")
    pair.after_change()  # the full pass moves the alias

    repo.edit(MODEL, "--epochs 40", "--epochs 41")
    repo.commit("Another training")
    assert pair.probe()[0] is False  # submits
    pair.settle()
    assert pair.probe() == (True, False)

    repo.edit(MODEL, "  train:\n", "  suspend: true\n  train:\n")
    repo.edit(MODEL, "--epochs 41", "--epochs 42")
    repo.commit("Suspended, with a change that would train")
    pair.after_change()

    repo.edit(MODEL, "  aliases: {prod: 1}\n", "  aliases: {prod: 2}\n")
    repo.commit("The alias moves")
    pair.after_change()

    tuned = repo.read(MODEL).replace("  name: blobs\n", "  name: tuned\n").replace("  suspend: true\n", "")
    repo.write("models/tuned.yaml", tuned.replace("spec:\n", "spec:\n  base: blobs@next\n"))
    repo.edit(MODEL, "  aliases: {prod: 2}\n", "  aliases: {prod: 2, next: 9}\n")
    repo.commit("An alias of a version to come, and a fine-tune waiting for it")
    pair.after_change()  # refused and waiting on every pass, each new process's first: settled all the same

    repo.edit(MODEL, "    workdir: src\n", "    workdir: src\n    wrokdir: typo\n")
    repo.commit("An invalid commit")
    for _ in range(3):
        assert pair.probe() == (False, False)  # rejected each time, with the same problems
    rec = pair.new("quick")
    try:
        with pytest.raises(SpecError, match="wrokdir"):
            rec.loader.load(repo.git("rev-parse", "HEAD"))
    finally:
        rec.close()

    repo.edit(MODEL, "    wrokdir: typo\n", "")
    repo.commit("Fixed")
    pair.after_change()

    pair.limits = OutputLimits(metrics_bytes=1 << 20)  # the operator's configuration changes
    pair.after_change()

    repo.git("rm", "-q", MODEL, "models/tuned.yaml")
    repo.commit("The models are removed")
    pair.after_change()


def test_a_change_of_state_outside_the_commit_runs_the_full_pass(pair: Pair) -> None:
    pair.suspend_and_settle()
    assert pair.probe() == (True, False)
    for which in ("quick", "full"):  # another process records an event: the record no longer describes the state
        rec = pair.new(which)
        try:
            rec.state.event("blobs", "Noted", reason="test", message="by hand")
        finally:
            rec.close()
    pair.after_change()


@pytest.mark.parametrize("change", ["version", "alias"])
def test_a_version_or_an_alias_move_from_another_process_runs_the_full_pass(pair: Pair, change: str) -> None:
    """The record digests the registry by its newest version and newest alias move (both tables only grow), not
    by all of its history: a registration or a move by another process must still spoil it."""
    pair.suspend_and_settle()
    assert pair.probe() == (True, False)
    for which in ("quick", "full"):
        with Registry(pair.root / which / "registry.db") as registry:
            if change == "version":
                registry.register(model="elsewhere", run_id="r-by-hand", run_key="k" * 64,
                                  artifact=ArtifactRef(uri="file:///nowhere", sha256="0" * 64, size=1),
                                  metrics={}, gates=[], lineage={}, created_at=1.0)  # fmt: skip
            else:
                AliasBook(registry.conn).record([AliasMove(model="blobs", alias="by-hand", version=1, previous=None)],
                                                commit="0" * 40, subject="by hand")  # fmt: skip
    pair.after_change()


@pytest.mark.parametrize("key", ["wanted", "old"])
def test_a_failed_attempt_from_another_process_spoils_the_record_only_at_a_wanted_key(pair: Pair, key: str) -> None:
    """The record digests the failed attempts at the run key each model wants (a lookup per model, not a read of
    every run): one recorded there by another process, without an event, must spoil it; one at a key no model
    wants any more changes nothing a pass reads, and the next pass may still skip."""
    pair.suspend_and_settle()
    assert pair.probe() == (True, False)
    for which in ("quick", "full"):
        with StateStore(pair.root / which / "state.db") as store, store.conn:
            store.conn.execute(
                "INSERT INTO runs (id, model, run_key, spec_digest, commit_id, spec_path, backend, phase, attempt, "
                "run_dir, created_at, updated_at, ended_at) SELECT 'by-hand', name, "
                f"{'wanted_key' if key == 'wanted' else repr('0' * 64)}, spec_digest, '', spec_path, backend, "
                "'Failed', 1, '/nonexistent', 1.0, 1.0, 1.0 FROM models WHERE name = 'blobs'"
            )  # fmt: skip
    if key == "wanted":
        pair.after_change()
    else:
        assert pair.probe() == (True, False)


def _unsuspended_but_recorded_as_settled(pair: Pair, tamper: Callable[[Path], None]) -> None:
    """Suspend and settle, then unsuspend in a commit whose record is planted: the full pass must still train."""
    pair.suspend_and_settle()
    tamper(pair.root / "quick")
    assert pair.probe() == (False, False)


def _forge(state_dir: Path, **change: Any) -> None:
    doc = json.loads((state_dir / settled.RECORD_FILE).read_text())
    doc["payload"].update(change)
    (state_dir / settled.RECORD_FILE).write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: (d / settled.RECORD_FILE).write_text("{not json"),
        lambda d: (d / settled.RECORD_FILE).write_bytes(b""),
        lambda d: (d / settled.RECORD_FILE).write_bytes((d / settled.RECORD_FILE).read_bytes()[:40]),
        lambda d: _forge(d, fingerprint="0" * 64),
        lambda d: _forge(d, unavailable={"local": "forged"}),
        lambda d: (d / KEY_FILE).write_bytes(b"k" * 32),
        lambda d: (d / KEY_FILE).unlink(),
        lambda d: (d / settled.RECORD_FILE).write_bytes(b" " * (settled.MAX_BYTES + 1)),
    ],
    ids=["garbage", "empty", "truncated", "forged-fingerprint", "forged-backends", "other-key", "no-key", "huge"],
)
def test_a_damaged_or_forged_record_is_ignored(pair: Pair, tamper: Callable[[Path], None]) -> None:
    _unsuspended_but_recorded_as_settled(pair, tamper)
    assert pair.probe() == (True, False)  # the full pass wrote a good record again


def test_a_record_copied_from_another_state_directory_does_not_verify(pair: Pair) -> None:
    pair.suspend_and_settle()
    record = pair.root / "full" / settled.RECORD_FILE
    assert not record.exists()  # the full-only directory never writes one
    quick = pair.root / "quick"
    rec = pair.new("quick")
    try:
        key = (quick / KEY_FILE).read_bytes()
        generation = rec._settled_key(create=False)
        assert generation is not None
        found = settled.read(quick, key, generation[1])
        assert found is not None
        assert settled.read(quick, b"x" * 32, generation[1]) is None
        assert settled.read(quick, key, generation[1] + "; other code") is None
    finally:
        rec.close()


def test_a_record_of_another_commit_is_not_used(pair: Pair) -> None:
    pair.suspend_and_settle()
    pair.repo.edit(MODEL, "  suspend: true\n", "")
    pair.repo.commit("Unsuspended")  # would train
    result = pair.new("quick")
    try:
        assert [type(a).__name__ for a in result.reconcile().actions] == ["Submit"]
    finally:
        result.close()


def test_a_setting_json_cannot_hold_exactly_writes_no_record(tmp_path: Path) -> None:
    key, generation = b"k" * 32, "g"
    good = settled.Settled(commit="c", backends={"b": ("slurm", {"x": [1, 2]})}, unavailable={}, fingerprint="f")
    assert settled.write(tmp_path, key, generation, good)
    assert settled.read(tmp_path, key, generation) == good
    odd_settings: list[dict[Any, Any]] = [{"x": (1, 2)}, {1: "int key"}, {"when": object()}]
    for odd in odd_settings:
        record = settled.Settled(commit="c", backends={"b": ("slurm", odd)}, unavailable={}, fingerprint="f")
        assert not settled.write(tmp_path, key, generation, record)
        assert not (tmp_path / settled.RECORD_FILE).exists()
        assert settled.write(tmp_path, key, generation, good)


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"commit": 1, "backends": {}, "unavailable": {}, "fingerprint": "f"},
        {"commit": "c", "backends": {"b": "local"}, "unavailable": {}, "fingerprint": "f"},
        {"commit": "c", "backends": {"b": ["local"]}, "unavailable": {}, "fingerprint": "f"},
        {"commit": "c", "backends": {"b": ["local", []]}, "unavailable": {}, "fingerprint": "f"},
        {"commit": "c", "backends": {}, "unavailable": {"b": 1}, "fingerprint": "f"},
        {"commit": "c", "backends": {}, "unavailable": [], "fingerprint": "f"},
        {"commit": "c", "backends": {}, "fingerprint": "f"},
    ],
)
def test_a_signed_record_of_the_wrong_shape_is_ignored(tmp_path: Path, payload: Any) -> None:
    key, generation = b"k" * 32, "g"
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    mac = settled._mac(key, generation, text)
    (tmp_path / settled.RECORD_FILE).write_text(json.dumps({"generation": generation, "payload": payload, "mac": mac}))
    assert settled.read(tmp_path, key, generation) is None


def test_a_model_its_backend_refuses_leaves_no_record_since_the_host_may_change(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local backend refuses a model that asks for more CPUs than the host has. That answer is the host's,
    not the commit's or the configuration's: the same state directory on a bigger host (or after an upgrade)
    must train the model at once, not skip the pass on a record written where it could not run."""
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    pair.repo.edit(MODEL, "    env:\n", "    resources: {cpus: 8}\n    env:\n")
    pair.repo.commit("Eight CPUs")
    for _ in range(3):
        assert pair.probe() == (False, False)  # refused each time, and never settled for a new process
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    rec = pair.new("quick")
    try:
        result = rec.reconcile()
    finally:
        rec.close()
    assert [type(a).__name__ for a in result.actions] == ["Submit"]
