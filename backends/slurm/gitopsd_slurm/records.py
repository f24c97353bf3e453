"""What Slurm says about jobs and nodes, parsed into frozen records both transports share.

`squeue --json` and slurmrestd's `GET /jobs` return the same job objects (OpenAPI v0.0.38 in Slurm 22.05);
`sacct --parsable2` returns text; `sinfo --json` and `GET /nodes` return the same node objects. The parsers
here are pure and tested on outputs recorded from a real cluster. They accept the later OpenAPI shapes too
(states as lists, numbers as `{"set", "number"}` objects), so a newer slurmrestd degrades gently.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class SlurmJob:
    """One job as Slurm reports it. `exit_code`/`signal` are decoded (3, not the raw wait status 768)."""

    job_id: str
    name: str = ""
    comment: str = ""
    state: str = ""
    reason: str = ""
    description: str = ""
    exit_code: int | None = None
    signal: int | None = None
    nodes: str = ""
    batch_host: str = ""
    partition: str = ""
    cluster: str = ""
    account: str = ""
    qos: str = ""
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    time_limit_min: int | None = None
    tres: str = ""
    gpus: str = ""
    cancelled_by: str = ""
    source: str = ""


@dataclass(frozen=True, kw_only=True)
class NodeInfo:
    """One node: what a job could ever get from it."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int
    partitions: tuple[str, ...]
    state: str = ""
    features: str = ""


def number(value: Any) -> int | None:
    """An integer from v0.0.38 (plain int) or later OpenAPI versions ({"set": true, "number": n})."""
    if isinstance(value, Mapping):
        if value.get("infinite") or not value.get("set", True):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def epoch(value: Any) -> float | None:
    """Unix seconds, or None for Slurm's "not yet" (0) and for unset numbers."""
    seconds = number(value)
    return float(seconds) if seconds else None


def decode_wait_status(raw: int) -> tuple[int | None, int | None]:
    """(exit code, signal) of a raw wait status as squeue --json and REST v0.0.38 report it (768 -> (3, None))."""
    signal = raw & 0x7F
    if signal:
        return None, signal
    return (raw >> 8) & 0xFF, None


def _exit(value: Any) -> tuple[int | None, int | None]:
    if isinstance(value, Mapping):  # v0.0.39+: {"status": [...], "return_code": n, "signal": {"id": n}}
        signal = value.get("signal")
        signal_id = number(signal.get("id")) if isinstance(signal, Mapping) else None
        return number(value.get("return_code")), signal_id or None
    raw = number(value)
    return (None, None) if raw is None else decode_wait_status(raw)


def _state(value: Any) -> str:
    if isinstance(value, list):  # v0.0.39+: ["FAILED"], or ["CANCELLED", "COMPLETING"]
        return str(value[0]).upper() if value else ""
    return str(value or "").upper()


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def job_from_json(obj: Mapping[str, Any], *, source: str) -> SlurmJob:
    """One job object of `squeue --json` or REST `GET /jobs`."""
    code, signal = _exit(obj.get("exit_code"))
    return SlurmJob(
        job_id=str(obj.get("job_id")),
        name=_text(obj.get("name")),
        comment=_text(obj.get("comment")),
        state=_state(obj.get("job_state")),
        reason=_text(obj.get("state_reason")),
        description=_text(obj.get("state_description")),
        exit_code=code,
        signal=signal,
        nodes=_text(obj.get("nodes")),
        batch_host=_text(obj.get("batch_host")),
        partition=_text(obj.get("partition")),
        cluster=_text(obj.get("cluster")),
        account=_text(obj.get("account")),
        qos=_text(obj.get("qos")),
        submit_time=epoch(obj.get("submit_time")),
        start_time=epoch(obj.get("start_time")),
        end_time=epoch(obj.get("end_time")),
        time_limit_min=number(obj.get("time_limit")),
        tres=_text(obj.get("tres_alloc_str") or obj.get("tres_req_str")),
        gpus=", ".join(g for g in (_text(obj.get("tres_per_job")), _text(obj.get("tres_per_node"))) if g),
        source=source,
    )


def jobs_from_json(doc: Mapping[str, Any], *, source: str) -> list[SlurmJob]:
    """Every job of a `squeue --json` / `GET /jobs` document (finished ones included, until MinJobAge)."""
    return [job_from_json(obj, source=source) for obj in doc.get("jobs") or []]


def json_errors(doc: Mapping[str, Any]) -> list[str]:
    """The human part of the `errors` list slurmrestd and the --json CLIs put in their answers."""
    found = []
    for error in doc.get("errors") or []:
        if isinstance(error, Mapping):
            words = [str(error[k]) for k in ("error", "description") if error.get(k)]
            found.append(": ".join(dict.fromkeys(words)) or str(dict(error)))
        else:
            found.append(str(error))
    return found


SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode", "Start", "End", "NodeList", "Partition", "AllocTRES")


def _sacct_time(text: str) -> float | None:
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def jobs_from_sacct(text: str) -> list[SlurmJob]:
    """Jobs of `sacct -P -o <SACCT_FIELDS>` (with its header line); job steps (123.batch) are skipped."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0].split("|")
    jobs = []
    for line in lines[1:]:
        row = dict(zip(header, line.split("|"), strict=False))
        job_id = row.get("JobID", "")
        if not job_id or "." in job_id:
            continue
        state, _, by = row.get("State", "").partition(" by ")
        code_text, _, signal_text = row.get("ExitCode", "").partition(":")
        code = int(code_text) if code_text.isdigit() else None
        signal = int(signal_text) if signal_text.isdigit() and int(signal_text) else None
        name = row.get("JobName", "")
        jobs.append(
            SlurmJob(
                job_id=job_id,
                name="" if name == "(null)" else name,
                state=state.strip().upper(),
                exit_code=code,
                signal=signal,
                nodes=row.get("NodeList", ""),
                partition=row.get("Partition", ""),
                start_time=_sacct_time(row.get("Start", "")),
                end_time=_sacct_time(row.get("End", "")),
                tres=row.get("AllocTRES", ""),
                cancelled_by=by.strip(),
                source="sacct",
            )
        )
    return jobs


def gpu_count(gres: str) -> int:
    """GPUs in a node's gres string: "gpu:2", "gpu:a100:4(S:0-1)", "gpu:a100:2,gpu:v100:1,shard:8" -> 2, 4, 3."""
    total = 0
    for item in re.split(r",(?![^(]*\))", gres or ""):
        fields = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if fields[0] == "gpu" and len(fields) >= 2 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def nodes_from_json(doc: Mapping[str, Any]) -> list[NodeInfo]:
    """Nodes of `sinfo --json` or REST `GET /nodes` (the same objects in v0.0.38)."""
    seen: dict[str, NodeInfo] = {}
    for obj in doc.get("nodes") or []:
        name = _text(obj.get("name"))
        partitions: Iterable[Any] = obj.get("partitions") or []
        seen[name] = NodeInfo(
            name=name,
            cpus=number(obj.get("cpus")) or 0,
            memory_mb=number(obj.get("real_memory")) or 0,
            gpus=gpu_count(_text(obj.get("gres"))),
            partitions=tuple(str(p) for p in partitions),
            state=_state(obj.get("state")),
            features=_text(obj.get("active_features") or obj.get("features")),
        )
    return list(seen.values())
