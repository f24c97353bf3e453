"""The Slurm backend on a cluster that keeps accounting as real ones do (tools/slurm/up.sh's default: slurmdbd on a
private MariaDB, AccountingStorageEnforce=associations). A job whose user has no association, or no association with
the account it names, is refused at submit: a permanent error that names the association and how to add one, not
just Slurm's "Invalid account". A job that left squeue without an exit record is resolved from slurmdbd (`sacct`,
text: the 22.05 `sacct --json` reports exit code 0 for any job), with its real exit code.

Without accounting these tests are skipped, saying how to turn it on; under CI they fail instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitopsd_slurm.backend import SlurmBackend

from gitopsd.errors import PermanentError
from gitopsd.model import JobState
from tests.backend_contract import new_job, submit, wait_for
from tests.slurm.conftest import Cluster, cancel_everything
from tests.slurm.test_slurm_cluster import Counting

NO_ASSOCIATION = "nobody"  # a user every Debian has, and the test cluster gives no association


def test_a_user_without_an_association_is_refused_naming_the_association(
    accounting: Cluster, tmp_path: Path, state_dir: Path
) -> None:
    assert not accounting.run("sacctmgr", "-n", "-P", "show", "assoc", f"user={NO_ASSOCIATION}").stdout.strip()
    settings = accounting.settings("rest")
    settings["rest"] = {**settings["rest"], "user": NO_ASSOCIATION}  # its token from `scontrol token`, as root
    backend = SlurmBackend(name="hpc", settings=settings, state_dir=state_dir)
    job = new_job(tmp_path, "true")
    try:
        with pytest.raises(PermanentError) as refused:
            backend.submit(job)
    finally:
        cancel_everything(backend, tmp_path)
    message = str(refused.value)
    assert f"Slurm refused the job of run {job.run_id}" in message and "Invalid account" in message, message
    assert f"user {NO_ASSOCIATION} needs a Slurm association with an account" in message, message
    assert f"sacctmgr add user {NO_ASSOCIATION} account=ACCOUNT" in message, message


def test_an_account_the_user_has_no_association_with_is_refused_naming_it(
    accounting: Cluster, transport: str, tmp_path: Path, state_dir: Path
) -> None:
    backend = SlurmBackend(name="hpc", settings=accounting.settings(transport, account="gitopsd-nosuch"),
                           state_dir=state_dir)  # fmt: skip
    try:
        with pytest.raises(PermanentError) as refused:
            backend.submit(new_job(tmp_path, "true"))
    finally:
        cancel_everything(backend, tmp_path)
    message = str(refused.value)
    assert "user root needs a Slurm association with account gitopsd-nosuch" in message, message
    assert "sacctmgr add user root account=gitopsd-nosuch" in message, message


@pytest.mark.parametrize("mode", ["auto", "slurmdbd"])
def test_a_job_that_left_squeue_without_records_is_resolved_from_slurmdbd(
    accounting: Cluster, tmp_path: Path, state_dir: Path, mode: str
) -> None:
    counting = Counting(slurm_conf=accounting.slurm_conf)
    backend = SlurmBackend(name="hpc", settings=accounting.settings("cli", accounting=mode), state_dir=state_dir,
                           runner=counting.runner)  # fmt: skip
    peek = SlurmBackend(name="peek", settings=accounting.settings("cli"), state_dir=state_dir / "peek")
    try:
        ref = submit(backend, new_job(tmp_path, "exit 3"))
        wait_for(peek, ref, [JobState.FAILED])
        accounting.wait_accounted(ref.job_id)  # as it is long before the job leaves squeue
        for record in ("exit.json", "final.json"):  # as if the node never wrote them back
            (ref.run_dir / "slurm" / record).unlink(missing_ok=True)
        counting.hide.add(ref.job_id)
        counting.commands.clear()
        status = backend.status([ref])[ref.run_id]
    finally:
        cancel_everything(backend, tmp_path)
    assert (status.state, status.exit_code) == (JobState.FAILED, 3), status
    sacct = [argv for argv in counting.commands if argv[0] == "sacct"]
    assert sacct and all("-c" not in argv for argv in sacct), "slurmdbd answered, not the job-completion file"
