"""`gitopsd doctor`: check a deployment the way an admin would, one line per check, each failure with its fix.

This module is only the command: `gitopsd.cli.doctorfacts` gathers the facts (Git, directories, Slurm, stores,
NVML, the systemd unit) and `gitopsd.cli.doctorcore` (pure) gives the verdicts; both are imported when the
command runs, so that `gitopsd --help` and `gitopsd status` do not pay for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gitopsd.cli.args import Context, command, config_opt, opt, path_arg
from gitopsd.cli.common import fail
from gitopsd.cli.console import echo


@command(
    "doctor",
    config_opt(
        "The daemon's configuration [env: GITOPSD_CONFIG] (default: ~/.config/gitopsd/config.toml, else "
        "/etc/gitopsd/gitopsd.toml).",
        envvar="GITOPSD_CONFIG",
    ),
    opt("--json", dest="as_json_out", flag=True, help="Machine-readable output."),
    opt(
        "--probe-wait",
        metavar="FLOAT",
        type=float,
        default=60.0,
        show_default=True,
        help="Seconds a probe job may wait to start before it is cancelled (and the check fails).",
    ),
    opt("--no-probe", flag=True, help="Submit no probe jobs."),
    opt(
        "--unit",
        dest="units",
        metavar="FILE",
        type=path_arg(dir_okay=False),
        multiple=True,
        help="A systemd unit file to check (default: /etc/systemd/system/gitopsd.service and "
        "~/.config/systemd/user/gitopsd.service, where present).",
    ),
)
def doctor(
    ctx: Context,
    config_path: Path | None,
    as_json_out: bool,
    probe_wait: float,
    no_probe: bool,
    units: tuple[Path, ...],
) -> None:
    """Check a deployment as an admin would: Git, directories, Slurm (controller, association, a probe job per
    partition), stores, NVML and the systemd unit; each line pass/fail/warn/skip with its fix.

    Exit codes: 0 nothing failed (warnings and skips are only told); 1 a check failed, or no configuration."""
    import json

    from gitopsd.cli.doctorcore import as_json, exit_code, render
    from gitopsd.cli.doctorfacts import default_config, gather
    from gitopsd.daemon.config import load_config
    from gitopsd.errors import GitopsdError

    path = config_path or ctx.config or default_config()  # `gitopsd --config FILE doctor` too
    if path is None:
        fail("no configuration: give --config FILE (or install one with `make install-user`)")
    try:
        config = load_config(path)
        config.check_backend_settings(path)
    except GitopsdError as exc:
        fail(str(exc))
    checks = list(gather(config, path, probe_wait=None if no_probe else probe_wait, units=units))
    if as_json_out:
        echo(json.dumps({"config": str(path), **as_json(checks)}, indent=2 if sys.stdout.isatty() else None))
    else:
        echo(f"gitopsd doctor: {path}")
        echo(render(checks))
    raise SystemExit(exit_code(checks))
