"""The files a Slurm run keeps in its run directory, on the filesystem the login and compute nodes share.

They make the backend's answers survive what Slurm forgets and what gitopsd forgets: `submitted.json` records
the job id as soon as sbatch returns; the job itself writes `started.json` and, from its wrapper, `exit.json`
with the command's real exit code, so a job that left squeue (MinJobAge) without accounting is still resolved;
`setup.json` says why the job could not set up the command's environment (modules, Python environment, launcher);
`final.json` keeps what Slurm said when the job was last seen finished; `cancel.json` says gitopsd cancelled it.
A checkpointed run adds `segments.json`, `signalled.json` and one `start.JOB.N.json` per start (see `chain`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitopsd.backends.protocol import read_run_record


@dataclass(frozen=True, kw_only=True)
class RunFiles:
    run_dir: Path

    @property
    def dir(self) -> Path:
        return self.run_dir / "slurm"

    @property
    def script(self) -> Path:
        return self.dir / "job.sh"

    @property
    def submitted(self) -> Path:
        return self.dir / "submitted.json"

    @property
    def started(self) -> Path:
        return self.dir / "started.json"

    @property
    def exit(self) -> Path:
        return self.dir / "exit.json"

    @property
    def setup(self) -> Path:
        """Written by the job when it could not set up the command's environment (a module, the venv)."""
        return self.dir / "setup.json"

    @property
    def final(self) -> Path:
        return self.dir / "final.json"

    @property
    def cancel(self) -> Path:
        return self.dir / "cancel.json"

    # checkpointed runs (gitopsd_slurm.chain): the backend's book of segments, and what each job's wrapper writes

    @property
    def segments(self) -> Path:
        return self.dir / "segments.json"

    @property
    def signalled(self) -> Path:
        return self.dir / "signalled.json"

    def segment_script(self, segment: int) -> Path:
        return self.script if segment <= 1 else self.dir / f"job-{segment}.sh"

    def start(self, job_id: str, restart: int) -> Path:
        return self.dir / f"start.{job_id}.{restart}.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or not (yet) a complete JSON object."""
    try:  # the run directory is the training's to write: no link followed, no FIFO read, size-capped
        return read_run_record(path)
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` so that a reader sees the old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # the run directory is the training's: never write through a planted link
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, sort_keys=True) + "\n")
    tmp.replace(path)


def of_job(path: Path, job_id: str) -> dict[str, Any] | None:
    """The record in `path` if it is about job `job_id` (a run directory holds one job, but never trust that)."""
    record = read_json(path)
    if record is None or str(record.get("job_id")) != job_id:
        return None
    return record
