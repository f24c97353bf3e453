"""The `cli` transport: sbatch, squeue, scancel, sinfo, scontrol and sacct, as a login node's user runs them.

Command builders and output parsers are pure functions (tested on outputs recorded from a real cluster); the
one class runs them through an injected `Runner`. `squeue --json` ignores its filters (-j, -u, -t) in Slurm
22.05, so a status pass asks for everything once and the backend picks its jobs out. Accounting is found out
once: `sacct` (slurmdbd), else `sacct -c` (the jobcomp file), else none.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable, Sequence
from typing import Any

from gitopsd.errors import BackendUnavailable, PermanentError, TransientError
from gitopsd_slurm.records import (
    SACCT_FIELDS,
    NodeInfo,
    SlurmJob,
    jobs_from_json,
    jobs_from_sacct,
    json_errors,
    nodes_from_json,
)
from gitopsd_slurm.script import JobRequest
from gitopsd_slurm.settings import SlurmSettings
from gitopsd_slurm.states import is_refusal, is_unreachable, refusal_hint
from gitopsd_slurm.transport import CommandResult, Runner

# -- builders ----------------------------------------------------------------------------------------------


def sbatch_argv(script_path: str) -> list[str]:
    return ["sbatch", "--parsable", script_path]


def squeue_argv() -> list[str]:
    return ["squeue", "--json"]


def scancel_argv(job_id: str) -> list[str]:
    return ["scancel", job_id]


def sinfo_argv() -> list[str]:
    return ["sinfo", "--json"]


def ping_argv() -> list[str]:
    return ["scontrol", "ping"]


def sacct_argv(job_ids: Sequence[str], *, jobcomp: bool) -> list[str]:
    """One sacct call for all `job_ids`; `jobcomp` reads the job-completion file instead of slurmdbd."""
    argv = ["sacct", "-X", "-P", "-j", ",".join(job_ids), "-o", ",".join(SACCT_FIELDS)]
    return [*argv, "-c"] if jobcomp else argv


def sacct_name_argv(name: str, *, jobcomp: bool) -> list[str]:
    argv = ["sacct", "-X", "-P", "--name", name, "-S", "now-30days", "-o", ",".join(SACCT_FIELDS)]
    return [*argv, "-c"] if jobcomp else argv


# -- parsers -----------------------------------------------------------------------------------------------


def parse_sbatch(stdout: str) -> str:
    """The job id `sbatch --parsable` printed: "123" or "123;cluster". ValueError if there is none."""
    first = stdout.strip().splitlines()[0] if stdout.strip() else ""
    job_id = first.split(";")[0].strip()
    if not job_id.isdigit():
        raise ValueError(f"sbatch --parsable printed {stdout.strip()!r}, not a job id")
    return job_id


def parse_json(stdout: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(stdout)
    except ValueError as exc:
        raise ValueError(f"{what} did not print JSON ({exc}): {stdout[:200]!r}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{what} printed JSON that is not an object: {stdout[:200]!r}")
    return doc


def parse_ping(stdout: str) -> bool:
    """Whether `scontrol ping` says a controller is UP ("Slurmctld(primary) at host is UP")."""
    return any(line.rstrip().endswith("is UP") for line in stdout.splitlines())


# -- the transport -----------------------------------------------------------------------------------------


class CliTransport:
    """Talks to a cluster through its command line tools. See the module docstring."""

    name = "cli"

    def __init__(self, *, backend: str, settings: SlurmSettings, runner: Runner) -> None:
        self.backend = backend
        self.settings = settings
        self.runner = runner
        self._accounting: str | None = None if settings.accounting == "auto" else settings.accounting

    def _run(self, argv: Sequence[str]) -> CommandResult:
        return self.runner(argv, timeout_s=self.settings.command_timeout_s)

    def _failed(self, result: CommandResult, what: str) -> Exception:
        why = result.why()
        message = f"backend {self.backend!r}: {what} ({' '.join(result.argv[:2])}) failed: {why}"
        if result.returncode in (124, 127) or is_unreachable(why):
            hint = "; is slurmctld running?" if result.returncode != 127 else "; are Slurm's client tools installed?"
            return BackendUnavailable(message + hint)
        return TransientError(message)

    def ping(self) -> None:
        result = self._run(ping_argv())
        if result.returncode != 0 or not parse_ping(result.stdout):
            said = (result.stdout.strip().splitlines() or [result.why()])[0]  # not the banner that follows
            raise BackendUnavailable(
                f"backend {self.backend!r}: the Slurm controller does not answer `scontrol ping`: {said}"
            )

    def submit(self, request: JobRequest) -> str:
        result = self._run(sbatch_argv(request.script_path))
        if result.returncode != 0:
            why = result.why()
            if is_refusal(why):
                raise PermanentError(
                    f"backend {self.backend!r}: Slurm refused the job of run {request.run_id}: {why} "
                    f"(script {request.script_path})"
                    + refusal_hint(why, user=getpass.getuser(), account=request.options.account)
                )
            raise self._failed(result, f"submitting run {request.run_id}")
        try:
            return parse_sbatch(result.stdout)
        except ValueError as exc:
            raise TransientError(f"backend {self.backend!r}: {exc}") from None

    def list_jobs(self) -> list[SlurmJob]:
        result = self._run(squeue_argv())
        if result.returncode != 0:
            raise self._failed(result, "listing jobs")
        try:
            doc = parse_json(result.stdout, "squeue --json")
        except ValueError as exc:
            raise TransientError(f"backend {self.backend!r}: {exc}") from None
        if not doc.get("jobs") and json_errors(doc):
            raise BackendUnavailable(f"backend {self.backend!r}: squeue --json: {'; '.join(json_errors(doc))}")
        return jobs_from_json(doc, source="squeue")

    def cancel(self, job_id: str) -> None:
        result = self._run(scancel_argv(job_id))
        why = result.why().lower()
        if result.returncode != 0 and "invalid job id" not in why and "already completing or completed" not in why:
            raise self._failed(result, f"cancelling job {job_id}")

    def nodes(self) -> list[NodeInfo]:
        result = self._run(sinfo_argv())
        if result.returncode != 0:
            raise self._failed(result, "listing nodes")
        try:
            return nodes_from_json(parse_json(result.stdout, "sinfo --json"))
        except ValueError as exc:
            raise TransientError(f"backend {self.backend!r}: {exc}") from None

    def accounting(self, job_ids: Sequence[str]) -> list[SlurmJob] | None:
        if not job_ids:
            return []
        return self._sacct(lambda jobcomp: sacct_argv(job_ids, jobcomp=jobcomp))

    def accounting_by_name(self, name: str) -> list[SlurmJob] | None:
        found = self._sacct(lambda jobcomp: sacct_name_argv(name, jobcomp=jobcomp))
        return None if found is None else [job for job in found if job.name == name]  # -c ignores --name

    def _sacct(self, argv_for: Callable[[bool], list[str]]) -> list[SlurmJob] | None:
        """Run sacct in the accounting mode this cluster has (found out on first use); None if it has none."""
        for mode in [self._accounting] if self._accounting else ["slurmdbd", "jobcomp"]:
            if mode == "none":
                return None
            result = self._run(argv_for(mode == "jobcomp"))
            if result.returncode == 0:
                self._accounting = mode
                return jobs_from_sacct(result.stdout)
            if self._accounting is not None or is_unreachable(result.why()):
                raise self._failed(result, "reading accounting")
        self._accounting = "none"  # neither slurmdbd nor a readable job-completion file
        return None
