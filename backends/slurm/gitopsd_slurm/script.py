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

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gitopsd.backends.protocol import thread_env
from gitopsd.errors import PermanentError
from gitopsd.model import Checkpoint, Job
from gitopsd_slurm.runfiles import RunFiles
from gitopsd_slurm.settings import MODULES_INIT_PROBES, SlurmSettings

NAME_PREFIX = "gitopsd-"
COMMENT_PREFIX = "gitopsd-run="
SEGMENT_PREFIX = "gitopsd-segment="
CHECKPOINT_SIGNALS = ("USR1", "USR2", "TERM")
"""The signals a checkpointed training may ask for (spec.train.checkpoint.signal); nothing else reaches a
`#SBATCH --signal` line or the wrapper."""


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
    signal: str | None = None


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
        ("signal", options.signal),
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
    env.update(checkpoint_env(job))
    return env


def slurm_time_limit(job: Job, settings: SlurmSettings) -> int | None:
    """Minutes for `--time`: the run's timeout rounded up with the wrapper's grace (a backstop), else the
    backend's `time` setting, else None (the partition's default)."""
    if job.checkpoint is not None:
        return segment_time_limit(job, settings)
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
        signal=signal_option(job.checkpoint) if job.checkpoint is not None else None,
        requeue=job.checkpoint is not None,  # a checkpointed job may be requeued: same id, it resumes
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
{prelude}
{checkpoint}if cd {workdir} && __gitopsd_prelude; then
  {run}{launch}
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


def render_script(job: Job, options: SubmitOptions, *, grace_s: int, settings: SlurmSettings | None = None) -> str:
    """The complete batch script: shebang, directives, exports, and the exit-recording wrapper."""
    files = RunFiles(run_dir=job.run_dir)
    exports = [f"export {key}={shlex.quote(value)}" for key, value in exported_env(job).items()]
    if job.checkpoint is not None:  # Slurm's time limit ends each segment, the signal comes before it
        run, check = "__gitopsd_checkpointed ", ":"
    elif job.timeout_s is not None:
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
        prelude=prelude(job, settings),
        launch=launch_command(job),
        timeout_check=check,
        timeout_json="null" if job.timeout_s is None or job.checkpoint else job.timeout_s,
        checkpoint=checkpoint_block(job.checkpoint),
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
        script=render_script(job, options, grace_s=settings.grace_s, settings=settings),
        script_path=str(RunFiles(run_dir=job.run_dir).script),
        environment=base_environment(job, daemon_env),
    )


# ---- the environment on the compute node and how the command starts there (spec.train.launcher) ------------

#: MASTER_PORT is drawn from the job id in [PORT_BASE, PORT_BASE + PORT_SPAN): the same on every node without
#: asking any of them, below Linux's ephemeral range (32768-60999) so that no outgoing connection holds it, and
#: two jobs whose first node is shared collide only when their ids differ by a multiple of PORT_SPAN.
PORT_BASE = 20000
PORT_SPAN = 10000
#: `setup.json` steps after which retrying the same spec cannot help (a person must fix a module or a setting).
PERMANENT_STEPS = ("modules", "launcher")
SETUP_STEPS = ("modules", "python", "launcher")
#: Run by the new environment's interpreter: proves it starts, and writes the marker that publishes it.
_MARKER_PY = (
    "import json, sys, time; json.dump({'python_version': sys.version, 'built_at': time.time(), "
    "'requirements_sha256_16': sys.argv[1]}, open(sys.argv[2], 'w'))"
)
#: The marker of a published Python environment (the local backend's name for the same thing).
VENV_MARKER = "gitopsd-venv.json"


def venvs_dir(job: Job) -> str:
    """Where the Python environments of Slurm runs live: next to the run directories, so on the filesystem the
    compute nodes share, one per requirements digest (`<first 16 hex of sha256>`)."""
    return str(job.run_dir.parent / ".venvs")


def ranks_dir(job: Job) -> str:
    """Under `launcher: srun`, rank N > 0 writes its outputs in `ranks/N` of the run directory: only rank 0's
    artifact and metrics (the run's own output directory) count."""
    return str(job.run_dir / "ranks")


