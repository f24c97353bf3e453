"""The dashboard's JSON documents, one function per API route (`ui.routing`; tests/test_ui_views.py pins them).

Each function reads the state directories of `UiContext.sources` read-only (`statusview.open_readonly`: sqlite
`mode=ro` URIs, no write lock, works while the daemon runs) and the run directories through `ui.runfiles`
(inside `runs/`, bounded, no link followed), and returns plain JSON data: every string a repository or a
training wrote is redacted (`gitopsd.source.redact`) and bounded, and numbers that JSON cannot carry (NaN, the
infinities of a diverged loss) become null. None means "no such repository, model, run or version" (a 404).
A state database that cannot be read is said in the repository's `error`, never raised to the page.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitopsd.model import ConditionType, Phase, Reason
from gitopsd.reconcile.statusview import open_readonly, read_status
from gitopsd.registry.aliases import AliasBook
from gitopsd.source.redact import redact_text, redact_url
from gitopsd.spec.gates import parse_gate
from gitopsd.ui import lineagegraph, metricsfile, runfiles
from gitopsd.ui.downsample import downsample
from gitopsd.ui.lineagegraph import commit_link, redacted
from gitopsd.units import format_duration, format_time

DEFAULT_POINTS = 1000
MAX_POINTS = 5000
DEFAULT_LOG_BYTES = 16 * 1024
MAX_LOG_BYTES = 256 * 1024
MAX_RUNS = 100
"""Runs listed on a model page (newest first; `more` says there are older ones)."""
MAX_VERSIONS = 1000
MAX_HISTORY = 1000
MAX_MESSAGE = 4000
"""Longest message shown; a longer one is cut (`...`)."""
GPU_TTL_S = 5.0
"""How long a GPU inventory read through NVML is reused (the cluster page polls)."""

CONDITIONS = tuple(str(c) for c in ConditionType)
QUEUED_PHASES = (str(Phase.PENDING), str(Phase.SUBMITTING), str(Phase.QUEUED))
_TERMINAL = tuple(str(p) for p in Phase if p.terminal)
_DIVERGED_AT = re.compile(r"at metrics line (\d+)$")
_PLATEAU = re.compile(r"^(?P<metric>\S+) has not improved on (?P<best>\S+) for (?P<patience>\d+) reports")
_ALIAS_KINDS = {"rolled back": "rolled_back"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, kw_only=True)
class UiContext:
    """What the dashboard shows: repository name -> state directory, and what only the operator knows."""

    sources: Mapping[str, Path]
    commit_urls: Mapping[str, str] = field(default_factory=dict)
    """Repository name -> its `[[repositories]] commit_url` template (`https://forge/org/repo/commit/{commit}`)."""
    backends: Sequence[Mapping[str, str]] = ()
    """The operator's backends, each {"name", "type"}; empty: the backends the models name."""
    lease_book: Path | None = None
    """The nvidia backend's GPU lease book; None: looked for beside the state directories."""
    started_at: float = field(default_factory=time.time)


# -- small helpers --------------------------------------------------------------------------------------------


