"""`gitopsd usage`: GPU-hours per team or per model over a window, from what gitopsd recorded of its runs.

Teams come from the operator's `[[policies]]` (the first rule whose repositories and paths match a run's spec
file names its team; "-" when none does); the runs from each state directory, read-only, so it works beside a
running daemon. With `--config FILE`, every repository of that daemon configuration is counted together.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gitopsd.cli.args import Context, UsageError, command, config_opt, opt
from gitopsd.cli.common import fail, operator, state_dir
from gitopsd.cli.console import echo

if TYPE_CHECKING:
    from gitopsd.spec.policy import Usage


@command(
    "usage",
    opt(
        "--window",
        metavar="TEXT",
        default="7d",
        show_default=True,
        help="How far back to count, e.g. '24h', '7d', '30d'.",
    ),
    opt("--by", choices=["team", "model"], default="team", show_default=True, help="Group by."),
    opt("--json", dest="as_json", flag=True, help="Machine-readable output (indented on a terminal)."),
    config_opt(
        "Count every repository of this daemon configuration (read-only, while it runs).",
    ),
)
def usage(ctx: Context, window: str, by: str, as_json: bool, config_path: Path | None) -> None:
    """GPU-hours per team (or per model) over a window: runs in flight count up to now."""
    import json
    import sqlite3
    from dataclasses import replace

    from gitopsd.errors import GitopsdError
    from gitopsd.reconcile.usage import read_spent
    from gitopsd.spec.policy import applicable
    from gitopsd.spec.policy import usage as count
    from gitopsd.units import format_duration, format_time, parse_duration

    try:
        window_s = parse_duration(window)
    except ValueError as exc:
        raise UsageError(str(exc), option="--window") from None
    if window_s <= 0:
        raise UsageError("must be longer than 0s", option="--window")
    until = time.time()
    since = until - window_s
    if config_path is None:
        sources = {"": (state_dir(ctx), operator(ctx).policies)}
    else:
        from gitopsd.daemon.config import load_config

        try:
            config = load_config(config_path)
        except GitopsdError as exc:
            fail(str(exc))
        sources = {r.name: (config.state_dir_of(r), applicable(config.policies, r.name)) for r in config.repositories}
    rows: list[Usage] = []
    for name, (directory, rules) in sources.items():
        try:
            spent = read_spent(directory, since)
        except sqlite3.Error as exc:
            fail(f"cannot read {directory / 'state.db'}: {exc}")
        if by == "model" and name:
            spent = [replace(s, model=f"{name}/{s.model}") for s in spent]
        rows.extend(count(spent, rules, since=since, until=until, by=by))
    merged = _merge(rows)
    total = sum(u.gpu_hours for u in merged)
    if as_json:
        doc = {
            "window_s": window_s, "since": since, "until": until, "by": by,
            "rows": [{by: u.key, "gpu_hours": round(u.gpu_hours, 6), "runs": u.runs, "in_flight": u.in_flight}
                     for u in merged],
            "total_gpu_hours": round(total, 6),
        }  # fmt: skip
        echo(json.dumps(doc, indent=2 if sys.stdout.isatty() else None))  # indented for a person, as every --json
        return
    echo(f"GPU-hours in the last {format_duration(window_s)} (since {format_time(since)}), by {by}:")
    if not merged:
        echo("  no run with GPUs in this window")
        return
    width = max(len(by), *(len(u.key) for u in merged), len("total"))
    echo(f"  {by.upper():<{width}}  {'GPU-HOURS':>10}  {'RUNS':>5}  {'IN FLIGHT':>9}")
    for u in merged:
        echo(f"  {u.key:<{width}}  {u.gpu_hours:>10.1f}  {u.runs:>5}  {u.in_flight:>9}")
    runs = sum(u.runs for u in merged)
    flying = sum(u.in_flight for u in merged)
    echo(f"  {'total':<{width}}  {total:>10.1f}  {runs:>5}  {flying:>9}")


def _merge(rows: list[Usage]) -> list[Usage]:
    """One row per key over every repository, most GPU-hours first, then by name."""
    from gitopsd.spec.policy import Usage

    merged: dict[str, Usage] = {}
    for u in rows:
        have = merged.get(u.key)
        merged[u.key] = u if have is None else Usage(
            key=u.key, gpu_hours=have.gpu_hours + u.gpu_hours, runs=have.runs + u.runs,
            in_flight=have.in_flight + u.in_flight,
        )  # fmt: skip
    return sorted(merged.values(), key=lambda u: (-u.gpu_hours, u.key))
