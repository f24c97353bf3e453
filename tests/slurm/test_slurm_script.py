"""The job script and the settings, without a cluster: directives from the spec, and the wrapper run by bash.

The wrapper is what resolves a job after Slurm has forgotten it, so it is executed here for real (bash, date,
timeout), with the variables slurmd would set, and its exit record is read back the way the backend reads it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from gitopsd_slurm.backend import SlurmBackend
from gitopsd_slurm.runfiles import RunFiles, read_json
from gitopsd_slurm.script import build_request, directives, options_for, run_id_of, segment_of, segment_request
from gitopsd_slurm.settings import SlurmSettings, parse_settings, parse_time_minutes
from gitopsd_slurm.transport import CommandResult

from gitopsd.backends.protocol import runs_dir_of
from gitopsd.errors import BackendUnavailable, PermanentError
from gitopsd.model import Checkpoint, Job, Resources
from tests.backend_contract import new_job


def settings(**values: Any) -> SlurmSettings:
    return parse_settings("hpc", values)


def script_of(job: Job, **values: Any) -> str:
    return build_request(job, settings(**values), {"PATH": "/usr/bin:/bin"}).script


def test_directives_carry_run_id_resources_and_cluster_defaults(tmp_path: Path) -> None:
    job = replace(
        new_job(tmp_path, "python train.py"),
        resources=Resources(cpus=4, memory_mb=2048, gpus=2, nodes=1),
        timeout_s=3600,
    )
    lines = directives(options_for(job, settings(partition="gpu", account="ml", qos="high", constraint="a100",
                                                 exclusive=True)))  # fmt: skip
    assert lines[:2] == [f"#SBATCH --job-name=gitopsd-{job.run_id}", f"#SBATCH --comment=gitopsd-run={job.run_id}"]
    for expected in (
        f"--chdir={job.workdir}", f"--output={job.log_dir}/slurm-%j.out", "--export=NONE", "--partition=gpu",
        "--account=ml", "--qos=high", "--time=62", "--nodes=1", "--ntasks=1", "--cpus-per-task=4", "--mem=2048M",
        "--gpus=2", "--constraint=a100", "--exclusive", "--no-requeue",
    ):  # fmt: skip
        assert f"#SBATCH {expected}" in lines, expected


def test_cluster_defaults_are_left_to_slurm_when_not_set(tmp_path: Path) -> None:
    lines = directives(options_for(new_job(tmp_path, "true"), settings()))
    joined = "\n".join(lines)
    for absent in ("--partition", "--account", "--qos", "--time", "--mem", "--gpus", "--constraint", "--exclusive"):
        assert absent not in joined


def test_the_backend_time_setting_is_the_limit_of_runs_without_a_timeout(tmp_path: Path) -> None:
    job = new_job(tmp_path, "true")
    assert "#SBATCH --time=90" in directives(options_for(job, settings(time="1:30:00")))
    assert "#SBATCH --time=3" in directives(options_for(replace(job, timeout_s=60), settings(time="1:30:00")))


def test_multi_node_runs_ask_one_task_per_node(tmp_path: Path) -> None:
    job = replace(new_job(tmp_path, "true"), resources=Resources(cpus=8, gpus=8, nodes=4))
    lines = directives(options_for(job, settings()))
    assert {"#SBATCH --nodes=4", "#SBATCH --ntasks=4", "#SBATCH --cpus-per-task=8", "#SBATCH --gpus=8"} <= set(lines)


def test_an_array_is_one_directive_and_a_rest_field(tmp_path: Path) -> None:
    # A gitopsd run is one job, so the backend never sets `array`; the builder renders it for callers that do.
    options = replace(options_for(new_job(tmp_path, "true"), settings()), array="0-3%2")
    assert "#SBATCH --array=0-3%2" in directives(options)


def test_paths_with_spaces_stay_one_directive_value(tmp_path: Path) -> None:
    job = new_job(tmp_path / "my runs", "true")
    assert f'#SBATCH --chdir="{job.workdir}"' in directives(options_for(job, settings()))


@pytest.mark.parametrize(
    ("name", "comment", "run_id"),
    [("gitopsd-blobs-1a2b", "gitopsd-run=blobs-1a2b", "blobs-1a2b"), ("renamed", "gitopsd-run=x-1", "x-1"),
     ("gitopsd-y-2", "", "y-2"), ("train", "someone else's", None)],
)  # fmt: skip
def test_the_run_id_is_read_back_from_comment_or_name(name: str, comment: str, run_id: str | None) -> None:
    assert run_id_of(name, comment) == run_id


@pytest.mark.parametrize(
    ("text", "minutes"),
    [(90, 90), ("90", 90), ("1:30:00", 90), ("2-00:00:00", 2880), ("45:30", 46), ("2h", 120), ("30s", 1)],
)
def test_slurm_time_formats(text: object, minutes: int) -> None:
    assert parse_time_minutes(text) == minutes


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"transport": "ssh"}, "setting transport: expected one of cli, rest, got 'ssh'"),
        ({"partiton": "gpu"}, "setting partiton: no such setting (did you mean 'partition'?)"),
        ({"time": "soon"}, "setting time: expected minutes"),
        ({"exclusive": "yes"}, "setting exclusive: expected true or false, got 'yes'"),
        ({"transport": "rest"}, "setting rest.url: expected the http(s):// URL of slurmrestd, got None"),
        ({"rest": {"url": "http://x", "tokn_file": "/t"}}, "rest.tokn_file: no such setting (did you mean"),
        ({"limits": {"max_gpus_per_node": 0}}, "limits.max_gpus_per_node: expected a positive integer, got 0"),
        ({"poll_min_s": 5, "poll_max_s": 1}, "poll_max_s: expected at least poll_min_s (5)"),
        ({"accounting": "sometimes"}, "accounting: expected one of auto, slurmdbd, jobcomp, none"),
        ({"runs_dir": "runs"}, "setting runs_dir: expected an absolute path on the filesystem the compute nodes"),
        ({"runs_dir": "/shared/\nruns"}, "setting runs_dir: expected one line of text"),
    ],
)
def test_bad_settings_are_refused_naming_backend_key_value(values: dict[str, Any], words: str) -> None:
    with pytest.raises(PermanentError, match="backend 'hpc' setting ") as caught:
        parse_settings("hpc", values)
    assert words in str(caught.value)


def test_the_shared_run_root_is_normalised_and_offered_to_the_launcher(tmp_path: Path) -> None:
    assert parse_settings("hpc", {}).runs_dir is None
    assert parse_settings("hpc", {"runs_dir": "/shared//gitopsd/runs/"}).runs_dir == Path("/shared/gitopsd/runs")
    backend = SlurmBackend(name="hpc", settings={"runs_dir": str(tmp_path)}, state_dir=tmp_path / "state")
    assert runs_dir_of(backend) == tmp_path


def test_a_run_root_that_went_away_makes_the_backend_unavailable_before_any_slurm_call(tmp_path: Path) -> None:
    def no_slurm(argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        raise AssertionError(f"no Slurm command expected, got {argv}")

    gone = tmp_path / "unmounted"
    backend = SlurmBackend(name="hpc", settings={"runs_dir": str(gone), "check_interval_s": 0},
                           state_dir=tmp_path / "state", runner=no_slurm)  # fmt: skip
    with pytest.raises(BackendUnavailable, match=rf"backend 'hpc' setting runs_dir \({gone}\) does not exist"):
        backend.check()


# -- the wrapper, run by bash -------------------------------------------------------------------------------


def run_script(job: Job, **values: Any) -> subprocess.CompletedProcess[str]:
    """Run the job script as slurmd would start it (job id and node list in the environment)."""
    RunFiles(run_dir=job.run_dir).dir.mkdir(parents=True, exist_ok=True)
    script = job.run_dir / "job.sh"
    script.write_text(script_of(job, **values))
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[01-02]"}
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_wrapper_records_the_real_exit_code_host_and_times(tmp_path: Path) -> None:
    job = new_job(tmp_path, "echo training; exit 3")
    done = run_script(job)
    assert done.returncode == 3
    assert done.stdout == "training\n"
    files = RunFiles(run_dir=job.run_dir)
    record = read_json(files.exit)
    assert record is not None
    assert (record["job_id"], record["exit_code"], record["timed_out"]) == ("4242", 3, False)
    assert record["host"] == os.uname().nodename
    assert record["ended_at"] >= record["started_at"] > 0
    started = read_json(files.started)
    assert started is not None and started["nodes"] == "node[01-02]"
    assert not list(files.dir.glob(".*.tmp")), "records are written atomically, no temp file is left"


def test_the_declared_environment_reaches_the_command_verbatim(tmp_path: Path) -> None:
    tricky = {"GREETING": 'it\'s "$HOME" & `date`; $(rm -rf /)', "EMPTY": ""}
    job = replace(new_job(tmp_path, 'printf "%s|%s|%s|%s" "$GREETING" "$EMPTY" "$GITOPSD_RUN_ID" "$PWD"'),
                  env=tricky)  # fmt: skip
    done = run_script(job)
    assert done.stdout == f"{tricky['GREETING']}||{job.run_id}|{job.workdir}"


def test_the_wrapper_enforces_the_timeout_to_the_second(tmp_path: Path) -> None:
    job = replace(new_job(tmp_path, "sleep 30"), timeout_s=1)
    done = run_script(job, grace_s=1)
    assert done.returncode == 124
    record = read_json(RunFiles(run_dir=job.run_dir).exit)
    assert record is not None and record["timed_out"] is True and record["timeout_s"] == 1


def test_a_command_that_itself_exits_124_is_not_a_timeout(tmp_path: Path) -> None:
    job = replace(new_job(tmp_path, "exit 124"), timeout_s=30)
    assert run_script(job).returncode == 124
    record = read_json(RunFiles(run_dir=job.run_dir).exit)
    assert record is not None and record["timed_out"] is False and record["exit_code"] == 124


def test_a_missing_workdir_ends_the_job_with_exit_code_1_and_a_record(tmp_path: Path) -> None:
    job = replace(new_job(tmp_path, "true"), workdir=tmp_path / "gone")
    done = run_script(job)
    assert done.returncode == 1
    assert "gone" in done.stderr
    record = read_json(RunFiles(run_dir=job.run_dir).exit)
    assert record is not None and record["exit_code"] == 1


def test_rest_environment_is_clean_and_complete(tmp_path: Path) -> None:
    job = replace(new_job(tmp_path, "true"), env={"SEED": "7"})
    daemon = {"PATH": "/opt/bin:/usr/bin", "HOME": "/home/ml", "AWS_SECRET_ACCESS_KEY": "x", "SLURMRESTD_TOKEN": "t"}
    env = build_request(job, settings(), daemon).environment
    assert env == {
        "PATH": "/opt/bin:/usr/bin", "HOME": "/home/ml", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1", "SEED": "7", "GITOPSD_RUN_ID": job.run_id,
        "GITOPSD_OUTPUT_DIR": str(job.output_dir), "GITOPSD_METRICS_FILE": str(job.metrics_file),
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    }  # fmt: skip
    assert json.dumps(env)  # slurmrestd wants a JSON object of strings


# -- the environment on the compute node: modules, Python environment, launcher ------------------------------

MODULEFILES = Path(__file__).resolve().parent / "modulefiles"
LMOD_INIT = Path("/usr/share/lmod/lmod/init/bash")


def lmod() -> dict[str, Any]:
    """Settings that load modules with the host's Lmod from tests/slurm/modulefiles (Lmod: tools/slurm/up.sh)."""
    if not LMOD_INIT.is_file():
        message = "Lmod is not installed (apt-get install lmod; tools/slurm/up.sh installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return {"modules_init": str(LMOD_INIT), "module_path": [str(MODULEFILES)]}


