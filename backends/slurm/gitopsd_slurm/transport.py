"""The seam between the backend and Slurm: one protocol that the CLI and REST transports both implement,
and the process runner through which every command goes.

The backend decides (what to submit, how to read states, when to poll); a transport only talks. Running a
command is itself injected (`Runner`), so tests count the calls a status pass makes (200 jobs, one squeue) and
feed recorded outputs to the same parsing code that reads the real cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gitopsd_slurm.records import NodeInfo, SlurmJob
from gitopsd_slurm.script import JobRequest

# Slurm's configuration parser quotes the lines it cannot read ('Parse error in file F line 1: "..."', 'Parsing
# error at unrecognized key: KEY', '"V" is not a valid number'), and SLURM_CONF may name a file that is not a
# Slurm configuration at all: such a complaint is never repeated, whatever file it quotes.
_CONF_TROUBLE = re.compile(r"Parse error in file|Parsing error at|Unable to process configuration file")


@dataclass(frozen=True, kw_only=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    def why(self) -> str:
        """The command's own complaint, in one line; never a line of a file it could not parse."""
        text = (self.stderr.strip() or self.stdout.strip()).replace("\n", " | ")
        if _CONF_TROUBLE.search(text):
            return (
                f"{self.argv[0] if self.argv else 'Slurm'} cannot parse the Slurm configuration file (SLURM_CONF or "
                "the backend's slurm_conf setting); its lines are not repeated here"
            )
        return text or f"exit status {self.returncode}"


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        """Run `argv` and return what it did. A command that cannot start at all gives returncode 127."""


# Variables a Slurm command may need from the daemon's environment. SLURM_JWT is left out on purpose: with it
# the CLIs would authenticate by that (expiring) token instead of munge.
_PASSED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "SLURM_CONF")


@dataclass(frozen=True, kw_only=True)
class SubprocessRunner:
    """Runs commands for real, with a small explicit environment (see `_PASSED`) plus `env`."""

    env: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        env = {key: os.environ[key] for key in _PASSED if key in os.environ}
        env.update(self.env)
        try:
            done = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError as exc:
            return CommandResult(argv=tuple(argv), returncode=127, stderr=f"{argv[0]}: not found ({exc.strerror})")
        except subprocess.TimeoutExpired:
            return CommandResult(argv=tuple(argv), returncode=124, stderr=f"timed out after {timeout_s:g} s")
        return CommandResult(argv=tuple(argv), returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)


class Transport(Protocol):
    """How the backend talks to one Slurm cluster. Errors: `BackendUnavailable` when the cluster cannot be
    reached, `PermanentError` when Slurm refuses a job for good, `TransientError` for anything else."""

    name: str

    def ping(self) -> None:
        """Raise BackendUnavailable unless the controller answers."""

    def submit(self, request: JobRequest) -> str:
        """Submit the job; return its job id."""

    def list_jobs(self) -> list[SlurmJob]:
        """Every job the controller holds (finished ones until MinJobAge), in ONE call."""

    def cancel(self, job_id: str) -> None:
        """Cancel the job; a job that has already ended or is unknown is not an error."""

    def nodes(self) -> list[NodeInfo]:
        """The cluster's nodes."""

    def accounting(self, job_ids: Sequence[str]) -> list[SlurmJob] | None:
        """Finished jobs from accounting, in ONE call; None when this cluster keeps no accounting."""

    def accounting_by_name(self, name: str) -> list[SlurmJob] | None:
        """Jobs with this name from accounting (recent ones); None when there is no accounting."""
