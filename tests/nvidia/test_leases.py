"""Leases: one run per device, enforced by SQLite across processes; dead holders' leases are recovered.

The concurrency tests start real processes at the same instant against one state directory: bare lease
acquisition first, then whole nvidia backends (on the same fake machine) submitting jobs that record when they
held which GPU, so an overlap on one GPU would show.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from gitopsd_nvidia.backend import NvidiaBackend
from gitopsd_nvidia.leases import Lease, LeaseBook

from gitopsd.model import JobRef, JobState
from tests.nvidia.conftest import FAST, poll
from tests.nvidia.fake_nvml import FakeMachine, FakeNvmlLib, h100

ROOT = Path(__file__).resolve().parents[2]


def first_free(uuids: list[str]) -> Callable[[Mapping[str, str]], list[str]]:
    def choose(leased: Mapping[str, str]) -> list[str]:
        return [uuid for uuid in uuids if uuid not in leased][:1]

    return choose


def always(_lease: Lease) -> bool:
    return True


def test_sqlite_refuses_a_second_lease_on_a_device(tmp_path: Path) -> None:
    book = LeaseBook(tmp_path / "leases.db")
    book.acquire(run_id="a", run_dir=tmp_path / "a", backend="gpu", choose=lambda _: ["GPU-0"], alive=always)
    with pytest.raises(sqlite3.IntegrityError):  # a chooser that ignores the leases it was shown
        book.acquire(run_id="b", run_dir=tmp_path / "b", backend="gpu", choose=lambda _: ["GPU-0"], alive=always)
    assert [(lease.uuid, lease.run_id) for lease in book.all()] == [("GPU-0", "a")]


def test_a_run_keeps_the_leases_it_holds_and_release_frees_them(tmp_path: Path) -> None:
    book = LeaseBook(tmp_path / "leases.db")
    choose = first_free(["GPU-0", "GPU-1"])
    first = book.acquire(run_id="a", run_dir=tmp_path, backend="gpu", choose=choose, alive=always)
    again = book.acquire(run_id="a", run_dir=tmp_path, backend="gpu", choose=choose, alive=always)
    assert first == again and [lease.uuid for lease in first] == ["GPU-0"]
    assert book.release("a") == 1 and book.release("a") == 0
    assert book.all() == []


def test_leases_of_dead_holders_are_dropped_before_choosing(tmp_path: Path) -> None:
    book = LeaseBook(tmp_path / "leases.db")
    choose = first_free(["GPU-0"])
    book.acquire(run_id="dead", run_dir=tmp_path / "dead", backend="gpu", choose=choose, alive=always)
    shown: list[dict[str, str]] = []

    def spy(leased: Mapping[str, str]) -> list[str]:
        shown.append(dict(leased))
        return ["GPU-0"]

    got = book.acquire(
        run_id="new", run_dir=tmp_path / "new", backend="gpu", choose=spy, alive=lambda lease: lease.run_id != "dead"
    )
    assert shown == [{}] and [lease.run_id for lease in got] == ["new"]


ACQUIRE = """
import json, sys, time
from pathlib import Path
from gitopsd_nvidia.leases import LeaseBook
db, run_id, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
book = LeaseBook(Path(db))
while time.time() < start:
    time.sleep(0.001)
got = book.acquire(run_id=run_id, run_dir=Path(db).parent, backend="gpu",
                   choose=lambda leased: [u for u in ("GPU-0", "GPU-1", "GPU-2") if u not in leased][:1],
                   alive=lambda lease: True)
print(json.dumps([lease.uuid for lease in got]))
"""


def test_processes_leasing_at_the_same_instant_never_get_the_same_device(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    LeaseBook(db)
    start = time.time() + 1.0
    procs = [
        subprocess.Popen([sys.executable, "-c", ACQUIRE, str(db), f"run-{n}", str(start)], stdout=subprocess.PIPE)
        for n in range(8)
    ]
    granted = [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    uuids = sorted(uuid for got in granted for uuid in got)
    assert uuids == ["GPU-0", "GPU-1", "GPU-2"], granted


SUBMIT = """
import sys, time
from pathlib import Path
from gitopsd.model import Job, Resources
from gitopsd_nvidia.backend import NvidiaBackend
from tests.nvidia.fake_nvml import FakeMachine, install
machine_file, state_dir, run_dir, start, settings = sys.argv[1:6]
install(FakeMachine.from_json(Path(machine_file).read_text()))
backend = NvidiaBackend(name="gpu", settings=__import__("json").loads(settings), state_dir=Path(state_dir))
run = Path(run_dir)
(run / "tree").mkdir(parents=True)
record = run.parent.parent / "shared" / "held.log"  # outside the run: confine_write lets the training write it
command = (f'echo "$CUDA_VISIBLE_DEVICES $(date +%s.%N) start" >> {record}; sleep 0.3; '
           f'echo "$CUDA_VISIBLE_DEVICES $(date +%s.%N) end" >> {record}')
job = Job(run_id=run.name, model="demo", command=command, run_dir=run, tree_dir=run / "tree", workdir=run / "tree",
          output_dir=run / "out", metrics_file=run / "out" / "metrics.jsonl", log_dir=run / "logs",
          resources=Resources(gpus=1))
while time.time() < float(start):
    time.sleep(0.001)
print(backend.submit(job))
"""


def test_backends_in_many_processes_never_run_two_jobs_on_one_gpu(
    tmp_path: Path, machine: FakeMachine, fake: FakeNvmlLib
) -> None:
    machine.gpus[:] = [h100(0), h100(1)]
    machine_file = tmp_path / "machine.json"
    machine_file.write_text(machine.to_json())
    state_dir = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    (tmp_path / "shared").mkdir()
    settings = {**FAST, "confine_write": [str(tmp_path / "shared")]}
    start = time.time() + 2.0
    run_dirs = [tmp_path / "runs" / f"run-{n}" for n in range(6)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                SUBMIT,
                str(machine_file),
                str(state_dir),
                str(run_dir),
                str(start),
                json.dumps(settings),
            ],
            env=env,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        for run_dir in run_dirs
    ]
    job_ids = [proc.communicate(timeout=60)[0].decode().strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), job_ids
    backend = NvidiaBackend(name="gpu", settings=settings, state_dir=state_dir)  # the daemon, after all of them
    refs = [JobRef(run_id=d.name, job_id=j, run_dir=d) for d, j in zip(run_dirs, job_ids, strict=True)]
    statuses = poll(backend, refs, lambda s: all(st.state.finished for st in s.values()))
    assert all(st.state is JobState.SUCCEEDED for st in statuses.values()), statuses

    held: dict[str, list[tuple[float, str]]] = {}
    for line in (tmp_path / "shared" / "held.log").read_text().splitlines():
        uuid, at, what = line.split()
        held.setdefault(uuid, []).append((float(at), what))
    assert sorted(held) == sorted(gpu.uuid for gpu in machine.gpus)
    for uuid, events in held.items():
        events.sort()
        assert [what for _, what in events] == ["start", "end"] * (len(events) // 2), f"{uuid} shared: {events}"
    assert sum(len(events) for events in held.values()) == 12