def setup_record(job: Job) -> dict[str, Any]:
    record = read_json(RunFiles(run_dir=job.run_dir).setup)
    assert record is not None, "the job records why its environment could not be set up"
    return record


def with_modules(job: Job, *modules: str, launcher: str = "none") -> Job:
    return replace(job, resources=replace(job.resources, modules=modules, launcher=launcher))


def test_modules_are_loaded_before_the_command_in_order(tmp_path: Path) -> None:
    job = with_modules(new_job(tmp_path, 'echo "$GOPS_TEST_MODULE"; gitopsd-test-tool'), "gitopsd-test/1.0")
    done = run_script(job, **lmod())
    assert (done.returncode, done.stdout) == (0, "1.0\ngitopsd-test-tool from the module\n"), done.stderr
    assert not RunFiles(run_dir=job.run_dir).setup.exists()


def test_a_missing_module_fails_the_job_before_the_command_naming_the_module(tmp_path: Path) -> None:
    job = with_modules(new_job(tmp_path, "echo the command ran"), "gitopsd-test/1.0", "no-such-module/9.9")
    done = run_script(job, **lmod())
    assert done.returncode == 1 and "the command ran" not in done.stdout
    record = setup_record(job)
    assert (record["job_id"], record["step"], record["code"]) == ("4242", "modules", 1)
    assert "module no-such-module/9.9 cannot be loaded" in record["message"]
    assert "spec.train.modules" in record["message"]
    ran = read_json(RunFiles(run_dir=job.run_dir).exit)
    assert ran is not None and ran["exit_code"] == 1, "the exit record is written as for any failed job"


