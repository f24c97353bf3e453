"""How much host memory one training uses, so that the local supervisor can hold it to `resources.memory`.

A login node or workstation rarely hands gitopsd a cgroup of its own, and an address-space rlimit is no
answer: CUDA reserves far more virtual memory than it touches, so `RLIMIT_AS` kills GPU trainings at start.
The supervisor therefore does what Slurm's `OverMemoryKill` does: it samples the memory of the training's
process tree every few seconds and stops the tree once it is over the limit.

Each sample sums the resident set size (RSS, from `/proc/PID/statm`: a counter, so a read costs the same
for a 100 MB and a 100 GB training). RSS counts a page shared between a trainer and its forked data-loader
workers once per worker, so a sum over the limit is confirmed with PSS (proportional set size, from
`/proc/PID/smaps_rollup`) before anything is stopped: PSS counts shared pages once, but the kernel walks every
page table to compute it (milliseconds per GB), which is why it is asked only near the limit. The tree is
found through the kernel's `/proc/PID/task/TID/children` lists, which costs a handful of small reads however
many processes the host runs. The supervisor makes itself a child subreaper, so a grandchild that
double-forks stays in its tree.

Standard library and `gitopsd.units` only: the supervisor imports it.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from gitopsd.units import format_size

PR_SET_CHILD_SUBREAPER = 36
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class TreeMemory:
    """The memory of a process tree at one moment."""

    bytes: int
    processes: int
    measure: str  # "PSS" or "RSS"


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux 3.4+), so that they stay in this process's tree; False if refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for tid in tasks:
        try:
            children.extend(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except (OSError, ValueError):
            continue
    return children


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children, their children, ...), not `pid` itself."""
    found: list[int] = []
    seen = {pid}
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                todo.append(child)
    return found


def resident_bytes(pid: int) -> int | None:
    """RSS of one process, or None when it is gone (a zombie has none)."""
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident * _PAGE_BYTES or None


def proportional_bytes(pid: int) -> int | None:
    """PSS of one process; its RSS where the kernel has no smaps_rollup (before 4.14); None when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
        return None  # an exited process has an empty rollup
    except FileNotFoundError:
        return resident_bytes(pid)
    except (OSError, ValueError):
        return None


def tree_memory(root: int, *, proportional: bool = False) -> TreeMemory:
    """The summed RSS (or PSS) of the descendants of `root` (the supervisor itself is not the training's)."""
    measure = proportional_bytes if proportional else resident_bytes
    total, count = 0, 0
    for pid in descendants(root):
        size = measure(pid)
        if size is not None:
            total += size
            count += 1
    return TreeMemory(bytes=total, processes=count, measure="PSS" if proportional else "RSS")


def over_limit_message(used: TreeMemory, limit_mb: int) -> str:
    """Why the training was stopped, with the remedy, in the words `gitopsd status` shows."""
    plural = "es" if used.processes != 1 else ""
    return (
        f"out of memory: the training used {format_size(used.bytes)} of host memory ({used.measure} of "
        f"{used.processes} process{plural}), over its limit of {format_size(limit_mb * MIB)}; the process group "
        "was terminated (raise spec.train.resources.memory)"
    )


def host_memory_mb() -> int | None:
    """MemTotal of this host in MiB, or None where /proc/meminfo cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        return None
    return None
