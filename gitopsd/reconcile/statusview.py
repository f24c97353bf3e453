"""The read-only view behind `gitopsd status`: what each model wants, what is, and why they differ.

It opens the state and registry databases read-only with plain sqlite3 (no sqlite-utils, pydantic or pygit2
import), so it is fast, never takes a write lock, and works while the daemon runs. What it returns is shown
(the CLI, `/api/v1/status`): the repository URL and every message pass through `gitopsd.source.redact`, so a
credential in a URL never leaves the state database, whatever wrote it there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitopsd.source.redact import redact_text, redact_url
from gitopsd.units import format_time

if TYPE_CHECKING:
    import sqlite3

_MODELS = """
SELECT m.name, m.spec_path, m.run_key, m.backend, m.suspend,
       c.type, c.reason, c.message, c.updated_at,
       r.id, r.backend, r.job_id, r.phase, r.attempt, r.metrics, r.reason, r.message,
       (SELECT max(number) FROM reg.versions v WHERE v.model = m.name) AS latest
FROM models m
LEFT JOIN conditions c ON c.model = m.name
LEFT JOIN (SELECT model, max(rowid) AS last FROM runs GROUP BY model) lr ON lr.model = m.name
LEFT JOIN runs r ON r.rowid = lr.last
{where}
ORDER BY m.name
"""


def open_readonly(state_dir: Path) -> sqlite3.Connection | None:
    """`state.db` opened read-only with `registry.db` attached as `reg` (an empty `reg.versions` and
    `reg.alias_moves` when there is none yet); None when the directory holds no state, or a state.db still being
    created (no table yet: a daemon starting). Also the dashboard's (`gitopsd.ui.views`) way in."""
    db = state_dir / "state.db"
    if not db.exists():
        return None
    import sqlite3  # not before there is a database: `status` of an empty state directory starts faster

    from gitopsd.registry.sqlitedb import created

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    if not created(conn):
        conn.close()
        return None
    registry = state_dir / "registry.db"
    if registry.exists():
        conn.execute("ATTACH DATABASE ? AS reg", (f"file:{registry}?mode=ro",))
    else:
        conn.execute("ATTACH DATABASE ':memory:' AS reg")
        conn.execute("CREATE TABLE reg.versions (model TEXT, number INTEGER)")
        conn.execute("CREATE TABLE reg.alias_moves (seq INTEGER, model TEXT, alias TEXT, version INTEGER)")
    return conn


def read_status(state_dir: Path, model: str | None = None) -> dict[str, Any]:
    """The status document: the repository's source state and one entry per model (and, with `[standby]`, the
    lease: which daemon is active)."""
    lease = read_lease(state_dir)
    conn = open_readonly(state_dir)
    if conn is None:
        return {"repository": None, "models": [], **({"lease": lease} if lease else {})}
    with conn:
        source = conn.execute(
            "SELECT url, branch, fetched_commit, fetched_at, applied_commit, applied_at, trigger, "
            "error_reason, error FROM sources WHERE id = 1"
        ).fetchone()
        where, args = ("WHERE m.name = ?", (model,)) if model else ("", ())
        rows = conn.execute(_MODELS.format(where=where), args).fetchall()
        pending = _pending(conn)
        notifications = _notifications(conn)
        from gitopsd.registry.aliases import AliasBook  # not before there is a database, as sqlite3

        current = AliasBook(conn, schema="reg").current()  # the table the registry keeps, not all moves
    conn.close()
    aliases: dict[str, dict[str, int]] = {}
    for (name, alias), version in current.items():
        aliases.setdefault(name, {})[alias] = version
    keys = (
        "url",
        "branch",
        "fetched_commit",
        "fetched_at",
        "applied_commit",
        "applied_at",
        "trigger",
        "error_reason",
        "error",
    )
    repository = dict(zip(keys, source, strict=True)) if source else None
    if repository is not None:
        repository["url"] = redact_url(repository["url"])
        repository["error"] = redact_text(repository["error"]) if repository["error"] else repository["error"]
    commit = repository["applied_commit"] if repository else None
    models = [_model(r, commit) for r in rows]
    for entry in models:
        entry["aliases"] = aliases.get(entry["name"], {})
    return {"repository": repository, "models": models, "pending": pending, "notifications": notifications,
            **({"lease": lease} if lease else {})}  # fmt: skip