def test_a_node_without_the_module_system_names_the_setting_to_fix(tmp_path: Path) -> None:
    job = with_modules(new_job(tmp_path, "echo the command ran"), "gitopsd-test/1.0")
    done = run_script(job, modules_init="/nonexistent/lmod/init/bash")
    assert done.returncode == 1 and "the command ran" not in done.stdout
    record = setup_record(job)
    assert record["step"] == "modules"
    assert "none of /nonexistent/lmod/init/bash exists" in record["message"] and "modules_init" in record["message"]


def test_without_modules_or_requirements_the_prelude_does_nothing(tmp_path: Path) -> None:
    script = script_of(new_job(tmp_path, "true"))
    assert "__gitopsd_prelude() {\n  :\n}" in script
    assert "module load" not in script and "sha256sum" not in script


def tiny_wheel(directory: Path) -> Path:
    """A pure-Python wheel built by hand (a wheel is a zip), so installing it needs no network and no build."""
    import zipfile

    wheel = directory / "tinypkg-1.0-py3-none-any.whl"
    files = {
        "tinypkg.py": "HELLO = 'hello from tinypkg'\n",
        "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "tinypkg-1.0.dist-info/RECORD": "",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def python_job(tmp_path: Path, requirements: str, command: str) -> Job:
    job = new_job(tmp_path, command)
    tiny_wheel(job.tree_dir)
    (job.tree_dir / "requirements.txt").write_text(requirements)
    return replace(job, python_requirements=job.tree_dir / "requirements.txt")


PRINT_ENV = "python -c 'import sys, tinypkg; print(tinypkg.HELLO); print(sys.prefix)'"
OFFLINE = "--no-index\n./tinypkg-1.0-py3-none-any.whl\n"


def test_python_requirements_get_one_environment_per_digest_built_in_the_job(tmp_path: Path) -> None:
    first = python_job(tmp_path, OFFLINE, PRINT_ENV)
    done = run_script(first)
    assert done.returncode == 0, done.stdout + done.stderr
    venvs = first.run_dir.parent / ".venvs"
    (published,) = [p for p in venvs.iterdir() if p.is_symlink()]
    hello, prefix = done.stdout.splitlines()[-2:]
    assert hello == "hello from tinypkg"
    assert Path(prefix).resolve() == published.resolve(), "the command runs with the environment's interpreter"
    assert "building the Python environment" in done.stdout
    marker = json.loads((published / "gitopsd-venv.json").read_text())
    assert published.name == marker["requirements_sha256_16"]
    second = python_job(tmp_path, OFFLINE, PRINT_ENV)  # another run, same requirements: the same environment
    again = run_script(second)
    assert again.returncode == 0 and "building" not in again.stdout
    assert Path(again.stdout.splitlines()[-1]).resolve() == published.resolve()
    assert [p.name for p in (venvs / ".builds").iterdir()] == [published.resolve().name]


def test_two_jobs_building_one_environment_wait_for_each_other(tmp_path: Path) -> None:
    jobs = [python_job(tmp_path, OFFLINE, PRINT_ENV) for _ in range(2)]
    procs = []
    for index, job in enumerate(jobs):
        RunFiles(run_dir=job.run_dir).dir.mkdir(parents=True, exist_ok=True)
        script = job.run_dir / "job.sh"
        script.write_text(script_of(job))
        env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": str(5000 + index), "SLURM_JOB_NODELIST": "node1"}
        procs.append(subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True))
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert sum("building the Python environment" in out for out in outputs) == 1, "built once, under the lock"
    assert len({out.splitlines()[-1] for out in outputs}) == 1


