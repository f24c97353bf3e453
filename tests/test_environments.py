"""Training environments by digest: stored once, named in lineage, restored by rebuild, shown as before; and
versions whose lineage lists its packages inline (registered before environments) still show and verify."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gitopsd.errors import IntegrityError
from gitopsd.model import Phase
from gitopsd.reconcile.collect import lineage
from gitopsd.reconcile.state import RunRecord
from gitopsd.registry import environments
from gitopsd.registry.environments import Environment, from_job, hex_of, lookup, packages_of, parse_record
from gitopsd.registry.filestore import FileStore
from gitopsd.registry.recovery import import_missing, rebuild, save_version
from gitopsd.registry.versions import Registry
from tests.conftest import gitopsd

PACKAGES = {"numpy": "2.0.1", "Flask": "3.1.3", "torch": "2.4.0+cu121"}


def _env(**over: Any) -> Environment:
    fields: dict[str, Any] = {"python": "3.11.7", "packages": dict(PACKAGES)}
    fields.update(over)
    return Environment(**fields)


# -- the record and its digest (pure) -----------------------------------------------------------------------


def test_the_digest_is_the_sha256_of_the_canonical_record_whatever_the_package_order() -> None:
    env = _env()
    shuffled = _env(packages=dict(reversed(list(PACKAGES.items()))))
    assert env.record() == shuffled.record()
    assert env.digest == shuffled.digest == "sha256:" + hashlib.sha256(env.record()).hexdigest()
    assert json.loads(env.record()) == {"record": "environment", "python": "3.11.7", "packages": PACKAGES}
    assert b" " not in env.record(), "compact: the record is the canonical form"


@pytest.mark.parametrize(
    "changed",
    [
        {"packages": {**PACKAGES, "numpy": "2.0.2"}},  # an upgrade
        {"packages": {**PACKAGES, "scipy": "1.14.0"}},  # an install
        {"packages": {k: v for k, v in PACKAGES.items() if k != "torch"}},  # a removal
        {"python": "3.12.1"},
        {"python": None},
    ],
)
def test_a_changed_environment_gets_another_digest(changed: dict[str, Any]) -> None:
    assert _env(**changed).digest != _env().digest


def test_from_job_takes_the_packages_a_backend_listed() -> None:
    assert from_job({"python": "3.11.7", "packages": PACKAGES, "host": "n1"}) == _env()
    assert from_job({"packages": PACKAGES}) == _env(python=None)
    assert from_job({"python": 3.11, "packages": PACKAGES}) == _env(python=None), "not a version string"


@pytest.mark.parametrize(
    "job",
    [
        {},
        {"packages": {}},
        {"packages": None},
        {"packages": ["numpy"]},
        {"packages": {"numpy": 2}},
        {"packages": {"numpy": None}},
        {"packages": {"numpy": "x" * 1001}},
        {"packages": {"x" * 1001: "1"}},
    ],
)
def test_packages_a_record_cannot_hold_give_no_environment(job: dict[str, Any]) -> None:
    assert from_job(job) is None


def test_too_many_packages_give_no_environment() -> None:
    many = {f"p{i}": "1" for i in range(environments.MOST_PACKAGES + 1)}
    assert from_job({"packages": many}) is None
    assert from_job({"packages": dict(list(many.items())[:-1])}) is not None


def test_lineage_names_the_environment_by_digest_and_keeps_other_packages_inline() -> None:
    run = RunRecord(id="r1", model="blobs", run_key="k", spec_digest="s", commit_id="c" * 40,
                    spec_path="models/blobs.yaml", backend="local", phase=Phase.RUNNING, attempt=1, run_dir="/r",
                    created_at=1.0, updated_at=1.0, job_id="j1")  # fmt: skip
    train = {"workdir": "src", "command": "python3 train.py", "backend_type": "local"}
    snapshot = {"repo_url": "/repo", "commit": "c" * 40, "spec_path": "models/blobs.yaml", "code_tree": "t" * 40,
                "train": train, "data": []}  # fmt: skip
    job = {"host": "n1", "python": "3.11.7", "packages": PACKAGES}
    env = from_job(job)
    named = lineage(run, snapshot, job, env)
    assert named["environment"] == _env().digest
    assert "packages" not in named and "packages" not in named["job"], "the list is not copied into lineage"
    assert named["job"]["host"] == "n1" and named["python"] == "3.11.7"
    assert job["packages"] == PACKAGES, "the backend's description is left as it was"
    inline = lineage(run, snapshot, {"host": "n1"}, None)
    assert inline["packages"] == {} and "environment" not in inline, "a job with no packages: as before"


def test_a_record_reads_back_only_if_it_hashes_to_its_name_and_is_canonical() -> None:
    env = _env()
    assert parse_record(env.record(), env.hex) == env
    with pytest.raises(IntegrityError, match="does not hash"):
        parse_record(env.record().replace(b"2.0.1", b"2.0.9"), env.hex)
    spaced = json.dumps(json.loads(env.record()), sort_keys=True).encode()  # same content, other bytes
    with pytest.raises(IntegrityError, match="not an environment record"):
        parse_record(spaced, hashlib.sha256(spaced).hexdigest())
    for raw in (b"[]", b'{"record": "version"}', b"\xff", b"[" * 100_000):
        with pytest.raises(IntegrityError):
            parse_record(raw, hashlib.sha256(raw).hexdigest())


@pytest.mark.parametrize(
    ("digest", "expected"),
    [
        ("sha256:" + "a" * 64, "a" * 64),
        ("sha256:" + "A" * 64, None),
        ("sha256:" + "a" * 63, None),
        ("sha512:" + "a" * 64, None),
        ("a" * 64, None),
        (None, None),
        (7, None),
    ],
)
def test_hex_of_accepts_only_a_sha256_digest(digest: object, expected: str | None) -> None:
    assert hex_of(digest) == expected


# -- in the registry and the store ----------------------------------------------------------------------------


def test_an_environment_is_stored_once_in_the_store_and_the_registry(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    env = _env()
    with Registry(tmp_path / "registry.db") as reg:
        assert reg.conn is not None
        environments.save(store, reg.conn, env)
        environments.save(store, reg.conn, _env(packages=dict(reversed(list(PACKAGES.items())))))
        assert reg.conn.execute("SELECT COUNT(*) FROM environments").fetchone() == (1,)
        assert lookup(reg.conn, env.digest) == env
        assert lookup(reg.conn, _env(python="3.12.1").digest) is None
    assert [(name, number) for name, number, _ in store.records()] == [(environments.PREFIX + env.hex, 1)]
    assert store.get_record(environments.PREFIX + env.hex, 1) == env.record()


def test_environment_rows_cannot_be_changed_or_replaced(tmp_path: Path) -> None:
    env = _env()
    with Registry(tmp_path / "registry.db") as reg:
        conn = reg.conn
        assert conn is not None
        environments.insert(conn, [env])
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            conn.execute("UPDATE environments SET packages = '{}'")
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            conn.execute("DELETE FROM environments")
        conn.execute("INSERT OR REPLACE INTO environments VALUES (?, '3.0', '{}')", (env.digest,))
        assert lookup(conn, env.digest) == env, "the first row stays"


def test_a_row_that_does_not_hash_to_its_digest_is_not_shown(tmp_path: Path) -> None:
    env = _env()
    with Registry(tmp_path / "registry.db") as reg:
        assert reg.conn is not None
        reg.conn.execute(
            "INSERT INTO environments VALUES (?, ?, ?)", (env.digest, env.python, json.dumps({"evil": "1"}))
        )
        assert lookup(reg.conn, env.digest) is None
        reg.conn.execute("INSERT INTO environments VALUES (?, 'x', 'not json')", ("sha256:" + "b" * 64,))
        assert lookup(reg.conn, "sha256:" + "b" * 64) is None


def test_packages_of_reads_old_inline_lineage_and_new_digests(tmp_path: Path) -> None:
    env = _env()
    with Registry(tmp_path / "registry.db") as reg:
        assert reg.conn is not None
        environments.insert(reg.conn, [env])
        assert packages_of({"packages": {"old": "1.0"}, "job": {"packages": {"old": "1.0"}}}, reg.conn) == {
            "old": "1.0"
        }
        assert packages_of({"commit": "c"}, reg.conn) == {}
        assert packages_of({"environment": env.digest}, reg.conn) == PACKAGES
        assert packages_of({"environment": "sha256:" + "c" * 64}, reg.conn) is None
        assert packages_of({"environment": None}, reg.conn) is None


def test_a_read_only_registry_made_before_environments_resolves_nothing_and_raises_nothing(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE versions (model TEXT)")
    conn.commit()
    conn.close()
    with Registry(path, readonly=True) as reg:
        assert lookup(reg.conn, _env().digest) is None


def _register(reg: Registry, store: FileStore, number: int, env: Environment | None) -> None:
    from gitopsd.registry.store import ArtifactRef

    if env is not None:
        assert reg.conn is not None
        environments.save(store, reg.conn, env)
    lin = {"commit": "c", "environment": env.digest} if env else {"commit": "c", "packages": {"old": "1.0"}}
    digest = f"{number:064x}"
    version = reg.register(
        model="blobs", run_id=f"r{number}", run_key=f"k{number}",
        artifact=ArtifactRef(sha256=digest, size=1, uri=f"{store.uri}/sha256/{digest[:2]}/{digest[2:]}"),
        metrics={}, gates=[], lineage=lin, created_at=1_700_000_000.0 + number,
    )  # fmt: skip
    save_version(store, version)


def test_rebuild_and_import_restore_the_environments_versions_name(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    first, second = _env(), _env(python="3.12.1")
    with Registry(tmp_path / "registry.db") as reg:
        _register(reg, store, 1, None)
        _register(reg, store, 2, first)
        _register(reg, store, 3, second)
        _register(reg, store, 4, first)
    assert rebuild(store, tmp_path / "rebuilt.db") == (4, 0)
    with Registry(tmp_path / "rebuilt.db", readonly=True) as reg:
        shown = [packages_of(v.lineage, reg.conn) for v in reg.list()]
        assert shown == [{"old": "1.0"}, PACKAGES, PACKAGES, PACKAGES]
        assert lookup(reg.conn, second.digest) == second
    with Registry(tmp_path / "taker.db") as reg:
        assert import_missing(store, reg) == (4, 0)
        assert lookup(reg.conn, first.digest) == first and lookup(reg.conn, second.digest) == second
        assert import_missing(store, reg) == (0, 0), "a second import adds nothing"
        assert reg.conn is not None
        assert reg.conn.execute("SELECT COUNT(*) FROM environments").fetchone() == (2,)


def test_rebuild_refuses_an_environment_record_that_does_not_hash_to_its_name(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    env = _env()
    with Registry(tmp_path / "registry.db") as reg:
        _register(reg, store, 1, env)
    record = store.root / "records" / (environments.PREFIX + env.hex) / "00000001.json"
    record.chmod(0o644)
    record.write_bytes(env.record().replace(b"2.0.1", b"6.6.6"))
    with pytest.raises(IntegrityError, match=r"does not hash to its name.*move it out"):
        rebuild(store, tmp_path / "rebuilt.db")


# -- on the command line ----------------------------------------------------------------------------------------


def test_old_and_new_lineage_show_and_verify(tmp_path: Path) -> None:
    """A registry with a version whose packages are inline (as gitopsd wrote them before) and one named by
    digest: both show their packages, `lineage` prints both, and `registry verify` passes."""
    state = tmp_path / "state"
    store = FileStore(state / "artifacts")
    env = _env()
    artifact = tmp_path / "model.bin"
    with Registry(state / "registry.db") as reg:
        for number, named in ((1, None), (2, env)):
            artifact.write_bytes(b"model %d" % number)
            ref = store.put(artifact)
            if named is not None:
                assert reg.conn is not None
                environments.save(store, reg.conn, named)
            lin = {"commit": "c" * 40, "python": "3.11.7", "job": {"host": "n1"}}
            lin |= {"environment": named.digest} if named else {"packages": PACKAGES}
            if named is None:
                lin["job"] = {"host": "n1", "packages": PACKAGES}
            version = reg.register(model="blobs", run_id=f"r{number}", run_key=f"k{number}", artifact=ref,
                                   metrics={"acc": 0.9}, gates=[], lineage=lin, created_at=1.0 + number)  # fmt: skip
            save_version(store, version)
    old = json.loads(gitopsd(state, "registry", "show", "blobs@1").stdout)["lineage"]
    assert old["packages"] == old["job"]["packages"] == PACKAGES, "shown exactly as stored"
    new = json.loads(gitopsd(state, "registry", "show", "blobs@2").stdout)["lineage"]
    assert new["packages"] == PACKAGES and new["environment"] == env.digest
    assert "environment" not in gitopsd(state, "lineage", "blobs@1").stdout
    shown = gitopsd(state, "lineage", "blobs@2").stdout
    assert f"environment {env.digest} (3 packages" in shown
    assert "2 version(s) verified" in gitopsd(state, "registry", "verify").stdout

    record = state / "artifacts" / "records" / (environments.PREFIX + env.hex) / "00000001.json"
    record.chmod(0o644)
    record.write_bytes(env.record().replace(b"2.0.1", b"6.6.6"))
    failed = gitopsd(state, "registry", "verify", check=False)
    assert failed.returncode == 1 and f"blobs@2: its environment record {env.digest}" in failed.stderr
    record.unlink()
    failed = gitopsd(state, "registry", "verify", check=False)
    assert failed.returncode == 1 and "missing" in failed.stderr
    record.write_bytes(env.record())
    assert "2 version(s) verified" in gitopsd(state, "registry", "verify").stdout

    with Registry(state / "registry.db") as reg:  # a registry that lost the row (restored from a copy)
        assert reg.conn is not None
        reg.conn.execute("DROP TRIGGER environments_no_delete")
        reg.conn.execute("DELETE FROM environments")
    assert json.loads(gitopsd(state, "registry", "show", "blobs@2").stdout)["lineage"]["packages"] is None
    assert "unknown to this registry" in gitopsd(state, "lineage", "blobs@2").stdout
