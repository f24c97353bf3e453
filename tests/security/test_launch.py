"""Hostile input to `spec.train.modules`, `spec.train.launcher` and the job's `setup.json`.

Module names and a torchrun command end up in a job script; a module name is also handed to `module load`.
A hostile repository must not add a line to the script, run a command through a name, pass an option to
`module`, or reach a modulefile outside MODULEPATH. The training may write its run directory, so the
`setup.json` the backend reads is hostile too: only a known step and a bounded one-line message count.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from gitopsd_slurm.backend import SlurmBackend
from gitopsd_slurm.runfiles import RunFiles
from gitopsd_slurm.script import build_request
from gitopsd_slurm.settings import parse_settings

from gitopsd.errors import SpecError
from gitopsd.model import JobRef, JobState, Resources
from gitopsd.spec.load import load_model
from gitopsd.spec.operator import Operator, OperatorBackend, refusals
from tests.backend_contract import new_job

MODEL = """\
apiVersion: gitopsd/v1
kind: Model
metadata: {{name: m}}
spec:
  train:
    command: {command}
    launcher: {launcher}
    modules: {modules}
  outputs: {{artifact: a}}
"""

HOSTILE_MODULES = [
    "$(touch /tmp/pwned)", "`id`", "gcc; rm -rf /", "gcc && id", "gcc|id", "-f", "--force", "gcc/-x", "../etc/x",
    "gcc/../../x", "./x", "/abs/path", "gcc\nid", "gcc id", "gcc'", 'gcc"', "gcc\\", "g" * 201, "", "gcc/", "/",
    "gcc//1", "gcc\x00", "gcc/1.0\u2028x", "~root/x", "gcc*", "gcc?",
]  # fmt: skip


@pytest.mark.parametrize("name", HOSTILE_MODULES)
def test_a_hostile_module_name_is_refused_when_the_spec_is_loaded(name: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_model(MODEL.format(command='"true"', launcher="none", modules=json.dumps([name])), "models/m.yaml")
    assert "spec.train.modules" in str(caught.value)


@pytest.mark.parametrize("name", ["gcc", "gcc/12.2.0", "cuda/12.1", "intel-oneapi/2024.0", "a/b/c", "py+x/1_0",
                                  "gcc/.1.0-hidden"])  # fmt: skip
def test_module_names_sites_use_are_accepted(name: str) -> None:
    model = load_model(MODEL.format(command='"true"', launcher="none", modules=json.dumps([name])), "models/m.yaml")
    assert model.spec.train.modules == [name]


def test_too_many_modules_are_refused() -> None:
    names = json.dumps([f"m{i}" for i in range(65)])
    with pytest.raises(SpecError):
        load_model(MODEL.format(command='"true"', launcher="none", modules=names), "models/m.yaml")


@pytest.mark.parametrize("launcher", ["mpirun", "srun --x", "", "SRUN", "bash -c id"])
def test_only_the_known_launchers_are_accepted(launcher: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_model(MODEL.format(command='"true"', launcher=json.dumps(launcher), modules="[]"), "models/m.yaml")
    assert "spec.train.launcher" in str(caught.value)


@pytest.mark.parametrize("command", ["'unbalanced", "--rdzv_endpoint=evil:1 train.py", "--nnodes=99 x.py"])
def test_a_torchrun_command_cannot_be_options_of_torchrun_or_unsplittable(command: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_model(MODEL.format(command=json.dumps(command), launcher="torchrun", modules="[]"), "models/m.yaml")
    assert "torchrun" in str(caught.value)


@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_a_hostile_command_stays_one_quoted_argument_of_the_launch_line(tmp_path: Path, launcher: str) -> None:
    marker = tmp_path / "pwned"
    command = f"x.py $(touch {marker}) `touch {marker}` ; touch {marker} '\"' \\"
    command = command.replace("'\"' \\", "")
    job = replace(new_job(tmp_path, command), resources=Resources(nodes=2, launcher=launcher))
    script = build_request(job, parse_settings("hpc", {}), {}).script
    line = next(line for line in script.splitlines() if line.lstrip().startswith("srun "))
    # bash parses the launch line into words without running anything; the command comes back verbatim
    words = subprocess.run(["bash", "-c", f"printf '%s\\0' {line.strip().removeprefix('srun ')}"],
                           env={"MASTER_ADDR": "n1", "MASTER_PORT": "1"}, capture_output=True, text=True,
                           check=True).stdout.split("\0")[:-1]  # fmt: skip
    assert not marker.exists()
    if launcher == "srun":
        assert words[-1] == command
    else:
        assert words[-len(command.split()) :] == command.split()


def test_module_settings_are_the_operators_only(tmp_path: Path) -> None:
    for key in ("modules_init", "module_path"):
        with pytest.raises(ValueError, match="a repository may never set it"):
            OperatorBackend(type="slurm", allow={key: "*"})
        declared = {"hpc": type("Declared", (), {"type": None, "settings": {key: "/tmp/evil"}})()}
        operator = Operator(backends={"hpc": OperatorBackend(type="slurm")})
        (refusal,) = refusals(declared, operator)
        assert "path on the operator's hosts" in refusal.message


@pytest.mark.parametrize(
    ("record", "permanent"),
    [
        ({"step": "modules", "message": "x\n" * 5000, "host": "n\x1b[2Jode"}, True),
        ({"step": "python", "message": "pip failed"}, False),
        ({"step": "evil", "message": "m"}, None),
        ({"step": "modules", "message": {"nested": 1}}, None),
        ({"step": "modules", "message": "m", "job_id": "other"}, None),
    ],
)
def test_a_hostile_setup_record_is_read_bounded_and_only_if_it_is_the_jobs(
    tmp_path: Path, record: dict[str, object], permanent: bool | None
) -> None:
    job = new_job(tmp_path, "true")
    files = RunFiles(run_dir=job.run_dir)
    files.dir.mkdir(parents=True)
    files.exit.write_text(json.dumps({"job_id": "77", "exit_code": 1}))
    files.setup.write_text(json.dumps({"job_id": "77", **record}))
    backend = SlurmBackend(name="hpc", settings={}, state_dir=tmp_path, runner=lambda argv, timeout_s: None)  # type: ignore[arg-type]
    status = backend._from_files(JobRef(run_id=job.run_id, job_id="77", run_dir=job.run_dir))
    assert status is not None and status.state is JobState.FAILED
    if permanent is None:
        assert not status.permanent and "could not set up" not in status.message
    else:
        assert status.permanent is permanent and "could not set up its environment" in status.message
        assert len(status.message) < 1400 and "\n" not in status.message and "\x1b" not in status.message