LEASE_FILE = "lease.json"
"""What the daemon's lease elector last saw (`gitopsd.daemon.standby`), rewritten at every heartbeat."""


def read_lease(state_dir: Path) -> dict[str, Any] | None:
    """The lease as this state directory's daemon last saw it; None without `[standby]`."""
    try:
        with (state_dir / LEASE_FILE).open("rb") as handle:
            data = _json(handle.read(1 << 16))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("role") in ("active", "standby") else None


def _json(text: str | bytes) -> Any:
    """JSON decoded; `json` is imported by the first document there is to decode, not by every `status`."""
    import json

    return json.loads(text)


def lease_line(lease: dict[str, Any], now: float | None = None) -> str:
    """One line: which daemon is active, and when it last renewed its lease."""
    now = time.time() if now is None else now
    renewed = lease.get("renewed_at")
    ago = f", renewed {max(0.0, now - renewed):.0f} s ago" if isinstance(renewed, int | float) else ""
    generation = lease.get("generation") or 0
    if lease["role"] == "active":
        line = f"active: this daemon on {lease.get('host')} holds the lease (generation {generation}{ago})"
    elif lease.get("active_host"):
        line = f"standby: {lease['active_host']} is active (lease generation {generation}{ago})"
    else:
        line = f"standby: {lease.get('why') or 'no daemon holds the lease'}"
    written = lease.get("written_at")
    ttl = lease.get("ttl") or 30
    if isinstance(written, int | float) and now - written > 3 * ttl:
        line += f" (as seen {now - written:.0f} s ago: is this daemon still running?)"
    return line


#: What each kind of outbox entry waits for (see `reconcile.outbox`).
_WAITING_FOR = {
    "alias-journal": "alias journal(s) waiting for the artifact store",
    "audit-tags": "audit tag push(es) waiting for the Git remote",
}


