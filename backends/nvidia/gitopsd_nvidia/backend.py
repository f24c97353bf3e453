"""The `nvidia` backend: trainings on this host's NVIDIA GPUs, each given its own GPUs by UUID.

It adds GPUs to the local backend rather than re-implementing process supervision: a run that has its GPUs is
handed to `gitopsd.backends.local.backend.LocalBackend` (its own session and process group, flock-proven adoption after
a daemon restart, clean environment, logs, exit record, timeout, cancel of the whole group) with
`CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` set to the UUIDs of its devices (`MIG-...` UUIDs for MIG
instances). What this class adds:

- placement: `submit` reads the inventory through NVML, chooses free devices (`placement.place`) and leases
  them (`leases.LeaseBook`) in one transaction, so two runs never share a GPU. When nothing fits, the run is
  queued in its run directory and reported PENDING "Waiting for GPU: ..." (which devices are busy and why); each
  `status` call tries the queued runs again, oldest first. The job id, `nvidia:<run_id>`, is the same before
  and after the run starts, and `find` recognises it from `run_dir/nvidia/job.json`.
- sharing: the lease book is one file for every gitopsd on the host that must not share GPUs: the `leases`
  setting, else `$GITOPSD_SHARED_STATE_DIR/nvidia/leases.db` (the daemon exports its state directory, so all
  its repositories lease from one book), else `state_dir/nvidia/leases.db`.
- binding: a started run is bound to the CPUs of its GPUs' NUMA node (`affinity`), unless `cpu_binding` is off.
- release: a finished, cancelled or failed run frees its leases; leases of runs whose supervisor is gone are
  dropped whenever devices are leased, which is how leases are recovered after a restart or a crash.
- health and telemetry: each `status` call asks NVML about the devices of every running job; a device lost
  (GPU_IS_LOST, no longer listed, or a fatal Xid) fails the run with that reason and stops its processes, and
  otherwise a `{"gpu_util", "gpu_mem_mb"}` line goes to the job's metrics file (see `telemetry`).
- lineage: `describe` adds the GPUs' names and UUIDs, and the driver and CUDA versions, to the local facts.

Without NVML (no driver, no library, no GPU), `check` raises BackendUnavailable with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gitopsd.backends.local.backend import LocalBackend, lock_held
from gitopsd.backends.local.supervisor import RunFiles
from gitopsd.errors import BackendUnavailable, PermanentError, TransientError
from gitopsd.model import Job, JobRef, JobState, JobStatus, Resources
from gitopsd_nvidia import placement
from gitopsd_nvidia.affinity import cpus_near, format_cpus
from gitopsd_nvidia.inventory import Device, Inventory, read_inventory
from gitopsd_nvidia.leases import Lease, LeaseBook, lease_file
from gitopsd_nvidia.nvml import Nvml, NvmlFailure
from gitopsd_nvidia.runfiles import NvidiaFiles, job_from_json, job_id_of, job_to_json, read, write
from gitopsd_nvidia.settings import parse_settings
from gitopsd_nvidia.telemetry import append_sample, describe_device, observe, xid_failure

START_GRACE_S = 60.0  # a lease whose run has not started its supervisor after this long is stale


def _device_record(device: Device) -> dict[str, Any]:
    return {
        "uuid": device.uuid,
        "label": device.label,
        "name": device.name,
        "index": device.index,
        "mig_slot": device.mig_slot,
        "parent_uuid": device.parent_uuid,
        "memory_total_mb": device.memory_total_mb,
    }


def _live(_lease: Lease) -> bool:
    return True


def _say(run_dir: Path, message: str) -> None:
    """A line in the run's log (the one the local supervisor appends to), so `gitopsd logs` tells the story."""
    log = RunFiles(run_dir=run_dir).log
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"[gitopsd nvidia] {message}\n")