def test_a_requirements_file_that_does_not_install_fails_the_job_naming_it(tmp_path: Path) -> None:
    job = python_job(tmp_path, "--no-index\nno-such-package-for-gitopsd==1.0\n", "echo the command ran")
    done = run_script(job)
    assert done.returncode == 1 and "the command ran" not in done.stdout
    record = setup_record(job)
    assert (record["step"], record["code"]) == ("python", 2)
    assert (
        "building the Python environment for requirements.txt (spec.train.python.requirements) failed"
        in (record["message"])
    )
    venvs = job.run_dir.parent / ".venvs"
    assert not [p for p in venvs.iterdir() if p.is_symlink()], "nothing half-built is published"


# -- the launcher -------------------------------------------------------------------------------------------


def test_launcher_none_runs_the_command_once_as_before(tmp_path: Path) -> None:
    job = new_job(tmp_path, "python train.py")
    assert "\n  /bin/sh -c 'python train.py'\n" in script_of(job)
    assert "srun" not in script_of(job) and "MASTER_ADDR" not in script_of(job)


def test_launcher_srun_starts_one_task_per_node_each_with_its_rank(tmp_path: Path) -> None:
    job = with_modules(replace(new_job(tmp_path, "python train.py 'a b'"), resources=Resources(nodes=3, cpus=2)),
                       launcher="srun")  # fmt: skip
    script = script_of(job)
    (line,) = [line for line in script.splitlines() if line.lstrip().startswith("srun ")]
    assert line.lstrip().startswith(
        "srun --nodes=3 --ntasks=3 --ntasks-per-node=1 --cpus-per-task=2 --export=ALL --kill-on-bad-exit=1 /bin/sh -c "
    )
    assert line.endswith(" gitopsd-rank 'python train.py '\"'\"'a b'\"'\"''")
    for expected in ("RANK=$SLURM_PROCID", "LOCAL_RANK=$SLURM_LOCALID", "NODE_RANK=$SLURM_NODEID",
                     "WORLD_SIZE=$SLURM_NTASKS", f"{job.run_dir}/ranks/"):  # fmt: skip
        assert expected in line
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n1)' in script
    assert "export MASTER_PORT=${MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 10000 ))}" in script