def _pending(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The outbox by kind: how many entries wait, their failed attempts, the next retry and the last error."""
    import sqlite3

    try:
        rows = conn.execute(
            "SELECT kind, count(*), max(attempts), min(next_at), max(error) FROM outbox GROUP BY kind ORDER BY kind"
        ).fetchall()
    except sqlite3.OperationalError:  # a state.db from before the outbox
        return []
    return [
        {"kind": kind, "count": count, "waiting_for": _WAITING_FOR.get(kind, kind), "attempts": attempts,
         "next_retry_at": next_at or None, "error": redact_text(error) if error else ""}
        for kind, count, attempts, next_at, error in rows
    ]  # fmt: skip


def _notifications(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The notification queue by sink (`daemon/deliveries.py`): how many wait, whether the sink is failing or
    stalled, the next retry and the last error; and what it delivered, failed and dropped so far."""
    import sqlite3

    try:
        rows = conn.execute(
            "SELECT sink, count(*), max(attempts), min(CASE WHEN next_at > 0 THEN next_at END), max(stalled), "
            "(SELECT error FROM deliveries e WHERE e.sink = d.sink AND e.error != '' ORDER BY e.seq DESC LIMIT 1) "
            "FROM deliveries d GROUP BY sink ORDER BY sink"
        ).fetchall()
        counts = conn.execute("SELECT sink, result, count FROM delivery_counts").fetchall()
    except sqlite3.OperationalError:  # a state.db from before notifications
        return []
    totals: dict[str, dict[str, int]] = {}
    for sink, result, count in counts:
        totals.setdefault(sink, {})[result] = count
    waiting = {sink: (count, attempts, next_at, bool(stalled), error or "")
               for sink, count, attempts, next_at, stalled, error in rows}  # fmt: skip
    out = []
    for sink in sorted(set(waiting) | set(totals)):
        count, attempts, next_at, stalled, error = waiting.get(sink, (0, 0, None, False, ""))
        out.append({"sink": sink, "waiting": count, "attempts": attempts, "stalled": stalled,
                    "next_retry_at": next_at if attempts else None, "error": redact_text(error) if error else "",
                    "delivered": totals.get(sink, {}).get("delivered", 0),
                    "failed": totals.get(sink, {}).get("failed", 0),
                    "dropped": totals.get(sink, {}).get("dropped", 0)})  # fmt: skip
    return out


def notification_line(entry: dict[str, Any]) -> str | None:
    """`notifications: 3 waiting for github-statuses: HTTP 503, next retry at ...`, for a failing sink only."""
    if not entry["attempts"] or not entry["waiting"]:
        return None
    if entry["next_retry_at"] is None:  # queued since the last failure: tried at once
        when = "retrying now"
    else:
        at = format_time(entry["next_retry_at"])
        when = f"stalled until a reload (SIGHUP) or {at}" if entry["stalled"] else f"next retry at {at}"
    return f"notifications: {entry['waiting']} waiting for {entry['sink']}: {entry['error']}, {when}"


def _model(row: tuple[Any, ...], commit: str | None) -> dict[str, Any]:
    (
        name,
        spec_path,
        run_key,
        backend,
        suspend,
        ctype,
        reason,
        message,
        updated_at,
        run_id,
        run_backend,
        job_id,
        phase,
        attempt,
        metrics,
        run_reason,
        run_message,
        latest,
    ) = row
    run = None
    if run_id is not None:
        run = {
            "id": run_id,
            "backend": run_backend,
            "job_id": job_id,
            "phase": phase,
            "attempt": attempt,
            "reason": run_reason,
            "message": redact_text(run_message) if run_message else run_message,
        }
    return {
        "name": name,
        "ready": ctype == "Ready",
        "condition": ctype or "Unknown",
        "reason": reason or "Unknown",
        "message": redact_text(message) if message else "not reconciled yet",
        "latest_version": latest,
        "run": run,
        "metrics": _json(metrics) if metrics else {},
        "spec_path": spec_path,
        "run_key": run_key,
        "backend": backend,
        "suspend": bool(suspend),
        "commit": commit,
        "updated_at": updated_at,
    }


def render(doc: dict[str, Any], *, wide: bool = False) -> str:
    """The human table of a status document."""
    lines: list[str] = []
    repo = doc["repository"]
    lease = doc.get("lease")
    if repo is None:
        if lease:
            return lease_line(lease)
        return "nothing reconciled yet in this state directory (run `gitopsd reconcile --repo URL|PATH`)"
    from gitopsd.errors import printable, printable_lines  # not before: an empty state directory's stays light

    applied = (repo["applied_commit"] or "none")[:12]
    fetched = (repo["fetched_commit"] or "none")[:12]
    lines.append(
        f"repository {repo['url']} branch {repo['branch'] or '(default)'}: "
        f"fetched {fetched}, applied {applied} (last trigger: {repo['trigger'] or '-'})"
    )
    if lease:
        lines.append(f"  {lease_line(lease)}")
    if repo["error"]:  # each line escaped: a spec file's name is any pusher's
        lines.append(f"  {repo['error_reason']}: {printable_lines(repo['error'], indent='    ')}")
    for entry in doc.get("pending", ()):
        why = ""
        if entry["attempts"]:
            at = format_time(entry["next_retry_at"] or 0)
            why = f" ({entry['attempts']} failed attempt(s), next retry at {at}: {printable(entry['error'])})"
        lines.append(f"  {entry['count']} {entry['waiting_for']}{why}")
    for entry in doc.get("notifications", ()):
        line = notification_line(entry)
        if line:
            lines.append(f"  {line}")
    header = ("MODEL", "READY", "VERSION", "ALIASES", "RUN", "PHASE", "REASON", "MESSAGE")
    table = [header]
    for m in doc["models"]:
        run = m["run"] or {}
        table.append(
            (
                m["name"],
                "True" if m["ready"] else "False",
                str(m["latest_version"]) if m["latest_version"] else "-",
                ",".join(f"{a}={v}" for a, v in sorted(m.get("aliases", {}).items())) or "-",
                run.get("id") or "-",
                run.get("phase") or "-",
                m["reason"],
                printable(m["message"]),  # it may name what a training wrote (a file in its outputs)
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for r in table:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        message = r[-1] if wide or len(r[-1]) <= 100 else r[-1][:97] + "..."
        lines.append("  ".join([*cells, message]).rstrip())
    return "\n".join(lines)