def _setup_failed(step: str, message: str, code: str = "1") -> str:
    """Shell: record why the environment could not be set up (the backend reads `setup.json`) and fail."""
    return f"__gitopsd_setup_failed {step} {shlex.quote(json.dumps(message))} {code}; return 1"


_SETUP_FAILED = """__gitopsd_setup_failed() {  # STEP MESSAGE(JSON) CODE: why the job's environment could not be set up
  __gitopsd_record setup.json '{"job_id": "%s", "step": "%s", "host": "%s", "message": %s, "code": %s}' \\
    "$SLURM_JOB_ID" "$1" "$__gitopsd_host" "$2" "$3"
  printf 'gitopsd: cannot set up the environment on %s: %s\\n' "$__gitopsd_host" "$2" >&2
}"""


def modules_steps(modules: tuple[str, ...], settings: SlurmSettings) -> list[str]:
    """Shell: initialise the module system (the job starts with --export=NONE, so `module` is not defined),
    add the operator's module paths, and load each module, naming the first one that fails."""
    if not modules:
        return []
    candidates = (settings.modules_init,) if settings.modules_init else MODULES_INIT_PROBES
    listed = " ".join(shlex.quote(path) for path in candidates)
    missing = (
        f"no module system on this node: none of {', '.join(candidates)} exists (set the Slurm backend setting "
        "modules_init to the file that defines `module`)"
    )
    steps = [
        "local __init=",
        f'for __f in {listed}; do if [ -r "$__f" ]; then __init=$__f; break; fi; done',
        f'if [ -z "$__init" ]; then {_setup_failed("modules", missing)}; fi',
        '. "$__init" || true',
        f"if ! type module >/dev/null 2>&1; then "
        f"{_setup_failed('modules', 'sourcing the module system init file did not define `module`')}; fi",
    ]
    steps += [f"module use {shlex.quote(path)}" for path in settings.module_path]
    for name in modules:
        why = (
            f"module {name} cannot be loaded (module load {name} failed: no such module, or it conflicts; "
            "see the job log): fix spec.train.modules"
        )
        steps.append(f"module load {shlex.quote(name)} || {{ {_setup_failed('modules', why)}; }}")
    return steps


def python_steps(job: Job) -> list[str]:
    """Shell: the run's Python environment, built on the compute node with the node's python3 (the login node
    may lack its ABI), once per requirements digest under an flock, and published atomically: built in
    `.venvs/.builds/<key>-<job id>`, then the symlink `.venvs/<key>` renamed into place (a virtualenv cannot be
    moved once built). `uv` builds it when the node has it, else `python3 -m venv` and pip."""
    if job.python_requirements is None:
        return []
    req = str(job.python_requirements)
    shown = str(job.python_requirements.relative_to(job.tree_dir)) if job.python_requirements.is_relative_to(
        job.tree_dir) else req  # fmt: skip
    failed = f"building the Python environment for {shown} (spec.train.python.requirements) failed"
    unreadable = _setup_failed("python", f"cannot read the requirements file {shown}")
    build = f"""\
local __req={shlex.quote(req)} __venvs={shlex.quote(venvs_dir(job))} __key __venv __rc
__key=$(sha256sum < "$__req" | cut -c1-16) && [ -n "$__key" ] || {{ {unreadable}; }}
__venv=$__venvs/$__key
if [ ! -e "$__venv/{VENV_MARKER}" ]; then
  mkdir -p "$__venvs/.builds" || {{ {_setup_failed("python", f"{failed}: cannot create {venvs_dir(job)}")}; }}
  (
    flock 9 || exit 3
    [ -e "$__venv/{VENV_MARKER}" ] && exit 0
    rm -rf "$__venvs/.builds/$__key"-*
    __build=$__venvs/.builds/$__key-$SLURM_JOB_ID
    echo "gitopsd: building the Python environment $__venv from $__req on $__gitopsd_host"
    if command -v uv >/dev/null 2>&1; then
      uv venv --quiet --python "$(command -v python3)" "$__build" &&
        uv pip install --python "$__build/bin/python" -r "$__req" || exit 2
    else
      python3 -m venv "$__build" &&
        "$__build/bin/python" -m pip install --disable-pip-version-check --no-input -r "$__req" || exit 2
    fi
    "$__build/bin/python" -c {shlex.quote(_MARKER_PY)} "$__key" "$__build/{VENV_MARKER}" || exit 2
    ln -sfn ".builds/$__key-$SLURM_JOB_ID" "$__venvs/.$__key.link-$SLURM_JOB_ID" &&
      mv -Tf "$__venvs/.$__key.link-$SLURM_JOB_ID" "$__venv" || exit 4
  ) 9>"$__venvs/$__key.lock"
  __rc=$?
  case $__rc in
    0) ;;
    2) {_setup_failed("python", f"{failed}: the installer failed (its output is in the job log)", "$__rc")} ;;
    3) {_setup_failed("python", f"{failed}: cannot lock {venvs_dir(job)} (flock)", "$__rc")} ;;
    *) {_setup_failed("python", f"{failed}: cannot publish it in {venvs_dir(job)}", "$__rc")} ;;
  esac
fi
export VIRTUAL_ENV="$__venv" PATH="$__venv/bin:$PATH"
unset PYTHONHOME"""
    return build.split("\n")