def test_launcher_torchrun_hands_the_command_words_to_one_agent_per_node(tmp_path: Path) -> None:
    job = replace(new_job(tmp_path, "train.py --name 'a b'"), resources=Resources(nodes=2, gpus=8, launcher="torchrun"))
    script = script_of(job)
    (line,) = [line for line in script.splitlines() if line.lstrip().startswith("srun ")]
    assert "--ntasks-per-node=1" in line
    assert line.endswith(
        f"gitopsd-agent torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d "
        f"\"--rdzv_endpoint=$MASTER_ADDR:$MASTER_PORT\" --rdzv_id={job.run_id} train.py --name 'a b'"
    )
    assert "command -v torchrun" in script, "a node without torchrun is a clear setup failure"
    cpu_only = replace(job, resources=Resources(nodes=2, launcher="torchrun"))
    assert "--nproc_per_node=1" in script_of(cpu_only)


def test_the_prelude_runs_modules_then_python_then_the_launcher(tmp_path: Path) -> None:
    job = with_modules(python_job(tmp_path, OFFLINE, "true"), "gitopsd-test/1.0", launcher="srun")
    script = script_of(job, **lmod())
    at = [script.index(mark) for mark in ("module load gitopsd-test/1.0", "sha256sum", "MASTER_ADDR=", "srun --")]
    assert at == sorted(at)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"modules_init": "etc/lmod.sh"}, "setting modules_init: expected an absolute path"),
        ({"modules_init": "/etc/../tmp/x.sh"}, "without control characters or '..'"),
        ({"module_path": ["/ok", "/a\nb"]}, "setting module_path"),
        ({"module_path": {"a": 1}}, "expected a list of at most 64 absolute paths"),
        ({"module_paths": ["/x"]}, "did you mean 'module_path'"),
    ],
)
def test_bad_module_settings_are_refused(values: dict[str, Any], words: str) -> None:
    with pytest.raises(PermanentError) as caught:
        settings(**values)
    assert words in str(caught.value)


def test_module_path_accepts_one_path_or_a_list() -> None:
    assert settings(module_path="/opt/mf").module_path == ("/opt/mf",)
    assert settings(module_path=["/a", "/b c"]).module_path == ("/a", "/b c")
    assert settings().modules_init is None


# -- checkpointed segments ----------------------------------------------------------------------------------


def checkpointed(job: Job, **values: Any) -> Job:
    return replace(job, checkpoint=Checkpoint(**values))