def _msg(value: object) -> str:
    """A message for the page: redacted, at most `MAX_MESSAGE` characters."""
    text = redact_text(str(value)) if value not in (None, "") else ""
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _num(value: object) -> float | None:
    """A finite number or None (JSON has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _metrics(raw: object) -> dict[str, float | None]:
    data = _loads(raw) if isinstance(raw, str) else raw
    if not isinstance(data, Mapping):
        return {}
    return {redact_text(str(k))[:256]: _num(v) for k, v in list(data.items())[:1024]}


def _loads(text: object) -> Any:
    try:
        return json.loads(text) if isinstance(text, str | bytes) else None
    except (ValueError, RecursionError):
        return None


def _labels(raw: object) -> dict[str, str]:
    data = _loads(raw)
    if not isinstance(data, Mapping):
        return {}
    return {_msg(k)[:256]: _msg(v)[:1000] for k, v in data.items() if isinstance(v, str | int | float)}


def _short(value: object, limit: int = 200) -> str | None:
    """A name a run directory gave (a node, a host): one line, bounded; None when it is not a string."""
    if not isinstance(value, str) or not value:
        return None
    return _CONTROL.sub("", redact_text(value))[:limit] or None


@contextmanager
def _reading(state_dir: Path) -> Iterator[sqlite3.Connection | None]:
    conn = open_readonly(state_dir)
    try:
        yield conn
    finally:
        if conn is not None:
            conn.close()


def _has_registry(state_dir: Path) -> bool:
    return (state_dir / "registry.db").is_file()


def _rows(conn: sqlite3.Connection, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
    """Rows as sqlite3.Row; an older database without the table or column reads as empty."""
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute(sql, tuple(args)))
    except sqlite3.OperationalError as exc:
        if "no such" in str(exc):
            return []
        raise


# -- what a run directory says about the run in flight -------------------------------------------------------


def _segment(run_dir: Path | None, run_id: str) -> int | None:
    """The checkpointed run's current segment, from the Slurm plugin's book (`slurm/segments.json`)."""
    if run_dir is None:
        return None
    book = runfiles.read_record(run_dir, "slurm/segments.json")
    if book is None or book.get("run_id") != run_id or not isinstance(book.get("segments"), list):
        return None
    segments = book["segments"]
    last = segments[-1] if segments and len(segments) <= 1000 else None
    number = last.get("segment") if isinstance(last, dict) else None
    return number if isinstance(number, int) and not isinstance(number, bool) and number >= 1 else None


def _node(run_dir: Path | None) -> str | None:
    """Where the run's job runs: Slurm's node list (`slurm/started.json`), else the local supervisor's host."""
    if run_dir is None:
        return None
    started = runfiles.read_record(run_dir, "slurm/started.json") or {}
    local = runfiles.read_record(run_dir, "local/state.json") or {}
    return _short(started.get("nodes")) or _short(started.get("host")) or _short(local.get("host"))


# -- overview -------------------------------------------------------------------------------------------------


def overview(ctx: UiContext) -> dict[str, Any]:
    """Every repository and model: condition, latest version, aliases, the run in flight, the source's state."""
    repositories: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    for name, state_dir in sorted(ctx.sources.items()):
        try:
            repo, rows = _repository(ctx, name, state_dir)
        except sqlite3.Error as exc:
            repo, rows = _unreadable(name, state_dir, exc), []
        repositories.append(repo)
        models.extend(rows)
    teams = sorted({m["team"] for m in models if m["team"]})
    backends = sorted({m["backend"] for m in models if m["backend"]})
    return {
        "generated_at": time.time(),
        "repositories": repositories,
        "models": models,
        "facets": {"teams": teams, "backends": backends, "conditions": list(CONDITIONS)},
    }


def _unreadable(name: str, state_dir: Path, exc: Exception) -> dict[str, Any]:
    return {
        "name": name, "url": None, "branch": None, "fetched_commit": None, "fetched_at": None,
        "applied_commit": None, "applied_at": None, "error_reason": "StateUnreadable",
        "error": _msg(f"cannot read {state_dir / 'state.db'}: {exc} (is it a gitopsd state directory?)"),
        "commit_url": None, "fetched_commit_url": None,
    }  # fmt: skip


