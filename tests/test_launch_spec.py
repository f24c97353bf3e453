"""`spec.train.launcher` and `spec.train.modules` outside any cluster: what a spec may say, what enters the run key,
and the plan-time refusal of backends that run the command once on this host (local, nvidia)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitopsd.backends.local.backend import LocalBackend
from gitopsd.model import Resources
from gitopsd.reconcile.desired import keys_for
from gitopsd.spec.load import load_model
from gitopsd.spec.schema import RepositorySpec, resolve_train

REPO = RepositorySpec.model_validate({"apiVersion": "gitopsd/v1", "kind": "Repository", "backends": {"local": {}}})

MODEL = """\
apiVersion: gitopsd/v1
kind: Model
metadata: {name: m}
spec:
  train:
    command: python3 train.py
%s  outputs: {artifact: a}
"""


def key_of(extra: str = "") -> str:
    model = load_model(MODEL % extra, "models/m.yaml")
    train = resolve_train(model, REPO)
    return keys_for(model, train, "tree", None)[0]


def test_a_model_that_sets_neither_keeps_the_run_key_it_had() -> None:
    # the key of this spec before launcher/modules existed: upgrading gitopsd retrains nothing
    assert key_of() == key_of("    launcher: none\n    modules: []\n")


def test_launcher_and_modules_are_part_of_the_run_key() -> None:
    keys = {key_of(), key_of("    launcher: srun\n"), key_of("    launcher: torchrun\n"),
            key_of("    modules: [gcc/12]\n"), key_of("    modules: [gcc/12, cuda/12.1]\n"),
            key_of("    modules: [cuda/12.1, gcc/12]\n")}  # fmt: skip
    assert len(keys) == 6, "a different launcher, module or module order is a different training"


def test_resolved_resources_carry_launcher_and_modules() -> None:
    model = load_model(MODEL % "    launcher: srun\n    modules: [gcc/12]\n", "models/m.yaml")
    resources = resolve_train(model, REPO).resources
    assert (resources.launcher, resources.modules) == ("srun", ("gcc/12",))


def test_a_module_listed_twice_is_refused_at_its_line() -> None:
    with pytest.raises(Exception, match=r"spec.train.modules\[1\]: module 'gcc/12' is listed twice"):
        load_model(MODEL % "    modules: [gcc/12, gcc/12]\n", "models/m.yaml")


@pytest.mark.parametrize(
    ("resources", "words"),
    [
        (Resources(launcher="srun"), "spec.train.launcher 'srun' needs a Slurm backend: backend 'local' runs"),
        (Resources(launcher="torchrun"), "spec.train.launcher 'torchrun' needs a Slurm backend"),
        (Resources(modules=("gcc/12",)), "spec.train.modules needs a Slurm backend: backend 'local' does not load"),
    ],
)
def test_the_local_backend_refuses_a_launcher_or_modules_at_plan_time(
    tmp_path: Path, resources: Resources, words: str
) -> None:
    backend = LocalBackend(name="local", settings={}, state_dir=tmp_path)
    refused = backend.admit(resources)
    assert refused is not None and words in refused
    assert backend.admit(Resources()) is None