def test_a_checkpointed_job_is_signalled_before_its_limit_may_be_requeued_and_gets_its_checkpoint_dir(
    tmp_path: Path,
) -> None:
    job = replace(checkpointed(new_job(tmp_path, "true"), signal="USR2", before_s=90), timeout_s=600)
    request = build_request(job, settings(), {})
    lines = request.script.splitlines()
    assert "#SBATCH --signal=B:USR2@90" in lines and "#SBATCH --requeue" in lines
    assert "#SBATCH --time=10" in lines, "the timeout is each segment's limit, with no wrapper grace"
    assert request.environment["GITOPSD_CHECKPOINT_DIR"] == str(job.run_dir / "checkpoint")
    assert request.environment["GITOPSD_CHECKPOINT_SIGNAL"] == "USR2"
    assert "timeout --kill-after" not in request.script, "Slurm's limit ends a segment, not the wrapper"
    plain = build_request(new_job(tmp_path, "true"), settings(), {})
    assert "--signal" not in plain.script and "GITOPSD_CHECKPOINT" not in plain.script and "trap" not in plain.script


def test_a_signal_in_the_first_half_of_the_segment_limit_is_refused(tmp_path: Path) -> None:
    job = checkpointed(new_job(tmp_path, "true"), before_s=40)
    with pytest.raises(PermanentError, match=r"before \(40 s\) must be at most half of the job's time limit \(1 min\)"):
        build_request(job, settings(time="1"), {})
    assert "--time=2" in build_request(job, settings(time="2"), {}).script


SAVES_ON_SIGNAL = """python3 -c '
import os, signal, sys, time
def saved(*_):
    open(os.environ["GITOPSD_CHECKPOINT_DIR"] + "/saved", "w").write("yes")
    sys.exit(5)
signal.signal(signal.SIGUSR1, saved)
open("ready", "w").close()
time.sleep(60)
'"""


def test_the_wrapper_passes_the_signal_on_records_it_and_waits_for_the_training(tmp_path: Path) -> None:
    job = checkpointed(new_job(tmp_path, SAVES_ON_SIGNAL))
    (job.run_dir / "checkpoint").mkdir(parents=True)
    files = RunFiles(run_dir=job.run_dir)
    files.dir.mkdir(parents=True, exist_ok=True)
    files.script.write_text(script_of(job))
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "n1", "SLURM_RESTART_COUNT": "2"}
    shell = subprocess.Popen(["bash", str(files.script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready = job.workdir / "ready"
    for _ in range(600):
        if ready.exists():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    shell.send_signal(10)  # SIGUSR1, as Slurm's --signal=B:USR1 sends it to the batch shell only
    assert shell.wait(timeout=60) in (5, 138), "the training's exit (its shell may die of the signal first)"
    assert (job.run_dir / "checkpoint" / "saved").read_text() == "yes", "the training got the signal and saved"
    signalled = read_json(files.signalled)
    assert signalled is not None and (signalled["job_id"], signalled["signal"]) == ("77", "USR1")
    start = read_json(files.start("77", 2))
    assert start is not None and (start["restart"], start["nodes"]) == (2, "n1"), "one record per start"
    assert read_json(files.exit) is not None


def test_without_the_signal_a_checkpointed_wrapper_keeps_the_exit_code(tmp_path: Path) -> None:
    job = checkpointed(new_job(tmp_path, "exit 4"))
    done = run_script(job)
    assert done.returncode == 4
    record = read_json(RunFiles(run_dir=job.run_dir).exit)
    assert record is not None and record["exit_code"] == 4
    assert read_json(RunFiles(run_dir=job.run_dir).signalled) is None


def test_each_segment_carries_the_run_id_and_its_number_in_its_comment(tmp_path: Path) -> None:
    job = checkpointed(new_job(tmp_path, "true"))
    first = build_request(job, settings(), {})
    third = segment_request(first, 3, str(tmp_path / "job-3.sh"))
    assert third.options.comment == f"gitopsd-run={job.run_id} gitopsd-segment=3"
    assert f'#SBATCH --comment="gitopsd-run={job.run_id} gitopsd-segment=3"' in third.script.splitlines()
    differs = [(a, b) for a, b in zip(first.script.splitlines(), third.script.splitlines(), strict=True) if a != b]
    assert differs == [(f"#SBATCH --comment=gitopsd-run={job.run_id}", third.script.splitlines()[2])]
    assert run_id_of(third.options.name, third.options.comment) == job.run_id
    assert segment_of(third.options.comment) == 3 and segment_of(first.options.comment) == 1
