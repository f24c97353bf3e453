"""spec.train.checkpoint: its values end in `#SBATCH --signal` and in the job's wrapper, so they are checked
strictly where the spec is read, and again where the script is written."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from gitopsd_slurm.script import build_request
from gitopsd_slurm.settings import parse_settings
from pydantic import ValidationError

from gitopsd.errors import PermanentError
from gitopsd.model import Checkpoint
from gitopsd.reconcile.reconciler import Reconciler
from gitopsd.reconcile.statusview import read_status
from gitopsd.spec.schema import TrainSpec
from tests.backend_contract import new_job
from tests.conftest import GitRepo


def train(checkpoint: Any, **extra: Any) -> TrainSpec:
    return TrainSpec.model_validate({"command": "python train.py", "checkpoint": checkpoint, **extra})


@pytest.mark.parametrize(
    ("checkpoint", "words"),
    [
        ({"signal": "USR1; rm -rf ~"}, "'USR1', 'USR2' or 'TERM'"),
        ({"signal": "USR1\n#SBATCH --account=other"}, "'USR1', 'USR2' or 'TERM'"),
        ({"signal": "KILL"}, "'USR1', 'USR2' or 'TERM'"),
        ({"signal": 10}, "'USR1', 'USR2' or 'TERM'"),
        ({"before": "2m$(reboot)"}, "invalid duration"),
        ({"before": 0}, "more than zero"),
        ({"before": "7h"}, "at most 6h"),
        ({"max_segments": 10**9}, "less than or equal to 1000"),
        ({"max_segments": 0}, "greater than or equal to 1"),
        ({"max_segments": "many"}, "valid integer"),
        ({"sgnal": "USR1"}, "Extra inputs are not permitted"),
    ],
)
def test_checkpoint_values_outside_the_allow_list_are_refused(checkpoint: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        train(checkpoint)
    assert words in str(caught.value)


def test_a_signal_in_the_first_half_of_the_timeout_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"must be at most half of the timeout"):
        train({"before": "2m"}, timeout="3m")
    assert train({"before": "2m"}, timeout="4m").checkpoint is not None
    assert train({}).checkpoint == train({"signal": "USR1", "before": 120, "max_segments": 10}).checkpoint


@pytest.mark.parametrize(
    "checkpoint",
    [
        Checkpoint(signal="USR1 #"),
        Checkpoint(signal="USR1\nrm -rf /"),
        Checkpoint(signal="KILL"),
        Checkpoint(before_s=70_000),
        Checkpoint(max_segments=10**6),
    ],
)
def test_the_script_renderer_refuses_what_the_spec_could_never_give(tmp_path: Path, checkpoint: Checkpoint) -> None:
    job = replace(new_job(tmp_path, "true"), checkpoint=checkpoint)
    with pytest.raises(PermanentError):
        build_request(job, parse_settings("hpc", {}), {})


def test_a_backend_that_cannot_chain_segments_refuses_checkpoint_at_plan_time(
    demo_repo: GitRepo, reconciler: Reconciler, state_dir: Path
) -> None:
    demo_repo.edit("models/blobs.yaml", "    env:\n", "    checkpoint: {before: 1m}\n    env:\n")
    demo_repo.commit("Checkpoint on the local backend")
    reconciler.reconcile()
    (status,) = [m for m in read_status(state_dir)["models"] if m["name"] == "blobs"]
    assert status["reason"] == "PolicyDenied"
    assert "backend 'local' (type local) cannot chain checkpointed jobs" in status["message"]
    assert "remove spec.train.checkpoint" in status["message"]
    assert not (state_dir / "runs").exists() or not any((state_dir / "runs").iterdir()), "nothing was started"


def test_checkpoint_settings_go_into_the_spec_digest_not_the_run_key(demo_repo: GitRepo) -> None:
    from gitopsd.reconcile.desired import keys_for
    from gitopsd.spec.load import load_model
    from gitopsd.spec.schema import RepositorySpec, resolve_train

    text = demo_repo.read("models/blobs.yaml")
    plain = load_model(text, "models/blobs.yaml")
    more = load_model(text.replace("    env:\n", "    checkpoint: {max_segments: 20}\n    env:\n"), "m.yaml")
    repo = RepositorySpec.model_validate({"apiVersion": "gitopsd/v1", "kind": "Repository",
                                          "backends": {"local": {"type": "local"}}})  # fmt: skip
    plain_keys = keys_for(plain, resolve_train(plain, repo), "tree", None)
    more_keys = keys_for(more, resolve_train(more, repo), "tree", None)
    assert plain_keys[0] == more_keys[0], "the same training: no new run key"
    assert plain_keys[1] != more_keys[1], "another attempt may be due: a new spec digest"
