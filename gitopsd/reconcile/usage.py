"""The read side of GPU-hour accounting: the runs a state directory recorded, as `gitopsd usage` counts them and
as a weekly budget shared between repositories reads another repository's.

It opens `state.db` read-only with plain sqlite3 (like `statusview`), so it works while the daemon runs and
never takes a write lock. A run counts GPUs x nodes times the time from its start (else its submission) to its
end (else now, while in flight). A state database from before GPU accounting (no `gpus` column yet: its daemon
has not restarted since the upgrade) is read through the runs' snapshots, and a run without one counts 0 GPUs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gitopsd.spec.policy import Spent

_ENDED = "('Registered', 'Failed', 'Cancelled')"
_COLUMNS = (
    "model, spec_path, {gpus}, coalesce(started_at, created_at), "
    "CASE WHEN phase IN {ended} THEN coalesce(ended_at, updated_at) END, {timeout}"
)
_TIMEOUT_FROM_SNAPSHOT = (
    "(SELECT CAST(json_extract(s.snapshot, '$.train.timeout_s') AS INTEGER) FROM snapshots s WHERE s.run_id = runs.id)"
)
_FROM_SNAPSHOT = (
    "coalesce((SELECT CAST(json_extract(s.snapshot, '$.train.resources.gpus') AS INTEGER) * "
    "coalesce(CAST(json_extract(s.snapshot, '$.train.resources.nodes') AS INTEGER), 1) "
    "FROM snapshots s WHERE s.run_id = runs.id), 0)"
)


def read_spent(state_dir: Path, since: float) -> list[Spent]:
    """The runs of `state_dir` with GPUs that ended at or after `since`, or are in flight. Raises
    sqlite3.Error for a database that cannot be read; no state.db: no runs."""
    db = state_dir / "state.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        names = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        known = "gpus" in names
        gpus, timeout = ("gpus", "timeout_s") if known else (_FROM_SNAPSHOT, _TIMEOUT_FROM_SNAPSHOT)
        columns = _COLUMNS.format(gpus=gpus, ended=_ENDED, timeout=timeout)
        rows = conn.execute(
            f"SELECT {columns} FROM runs WHERE ended_at >= ? AND phase IN {_ENDED} "
            f"UNION ALL SELECT {columns} FROM runs WHERE phase NOT IN {_ENDED}",
            (since,),
        ).fetchall()
    finally:
        conn.close()
    return [
        Spent(
            model=str(r[0]),
            path=str(r[1]),
            gpus=int(r[2] or 0),
            started_at=float(r[3]),
            ended_at=None if r[4] is None else float(r[4]),
            timeout_s=None if r[5] is None else int(r[5]),
        )
        for r in rows
        if r[2]
    ]