class NvidiaBackend:
    """Runs jobs on this host's NVIDIA GPUs. See the module docstring; constructed like every backend."""

    def __init__(self, *, name: str, settings: Mapping[str, Any], state_dir: Path) -> None:
        self.name = name
        self.state_dir = Path(state_dir)
        self.settings = parse_settings(settings, backend=name)
        self.local = LocalBackend(
            name=name,
            settings=self.settings.local,
            state_dir=self.state_dir / "nvidia",
            protect=(self.state_dir, lease_file(self.state_dir, self.settings.leases).parent),  # SQLite: -wal too
        )
        self.host = self.local.host
        self.nvml = Nvml()
        self._leases: LeaseBook | None = None
        self._sampled: dict[str, float] = {}

    @staticmethod
    def check_settings(*, name: str, settings: Mapping[str, Any]) -> None:
        """Refuse bad settings when the commit that declares them is loaded, without building a backend."""
        LocalBackend.check_settings(name=name, settings=parse_settings(settings, backend=name).local)

    @property
    def leases(self) -> LeaseBook:
        if self._leases is None:
            self._leases = LeaseBook(lease_file(self.state_dir, self.settings.leases))
        return self._leases

    def request(self, resources: Resources) -> placement.GpuRequest:
        return placement.GpuRequest(
            count=resources.gpus,
            min_memory_mb=self.settings.min_memory_mb,
            model=self.settings.model,
            exclusive=self.settings.exclusive,
        )

    # -- protocol -------------------------------------------------------------------------------------------

    def check(self) -> None:
        self.local.check()
        self.nvml.start()
        try:
            count = self.nvml.gpu_count()
        except NvmlFailure as exc:
            raise BackendUnavailable(f"NVML not available: {exc}") from exc
        if count == 0:
            raise BackendUnavailable("NVML is running but sees no NVIDIA GPU on this host")

    def admit(self, resources: Resources) -> str | None:
        if resources.nodes > 1:
            return f"asks for {resources.nodes} nodes; the nvidia backend runs trainings on this host only"
        refused = self.local.admit(resources)
        if refused is not None:
            return refused
        if resources.gpus <= 0:
            return None
        try:
            inventory = read_inventory(self.nvml)
        except BackendUnavailable:
            return None  # cannot judge now; check() reports why the backend is unavailable
        return placement.admit(self.request(resources), inventory.devices())

    def submit(self, job: Job) -> str:
        files = NvidiaFiles(run_dir=job.run_dir)
        record = read(files.job)
        if record is not None:
            if record.get("run_id") != job.run_id:
                raise PermanentError(f"run {job.run_id}: {files.job} belongs to run {record.get('run_id')}")
            return job_id_of(job.run_id)
        if not job.workdir.is_dir():
            raise PermanentError(f"run {job.run_id}: workdir {job.workdir} does not exist or is not a directory")
        write(
            files.job, {"run_id": job.run_id, "backend": self.name, "queued_at": time.time(), "job": job_to_json(job)}
        )
        inventory, why = self._inventory() if job.resources.gpus > 0 else (None, "")
        waiting = self._try_start(job, inventory, why, alive=self._holder_alive)
        if waiting:
            _say(job.run_dir, waiting)
        return job_id_of(job.run_id)

    def status(self, refs: Sequence[JobRef]) -> dict[str, JobStatus]:
        results: dict[str, JobStatus] = {}
        started: list[JobRef] = []
        queued: list[tuple[float, JobRef, Job]] = []
        for ref in refs:
            files = NvidiaFiles(run_dir=ref.run_dir)
            record = read(files.job)
            if record is None or record.get("run_id") != ref.run_id:
                message = f"no nvidia job was ever submitted in {ref.run_dir}"
                results[ref.run_id] = JobStatus(state=JobState.LOST, message=message)
            elif RunFiles(run_dir=ref.run_dir).local_dir.is_dir():
                started.append(ref)
            elif files.failure.exists():
                results[ref.run_id] = self._failed(ref, None)
            elif files.cancelled.exists():
                self.leases.release(ref.run_id)
                results[ref.run_id] = JobStatus(state=JobState.CANCELLED, message="cancelled before it got a GPU")
            else:
                queued.append((float(record.get("queued_at", 0.0)), ref, job_from_json(record["job"])))
        results.update(self._status_started(started))
        if queued:
            needs_gpus = any(job.resources.gpus > 0 for _, _, job in queued)
            inventory, why = self._inventory() if needs_gpus else (None, "")
            # One view of the leases for the whole pass: a device freed while the waiting runs are being placed
            # goes to the oldest waiting run at the next pass, not to whichever run happens to be tried next.
            self.leases.sweep(self._holder_alive)
            for _, ref, job in sorted(queued, key=lambda item: item[0]):
                waiting = self._try_start(job, inventory, why, alive=_live)
                files = NvidiaFiles(run_dir=ref.run_dir)
                if files.failure.exists():
                    results[ref.run_id] = self._failed(ref, None)
                elif waiting and files.cancelled.exists():
                    results[ref.run_id] = JobStatus(state=JobState.CANCELLED, message="cancelled before it got a GPU")
                else:
                    message = waiting or self._placed_message(ref)
                    results[ref.run_id] = JobStatus(state=JobState.PENDING, message=message)
        return results

    def cancel(self, ref: JobRef) -> None:
        files = NvidiaFiles(run_dir=ref.run_dir)
        if not files.job.exists():
            return
        local_dir = RunFiles(run_dir=ref.run_dir).local_dir
        if not local_dir.is_dir():
            files.cancelled.touch()  # a starter checks this after creating local_dir: one of us sees the other
        if local_dir.is_dir():  # started, possibly by another process just now
            self.local.cancel(ref)
        self.leases.release(ref.run_id)
        self._sampled.pop(ref.run_id, None)

    def find(self, run_id: str, run_dir: Path) -> str | None:
        record = read(NvidiaFiles(run_dir=run_dir).job)
        return job_id_of(run_id) if record is not None and record.get("run_id") == run_id else None

    def logs(self, ref: JobRef) -> list[Path]:
        return self.local.logs(ref)

    def describe(self, ref: JobRef) -> dict[str, Any]:
        files = NvidiaFiles(run_dir=ref.run_dir)
        facts = self.local.describe(ref)
        placed = read(files.placement) or {}
        failure = read(files.failure)
        facts.update(
            backend="nvidia",
            name=self.name,
            job_id=job_id_of(ref.run_id),
            local_job_id=facts.get("job_id"),
            host=facts.get("host") or placed.get("host"),
            gpus=placed.get("devices", []),
            cuda_visible_devices=placed.get("cuda_visible_devices"),
            cpus=placed.get("cpus"),
            driver_version=placed.get("driver_version"),
            cuda_version=placed.get("cuda_version"),
            failure=None if failure is None else failure.get("message"),
        )
        return facts

    # -- placing and starting -------------------------------------------------------------------------------

    def _inventory(self) -> tuple[Inventory | None, str]:
        try:
            return read_inventory(self.nvml), ""
        except BackendUnavailable as exc:
            return None, str(exc)

    def _holder_alive(self, lease: Lease) -> bool:
        """Whether the run holding `lease` may still use its devices (see leases.LeaseBook.acquire)."""
        local = RunFiles(run_dir=lease.run_dir)
        nvidia = NvidiaFiles(run_dir=lease.run_dir)
        if not nvidia.job.exists() or local.exit.exists():
            return False
        if lock_held(local.lock):
            return True
        if local.state.exists() or nvidia.cancelled.exists() or nvidia.failure.exists():
            return False  # its supervisor ran and vanished, or it was ended before it started
        return time.time() - lease.leased_at < START_GRACE_S

    def _try_start(self, job: Job, inventory: Inventory | None, why: str, *, alive: Callable[[Lease], bool]) -> str:
        """Lease devices for a queued job and start it; return "" once started, else why it waits."""
        files = NvidiaFiles(run_dir=job.run_dir)
        request = self.request(job.resources)
        devices: list[dict[str, Any]] = []
        if request.count > 0:
            held = self.leases.held_by(job.run_id)
            if not held and inventory is None:
                return f"Waiting for GPU: {why}"
            chosen: list[placement.Placement] = []

            def choose(leased: Mapping[str, str]) -> list[str]:
                assert inventory is not None
                chosen.append(placement.place(request, inventory.devices(), leased))
                return [device.uuid for device in chosen[-1].devices]

            if not held:
                held = self.leases.acquire(
                    run_id=job.run_id, run_dir=job.run_dir, backend=self.name, choose=choose, alive=alive
                )
            if not held:
                return chosen[-1].waiting if chosen else "Waiting for GPU"
            for lease in held:
                found = inventory.find(lease.uuid) if inventory is not None else None
                devices.append(_device_record(found) if found is not None else {"uuid": lease.uuid})
        uuids = ",".join(device["uuid"] for device in devices)
        if not files.placement.exists():
            write(
                files.placement,
                {
                    "host": self.host,
                    "placed_at": time.time(),
                    "devices": devices,
                    "cuda_visible_devices": uuids,
                    "cpus": cpus_near(self.nvml, devices) if self.settings.cpu_binding else None,
                    "driver_version": inventory.driver_version if inventory else None,
                    "cuda_version": inventory.cuda_version if inventory else None,
                },
            )
        cpus = (read(files.placement) or {}).get("cpus")
        if files.cancelled.exists():
            self.leases.release(job.run_id)
            return "cancelled before it got a GPU"
        env = {**job.env, "CUDA_VISIBLE_DEVICES": uuids, "NVIDIA_VISIBLE_DEVICES": uuids or "void"}
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        on = ", ".join(describe_device(device) for device in devices) or "no GPU (gpus: 0)"
        bound = f", bound to CPUs {format_cpus(cpus)} (the GPUs' NUMA node)" if cpus else ""
        _say(job.run_dir, f"placed on {on}: CUDA_VISIBLE_DEVICES={uuids}{bound}")
        try:
            self.local.submit(replace(job, env=env), cpus=cpus)
            if files.cancelled.exists():  # cancelled while it was being started (see cancel)
                self.local.cancel(JobRef(run_id=job.run_id, job_id=job_id_of(job.run_id), run_dir=job.run_dir))
        except TransientError as exc:
            self.leases.release(job.run_id)
            files.placement.unlink(missing_ok=True)
            return f"Waiting for GPU: placed, but could not start: {exc}"
        except PermanentError as exc:  # reported by status as the run's failure
            self._record_failure(job.run_dir, job.run_id, f"could not start: {exc}")
        return ""

    def _placed_message(self, ref: JobRef) -> str:
        placed = read(NvidiaFiles(run_dir=ref.run_dir).placement) or {}
        on = ", ".join(describe_device(d) for d in placed.get("devices", [])) or "no GPU"
        return f"starting on {on}"

    # -- watching started runs ------------------------------------------------------------------------------

    def _status_started(self, refs: list[JobRef]) -> dict[str, JobStatus]:
        if not refs:
            return {}
        statuses = self.local.status(refs)
        results: dict[str, JobStatus] = {}
        running: dict[str, tuple[JobRef, list[dict[str, Any]]]] = {}
        for ref in refs:
            status = statuses[ref.run_id]
            if NvidiaFiles(run_dir=ref.run_dir).failure.exists():
                results[ref.run_id] = self._failed(ref, status)
            elif status.state.finished:
                self.leases.release(ref.run_id)
                self._sampled.pop(ref.run_id, None)
                results[ref.run_id] = status
            elif status.state is JobState.RUNNING:
                devices = (read(NvidiaFiles(run_dir=ref.run_dir).placement) or {}).get("devices", [])
                on = ", ".join(describe_device(d) for d in devices) or "no GPU"
                results[ref.run_id] = replace(status, message=f"{status.message} on {on}")
                if devices:
                    running[ref.run_id] = (ref, devices)
            else:
                results[ref.run_id] = status
        for run_id, (ref, devices) in running.items():
            failure = self._watch(ref, devices)
            if failure is not None:
                self._fail(ref, failure)
                results[run_id] = self._failed(ref, None)
        if running:
            results.update(self._xids(running))
        return results

    def _watch(self, ref: JobRef, devices: list[dict[str, Any]]) -> str | None:
        """Sample the run's devices into its metrics; return why the run must fail, if a device is lost."""
        try:
            self.nvml.start()
        except BackendUnavailable:
            return None  # NVML itself is gone (driver unloaded?): that is not proof that the GPU is
        seen = observe(self.nvml, devices)
        if seen.failure is not None:
            return seen.failure
        last = self._sampled.get(ref.run_id)
        now = time.monotonic()
        if seen.sample and (last is None or now - last >= self.settings.telemetry_interval_s):
            job = read(NvidiaFiles(run_dir=ref.run_dir).job) or {}
            metrics = job.get("job", {}).get("metrics_file")
            if metrics and append_sample(Path(metrics), seen.sample):
                self._sampled[ref.run_id] = now
        return None

    def _xids(self, running: Mapping[str, tuple[JobRef, list[dict[str, Any]]]]) -> dict[str, JobStatus]:
        """Fail the runs on a GPU that reported a fatal Xid since the last call; log the others."""
        by_gpu: dict[str, list[tuple[JobRef, dict[str, Any]]]] = {}
        for ref, devices in running.values():
            for device in devices:
                by_gpu.setdefault(str(device.get("parent_uuid") or device["uuid"]), []).append((ref, device))
        try:
            events = self.nvml.xid_events(by_gpu)
        except (BackendUnavailable, NvmlFailure):
            return {}
        results: dict[str, JobStatus] = {}
        for gpu_uuid, xid in events:
            for ref, device in by_gpu.get(gpu_uuid, []):
                if ref.run_id in results:
                    continue
                failure = xid_failure(xid, device)
                if failure is None:
                    _say(ref.run_dir, f"NVML reported Xid {xid} on {describe_device(device)} (not fatal)")
                    continue
                self._fail(ref, failure)
                results[ref.run_id] = self._failed(ref, None)
        return results

    def _record_failure(self, run_dir: Path, run_id: str, message: str) -> None:
        write(NvidiaFiles(run_dir=run_dir).failure, {"message": message, "at": time.time()})
        _say(run_dir, message)
        self.leases.release(run_id)

    def _fail(self, ref: JobRef, message: str) -> None:
        """End a run the backend gives up on: record why, stop its processes, free its devices."""
        self._record_failure(ref.run_dir, ref.run_id, message)
        self.local.cancel(ref)
        self._sampled.pop(ref.run_id, None)

    def _failed(self, ref: JobRef, local: JobStatus | None) -> JobStatus:
        failure = read(NvidiaFiles(run_dir=ref.run_dir).failure) or {}
        if local is None and RunFiles(run_dir=ref.run_dir).local_dir.is_dir():
            local = self.local.status([ref])[ref.run_id]
        if local is not None and not local.state.finished:
            self.local.cancel(ref)  # a failure recorded by a daemon that died before stopping the run
            local = self.local.status([ref])[ref.run_id]
        return JobStatus(
            state=JobState.FAILED,
            exit_code=None if local is None else local.exit_code,
            message=str(failure.get("message", "failed")),
            started_at=None if local is None else local.started_at,
            ended_at=failure.get("at") if local is None else local.ended_at or failure.get("at"),
        )
