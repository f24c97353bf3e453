"""The Slurm backend: trainings as Slurm batch jobs, observed for all runs at once.

Registered as entry point `slurm` in group `gitopsd.backends`; it imports only gitopsd's backend protocol,
model and errors. Each `status` pass costs one job listing (`squeue --json` or `GET /jobs`) however many runs
are in flight; a run whose job has left the listing is resolved from its run directory (the job's own exit
record, or what this backend saw last) and, only for those, one accounting query. Between passes the listing
is reused for an adaptive interval: `poll_min_s` after a change, growing to `poll_max_s` while nothing moves,
so a busy reconciler never hammers slurmctld.

Crash safety: the job's name and comment carry the run id and its job id is written to the run directory as
soon as sbatch answers; `find` looks in both places, so a run left in Submitting by a crash is adopted, never
submitted twice. A checkpointed run is a chain of jobs behind the reconciler's one job id: see
`gitopsd_slurm.chain` for the chaining and its own crash-safety protocol. Settings: see `gitopsd_slurm.settings`
and README.md ("Slurm backend").
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gitopsd.backends.protocol import runs_dir_problem
from gitopsd.errors import BackendUnavailable, GitopsdError, PermanentError, is_permanent
from gitopsd.model import Job, JobRef, JobState, JobStatus, Resources
from gitopsd_slurm import chain
from gitopsd_slurm.chain import Book, Kept, Next
from gitopsd_slurm.cli_transport import CliTransport
from gitopsd_slurm.hostlist import expand
from gitopsd_slurm.records import NodeInfo, SlurmJob
from gitopsd_slurm.rest_transport import Http, RestTransport, TokenSource, urllib_http
from gitopsd_slurm.runfiles import RunFiles, of_job, read_json, write_json_atomic
from gitopsd_slurm.script import PERMANENT_STEPS, SETUP_STEPS, build_request, job_name, run_id_of, segment_request
from gitopsd_slurm.settings import SlurmSettings, parse_settings
from gitopsd_slurm.states import FINAL, job_status
from gitopsd_slurm.transport import Runner, SubprocessRunner, Transport

NODES_TTL_S = 600.0
MAX_SETUP_MESSAGE = 1000
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
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

    checkpoints = True  # runs spec.train.checkpoint as chained segments (gitopsd_slurm.chain)

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
        if resources.launcher == "torchrun" and resources.gpus % resources.nodes:
            return (
                f"launcher torchrun starts one worker per GPU of each node: {resources.gpus} GPUs cannot be split "
                f"evenly over {resources.nodes} nodes (ask for a multiple of {resources.nodes})"
            )
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
        if job.checkpoint is not None:  # kept where the training cannot write, before any job exists
            (job.run_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
            write_json_atomic(self._kept_path(job.run_id), Kept(request=request, checkpoint=job.checkpoint).record())
        files.script.write_text(request.script, encoding="utf-8")
        job_id = self.transport.submit(request)
        record = {"run_id": job.run_id, "job_id": job_id, "cluster": self.settings.cluster, "log_dir": str(job.log_dir),
                  "transport": self.transport.name, "submitted_at": time.time()}  # fmt: skip
        write_json_atomic(files.submitted, record)
        if job.checkpoint is not None:
            write_json_atomic(files.segments, chain.first_book(job.run_id, job_id, time.time()).record())
        self._listing = None  # the next status pass must see the new job
        return job_id

    def status(self, refs: Sequence[JobRef]) -> dict[str, JobStatus]:
        chained = {ref.run_id: (ref, kept) for ref in refs if (kept := self._kept(ref)) is not None}
        books = {run_id: self._book(ref) for run_id, (ref, _) in chained.items()}
        current = [self._current_ref(ref, books.get(ref.run_id)) for ref in refs]
        statuses = self._statuses([ref for ref in current if ref.job_id or ref.run_id not in books])
        for run_id, (ref, kept) in chained.items():
            statuses[run_id] = self._advance(ref, kept, books[run_id], statuses.get(run_id))
        return statuses

    def _statuses(self, refs: Sequence[JobRef]) -> dict[str, JobStatus]:
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
        if self._kept(ref) is not None:
            ref = self._cancel_chain(ref)
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
        ids = [ref.job_id]
        if ref.job_id and self._kept(ref) is not None:  # every segment's log, the newest first
            ids = [s.job_id for s in reversed(self._book(ref).segments) if s.job_id]
        logs = [Path(submitted.get("log_dir") or ref.run_dir / "logs") / f"slurm-{job_id}.out" for job_id in ids]
        return [log for log in logs if ref.job_id and log.is_file()]

    def describe(self, ref: JobRef) -> dict[str, Any]:
        kept = self._kept(ref) if ref.job_id else None
        if kept is None:
            return self._describe_job(ref)
        return self._describe_chain(ref, kept)

    def _describe_job(self, ref: JobRef) -> dict[str, Any]:
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
            "node_names": _node_names(final.get("nodes") or ran.get("nodes")),
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
        if status.state is JobState.FAILED:
            status = _setup_failure(ref, status)
        if of_job(files.final, ref.job_id) is None:  # (a chained run's next segment writes its own)
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
        status = JobStatus(
            state=state,
            exit_code=code,
            message=f"Slurm job {ref.job_id} ended{where} with exit code {code} (from its exit record)",
            started_at=ran.get("started_at"),
            ended_at=ran.get("ended_at"),
        )
        return _setup_failure(ref, status) if state is JobState.FAILED else status

    def _lost(self, ref: JobRef) -> JobStatus:
        files = RunFiles(run_dir=ref.run_dir)
        if not ref.job_id:
            return JobStatus(state=JobState.LOST, message=f"no Slurm job was recorded for run {ref.run_id}")
        if of_job(files.cancel, ref.job_id) is not None:
            return JobStatus(state=JobState.CANCELLED, message=f"Slurm job {ref.job_id} was cancelled by gitopsd")
        return JobStatus(state=JobState.LOST, message=VANISHED.format(job_id=ref.job_id, dir=files.dir))

    # -- chained segments (gitopsd_slurm.chain) ----------------------------------------------------------------

    def _kept_path(self, run_id: str) -> Path:
        """Where the first segment's request is kept: beside the run directories on the shared run root when
        there is one, so that a daemon taking over on another login node (standby) chains the run too; else in
        this backend's state directory."""
        if self.runs_dir is not None:
            return self.runs_dir / ".gitopsd" / "requests" / f"{run_id}.json"
        return self.state_dir / "slurm" / "requests" / f"{run_id}.json"

    def _kept(self, ref: JobRef) -> Kept | None:
        """The kept request of a checkpointed run; None for any other run."""
        return chain.read_kept(read_json(self._kept_path(ref.run_id)), ref.run_id)

    def _book(self, ref: JobRef) -> Book:
        return chain.read_book(read_json(RunFiles(run_dir=ref.run_dir).segments), ref.run_id, ref.job_id)

    def _write_book(self, ref: JobRef, book: Book) -> None:
        write_json_atomic(RunFiles(run_dir=ref.run_dir).segments, book.record())

    @staticmethod
    def _current_ref(ref: JobRef, book: Book | None) -> JobRef:
        if book is None:
            return ref
        return JobRef(run_id=ref.run_id, job_id=book.current.job_id or "", run_dir=ref.run_dir)

    def _restarts(self, ref: JobRef, job_id: str) -> list[dict[str, Any]]:
        """The start records the wrapper of `job_id` wrote, one per start (a requeued job starts again)."""
        files = RunFiles(run_dir=ref.run_dir)
        starts = []
        for restart in range(chain.MAX_RECORDED):
            record = of_job(files.start(job_id, restart), job_id)
            if record is None:
                break
            starts.append(record)
        return starts

    def _advance(self, ref: JobRef, kept: Kept, book: Book, status: JobStatus | None) -> JobStatus:
        """The run's status from its current segment; a segment that ended after its signal is followed by the
        next one (steps 1 to 4 of `gitopsd_slurm.chain`)."""
        most = kept.checkpoint.max_segments
        segment = book.current
        first = book.segments[0].outcome or {}
        started = first.get("started_at") if isinstance(first.get("started_at"), int | float) else None
        if segment.job_id is None:
            return self._next_segment(ref, kept, book)
        if status is None:
            return JobStatus(state=JobState.PENDING, message=chain.segment_note(segment.segment, most))
        restarts = max(len(self._restarts(ref, segment.job_id)) - 1, 0)
        note = chain.segment_note(segment.segment, most, restarts)
        signalled = of_job(RunFiles(run_dir=ref.run_dir).signalled, segment.job_id) is not None
        step = chain.decide(status, signalled=signalled, segment=segment.segment, max_segments=most)
        if step is Next.RUNNING:
            return chain.with_note(status, note, started)
        if segment.outcome is None:
            outcome = {"state": str(status.state), "exit_code": status.exit_code, "signalled": signalled,
                       "message": status.message, "started_at": status.started_at, "ended_at": status.ended_at,
                       "restarts": restarts}  # fmt: skip
            book = book.with_current(chain.Segment(segment=segment.segment, job_id=segment.job_id,
                                                   submitted_at=segment.submitted_at, outcome=outcome))  # fmt: skip
            if step is Next.CONTINUE:  # step 1: the outcome and the intent in one write
                book = Book(run_id=book.run_id, segments=(*book.segments, chain.Segment(
                    segment=segment.segment + 1, job_id=None)))  # fmt: skip
            self._write_book(ref, book)
        if step is Next.CONTINUE:
            return self._next_segment(ref, kept, book)
        if step is Next.EXHAUSTED:
            return chain.exhausted_status(status, segment=segment.segment, max_segments=most)
        return chain.with_note(status, note, started)

    def _next_segment(self, ref: JobRef, kept: Kept, book: Book) -> JobStatus:
        """Steps 2 to 4: adopt the next segment's job if it was submitted, else submit it; record its id."""
        number, most = book.current.segment, kept.checkpoint.max_segments
        note = chain.segment_note(number, most)
        files = RunFiles(run_dir=ref.run_dir)
        try:
            job_id = self._find_segment(ref, book, number)
            verb = "adopted"
            if job_id is None:
                script = files.segment_script(number)
                request = segment_request(kept.request, number, str(script))
                script.write_text(request.script, encoding="utf-8")
                job_id, verb = self.transport.submit(request), "submitted"
        except GitopsdError as exc:
            if is_permanent(exc):
                return JobStatus(state=JobState.FAILED, message=f"{note}: cannot be submitted: {exc}")
            return JobStatus(state=JobState.PENDING, message=f"{note}: submitting it failed, retried: {exc}")
        self._write_book(ref, book.with_current(chain.Segment(segment=number, job_id=job_id, submitted_at=time.time())))
        self._listing = None
        message = f"{note}: {verb} as job {job_id}, resuming from its checkpoint"
        return JobStatus(state=JobState.PENDING, message=message)

    def _find_segment(self, ref: JobRef, book: Book, number: int) -> str | None:
        """The job of segment `number` if one was submitted (listing, then start records, then accounting)."""
        found = chain.adoptable(self.transport.list_jobs(), book, number)
        if found is not None:
            return found
        last = max(int(j) for j in book.job_ids())
        for path in sorted(RunFiles(run_dir=ref.run_dir).dir.glob("start.*.0.json"))[: chain.MAX_RECORDED]:
            job_id = path.name.split(".")[1]
            if job_id.isdigit() and int(job_id) > last and of_job(path, job_id) is not None:
                return job_id
        return chain.adoptable(self.transport.accounting_by_name(job_name(ref.run_id)) or [], book, number)

    def _cancel_chain(self, ref: JobRef) -> JobRef:
        """The current segment's job, adopting one submitted just before a crash so that it is cancelled too."""
        book = self._book(ref)
        if book.current.job_id is None:
            found = chain.adoptable(self.transport.list_jobs(), book, book.current.segment)
            if found is None:
                return ref
            book = book.with_current(chain.Segment(segment=book.current.segment, job_id=found))
            self._write_book(ref, book)
        return self._current_ref(ref, book)

    def _describe_chain(self, ref: JobRef, kept: Kept) -> dict[str, Any]:
        """The last segment's facts, with every segment listed: job, nodes, host, starts, times, how it ended."""
        book = self._book(ref)
        segments = []
        for segment in book.segments:
            if segment.job_id is None:
                continue
            facts = self._describe_job(JobRef(run_id=ref.run_id, job_id=segment.job_id, run_dir=ref.run_dir))
            outcome = segment.outcome or {}
            starts = self._restarts(ref, segment.job_id)
            segments.append({
                "segment": segment.segment, "job_id": segment.job_id, "nodes": facts.get("nodes"),
                "host": facts.get("host"), "state": facts.get("state") or outcome.get("state"),
                "exit_code": facts.get("exit_code"), "signalled": outcome.get("signalled"),
                "started_at": facts.get("started_at") or outcome.get("started_at"),
                "ended_at": facts.get("ended_at") or outcome.get("ended_at"),
                "starts": [{"restart": s.get("restart"), "host": s.get("host"), "started_at": s.get("started_at")}
                           for s in starts],
            })  # fmt: skip
        last = self._describe_job(self._current_ref(ref, book)) if book.current.job_id else {}
        started = segments[0]["started_at"] if segments else None
        ended = last.get("ended_at")
        return {
            **last,
            "started_at": started,
            "elapsed_s": round(ended - started, 3) if started and ended else None,
            "checkpoint": asdict(kept.checkpoint),
            "segments": segments,
        }

    def _partition_nodes(self) -> list[NodeInfo]:
        """The nodes a job of this backend may land on; the cluster is asked again after NODES_TTL_S."""
        if self._nodes is None or self.clock() - self._nodes_at > NODES_TTL_S:
            self._nodes = self.transport.nodes()
            self._nodes_at = self.clock()
        partition = self.settings.partition
        return [n for n in self._nodes if partition is None or partition in n.partitions]


