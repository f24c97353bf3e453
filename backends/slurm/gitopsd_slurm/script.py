"""The job script of one run: `#SBATCH` directives from the spec and the backend's defaults, and a wrapper.

Pure: a `Job` and the settings in, a `JobRequest` out, so every directive is tested without a cluster. Both
transports submit the same request: the CLI hands the script (directives included) to `sbatch`; slurmrestd
ignores `#SBATCH` lines, so the REST transport sends the same `SubmitOptions` as job fields.

The job's name (`gitopsd-<run id>`) and comment (`gitopsd-run=<run id>`) carry the run id, so a job submitted
just before gitopsd died is found and adopted, never submitted twice. The wrapper exports the declared
environment, `cd`s into the workdir, enforces the run's timeout to the second (Slurm counts whole minutes; its
own limit stays as a backstop), and writes the command's real exit code to `exit.json` in the run directory,
so a finished job is resolved even after it has left squeue and there is no accounting.

Every `#SBATCH` value is written so that sbatch reads back exactly that value on that one line, whatever it
holds: sbatch splits a directive line at blanks outside quotes, reads a backslash as an escape and an unescaped `#`
as the start of a comment, and blanks out the words `packjob` and `hetjob`, so those are escaped;
a value with a control character (a newline would start another `#SBATCH` line) is refused outright. The
settings are checked for the same when they are loaded (`gitopsd_slurm.settings`); this is the second wall.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from gitopsd.backends.protocol import thread_env
from gitopsd.errors import PermanentError
from gitopsd.model import Job
from gitopsd_slurm.runfiles import RunFiles
from gitopsd_slurm.settings import SlurmSettings

NAME_PREFIX = "gitopsd-"
COMMENT_PREFIX = "gitopsd-run="


def job_name(run_id: str) -> str:
    return NAME_PREFIX + run_id


def job_comment(run_id: str) -> str:
    return COMMENT_PREFIX + run_id


def run_id_of(name: str, comment: str) -> str | None:
    """The run id a job carries in its comment or, failing that, its name; None for a job not ours."""
    for part in comment.split():
        if part.startswith(COMMENT_PREFIX):
            return part[len(COMMENT_PREFIX) :]
    return name[len(NAME_PREFIX) :] if name.startswith(NAME_PREFIX) else None


def log_path(job: Job) -> str:
    """stdout and stderr of the job; `%j` is Slurm's job id."""
    return str(job.log_dir / "slurm-%j.out")


@dataclass(frozen=True, kw_only=True)
class SubmitOptions:
    """What is asked of Slurm, whichever transport asks. None/False means the cluster's default."""

    name: str
    comment: str
    chdir: str
    output: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_limit_min: int | None = None
    nodes: int = 1
    ntasks: int = 1
    cpus_per_task: int = 1
    memory_mb: int | None = None
    gpus: int = 0
    exclusive: bool = False
    array: str | None = None
    requeue: bool = False


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    """A job ready to submit: its options, its whole script, and the exact environment it starts with."""

    run_id: str
    options: SubmitOptions
    script: str
    script_path: str
    environment: Mapping[str, str] = field(default_factory=dict)


_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SBATCH_SPECIAL = re.compile(r"""([\\"'#])""")
_SBATCH_WORDS = re.compile(r"(pack|het)(job)", re.IGNORECASE)


def directive_value(key: str, value: str) -> str:
    """`value` written for `#SBATCH --key=...` so that sbatch reads back exactly `value`; PermanentError for a
    value that no escaping keeps on one line (a control character)."""
    if _LINE_BREAKING.search(value):
        raise PermanentError(f"refusing to write #SBATCH --{key}={value!r}: a control character would break the line")
    text = _SBATCH_SPECIAL.sub(r"\\\1", value)
    text = _SBATCH_WORDS.sub(r"\1\\\2", text)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def directives(options: SubmitOptions) -> list[str]:
    """The `#SBATCH` lines for `options`, in a stable order."""
    pairs: list[tuple[str, str | int | None]] = [
        ("job-name", options.name),
        ("comment", options.comment),
        ("chdir", options.chdir),
        ("output", options.output),
        ("export", "NONE"),
        ("partition", options.partition),
        ("account", options.account),
        ("qos", options.qos),
        ("time", options.time_limit_min),
        ("nodes", options.nodes),
        ("ntasks", options.ntasks),
        ("cpus-per-task", options.cpus_per_task),
        ("mem", f"{options.memory_mb}M" if options.memory_mb else None),
        ("gpus", options.gpus or None),
        ("constraint", options.constraint),
        ("array", options.array),
    ]
    lines = [f"#SBATCH --{key}={directive_value(key, str(value))}" for key, value in pairs if value is not None]
    if options.exclusive:
        lines.append("#SBATCH --exclusive")
    lines.append("#SBATCH --requeue" if options.requeue else "#SBATCH --no-requeue")
    return lines