def launcher_steps(job: Job) -> list[str]:
    """Shell: the rendezvous every rank needs (MASTER_ADDR: the allocation's first node; MASTER_PORT: from the
    job id unless spec.train.env sets it), and the launcher's own program on PATH."""
    launcher = job.resources.launcher
    if launcher == "none":
        return []
    steps = [
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n1)',
        "export MASTER_ADDR=${MASTER_ADDR:-$__gitopsd_host}",
        f"export MASTER_PORT=${{MASTER_PORT:-$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN} ))}}",
    ]
    program = "torchrun" if launcher == "torchrun" else "srun"
    hint = (
        "load a module that provides it (spec.train.modules) or list torch in spec.train.python.requirements"
        if launcher == "torchrun"
        else "srun must be on the PATH of the compute nodes"
    )
    why = f"launcher {launcher}: {program} is not on the PATH of the compute node: {hint}"
    steps.append(f"command -v {program} >/dev/null 2>&1 || {{ {_setup_failed('launcher', why)}; }}")
    return steps


def prelude(job: Job, settings: SlurmSettings | None = None) -> str:
    """The shell function `__gitopsd_prelude` that sets up the command's environment in the batch shell, in
    order: modules, then the Python environment, then the launcher's rendezvous (a container image would come
    last, the same way). Each step that fails records `setup.json` and makes the job end with exit code 1
    without running the command."""
    steps = [
        *modules_steps(job.resources.modules, settings or SlurmSettings()),
        *python_steps(job),
        *launcher_steps(job),
    ]
    body = "\n".join(f"  {line}" if line else line for line in steps) if steps else "  :"
    return f"{_SETUP_FAILED}\n__gitopsd_prelude() {{\n{body}\n}}"


def _metrics_in_output(job: Job) -> str:
    try:
        return str(job.metrics_file.relative_to(job.output_dir))
    except ValueError:
        return job.metrics_file.name