def _setup_failure(ref: JobRef, status: JobStatus) -> JobStatus:
    """A failed job refined by its `setup.json`: why its environment could not be set up (a module, the Python
    environment, the launcher), and whether retrying the same spec can help. The record is the training's to
    write, so only a known step and a bounded one-line message are taken from it."""
    record = of_job(RunFiles(run_dir=ref.run_dir).setup, ref.job_id)
    if record is None or record.get("step") not in SETUP_STEPS or not isinstance(record.get("message"), str):
        return status
    message = _CONTROL.sub(" ", record["message"])[:MAX_SETUP_MESSAGE]
    host = record.get("host")
    where = f" on {_CONTROL.sub(' ', host)[:255]}" if isinstance(host, str) and host else ""
    return JobStatus(
        state=JobState.FAILED,
        exit_code=status.exit_code,
        message=f"Slurm job {ref.job_id} could not set up its environment{where}: {message}",
        started_at=status.started_at,
        ended_at=status.ended_at,
        permanent=record["step"] in PERMANENT_STEPS,
    )


def _wrapper_timeout(ref: JobRef, ran: Mapping[str, Any], status: JobStatus) -> JobStatus:
    message = (
        f"Slurm job {ref.job_id} exceeded its timeout of {ran.get('timeout_s') or '?'} s and was stopped by its "
        "wrapper: raise spec.train.timeout"
    )
    return JobStatus(state=JobState.TIMEOUT, message=message, started_at=status.started_at, ended_at=status.ended_at)


def _node_names(nodes: object) -> list[str]:
    """Every node of the job by name (lineage lists each one, not Slurm's compressed `node[1-2]`)."""
    return expand(_CONTROL.sub("", nodes)[:4096]) if isinstance(nodes, str) else []


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