def exported_env(job: Job) -> dict[str, str]:
    """What the wrapper exports for the training: thread counts, the declared env and gitopsd's own variables."""
    env = {"PYTHONUNBUFFERED": "1", **thread_env(job.resources), **job.env}
    env.update(
        GITOPSD_RUN_ID=job.run_id,
        GITOPSD_OUTPUT_DIR=str(job.output_dir),
        GITOPSD_METRICS_FILE=str(job.metrics_file),
    )
    return env


def slurm_time_limit(job: Job, settings: SlurmSettings) -> int | None:
    """Minutes for `--time`: the run's timeout rounded up with the wrapper's grace (a backstop), else the
    backend's `time` setting, else None (the partition's default)."""
    if job.timeout_s is not None:
        return -(-(job.timeout_s + settings.grace_s) // 60) + 1
    return settings.time_min


def options_for(job: Job, settings: SlurmSettings) -> SubmitOptions:
    res = job.resources
    return SubmitOptions(
        name=job_name(job.run_id),
        comment=job_comment(job.run_id),
        chdir=str(job.workdir),
        output=log_path(job),
        partition=settings.partition,
        account=settings.account,
        qos=settings.qos,
        constraint=settings.constraint,
        time_limit_min=slurm_time_limit(job, settings),
        nodes=res.nodes,
        ntasks=res.nodes,
        cpus_per_task=res.cpus,
        memory_mb=res.memory_mb,
        gpus=res.gpus,
        exclusive=settings.exclusive,
    )


_WRAPPER = """\
__gitopsd_dir={files_dir}
__gitopsd_record() {{  # NAME FORMAT ARGS...: write a JSON record atomically, the daemon may read it at any time
  local name=$1 format=$2
  shift 2
  printf "$format\\n" "$@" > "$__gitopsd_dir/.$name.$SLURM_JOB_ID.tmp" &&
    mv -f "$__gitopsd_dir/.$name.$SLURM_JOB_ID.tmp" "$__gitopsd_dir/$name"
}}
__gitopsd_host=$(hostname)
__gitopsd_started=$(date +%s)
__gitopsd_record started.json '{{"job_id": "%s", "host": "%s", "nodes": "%s", "started_at": %s}}' \\
  "$SLURM_JOB_ID" "$__gitopsd_host" "$SLURM_JOB_NODELIST" "$__gitopsd_started"
__gitopsd_timed_out=false
if cd {workdir}; then
  {run}/bin/sh -c {command}
  __gitopsd_rc=$?
  {timeout_check}
else
  __gitopsd_rc=1
fi
__gitopsd_record exit.json '{{"job_id": "%s", "exit_code": %s, "timed_out": %s, "timeout_s": %s,
 "host": "%s", "started_at": %s, "ended_at": %s}}' "$SLURM_JOB_ID" "$__gitopsd_rc" "$__gitopsd_timed_out" \\
  {timeout_json} "$__gitopsd_host" "$__gitopsd_started" "$(date +%s)"
exit $__gitopsd_rc
"""


def render_script(job: Job, options: SubmitOptions, *, grace_s: int) -> str:
    """The complete batch script: shebang, directives, exports, and the exit-recording wrapper."""
    files = RunFiles(run_dir=job.run_dir)
    exports = [f"export {key}={shlex.quote(value)}" for key, value in exported_env(job).items()]
    if job.timeout_s is not None:
        run = f"timeout --kill-after={grace_s} {job.timeout_s} "
        check = (
            "if [ $__gitopsd_rc -eq 124 ] || [ $__gitopsd_rc -eq 137 ]; then "
            f"[ $(( $(date +%s) - __gitopsd_started )) -ge {max(job.timeout_s - 1, 0)} ] && "
            "__gitopsd_timed_out=true; fi"
        )
    else:
        run, check = "", ":"
    wrapper = _WRAPPER.format(
        files_dir=shlex.quote(str(files.dir)),
        workdir=shlex.quote(str(job.workdir)),
        run=run,
        command=shlex.quote(job.command),
        timeout_check=check,
        timeout_json="null" if job.timeout_s is None else job.timeout_s,
    )
    comment = f"# gitopsd run {job.run_id} of model {job.model}, written by the Slurm backend at submit time."
    if _LINE_BREAKING.search(comment):
        raise PermanentError(f"refusing to write a job script for run {job.run_id!r} of model {job.model!r}")
    header = ["#!/bin/bash", *directives(options), comment]
    return "\n".join([*header, *exports, wrapper])


def base_environment(job: Job, daemon_env: Mapping[str, str]) -> dict[str, str]:
    """The whole starting environment for transports that must give one (REST): a clean minimum plus the
    training's own variables. Nothing else of the daemon's environment (tokens, keys) reaches the job."""
    env = {key: daemon_env[key] for key in ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR") if key in daemon_env}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8")
    env.update(exported_env(job))
    return env


def build_request(job: Job, settings: SlurmSettings, daemon_env: Mapping[str, str]) -> JobRequest:
    """Everything either transport needs to submit `job`."""
    options = options_for(job, settings)
    return JobRequest(
        run_id=job.run_id,
        options=options,
        script=render_script(job, options, grace_s=settings.grace_s),
        script_path=str(RunFiles(run_dir=job.run_dir).script),
        environment=base_environment(job, daemon_env),
    )
