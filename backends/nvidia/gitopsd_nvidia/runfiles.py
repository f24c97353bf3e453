"""The nvidia backend's files in a run directory: what lets a fresh daemon pick up every run where it was.

    run_dir/nvidia/job.json        the Job as submitted (its presence is what `find` recognises), queue time
    run_dir/nvidia/placement.json  the devices leased for it, with names, UUIDs, driver and CUDA version
    run_dir/nvidia/cancelled       a run cancelled before it got a GPU
    run_dir/nvidia/failure.json    why the backend ended the run itself (its GPU was lost)
    run_dir/local/...              the local supervisor's files, once the run has its GPUs and has started

Everything is written atomically (the local supervisor's `write_json_atomic`), so a reader never sees half a
file, and a daemon killed at any point leaves either the old state or the new one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gitopsd.backends.local.supervisor import read_json, write_json_atomic
from gitopsd.model import Job, Resources

JOB_ID_PREFIX = "nvidia:"


def job_id_of(run_id: str) -> str:
    """The stable job id of a run on the nvidia backend, the same before and after it gets its GPUs."""
    return f"{JOB_ID_PREFIX}{run_id}"


@dataclass(frozen=True, kw_only=True)
class NvidiaFiles:
    run_dir: Path

    @property
    def directory(self) -> Path:
        return self.run_dir / "nvidia"

    @property
    def job(self) -> Path:
        return self.directory / "job.json"

    @property
    def placement(self) -> Path:
        return self.directory / "placement.json"

    @property
    def cancelled(self) -> Path:
        return self.directory / "cancelled"

    @property
    def failure(self) -> Path:
        return self.directory / "failure.json"


def read(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when it is missing or unreadable (a torn file cannot occur)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


_PATHS = ("run_dir", "tree_dir", "workdir", "output_dir", "metrics_file", "log_dir")


def job_to_json(job: Job) -> dict[str, Any]:
    data = asdict(job)
    for key in _PATHS:
        data[key] = str(data[key])
    data["python_requirements"] = None if job.python_requirements is None else str(job.python_requirements)
    data["env"] = dict(job.env)
    data["settings"] = dict(job.settings)
    return data


def job_from_json(data: dict[str, Any]) -> Job:
    fields = dict(data)
    for key in _PATHS:
        fields[key] = Path(fields[key])
    if fields.get("python_requirements") is not None:
        fields["python_requirements"] = Path(fields["python_requirements"])
    resources = dict(fields["resources"])
    resources["modules"] = tuple(resources.get("modules", ()))  # a JSON list; Resources is hashable
    fields["resources"] = Resources(**resources)
    return Job(**fields)