def torchrun_argv(job: Job) -> list[str]:
    """torchrun and its options, then the command's words (see `spec.schema.torchrun_command_problem`): one agent
    per node starts one worker per GPU of the node (one when the run asks for none), joined by c10d rendezvous on
    MASTER_ADDR:MASTER_PORT under the run id."""
    res = job.resources
    per_node = -(-res.gpus // res.nodes) if res.gpus else 1
    return [
        "torchrun",
        f"--nnodes={res.nodes}",
        f"--nproc_per_node={per_node}",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=$MASTER_ADDR:$MASTER_PORT",
        f"--rdzv_id={job.run_id}",
        *shlex.split(job.command),
    ]


def launch_command(job: Job) -> str:
    """The wrapper's command line: the command once (`none`), or `srun` starting one task per node of the
    allocation, each with its rank in RANK, LOCAL_RANK, NODE_RANK, WORLD_SIZE (`srun`), or one torchrun agent
    per node (`torchrun`). Under `srun`, rank N > 0 gets `ranks/N` as its output directory."""
    launcher = job.resources.launcher
    if launcher == "none":
        return f"/bin/sh -c {shlex.quote(job.command)}"
    res = job.resources
    srun = (
        f"srun --nodes={res.nodes} --ntasks={res.nodes} --ntasks-per-node=1 --cpus-per-task={res.cpus} "
        "--export=ALL --kill-on-bad-exit=1"
    )
    if launcher == "srun":
        rank_dir = f'{shlex.quote(ranks_dir(job))}/"$RANK"'
        shim = (
            "export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID NODE_RANK=$SLURM_NODEID WORLD_SIZE=$SLURM_NTASKS "
            "LOCAL_WORLD_SIZE=1; "
            f'if [ "$RANK" != 0 ]; then GITOPSD_OUTPUT_DIR={rank_dir}; '
            f'GITOPSD_METRICS_FILE="$GITOPSD_OUTPUT_DIR"/{shlex.quote(_metrics_in_output(job))}; '
            'export GITOPSD_OUTPUT_DIR GITOPSD_METRICS_FILE; mkdir -p "${GITOPSD_METRICS_FILE%/*}" || exit 1; fi; '
            'exec /bin/sh -c "$1"'
        )
        return f"{srun} /bin/sh -c {shlex.quote(shim)} gitopsd-rank {shlex.quote(job.command)}"
    if launcher == "torchrun":
        shim = 'export NODE_RANK=$SLURM_NODEID; exec "$@"'
        words = [
            f'"{word}"' if word.startswith("--rdzv_endpoint=") else shlex.quote(word) for word in torchrun_argv(job)
        ]
        return f"{srun} /bin/sh -c {shlex.quote(shim)} gitopsd-agent {' '.join(words)}"
    raise PermanentError(f"run {job.run_id}: unknown launcher {launcher!r} (expected none, srun or torchrun)")


# -- checkpointed segments (see gitopsd_slurm.chain) --------------------------------------------------------


def checkpoint_dir(job: Job) -> str:
    """Where the training keeps its checkpoint: the run directory, so every segment of the run finds it."""
    return str(job.run_dir / "checkpoint")


def checkpoint_env(job: Job) -> dict[str, str]:
    if job.checkpoint is None:
        return {}
    return {"GITOPSD_CHECKPOINT_DIR": checkpoint_dir(job), "GITOPSD_CHECKPOINT_SIGNAL": job.checkpoint.signal}


def checked_signal(checkpoint: Checkpoint) -> str:
    """The checkpoint's signal name, if it is one of `CHECKPOINT_SIGNALS` (the spec allows no other)."""
    if checkpoint.signal not in CHECKPOINT_SIGNALS:
        raise PermanentError(
            f"checkpoint signal {checkpoint.signal!r} is not one of {', '.join(CHECKPOINT_SIGNALS)}: refused"
        )
    if not 0 < checkpoint.before_s <= 65535 or not 0 < checkpoint.max_segments <= 1000:
        raise PermanentError(f"checkpoint settings out of range: {checkpoint}")
    return checkpoint.signal


def signal_option(checkpoint: Checkpoint) -> str:
    """`--signal`: the batch shell (B:, the wrapper, which passes it on) gets it `before_s` before the limit."""
    return f"B:{checked_signal(checkpoint)}@{checkpoint.before_s}"


def segment_time_limit(job: Job, settings: SlurmSettings) -> int | None:
    """Minutes for each segment's `--time`: spec.train.timeout rounded up (Slurm ends the segment, no wrapper
    timeout), else the backend's `time` setting, else None (the partition's default). PermanentError when the
    signal would come in the first half of the limit."""
    assert job.checkpoint is not None
    minutes = -(-job.timeout_s // 60) if job.timeout_s is not None else settings.time_min
    if minutes is not None and job.checkpoint.before_s * 2 > minutes * 60:
        raise PermanentError(
            f"run {job.run_id}: spec.train.checkpoint.before ({job.checkpoint.before_s} s) must be at most half of "
            f"the job's time limit ({minutes} min): shorten it, or raise spec.train.timeout"
        )
    return minutes


_CHECKPOINT = """__gitopsd_signalled=false __gitopsd_pid=
__gitopsd_on_signal() {{  # the checkpoint signal: say it came, pass it on to the training's process group
  __gitopsd_trapped=true
  $__gitopsd_signalled || __gitopsd_record signalled.json \
    '{{"job_id": "%s", "signal": "%s", "restart": %s, "at": %s}}' \
    "$SLURM_JOB_ID" {signal} "${{SLURM_RESTART_COUNT:-0}}" "$(date +%s)"
  __gitopsd_signalled=true
  [ -z "$__gitopsd_pid" ] || kill -s {signal} -- "-$__gitopsd_pid" 2>/dev/null
}}
trap __gitopsd_on_signal {signal}
__gitopsd_record "start.$SLURM_JOB_ID.${{SLURM_RESTART_COUNT:-0}}.json" \
  '{{"job_id": "%s", "restart": %s, "host": "%s", "nodes": "%s", "started_at": %s}}' \
  "$SLURM_JOB_ID" "${{SLURM_RESTART_COUNT:-0}}" "$__gitopsd_host" "$SLURM_JOB_NODELIST" "$__gitopsd_started"
__gitopsd_checkpointed() {{  # run the training in the background, in its own process group, so the trap can fire
  {{ trap - INT QUIT; exec setsid "$@"; }} &
  __gitopsd_pid=$!
  local rc= w
  while :; do
    __gitopsd_trapped=false
    wait "$__gitopsd_pid"; w=$?
    if [ $w -eq 127 ] && [ -n "$rc" ]; then break; fi  # its status was taken by the wait the trap cut short
    rc=$w
    $__gitopsd_trapped || break
  done
  while $__gitopsd_signalled && kill -0 -- "-$__gitopsd_pid" 2>/dev/null; do sleep 1; done  # the rest of it
  return $rc
}}
"""


def checkpoint_block(checkpoint: Checkpoint | None) -> str:
    """The wrapper's part for a checkpointed run (empty for others): the trap that records and forwards the
    signal, one record per start (a requeued job starts again with the same id), and the function the command
    runs under so that `wait` lets the trap fire and returns the training's exit code."""
    if checkpoint is None:
        return ""
    return _CHECKPOINT.format(signal=checked_signal(checkpoint))


def job_comment_of_segment(run_id: str, segment: int) -> str:
    """The comment of segment `segment` of a run (the first keeps the plain `job_comment`)."""
    return job_comment(run_id) if segment <= 1 else f"{job_comment(run_id)} {SEGMENT_PREFIX}{segment}"


def segment_of(comment: str) -> int:
    """The segment a job of ours is (1 when its comment names none)."""
    for part in comment.split():
        if part.startswith(SEGMENT_PREFIX) and part[len(SEGMENT_PREFIX) :].isdigit():
            return int(part[len(SEGMENT_PREFIX) :])
    return 1


def segment_request(request: JobRequest, segment: int, script_path: str) -> JobRequest:
    """The request of segment `segment`: the first one's, with the segment in its comment (so a job submitted
    just before gitopsd died is adopted, never submitted twice) and written to its own script."""
    old = f"#SBATCH --comment={directive_value('comment', request.options.comment)}"
    options = replace(request.options, comment=job_comment_of_segment(request.run_id, segment))
    new = f"#SBATCH --comment={directive_value('comment', options.comment)}"
    lines = request.script.split("\n")
    if old not in lines:
        raise PermanentError(f"run {request.run_id}: its job script has no comment line to mark segment {segment}")
    lines[lines.index(old)] = new
    return replace(request, options=options, script="\n".join(lines), script_path=script_path)