def _repository(ctx: UiContext, name: str, state_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    doc = read_status(state_dir)
    source = doc["repository"] or {}
    template = ctx.commit_urls.get(name)
    repo = {
        "name": name,
        "url": source.get("url"),
        "branch": source.get("branch"),
        "fetched_commit": source.get("fetched_commit"),
        "fetched_at": _num(source.get("fetched_at")),
        "applied_commit": source.get("applied_commit"),
        "applied_at": _num(source.get("applied_at")),
        "error_reason": source.get("error_reason") or "",
        "error": _msg(source.get("error")),
        "commit_url": commit_link(template, source.get("applied_commit")),
        "fetched_commit_url": commit_link(template, source.get("fetched_commit")),
    }
    with _reading(state_dir) as conn:
        labels: dict[str, dict[str, str]] = {}
        flying: dict[str, str] = {}
        if conn is not None:
            labels = {r["name"]: _labels(r["labels"]) for r in _rows(conn, "SELECT name, labels FROM models")}
            marks = ",".join("?" * len(_TERMINAL))
            flying = {r["id"]: r["run_dir"] for r in
                      _rows(conn, f"SELECT id, run_dir FROM runs WHERE phase NOT IN ({marks})", _TERMINAL)}  # fmt: skip
    rows = []
    for model in doc["models"]:
        run = model["run"]
        condition = model["condition"] if model["condition"] in CONDITIONS else None
        model_labels = labels.get(model["name"], {})
        if run is not None:
            run_dir = runfiles.run_dir_of(state_dir, run["id"], flying[run["id"]]) if run["id"] in flying else None
            run = {
                "id": run["id"], "backend": run["backend"], "job_id": run["job_id"], "phase": run["phase"],
                "attempt": run["attempt"], "segment": _segment(run_dir, run["id"]), "node": _node(run_dir),
                "reason": run["reason"], "message": _msg(run["message"]),
            }  # fmt: skip
        rows.append({
            "repository": name, "name": model["name"], "condition": condition,
            "reason": model["reason"] if condition else None, "message": _msg(model["message"]),
            "latest_version": model["latest_version"], "aliases": model.get("aliases", {}),
            "labels": model_labels, "team": model_labels.get("team"), "backend": model["backend"],
            "suspend": model["suspend"], "updated_at": _num(model["updated_at"]), "run": run,
        })  # fmt: skip
    return repo, rows


# -- model page -----------------------------------------------------------------------------------------------


def _gate(text: str) -> dict[str, Any] | None:
    try:
        gate = parse_gate(text)
    except ValueError:
        return None
    return {"text": gate.text, "metric": gate.metric, "op": gate.op, "threshold": gate.threshold}


def _gate_results(results: object) -> list[dict[str, Any]]:
    """Recorded gate results ({"gate", "value", "passed"}) with the gate's metric, operator and threshold."""
    out = []
    for item in results if isinstance(results, list) else []:
        if not isinstance(item, Mapping) or not isinstance(item.get("gate"), str):
            continue
        gate = _gate(item["gate"]) or {"text": item["gate"], "metric": None, "op": None, "threshold": None}
        out.append({"gate": _msg(gate["text"]), "passed": bool(item.get("passed")), "value": _num(item.get("value")),
                    "metric": gate["metric"], "op": gate["op"], "threshold": gate["threshold"]})  # fmt: skip
    return out


def _evaluated(snapshot: Mapping[str, Any] | None, metrics: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """The gates of a run that failed them, evaluated on its final metrics as collecting did."""
    gates = snapshot.get("validate") if snapshot else None
    results = []
    for text in gates if isinstance(gates, list) else []:
        parsed = _gate(text) if isinstance(text, str) else None
        if parsed is None:
            continue
        value = metrics.get(parsed["metric"])
        op = parse_gate(text)
        results.append({"gate": text, "value": value, "passed": value is not None and op.holds(value)})
    return _gate_results(results)


def _metrics_name(snapshot: Mapping[str, Any] | None) -> str:
    outputs = snapshot.get("outputs") if snapshot else None
    name = outputs.get("metrics") if isinstance(outputs, Mapping) else None
    return name if isinstance(name, str) and name else "metrics.jsonl"


def _verdict(row: sqlite3.Row, early_stop: str | None, curves: metricsfile.Curves | None) -> dict[str, Any] | None:
    """A convergence verdict: a plateau stop or a divergence, with the step it happened at when it is known."""
    if row["stop_reason"] == Reason.PLATEAUED or row["reason"] == Reason.PLATEAUED:
        message = early_stop or row["message"] or ""
        return {"kind": "plateau", "reason": str(Reason.PLATEAUED), "message": _msg(message),
                "step": _plateau_step(message, curves)}  # fmt: skip
    if row["reason"] == Reason.DIVERGED:
        return {"kind": "divergence", "reason": str(Reason.DIVERGED), "message": _msg(row["message"]),
                "step": _diverged_step(row["message"] or "", curves)}  # fmt: skip
    if row["stop_reason"]:
        return {"kind": "other", "reason": _msg(row["stop_reason"]), "message": _msg(row["message"]), "step": None}
    return None


def _diverged_step(message: str, curves: metricsfile.Curves | None) -> float | None:
    """`... at metrics line N` (N counts lines with numbers, as `ui.metricsfile` counts points) -> its x."""
    found = _DIVERGED_AT.search(message)
    if curves is None or found is None:
        return None
    index = int(found.group(1)) - 1
    return _num(curves.x_of(index, curves.axis)) if 0 <= index < curves.points else None


def _plateau_step(message: str, curves: metricsfile.Curves | None) -> float | None:
    """Where a plateau stop fired: `patience` reports of the metric after its best value first appeared (the
    convergence watch's own rule, replayed on the curve it saw)."""
    found = _PLATEAU.match(message)
    series = curves.series.get(found["metric"]) if curves is not None and found else None
    if curves is None or found is None or series is None:
        return None
    try:
        best = float(found["best"])
    except ValueError:
        return None
    patience = int(found["patience"])
    for i, value in enumerate(series.values):
        if value == best:
            target = i + patience
            return _num(curves.x_of(series.points[target], curves.axis)) if target < len(series.points) else None
    return None


def _curves(state_dir: Path, row: sqlite3.Row, snapshot: Mapping[str, Any] | None) -> metricsfile.Curves | None:
    run_dir = runfiles.run_dir_of(state_dir, row["id"], row["run_dir"])
    if run_dir is None:
        return None
    return metricsfile.CACHE.curves(run_dir, f"out/{_metrics_name(snapshot)}", final=row["phase"] in _TERMINAL)


def model_page(ctx: UiContext, repo: str, model: str) -> dict[str, Any] | None:
    """One model: its condition, gates, runs (newest first), versions and alias history; None when unknown."""
    state_dir = ctx.sources.get(repo)
    if state_dir is None:
        return None
    with _reading(state_dir) as conn:
        if conn is None:
            return None
        return _model_page(conn, state_dir, repo, model)


def _model_page(conn: sqlite3.Connection, state_dir: Path, repo: str, model: str) -> dict[str, Any] | None:
    found = _rows(conn, "SELECT * FROM models WHERE name = ?", (model,))
    runs = _rows(conn, "SELECT * FROM runs WHERE model = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
                 (model, MAX_RUNS + 1))  # fmt: skip
    registry = _has_registry(state_dir)
    versions = _rows(conn, "SELECT * FROM reg.versions WHERE model = ? ORDER BY number DESC LIMIT ?",
                     (model, MAX_VERSIONS)) if registry else []  # fmt: skip
    if not found and not runs and not versions:
        return None
    spec = dict(found[0]) if found else {}
    cond = _rows(conn, "SELECT type, reason, message FROM conditions WHERE model = ?", (model,))
    more, runs = len(runs) > MAX_RUNS, runs[:MAX_RUNS]
    ids = [r["id"] for r in runs]
    marks = ",".join("?" * len(ids))
    snapshots = {r["run_id"]: _loads(r["snapshot"]) for r in
                 _rows(conn, f"SELECT run_id, snapshot FROM snapshots WHERE run_id IN ({marks})", ids)}  # fmt: skip
    stopped = _rows(conn, "SELECT run_id, message FROM events WHERE model = ? AND kind = 'EarlyStop'", (model,))
    stops = {r["run_id"]: r["message"] for r in stopped}
    by_number = {v["number"]: v for v in versions}
    run_docs = [_run(state_dir, r, snapshots.get(r["id"]), stops.get(r["id"]), by_number) for r in runs]
    latest_snapshot = snapshots.get(ids[0]) if ids else None
    gates = [g for g in (_gate(t) for t in (latest_snapshot or {}).get("validate") or [] if isinstance(t, str)) if g]
    aliases = {a: v for (_, a), v in AliasBook(conn, schema="reg").current(model).items()} if registry else {}
    condition = cond[0]["type"] if cond and cond[0]["type"] in CONDITIONS else None
    return {
        "repository": repo,
        "name": model,
        "condition": condition,
        "reason": cond[0]["reason"] if cond else None,
        "message": _msg(cond[0]["message"]) if cond else "not reconciled yet",
        "labels": _labels(spec.get("labels")),
        "spec_path": spec.get("spec_path") or (runs[0]["spec_path"] if runs else None),
        "backend": spec.get("backend") or (runs[0]["backend"] if runs else None),
        "latest_version": max(by_number, default=None),
        "aliases": aliases,
        "gates": gates,
        "runs": run_docs,
        "more": more,
        "versions": [_version(v) for v in versions],
        "alias_history": _alias_history(conn, model, registry),
    }


def _run(
    state_dir: Path,
    row: sqlite3.Row,
    snapshot: Mapping[str, Any] | None,
    early_stop: str | None,
    versions: Mapping[int, sqlite3.Row],
) -> dict[str, Any]:
    metrics = _metrics(row["metrics"])
    terminal = row["phase"] in _TERMINAL
    run_dir = runfiles.run_dir_of(state_dir, row["id"], row["run_dir"])
    verdict_kind = row["stop_reason"] or row["reason"] in (Reason.DIVERGED, Reason.PLATEAUED)
    curves = _curves(state_dir, row, snapshot) if verdict_kind else None
    version = versions.get(row["version"]) if row["version"] is not None else None
    if version is not None:
        gates = _gate_results(_loads(version["gates"]))
    elif row["reason"] == Reason.GATE_FAILED:
        gates = _evaluated(snapshot, metrics)
    else:
        gates = []
    return {
        "id": row["id"], "phase": row["phase"], "attempt": row["attempt"], "backend": row["backend"],
        "job_id": row["job_id"], "commit": row["commit_id"], "created_at": _num(row["created_at"]),
        "started_at": _num(row["started_at"]), "ended_at": _num(row["ended_at"]), "reason": row["reason"],
        "message": _msg(row["message"]), "stop_reason": row["stop_reason"], "exit_code": row["exit_code"],
        "version": row["version"], "metrics": metrics,
        "segment": _segment(run_dir, row["id"]), "node": None if terminal else _node(run_dir),
        "verdict": _verdict(row, early_stop, curves), "gates": gates,
    }  # fmt: skip


def _version(row: sqlite3.Row) -> dict[str, Any]:
    lineage = _loads(row["lineage"])
    lineage = lineage if isinstance(lineage, Mapping) else {}
    base = lineagegraph.base_of({"lineage": lineage})
    return {
        "number": row["number"], "run_id": row["run_id"], "created_at": _num(row["created_at"]),
        "artifact_sha256": row["artifact_sha256"], "artifact_size": row["artifact_size"],
        "metrics": _metrics(row["metrics"]), "gates": _gate_results(_loads(row["gates"])),
        "commit": lineage.get("commit") if isinstance(lineage.get("commit"), str) else None,
        "base": {"model": base[0], "version": base[1]} if base else None,
    }  # fmt: skip


def _alias_history(conn: sqlite3.Connection, model: str, registry: bool) -> list[dict[str, Any]]:
    """Every alias move and every refused one (`AliasRefused` events), oldest first."""
    events: list[dict[str, Any]] = []
    moves = _rows(conn, "SELECT * FROM reg.alias_moves WHERE model = ? ORDER BY seq DESC LIMIT ?",
                  (model, MAX_HISTORY)) if registry else []  # fmt: skip
    for m in moves:
        before = f"{model}@{m['previous']}" if m["previous"] is not None else "nothing"
        after = f"{model}@{m['version']}" if m["version"] is not None else "nothing"
        events.append({"at": _num(m["at"]), "alias": m["alias"], "kind": _ALIAS_KINDS.get(m["kind"], m["kind"]),
                       "version": m["version"], "previous": m["previous"], "commit": m["commit_id"],
                       "subject": _msg(m["subject"]),
                       "message": _msg(f"alias {m['alias']} {m['kind']}: {before} -> {after}")})  # fmt: skip
    refused = _rows(conn, "SELECT * FROM events WHERE model = ? AND kind = 'AliasRefused' ORDER BY seq DESC LIMIT ?",
                    (model, MAX_HISTORY))  # fmt: skip
    for e in refused:
        wanted = re.search(r"-> \S+@(\d+) refused", e["message"] or "")
        events.append({"at": _num(e["at"]), "alias": e["reason"], "kind": "refused",
                       "version": int(wanted.group(1)) if wanted else None, "previous": None,
                       "commit": e["commit_id"], "subject": "", "message": _msg(e["message"])})  # fmt: skip
    events.sort(key=lambda e: e["at"] or 0.0)
    return events[-MAX_HISTORY:]


# -- curves and logs ------------------------------------------------------------------------------------------


def _run_row(ctx: UiContext, repo: str, run_id: str) -> tuple[Path, sqlite3.Row, Path, Any] | None:
    state_dir = ctx.sources.get(repo)
    if state_dir is None:
        return None
    with _reading(state_dir) as conn:
        if conn is None:
            return None
        rows = _rows(conn, "SELECT id, model, phase, run_dir FROM runs WHERE id = ?", (run_id,))
        snap = _rows(conn, "SELECT snapshot FROM snapshots WHERE run_id = ?", (run_id,)) if rows else []
    run_dir = runfiles.run_dir_of(state_dir, run_id, rows[0]["run_dir"]) if rows else None
    if run_dir is None:
        return None
    return state_dir, rows[0], run_dir, _loads(snap[0]["snapshot"]) if snap else None


def run_metrics(
    ctx: UiContext, repo: str, run_id: str, *, points: int = DEFAULT_POINTS, since: int = 0
) -> dict[str, Any] | None:
    """The run's curves after byte `since` of its metrics file, each thinned to at most `points` points."""
    found = _run_row(ctx, repo, run_id)
    if found is None:
        return None
    _, row, run_dir, snapshot = found
    points = max(2, min(points, MAX_POINTS))
    live = row["phase"] not in _TERMINAL
    curves = metricsfile.CACHE.curves(run_dir, f"out/{_metrics_name(snapshot)}", final=not live)
    if curves is None:
        return {"run_id": run_id, "x": "index", "series": {}, "offset": 0, "total_points": 0,
                "downsampled": False, "live": live}  # fmt: skip
    window = metricsfile.window(curves, max(0, since))
    key = (str(run_dir), window.offset, max(0, since), points)
    thinned = _THINNED.get(key)
    if thinned is None:
        thinned = _thin(window, points)
        _THINNED.put(key, thinned)
    series, downsampled = thinned
    return {"run_id": run_id, "x": window.axis, "series": series, "offset": window.offset,
            "total_points": window.points, "downsampled": downsampled, "live": live}  # fmt: skip


def _thin(window: metricsfile.Window, points: int) -> tuple[dict[str, list[list[float]]], bool]:
    series: dict[str, list[list[float]]] = {}
    thinned = False
    for name, values in window.series.items():
        kept = downsample(values, points)
        thinned = thinned or len(kept) < len(values)
        series[redact_text(name)] = [[x, y] for x, y in kept]
    return series, thinned


class _Memo:
    """The last few thinned curves, by (run directory, bytes read, since, points): a page that several people
    keep open, or that polls a finished run, thins each curve once. The key changes when the file grows."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, int, int, int], tuple[dict[str, list[list[float]]], bool]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int, int]) -> tuple[dict[str, list[list[float]]], bool] | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def put(self, key: tuple[str, int, int, int], value: tuple[dict[str, list[list[float]]], bool]) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_THINNED = _Memo(64)


def clear_caches() -> None:
    """Forget every parsed and thinned curve (benchmarks of a first load, tests)."""
    metricsfile.CACHE.clear()
    _THINNED.clear()


def run_log(ctx: UiContext, repo: str, run_id: str, *, nbytes: int = DEFAULT_LOG_BYTES) -> dict[str, Any] | None:
    """The last `nbytes` of the run's newest log, redacted ("" when it has none yet)."""
    found = _run_row(ctx, repo, run_id)
    if found is None:
        return None
    tail = runfiles.tail(found[2], max(1, min(nbytes, MAX_LOG_BYTES)))
    if tail is None:
        return {"run_id": run_id, "text": "", "truncated": False}
    return {"run_id": run_id, "text": redact_text(tail.data.decode("utf-8", errors="replace")),
            "truncated": tail.truncated}  # fmt: skip


# -- version page ---------------------------------------------------------------------------------------------


def _version_doc(row: sqlite3.Row) -> dict[str, Any]:
    lineage = _loads(row["lineage"])
    return {
        "model": row["model"], "number": row["number"], "created_at": _num(row["created_at"]),
        "metrics": _metrics(row["metrics"]), "gates": _gate_results(_loads(row["gates"])),
        "artifact": {"sha256": row["artifact_sha256"], "size": row["artifact_size"],
                     "uri": redact_url(str(row["artifact_uri"]))},
        "lineage": lineage if isinstance(lineage, Mapping) else {},
    }  # fmt: skip


def version_page(ctx: UiContext, repo: str, model: str, number: int) -> dict[str, Any] | None:
    """One version with its lineage, raw and as a graph through its bases; None when there is no such version."""
    state_dir = ctx.sources.get(repo)
    if state_dir is None or not _has_registry(state_dir):
        return None
    with _reading(state_dir) as conn:
        if conn is None:
            return None

        def get(name: str, n: int) -> dict[str, Any] | None:
            rows = _rows(conn, "SELECT * FROM reg.versions WHERE model = ? AND number = ?", (name, n))
            return _version_doc(rows[0]) if rows else None

        versions = lineagegraph.chain(get, model, number)
    if not versions:
        return None
    head = versions[0]
    graph = lineagegraph.graph(versions, repository=repo, commit_url=ctx.commit_urls.get(repo))
    return {**head, "lineage": redacted(head["lineage"]), "graph": graph}


# -- cluster --------------------------------------------------------------------------------------------------


_gpu_lock = threading.Lock()
_gpu_cache: dict[str, tuple[float, dict[str, Any] | None, str | None]] = {}


def _inventory() -> tuple[dict[str, Any] | None, str | None]:
    """The nvidia backend's GPU inventory (`gitopsd gpus --json`), or why there is none; reused `GPU_TTL_S`."""
    now = time.monotonic()
    with _gpu_lock:
        cached = _gpu_cache.get("inventory")
        if cached is not None and now - cached[0] < GPU_TTL_S:
            return cached[1], cached[2]
        try:
            from gitopsd_nvidia.inventory import as_json, read_inventory

            doc, error = as_json(read_inventory()), None
        except ImportError:
            doc, error = None, "the nvidia backend is not installed (pip install -e backends/nvidia)"
        except Exception as exc:  # NVML absent or failing: normal on a login node without GPUs
            doc, error = None, _msg(str(exc) or type(exc).__name__)
        _gpu_cache["inventory"] = (now, doc, error)
        return doc, error


def _lease_books(ctx: UiContext) -> list[Path]:
    if ctx.lease_book is not None:
        return [ctx.lease_book]
    places = {d / "nvidia" / "leases.db" for d in ctx.sources.values()}
    places |= {d.parent / "nvidia" / "leases.db" for d in ctx.sources.values()}
    return sorted(p for p in places if p.is_file())


def _leases(ctx: UiContext) -> dict[str, str]:
    """Device UUID -> the run that holds it, from the GPU lease books (read-only)."""
    held: dict[str, str] = {}
    for book in _lease_books(ctx):
        try:
            conn = sqlite3.connect(f"{book.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                held.update({str(u): str(r) for u, r in conn.execute("SELECT uuid, run_id FROM leases")})
            finally:
                conn.close()
        except sqlite3.Error:
            continue
    return held


def _with_leases(doc: dict[str, Any], leased: Mapping[str, str]) -> dict[str, Any]:
    gpus = []
    for gpu in doc.get("gpus", []):
        migs = [
            {**m, "leased_by": leased.get(m.get("uuid", ""), m.get("leased_by"))} for m in gpu.get("mig_devices", [])
        ]
        gpus.append({**gpu, "leased_by": leased.get(gpu.get("uuid", ""), gpu.get("leased_by")), "mig_devices": migs})
    return {**doc, "gpus": gpus}


def cluster(ctx: UiContext) -> dict[str, Any]:
    """GPUs and their leases, backends and whether they answer, and the runs waiting to start."""
    inventory, error = _inventory()
    gpus = _with_leases(inventory, _leases(ctx)) if inventory is not None else None
    unavailable: dict[str, str] = {}
    seen: dict[str, str | None] = {}
    heard: dict[str, float] = {}
    queue: list[dict[str, Any]] = []
    marks = ",".join("?" * len(QUEUED_PHASES))
    for name, state_dir in sorted(ctx.sources.items()):
        try:
            with _reading(state_dir) as conn:
                if conn is None:
                    continue
                for r in _rows(conn, "SELECT m.backend, c.reason, c.message FROM models m "
                                     "LEFT JOIN conditions c ON c.model = m.name"):  # fmt: skip
                    seen.setdefault(r["backend"], None)
                    if r["reason"] == Reason.BACKEND_UNAVAILABLE:
                        unavailable.setdefault(r["backend"], _msg(r["message"]))
                for r in _rows(conn, "SELECT backend, max(updated_at) AS at FROM runs WHERE reason != ? "
                                     "GROUP BY backend", (str(Reason.BACKEND_UNAVAILABLE),)):  # fmt: skip
                    heard[r["backend"]] = max(heard.get(r["backend"], 0.0), r["at"] or 0.0)
                troubles = {r["key"].partition(":")[2]: r["message"] for r in
                            _rows(conn, "SELECT key, message FROM troubles")}  # fmt: skip
                for r in _rows(conn, f"SELECT id, model, backend, job_id, phase, reason, message, created_at "
                                     f"FROM runs WHERE phase IN ({marks})", QUEUED_PHASES):  # fmt: skip
                    queue.append({"repository": name, "model": r["model"], "run_id": r["id"], "backend": r["backend"],
                                  "job_id": r["job_id"], "phase": r["phase"], "reason": r["reason"],
                                  "message": _msg(r["message"] or troubles.get(r["id"]) or troubles.get(r["model"])),
                                  "since": _num(r["created_at"])})  # fmt: skip
        except sqlite3.Error:
            continue
    configured: list[tuple[str, str | None]] = [(str(b.get("name")), b.get("type")) for b in ctx.backends]
    configured = configured or [(n, None) for n in sorted(seen)]
    backends = [_backend(n, t, unavailable.get(n), heard.get(n), time.time()) for n, t in configured]
    queue.sort(key=lambda q: q["since"] or 0.0)
    return {"gpus": gpus, "gpus_error": error, "backends": backends, "queue": queue}


def _ago(seconds: float) -> str:
    return format_duration(max(0, int(seconds)) // 60 * 60) if seconds >= 60 else f"{max(0, int(seconds))}s"


HEARD_RECENTLY_S = 15 * 60
"""A backend that changed one of its runs this recently answered the daemon: available."""


def _backend(name: str, kind: str | None, unavailable: str | None, heard: float | None, now: float) -> dict[str, Any]:
    """Whether a backend answers, from what the daemon recorded: a model stalled on it says no (with its message),
    a run it moved in the last 15 minutes says yes, and otherwise the page says when it last answered."""
    if unavailable is not None:
        return {"name": name, "type": kind, "available": False, "message": unavailable}
    if heard and now - heard < HEARD_RECENTLY_S:
        return {"name": name, "type": kind, "available": True, "message": f"a run moved {_ago(now - heard)} ago"}
    said = f"last answered at {format_time(heard)} (no run since)" if heard else "no run on it yet"
    return {"name": name, "type": kind, "available": None, "message": said}


def heartbeat(ctx: UiContext) -> dict[str, Any]:
    """When this server started: the page notices a restart and reloads its data."""
    return {"started_at": ctx.started_at}
