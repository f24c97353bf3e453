"""The registry in production: artifacts in S3, and the registry rebuilt from the store alone."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.spec.operator import Operator, OperatorRegistry
from tests.conftest import GitRepo, gitopsd
from tests.s3server import s3_client

MODEL = "models/blobs.yaml"


def _registry_dump(state_dir: Path) -> dict[str, Any]:
    versions = json.loads(gitopsd(state_dir, "registry", "list", "--json").stdout)
    conn = sqlite3.connect(state_dir / "registry.db")
    moves = conn.execute(
        "SELECT model, alias, version, previous, kind, commit_id, subject, at FROM alias_moves ORDER BY seq"
    ).fetchall()
    conn.close()
    return {"versions": versions, "aliases": moves}


def _train_twice_with_aliases(repo: GitRepo, rec: Reconciler) -> None:
    repo.edit(MODEL, "spec:\n  train:", "spec:\n  aliases:\n    production: 1\n    staging: latest\n  train:")
    repo.commit("Aliases")
    rec.reconcile_until_settled(timeout_s=60)
    repo.edit("src/train.py", '"epoch": epoch}', '"epoch": epoch, "v": 2}')
    repo.commit("v2")
    rec.reconcile_until_settled(timeout_s=60)


def test_file_store_rebuild_restores_every_version_alias_and_lineage(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    _train_twice_with_aliases(demo_repo, reconciler)
    before = _registry_dump(state_dir)
    assert [v["label"] for v in before["versions"]] == ["blobs@1", "blobs@2"]
    assert len(before["aliases"]) == 3
    reconciler.close()

    for suffix in ("", "-wal", "-shm"):
        Path(f"{state_dir / 'registry.db'}{suffix}").unlink(missing_ok=True)
    done = gitopsd(state_dir, "registry", "rebuild")
    assert "2 version(s), 3 alias move(s)" in done.stdout
    assert _registry_dump(state_dir) == before
    assert "2 version(s) verified" in gitopsd(state_dir, "registry", "verify").stdout

    refused = gitopsd(state_dir, "registry", "rebuild", check=False)
    assert refused.returncode == 1 and "exists" in refused.stderr, "rebuild never overwrites a registry"


def test_s3_store_holds_artifacts_by_digest_and_rebuilds(
    demo_repo: GitRepo,
    state_dir: Path,
    s3_server: str,
    s3_bucket: str,
) -> None:
    client = s3_client(s3_server)
    bucket = s3_bucket
    # The operator puts artifacts in S3; the command line finds the same store through the same file.
    config = state_dir.parent / "config.toml"
    config.write_text(f'[registry]\nartifacts = "s3://{bucket}/models"\nendpoint_url = "{s3_server}"\n')
    store = OperatorRegistry(artifacts=f"s3://{bucket}/models", endpoint_url=s3_server)
    rec = Reconciler(state_dir=state_dir, url=str(demo_repo.path), operator=Operator(registry=store))
    _train_twice_with_aliases(demo_repo, rec)
    rec.close()

    versions = json.loads(gitopsd(state_dir, "registry", "list", "--json").stdout)
    for version in versions:
        sha = version["artifact"]["sha256"]
        assert version["artifact"]["uri"] == f"s3://{bucket}/models/sha256/{sha[:2]}/{sha[2:]}"
        head = client.head_object(Bucket=bucket, Key=f"models/sha256/{sha[:2]}/{sha[2:]}")
        assert head["ContentLength"] == version["artifact"]["size"]
    assert not (state_dir / "artifacts" / "sha256").exists(), "nothing went to the local default store"

    before = _registry_dump(state_dir)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state_dir / 'registry.db'}{suffix}").unlink(missing_ok=True)
    gitopsd(state_dir, "--config", str(config), "registry", "rebuild")
    assert _registry_dump(state_dir) == before

    sha = versions[0]["artifact"]["sha256"]
    client.put_object(Bucket=bucket, Key=f"models/sha256/{sha[:2]}/{sha[2:]}", Body=b"tampered")
    tampered = gitopsd(state_dir, "--config", str(config), "registry", "verify", check=False)
    assert tampered.returncode == 1 and "blobs@1" in tampered.stderr


@pytest.mark.parametrize("missing", ["artifact", "record"])
def test_verify_reports_a_missing_artifact_or_record(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path, missing: str
) -> None:
    reconciler.reconcile_until_settled(timeout_s=60)
    version = json.loads(gitopsd(state_dir, "registry", "show", "blobs@1").stdout)
    sha = version["artifact"]["sha256"]
    path = (
        state_dir / "artifacts" / "sha256" / sha[:2] / sha[2:]
        if missing == "artifact"
        else state_dir / "artifacts" / "records" / "blobs" / "00000001.json"
    )
    path.unlink()
    done = gitopsd(state_dir, "registry", "verify", check=False)
    assert done.returncode == 1 and "blobs@1" in done.stderr
