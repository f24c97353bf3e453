"""Frozen values and enums shared by every layer: phases, reasons, conditions, jobs and their status.

Nothing here does I/O. Backends, the planner, the state store and the CLI all speak in these types, so this
module sits at the bottom of the layer stack and imports nothing of gitopsd.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Phase(StrEnum):
    """Where a run is in its life. Terminal phases never change again."""

    PENDING = "Pending"
    SUBMITTING = "Submitting"
    QUEUED = "Queued"
    RUNNING = "Running"
    VALIDATING = "Validating"
    REGISTERED = "Registered"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Phase.REGISTERED, Phase.FAILED, Phase.CANCELLED)


class Reason(StrEnum):
    """The closed set of reasons a condition may carry (Flux style, CamelCase)."""

    SUCCEEDED = "Succeeded"
    PROGRESSING = "Progressing"
    SUSPENDED = "Suspended"
    SPEC_INVALID = "SpecInvalid"
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    SIGNATURE_INVALID = "SignatureInvalid"
    POLICY_DENIED = "PolicyDenied"
    SUBMIT_FAILED = "SubmitFailed"
    BACKEND_UNAVAILABLE = "BackendUnavailable"
    TRAINING_FAILED = "TrainingFailed"
    DIVERGED = "Diverged"
    PLATEAUED = "Plateaued"
    TIMED_OUT = "TimedOut"
    CANCELLED = "Cancelled"
    ARTIFACT_MISSING = "ArtifactMissing"
    OUTPUT_REFUSED = "OutputRefused"
    GATE_FAILED = "GateFailed"
    REGISTRY_FAILED = "RegistryFailed"
    ALIAS_REFUSED = "AliasRefused"
    BASE_UNAVAILABLE = "BaseUnavailable"
    ENVIRONMENT_FAILED = "EnvironmentFailed"


class ConditionType(StrEnum):
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


@dataclass(frozen=True, kw_only=True)
class Condition:
    """The one-line answer to "is this model what Git asks for, and if not, why"."""

    type: ConditionType
    reason: Reason
    message: str

    @property
    def ready(self) -> bool:
        return self.type is ConditionType.READY


class JobState(StrEnum):
    """What a backend says about one job. Backends map their own states onto these."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    TIMEOUT = "Timeout"
    LOST = "Lost"

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one run asks of its backend. Memory in MiB, time in seconds; None means the backend default."""

    cpus: int = 1
    memory_mb: int | None = None
    gpus: int = 0
    nodes: int = 1
    #: How the command starts on the nodes: "none" (once, on the first node), "srun" (once per node) or
    #: "torchrun" (one torchrun agent per node); only multi-node backends (Slurm) accept more than "none".
    launcher: str = "none"
    #: Environment modules (Lmod / Environment Modules) loaded before the command, in order.
    modules: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A training that saves its state when `signal` arrives, `before_s` seconds before its job's time limit,
    and is resumed by a new job (a segment) until it finishes, at most `max_segments` jobs in all."""

    signal: str = "USR1"
    before_s: int = 120
    max_segments: int = 10


@dataclass(frozen=True, kw_only=True)
class Job:
    """Everything a backend needs to start one run. Paths are absolute; the tree is already exported."""

    run_id: str
    model: str
    command: str
    run_dir: Path
    tree_dir: Path
    workdir: Path
    output_dir: Path
    metrics_file: Path
    log_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    timeout_s: int | None = None
    python_requirements: Path | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: Files outside the tree the training reads: its `file://` data, which the operator's data roots allow.
    inputs: tuple[Path, ...] = ()
    #: Checkpointed, chained segments (only backends that say they can, see `Backend` in gitopsd.backends.protocol).
    checkpoint: Checkpoint | None = None


@dataclass(frozen=True, kw_only=True)
class JobRef:
    """How the reconciler names a submitted job to its backend."""

    run_id: str
    job_id: str
    run_dir: Path


@dataclass(frozen=True, kw_only=True)
class JobStatus:
    """One observation of one job. Times are Unix seconds."""

    state: JobState
    exit_code: int | None = None
    message: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    #: The job could not set up its environment for a reason retrying the same spec cannot mend (a module
    #: that does not exist): the run fails with reason EnvironmentFailed and is not retried.
    permanent: bool = False
