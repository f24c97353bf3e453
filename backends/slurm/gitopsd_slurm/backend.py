"""The Slurm backend: trainings as Slurm batch jobs, observed for all runs at once.

Registered as entry point `slurm` in group `gitopsd.backends`; it imports only gitopsd's backend protocol,
model and errors. Each `status` pass costs one job listing (`squeue --json` or `GET /jobs`) however many runs
are in flight; a run whose job has left the listing is resolved from its run directory (the job's own exit
record, or what this backend saw last) and, only for those, one accounting query. Between passes the listing
is reused for an adaptive interval: `poll_min_s` after a change, growing to `poll_max_s` while nothing moves,
so a busy reconciler never hammers slurmctld.

Crash safety: the job's name and comment carry the run id and its job id is written to the run directory as
soon as sbatch answers; `find` looks in both places, so a run left in Submitting by a crash is adopted, never
submitted twice. Settings: see `gitopsd_slurm.settings` and README.md ("Slurm backend").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gitopsd.backends.protocol import runs_dir_problem
from gitopsd.errors import BackendUnavailable, PermanentError
from gitopsd.model import Job, JobRef, JobState, JobStatus, Resources
from gitopsd_slurm.cli_transport import CliTransport
from gitopsd_slurm.records import NodeInfo, SlurmJob
from gitopsd_slurm.rest_transport import Http, RestTransport, TokenSource, urllib_http
from gitopsd_slurm.runfiles import RunFiles, of_job, read_json, write_json_atomic
from gitopsd_slurm.script import build_request, job_name, run_id_of
from gitopsd_slurm.settings import SlurmSettings, parse_settings
from gitopsd_slurm.states import FINAL, job_status
from gitopsd_slurm.transport import Runner, SubprocessRunner, Transport

NODES_TTL_S = 600.0
VANISHED = (
    "Slurm job {job_id} is no longer known to the controller and left no exit record in {dir}: it ended "
    "without its wrapper finishing (cancelled, timed out or its node failed) and there is no accounting to say which"
)


def make_transport(name: str, settings: SlurmSettings, runner: Runner, http: Http) -> Transport:
    if settings.transport == "rest":
        assert settings.rest is not None  # parse_settings requires it for this transport
        tokens = TokenSource(backend=name, rest=settings.rest, runner=runner, timeout_s=settings.command_timeout_s)
        return RestTransport(
            backend=name, rest=settings.rest, tokens=tokens, http=http, timeout_s=settings.command_timeout_s
        )
    return CliTransport(backend=name, settings=settings, runner=runner)


class SlurmBackend:
    """See the module docstring. `runner`, `http` and `clock` are injected by tests; gitopsd passes none."""

    def __init__(
        self,
        *,
        name: str,
        settings: Mapping[str, Any],
        state_dir: Path,
        runner: Runner | None = None,
        http: Http | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.state_dir = Path(state_dir)
        self.settings = parse_settings(name, settings)
        self.runs_dir: Path | None = self.settings.runs_dir  # run directories go here when set (the protocol's)
        conf = {"SLURM_CONF": str(self.settings.slurm_conf)} if self.settings.slurm_conf else {}
        self.runner: Runner = runner or SubprocessRunner(env=conf)
        self.transport = make_transport(name, self.settings, self.runner, http or urllib_http)
        self.clock = clock
        self._listing: dict[str, SlurmJob] | None = None
        self._listed_at = float("-inf")
        self._interval = self.settings.poll_min_s
        self._seen: dict[str, str] = {}
        self._checked_at = float("-inf")
        self._nodes: list[NodeInfo] | None = None
        self._nodes_at = float("-inf")

    @staticmethod
    def check_settings(*, name: str, settings: Mapping[str, Any]) -> None:
        """Refuse bad settings when the commit that declares them is loaded (see `gitopsd_slurm.settings`)."""
        parse_settings(name, settings)

    # -- protocol -------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Ping the controller and try the shared run root (`runs_dir`), at most once per `check_interval_s`
        while both answer."""
        if self.clock() - self._checked_at < self.settings.check_interval_s:
            return
        if self.runs_dir is not None and (problem := runs_dir_problem(self.name, self.runs_dir)):
            raise BackendUnavailable(problem)
        self.transport.ping()
        self._checked_at = self.clock()

    def admit(self, resources: Resources) -> str | None:
        nodes = self._partition_nodes()
        limits = self.settings.limits
        where = (
            f"partition {self.settings.partition}" if self.settings.partition else f"cluster {self.settings.cluster}"
        )
        if not nodes:
            return f"{where} has no nodes (is the partition name right?)"

        def most(values: list[int], cap: int | None) -> int:
            best = max(values, default=0)
            return min(best, cap) if cap is not None else best

        max_nodes = min(len(nodes), limits.max_nodes) if limits.max_nodes else len(nodes)
        if resources.nodes > max_nodes:
            return f"asks for {resources.nodes} nodes, {where} has {max_nodes}"
        gpus_per_node = -(-resources.gpus // resources.nodes)
        max_gpus = most([n.gpus for n in nodes], limits.max_gpus_per_node)
        if gpus_per_node > max_gpus:
            asks = f"{resources.gpus} GPUs" + (f" ({gpus_per_node} per node)" if resources.nodes > 1 else "")
            return f"asks for {asks}, the largest node of {where} has {max_gpus}"
        max_cpus = most([n.cpus for n in nodes], limits.max_cpus_per_node)
        if resources.cpus > max_cpus:
            return f"asks for {resources.cpus} CPUs per node, the largest node of {where} has {max_cpus}"
        max_memory = most([n.memory_mb for n in nodes], limits.max_memory_mb_per_node)
        if resources.memory_mb is not None and resources.memory_mb > max_memory:
            return f"asks for {resources.memory_mb} MiB of memory, the largest node of {where} has {max_memory} MiB"
        return None

    def submit(self, job: Job) -> str:
        files = RunFiles(run_dir=job.run_dir)
        recorded = read_json(files.submitted)
        if recorded is not None and recorded.get("run_id") == job.run_id and recorded.get("job_id"):
            return str(recorded["job_id"])  # submitted before: never twice
        if files.script.exists() and (found := self.find(job.run_id, job.run_dir)) is not None:
            return found  # an earlier submit got as far as sbatch, then its caller died: adopt, never twice
        if not job.workdir.is_dir():
            raise PermanentError(f"run {job.run_id}: workdir {job.workdir} does not exist or is not a directory")
        for directory in (files.dir, job.log_dir, job.output_dir, job.metrics_file.parent):
            directory.mkdir(parents=True, exist_ok=True)
        request = build_request(job, self.settings, os.environ)
        files.script.write_text(request.script, encoding="utf-8")
        job_id = self.transport.submit(request)
        record = {"run_id": job.run_id, "job_id": job_id, "cluster": self.settings.cluster, "log_dir": str(job.log_dir),
                  "transport": self.transport.name, "submitted_at": time.time()}  # fmt: skip
        write_json_atomic(files.submitted, record)
        self._listing = None  # the next status pass must see the new job
        return job_id

    def status(self, refs: Sequence[JobRef]) -> dict[str, JobStatus]:
        if not refs:
            return {}
        listing = self._list(refs)
        statuses: dict[str, JobStatus] = {}
        vanished: list[JobRef] = []
        for ref in refs:
            job = listing.get(ref.job_id)
            if job is not None:
                statuses[ref.run_id] = self._observed(ref, job)
            elif (known := self._from_files(ref)) is not None:
                statuses[ref.run_id] = known
            else:
                vanished.append(ref)
        if vanished:
            accounted = self.transport.accounting([ref.job_id for ref in vanished]) or []
            by_id = {job.job_id: job for job in accounted}
            for ref in vanished:
                job = by_id.get(ref.job_id)
                statuses[ref.run_id] = self._observed(ref, job) if job is not None else self._lost(ref)
        return statuses

    def cancel(self, ref: JobRef) -> None:
        files = RunFiles(run_dir=ref.run_dir)
        if not ref.job_id:
            return
        if read_json(files.cancel) is None:
            write_json_atomic(files.cancel, {"job_id": ref.job_id, "at": time.time(), "by": "gitopsd"})
        self.transport.cancel(ref.job_id)
        self._listing = None

    def find(self, run_id: str, run_dir: Path) -> str | None:
        files = RunFiles(run_dir=run_dir)
        recorded = read_json(files.submitted)
        if recorded is not None and recorded.get("run_id") == run_id and recorded.get("job_id"):
            return str(recorded["job_id"])
        ours = [job for job in self.transport.list_jobs() if run_id_of(job.name, job.comment) == run_id]
        if not ours:
            for path in (files.exit, files.started):  # written by the job itself: it ran
                record = read_json(path)
                if record is not None and record.get("job_id"):
                    return str(record["job_id"])
            ours = self.transport.accounting_by_name(job_name(run_id)) or []
        if not ours:
            return None
        job_id = min(ours, key=lambda job: int(job.job_id) if job.job_id.isdigit() else 0).job_id
        record = {"run_id": run_id, "job_id": job_id, "cluster": self.settings.cluster,
                  "transport": self.transport.name, "adopted_at": time.time()}  # fmt: skip
        write_json_atomic(files.submitted, record)
        return job_id

    def logs(self, ref: JobRef) -> list[Path]:
        submitted = read_json(RunFiles(run_dir=ref.run_dir).submitted) or {}
        log = Path(submitted.get("log_dir") or ref.run_dir / "logs") / f"slurm-{ref.job_id}.out"
        return [log] if ref.job_id and log.is_file() else []

    def describe(self, ref: JobRef) -> dict[str, Any]:
        files = RunFiles(run_dir=ref.run_dir)
        final = of_job(files.final, ref.job_id) or {}
        if not final:
            job = (self._listing or {}).get(ref.job_id) or self._fresh(ref.job_id)
            final = _facts(job) if job is not None else {}
        ran = of_job(files.exit, ref.job_id) or of_job(files.started, ref.job_id) or {}
        started, ended = final.get("started_at") or ran.get("started_at"), final.get("ended_at") or ran.get("ended_at")
        return {
            "backend": "slurm",
            "name": self.name,
            "transport": self.transport.name,
            "cluster": self.settings.cluster,
            "job_id": ref.job_id,
            "job_name": job_name(ref.run_id),
            "state": final.get("state"),
            "outcome": (final.get("status") or {}).get("state"),
            "partition": final.get("partition"),
            "nodes": final.get("nodes") or ran.get("nodes"),
            "gpus": final.get("gpus"),
            "tres": final.get("tres"),
            "host": ran.get("host") or final.get("batch_host") or final.get("nodes"),
            "exit_code": ran.get("exit_code", final.get("exit_code")),
            "started_at": started,
            "ended_at": ended,
            "elapsed_s": round(ended - started, 3) if started and ended else None,
        }

    # -- observing -------------------------------------------------------------------------------------------

    def _list(self, refs: Sequence[JobRef]) -> dict[str, SlurmJob]:
        """The controller's jobs, listed at most once per adaptive interval (see the module docstring)."""
        now = self.clock()
        cached = self._listing
        if cached is not None and now - self._listed_at < self._interval and all(r.job_id in cached for r in refs):
            return cached
        self._listing = {job.job_id: job for job in self.transport.list_jobs()}
        self._listed_at = now
        seen = {ref.job_id: self._listing[ref.job_id].state for ref in refs if ref.job_id in self._listing}
        if seen != {key: self._seen.get(key) for key in seen}:
            self._interval = self.settings.poll_min_s
        else:
            self._interval = min(max(self._interval * 1.5, self.settings.poll_min_s), self.settings.poll_max_s)
        self._seen = seen
        return self._listing

    def _fresh(self, job_id: str) -> SlurmJob | None:
        try:
            return {job.job_id: job for job in self.transport.list_jobs()}.get(job_id)
        except BackendUnavailable:
            return None

    def _observed(self, ref: JobRef, job: SlurmJob) -> JobStatus:
        """What Slurm says, refined by the job's own exit record, and kept once the job has finished."""
        files = RunFiles(run_dir=ref.run_dir)
        if job.state not in FINAL:
            return job_status(job)
        cancelled = of_job(files.cancel, ref.job_id)
        status = job_status(job, cancel_note="cancelled by gitopsd" if cancelled else "")
        ran = of_job(files.exit, ref.job_id)
        if ran is not None and ran.get("timed_out") and status.state is JobState.FAILED:
            status = _wrapper_timeout(ref, ran, status)
        elif ran is not None and status.state is JobState.FAILED and isinstance(ran.get("exit_code"), int):
            status = JobStatus(state=status.state, exit_code=ran["exit_code"], message=status.message,
                               started_at=status.started_at, ended_at=status.ended_at)  # fmt: skip
        if read_json(files.final) is None:
            write_json_atomic(files.final, {**_facts(job), "status": _status_record(status)})
        return status

    def _from_files(self, ref: JobRef) -> JobStatus | None:
        """A job gone from the listing: what this backend saw last, else the job's own exit record."""
        files = RunFiles(run_dir=ref.run_dir)
        final = of_job(files.final, ref.job_id)
        if final is not None and isinstance(final.get("status"), dict):
            record = final["status"]
            return JobStatus(state=JobState(record["state"]), exit_code=record.get("exit_code"),
                             message=record.get("message", ""), started_at=record.get("started_at"),
                             ended_at=record.get("ended_at"))  # fmt: skip
        ran = of_job(files.exit, ref.job_id)
        if ran is None:
            return None
        code = ran.get("exit_code")
        where = f" on {ran.get('host')}" if ran.get("host") else ""
        if ran.get("timed_out"):
            failed = JobStatus(state=JobState.FAILED, started_at=ran.get("started_at"), ended_at=ran.get("ended_at"))
            return _wrapper_timeout(ref, ran, failed)
        state = JobState.SUCCEEDED if code == 0 else JobState.FAILED
        return JobStatus(
            state=state,
            exit_code=code,
            message=f"Slurm job {ref.job_id} ended{where} with exit code {code} (from its exit record)",
            started_at=ran.get("started_at"),
            ended_at=ran.get("ended_at"),
        )

    def _lost(self, ref: JobRef) -> JobStatus:
        files = RunFiles(run_dir=ref.run_dir)
        if not ref.job_id:
            return JobStatus(state=JobState.LOST, message=f"no Slurm job was recorded for run {ref.run_id}")
        if of_job(files.cancel, ref.job_id) is not None:
            return JobStatus(state=JobState.CANCELLED, message=f"Slurm job {ref.job_id} was cancelled by gitopsd")
        return JobStatus(state=JobState.LOST, message=VANISHED.format(job_id=ref.job_id, dir=files.dir))

    def _partition_nodes(self) -> list[NodeInfo]:
        """The nodes a job of this backend may land on; the cluster is asked again after NODES_TTL_S."""
        if self._nodes is None or self.clock() - self._nodes_at > NODES_TTL_S:
            self._nodes = self.transport.nodes()
            self._nodes_at = self.clock()
        partition = self.settings.partition
        return [n for n in self._nodes if partition is None or partition in n.partitions]


def _wrapper_timeout(ref: JobRef, ran: Mapping[str, Any], status: JobStatus) -> JobStatus:
    message = (
        f"Slurm job {ref.job_id} exceeded its timeout of {ran.get('timeout_s') or '?'} s and was stopped by its "
        "wrapper: raise spec.train.timeout"
    )
    return JobStatus(state=JobState.TIMEOUT, message=message, started_at=status.started_at, ended_at=status.ended_at)


def _facts(job: SlurmJob) -> dict[str, Any]:
    """What describe() reports of a job, as a JSON-ready record (also kept in final.json)."""
    started, ended = job.start_time, job.end_time if job.state in FINAL else None
    return {
        "job_id": job.job_id, "state": job.state, "partition": job.partition, "nodes": job.nodes,
        "batch_host": job.batch_host, "gpus": job.gpus, "tres": job.tres, "cluster": job.cluster,
        "exit_code": job.exit_code, "signal": job.signal, "started_at": started, "ended_at": ended,
    }  # fmt: skip


def _status_record(status: JobStatus) -> dict[str, Any]:
    return {"state": str(status.state), "exit_code": status.exit_code, "message": status.message,
            "started_at": status.started_at, "ended_at": status.ended_at}  # fmt: skip
