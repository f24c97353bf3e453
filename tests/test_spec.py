"""Spec files: the documented examples load, and every kind of mistake is reported where it is, in words."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.errors import SpecError, SpecProblem
from gitopsd.model import Resources
from gitopsd.spec.fields import API_VERSION
from gitopsd.spec.load import MAX_FILE_PROBLEMS, check_models, load_model, load_repository
from gitopsd.spec.operator import Operator, OperatorBackend
from gitopsd.spec.resolve import load_repository_for
from gitopsd.spec.schema import ModelSpec, RepositorySpec, ResolvedTrain, TrainResolver, json_schema, resolve_train

SHA = "0123456789abcdef" * 4
#: An operator that offers the documented example's backend, with a setting of its own.
OPERATOR = Operator(backends={"local": OperatorBackend(type="local", settings={"max_parallel": 2})})


def default_repository() -> RepositorySpec:
    """A repository without gitops.yaml, under the built-in operator configuration (one local backend)."""
    return load_repository_for(Operator(), None)


REPOSITORY_EXAMPLE = """\
apiVersion: gitopsd/v1
kind: Repository
backends:                 # optional; default: every backend the operator offers this repository
  local:                  # the operator's backend name (a model refers to it by this name)
    type: local           # optional; if given, must be the operator's type for it
    settings: {}          # only settings the operator allows (`allow` in its configuration); default {}
registry:
  tags: {enabled: true, push: false}
defaults:                 # applied to every model's train section where the model leaves the field out
  backend: local
  retries: 0
  timeout: 1h
  resources: {cpus: 1, memory: 1Gi, gpus: 0, nodes: 1}
"""

MODEL_EXAMPLE = f"""\
apiVersion: gitopsd/v1
kind: Model
metadata:
  name: iris                   # required
  description: free text       # optional, never affects training
  labels: {{team: vision}}       # optional str->str, never affects training
spec:
  suspend: false
  aliases: {{production: 1, staging: latest}}
  train:
    backend: local
    command: python train.py --epochs 5
    workdir: src
    env: {{SEED: "1"}}
    python: {{requirements: src/requirements.txt}}
    resources: {{cpus: 1, memory: 2Gi, gpus: 0, nodes: 1}}
    retries: 1
    timeout: 30m
  data:
    - uri: data/train.csv
      sha256: {SHA}
  outputs:
    artifact: model.json
    metrics: metrics.jsonl
  validate: ["accuracy >= 0.9"]
  convergence:
    nan: [loss]
    diverge: {{metric: loss, above: 1000.0}}
    plateau: {{metric: val_loss, mode: min, patience: 5, min_delta: 0.0}}
"""

MINIMAL_MODEL = """\
apiVersion: gitopsd/v1
kind: Model
metadata:
  name: {name}
spec:
  train:
    command: python train.py
  outputs:
    artifact: model.pt
"""


def write(tmp_path: Path, rel: str, text: str) -> tuple[str, str]:
    """Write a spec file like a user would and read it back: (repo-relative path, text)."""
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return rel, path.read_text(encoding="utf-8")


def model_problems(text: str, file: str = "models/m.yaml") -> list[SpecProblem]:
    with pytest.raises(SpecError) as info:
        load_model(textwrap.dedent(text), file)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return info.value.problems


def only(problems: list[SpecProblem]) -> SpecProblem:
    assert len(problems) == 1, problems
    return problems[0]


def model_text(**train: str) -> str:
    """A valid model whose train section gets the given extra `key: value` lines (line 8 onward)."""
    extra = "".join(f"    {k}: {v}\n" for k, v in train.items())
    return MINIMAL_MODEL.format(name="m").replace("    command: python train.py\n", f"    command: x\n{extra}")


# ---- the documented examples ---------------------------------------------------------------------------------


def test_documented_examples_load_with_units_converted(tmp_path: Path) -> None:
    repo = load_repository(*reversed(write(tmp_path, "gitops.yaml", REPOSITORY_EXAMPLE)))
    file, text = write(tmp_path, "models/vision/iris.yaml", MODEL_EXAMPLE)
    model = load_model(text, file)

    assert repo.defaults.timeout == 3600
    assert repo.defaults.resources.memory == 1024
    assert repo.registry.tags.enabled
    assert repo.backends["local"].settings == {}
    assert model.name == "iris"
    assert model.api_version == API_VERSION
    assert model.spec.aliases == {"production": 1, "staging": "latest"}
    assert model.spec.train.timeout == 1800
    assert model.spec.train.resources.memory == 2048
    assert model.spec.train.env == {"SEED": "1"}
    assert model.spec.data[0].sha256 == SHA
    assert [g.metric for g in model.spec.gates] == ["accuracy"]
    assert model.spec.convergence.plateau is not None
    assert model.spec.convergence.plateau.patience == 5


def test_a_minimal_model_gets_the_documented_defaults() -> None:
    model = load_model(MINIMAL_MODEL.format(name="m"), "models/m.yaml")
    body = model.spec
    assert body.suspend is False
    assert body.train.workdir == "."
    assert body.train.env == {}
    assert body.outputs.metrics == "metrics.jsonl"
    assert body.validate_gates == []
    assert body.data == []
    assert body.aliases == {}
    assert body.convergence.nan == []
    assert body.train.resources.memory is None


def test_paths_are_normalised() -> None:
    model = load_model(model_text(workdir="./src//lib/", python="{requirements: ./src/../req.txt}"), "m.yaml")
    assert model.spec.train.workdir == "src/lib"
    assert model.spec.train.python is not None
    assert model.spec.train.python.requirements == "req.txt"


@pytest.mark.parametrize(
    "uri",
    ["data/train.csv", "file:///scratch/data.csv", "s3://my-bucket/data/train.csv", "https://example.org/d.csv"],
)
def test_data_locations(uri: str) -> None:
    text = MINIMAL_MODEL.format(name="m") + f"  data:\n    - {{uri: '{uri}', sha256: {SHA}}}\n"
    assert load_model(text, "m.yaml").spec.data[0].uri == uri


_NUMBERS = "".join(f"      K{index:03d}: {index}\n" for index in range(100))
_CONTROLS = "".join(f'      K{index:03d}: "a\\u001bb"\n' for index in range(100))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(model_text(env="\n" + _NUMBERS), id="numbers"),
        pytest.param(model_text(env="\n" + _NUMBERS).replace("kind: Model\n", ""), id="numbers, no kind"),
        pytest.param(model_text(env="\n" + _NUMBERS, command="y"), id="numbers and a repeated key"),
        pytest.param(model_text(env="\n" + _CONTROLS), id="control characters"),
        pytest.param(model_text(env="\n" + _NUMBERS + _NUMBERS.replace("K", "L")), id="numbers and repeated keys"),
    ],
)
def test_a_file_lists_its_first_problems_with_their_lines_and_says_it_has_more(text: str) -> None:
    """Each listed problem costs a line lookup and is kept, logged and stored: a file lists MAX_FILE_PROBLEMS."""
    problems = model_problems(text)
    assert len(problems) == MAX_FILE_PROBLEMS + 1
    assert all(p.line is not None for p in problems[:-1]), problems
    assert sum(p.field.startswith("spec.train.env.") for p in problems) >= MAX_FILE_PROBLEMS - 1  # and `kind`
    assert str(problems[-1]) == (
        f"models/m.yaml: this file has more problems than the {MAX_FILE_PROBLEMS} shown; fix these and check it again"
    )


def test_a_file_with_as_many_problems_as_are_shown_says_no_more() -> None:
    problems = model_problems(model_text(env="\n" + _NUMBERS[: _NUMBERS.index("K020")].rstrip(" ")))
    assert len(problems) == MAX_FILE_PROBLEMS
    assert all("more problems" not in p.message for p in problems)


def test_yaml_anchors_aliases_and_merge_keys_work() -> None:
    model = load_model(
        textwrap.dedent("""\
        apiVersion: gitopsd/v1
        kind: Model
        metadata: {name: m, labels: &labels {team: vision}}
        spec:
          train:
            command: x
            env: *labels
            resources: {<<: {cpus: 2, gpus: 1}, cpus: 4}
          outputs: {artifact: a}
        """),
        "m.yaml",
    )
    assert model.spec.train.env == {"team": "vision"}
    assert (model.spec.train.resources.cpus, model.spec.train.resources.gpus) == (4, 1)


# ---- resolving a model against the repository ----------------------------------------------------------------


def test_resolve_train_fills_defaults_from_the_repository() -> None:
    repo = load_repository_for(OPERATOR, REPOSITORY_EXAMPLE)
    model = load_model(model_text(resources="{gpus: 2}"), "models/m.yaml")
    train = resolve_train(model, repo)
    assert train.backend == "local"
    assert train.backend_type == "local"
    assert train.settings == {"max_parallel": 2}
    assert train.command == "x"
    assert train.workdir == "."
    assert train.resources == Resources(cpus=1, memory_mb=1024, gpus=2, nodes=1)
    assert train.retries == 0
    assert train.timeout_s == 3600
    assert train.requirements is None


def test_the_model_wins_over_the_defaults() -> None:
    repo = load_repository(REPOSITORY_EXAMPLE)
    model = load_model(MODEL_EXAMPLE, "models/iris.yaml")
    train = resolve_train(model, repo)
    assert train.resources == Resources(cpus=1, memory_mb=2048, gpus=0, nodes=1)
    assert (train.retries, train.timeout_s) == (1, 1800)
    assert train.requirements == "src/requirements.txt"
    assert train.env == {"SEED": "1"}


def test_without_gitops_yaml_models_run_locally_with_backend_defaults() -> None:
    repo = default_repository()
    assert list(repo.backends) == ["local"]
    train = resolve_train(load_model(MINIMAL_MODEL.format(name="m"), "m.yaml"), repo)
    assert (train.backend, train.backend_type) == ("local", "local")
    assert train.resources == Resources(cpus=1, memory_mb=None, gpus=0, nodes=1)
    assert (train.retries, train.timeout_s) == (0, None)


def test_backend_type_defaults_to_the_backend_name() -> None:
    operator = Operator(backends={"slurm": OperatorBackend(allow={"partition": ["gpu"]})})
    repo = load_repository_for(
        operator, "apiVersion: gitopsd/v1\nkind: Repository\nbackends: {slurm: {settings: {partition: gpu}}}\n"
    )
    train = resolve_train(load_model(MINIMAL_MODEL.format(name="m"), "m.yaml"), repo)
    assert (train.backend, train.backend_type, train.settings) == ("slurm", "slurm", {"partition": "gpu"})


def test_resolved_settings_are_a_copy() -> None:
    repo = load_repository_for(OPERATOR, REPOSITORY_EXAMPLE)
    train = resolve_train(load_model(MINIMAL_MODEL.format(name="m"), "m.yaml"), repo)
    train.settings["max_parallel"] = 99
    assert repo.backends["local"].settings == {"max_parallel": 2}


def test_resolve_train_refuses_an_undeclared_backend() -> None:
    model = load_model(model_text(backend="slurm"), "models/m.yaml")
    with pytest.raises(SpecError) as info:
        resolve_train(model, default_repository(), file="models/m.yaml")
    problem = only(info.value.problems)
    assert (problem.file, problem.field) == ("models/m.yaml", "spec.train.backend")
    assert "'slurm' is not available to this repository" in problem.message
    assert "available: local" in problem.message


def test_with_several_backends_and_no_default_a_model_must_choose() -> None:
    repo = load_repository("apiVersion: gitopsd/v1\nkind: Repository\nbackends: {a: {type: local}, b: {}}\n")
    with pytest.raises(SpecError, match="no backend chosen"):
        resolve_train(load_model(MINIMAL_MODEL.format(name="m"), "m.yaml"), repo)


def test_one_train_resolver_for_many_models_gives_what_resolving_each_alone_gives() -> None:
    """The loader resolves every model of a commit with one `TrainResolver`: each result is what `resolve_train`
    gives that model, refusals included, and no model shares a settings mapping with another."""
    operator = Operator(backends={"local": OperatorBackend(type="local", settings={"max_parallel": 2}),
                                  "slurm": OperatorBackend(allow={"partition": ["gpu", "cpu"]})})  # fmt: skip
    repos = [
        default_repository(),
        load_repository_for(OPERATOR, REPOSITORY_EXAMPLE),
        load_repository_for(operator, "apiVersion: gitopsd/v1\nkind: Repository\n"
                            "backends: {local: {}, slurm: {settings: {partition: gpu}}}\n"
                            "defaults: {retries: 2, timeout: 2h, resources: {cpus: 4, gpus: 1, nodes: 2}}\n"),
    ]  # fmt: skip
    models = [
        load_model(MINIMAL_MODEL.format(name="m"), "m.yaml"),
        load_model(MODEL_EXAMPLE, "models/iris.yaml"),
        load_model(model_text(resources="{gpus: 2}"), "a.yaml"),
        load_model(model_text(resources="{cpus: 2, memory: 3Gi, nodes: 3}", retries="0", timeout="5m"), "b.yaml"),
        load_model(model_text(backend="slurm"), "c.yaml"),
        load_model(model_text(backend="local", checkpoint="{before: 60}", timeout="10m"), "d.yaml"),
    ]
    for repo in repos:
        resolver = TrainResolver(repo)
        resolved: list[ResolvedTrain] = []
        for model in models:
            try:
                alone: object = resolve_train(model, repo, file="f.yaml")
            except SpecError as exc:
                alone = exc.problems
            try:
                shared: object = resolver.resolve(model, file="f.yaml")
            except SpecError as exc:
                shared = exc.problems
            assert shared == alone
            if isinstance(shared, ResolvedTrain):
                resolved.append(shared)
        assert resolved
        settings = [id(d) for t in resolved for d in (t.settings, t.keyed_settings)]
        assert len(set(settings)) == len(settings)


# ---- cross-file checks ---------------------------------------------------------------------------------------


def test_duplicate_names_across_files_name_both_files(tmp_path: Path) -> None:
    models = {}
    for rel in ("models/a.yaml", "models/sub/b.yaml", "models/c.yaml"):
        name = "other" if rel == "models/c.yaml" else "iris"
        file, text = write(tmp_path, rel, MINIMAL_MODEL.format(name=name))
        models[file] = load_model(text, file)
    with pytest.raises(SpecError) as info:
        check_models(models, default_repository())
    problems = info.value.problems
    assert [(p.file, p.field) for p in problems] == [
        ("models/a.yaml", "metadata.name"),
        ("models/sub/b.yaml", "metadata.name"),
    ]
    assert "also used by models/sub/b.yaml" in problems[0].message
    assert "also used by models/a.yaml" in problems[1].message


def test_check_models_lists_every_cross_file_problem_at_once() -> None:
    models = {
        "models/a.yaml": load_model(model_text(backend="gpu"), "models/a.yaml"),
        "models/b.yaml": load_model(model_text(backend="local"), "models/b.yaml"),
        "models/c.yaml": load_model(model_text(backend="gpu"), "models/c.yaml"),
    }
    with pytest.raises(SpecError) as info:
        check_models(models, default_repository())
    fields = [(p.file, p.field) for p in info.value.problems]
    assert ("models/a.yaml", "spec.train.backend") in fields
    assert ("models/c.yaml", "spec.train.backend") in fields
    assert ("models/b.yaml", "metadata.name") in fields
    assert len(fields) == 5


def test_a_base_model_must_be_declared_and_bases_must_not_form_a_cycle() -> None:
    def tuned(name: str, base: str | None) -> tuple[str, ModelSpec]:
        text = MINIMAL_MODEL.format(name=name)
        if base is not None:
            text = text.replace("spec:\n", f"spec:\n  base: {base}\n")
        return f"models/{name}.yaml", load_model(text, f"models/{name}.yaml")

    chain = dict([tuned("root", None), tuned("mid", "root@production"), tuned("leaf", "mid@2")])
    check_models(chain, default_repository())  # a chain that ends at a declared model is fine
    broken = dict([*chain.items(), tuned("orphan", "ghost@1"), tuned("a", "b@1"), tuned("b", "c@latest"),
                   tuned("c", "a@1")])  # fmt: skip
    with pytest.raises(SpecError) as info:
        check_models(broken, default_repository())
    assert [(p.file, p.message) for p in info.value.problems] == [
        ("models/a.yaml", "base models form a cycle: a -> b -> c -> a"),
        ("models/b.yaml", "base models form a cycle: b -> c -> a -> b"),
        ("models/c.yaml", "base models form a cycle: c -> a -> b -> c"),
        ("models/orphan.yaml", "base model 'ghost' is not declared in this repository"),
    ]
    assert {p.field for p in info.value.problems} == {"spec.base"}


def test_check_models_accepts_a_consistent_repository() -> None:
    models = {f"models/{n}.yaml": load_model(MINIMAL_MODEL.format(name=n), f"models/{n}.yaml") for n in "abc"}
    check_models(models, load_repository(REPOSITORY_EXAMPLE))


# ---- where each problem is, and what it says -----------------------------------------------------------------


def test_unknown_keys_suggest_the_closest_valid_key() -> None:
    problems = model_problems("""\
        apiVersion: gitopsd/v1
        kind: Model
        metdata: {name: m}
        spec:
          train:
            comand: python train.py
            resorces: {cpu: 2}
          outputs: {artifact: a, zzz: 1}
        """)
    found = {(p.line, p.field): p.message for p in problems}
    assert found[(3, "metdata")] == "unknown key 'metdata'; did you mean 'metadata'?"
    assert found[(6, "spec.train.comand")] == "unknown key 'comand'; did you mean 'command'?"
    assert found[(7, "spec.train.resorces")] == "unknown key 'resorces'; did you mean 'resources'?"
    assert found[(8, "spec.outputs.zzz")] == "unknown key 'zzz'; expected one of: artifact, metrics"
    assert (5, "spec.train.command") not in found, "the typo already says that 'command' is missing"
    assert (1, "metadata") not in found
    assert len(problems) == 4


def test_a_required_field_that_is_simply_missing_is_reported() -> None:
    problem = only(model_problems(MINIMAL_MODEL.format(name="m").replace("command: python train.py", "workdir: src")))
    assert (problem.line, problem.field) == (6, "spec.train.command")
    assert problem.message == "required field 'command' is missing"


def test_an_empty_section_is_a_mapping_expected() -> None:
    problem = only(model_problems(MINIMAL_MODEL.format(name="m").replace("    command: python train.py\n", "")))
    assert (problem.line, problem.field) == (6, "spec.train")
    assert problem.message == "expected a mapping, got null (nothing)"


def test_unknown_key_in_gitops_yaml() -> None:
    with pytest.raises(SpecError) as info:
        load_repository("apiVersion: gitopsd/v1\nkind: Repository\ndefaults:\n  timout: 1h\n")
    problem = only(info.value.problems)
    assert (problem.file, problem.line, problem.field) == ("gitops.yaml", 4, "defaults.timout")
    assert problem.message == "unknown key 'timout'; did you mean 'timeout'?"


def test_a_missing_field_points_at_its_parent_mapping() -> None:
    problem = only(
        model_problems("""\
        apiVersion: gitopsd/v1
        kind: Model
        metadata: {name: m}
        spec:
          train: {command: x}
          outputs:
            metrics: m.jsonl
          data:
            - uri: a.csv
        """)[:1]
    )
    assert (problem.line, problem.field) == (6, "spec.outputs.artifact")
    assert problem.message == "required field 'artifact' is missing"


def test_every_problem_of_a_file_is_listed_in_line_order() -> None:
    problems = model_problems("""\
        apiVersion: gitopsd/v1
        kind: Model
        metadata:
          name: Iris
        spec:
          train:
            command: x
            resources: {memory: 2Gx, cpus: 0}
            timeout: 0
          outputs: {artifact: model.pt}
          validate: ["acc >= 0.9", "acc >> 1"]
          data:
            - uri: gs://bucket/x
              sha256: ABC
          aliases: {prod: 0, staging: latest}
          convergence: {plateau: {metric: loss, mode: avg, patience: 0}}
        """)
    assert [(p.line, p.field) for p in problems] == [
        (4, "metadata.name"),
        (8, "spec.train.resources.cpus"),
        (8, "spec.train.resources.memory"),
        (9, "spec.train.timeout"),
        (11, "spec.validate[1]"),
        (13, "spec.data[0].uri"),
        (14, "spec.data[0].sha256"),
        (15, "spec.aliases.prod"),
        (16, "spec.convergence.plateau.mode"),
        (16, "spec.convergence.plateau.patience"),
    ]
    messages = [p.message for p in problems]
    assert "invalid name 'Iris'" in messages[0]
    assert messages[1] == "must be at least 1, got int 0"
    assert "unknown unit 'Gx'" in messages[2]
    assert "Gi" in messages[2]
    assert messages[3] == "must be more than zero, got 0"
    assert "unknown operator '>>'" in messages[4]
    assert "unsupported location 'gs://bucket/x'" in messages[5]
    assert "64 lowercase hexadecimal" in messages[6]
    assert "'latest', got int 0" in messages[7]
    assert messages[8] == "expected 'min' or 'max', got str 'avg'"
    assert all(p.file == "models/m.yaml" for p in problems)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("workdir", "../elsewhere", "path escapes the repository"),
        ("workdir", "src/../../..", "path escapes the repository"),
        ("workdir", "/abs/src", "absolute path '/abs/src' is not allowed"),
        ("workdir", "'src\\lib'", "no backslashes"),
        ("workdir", "''", "empty path"),
        ("python", "{requirements: ../req.txt}", "path escapes the repository"),
    ],
)
def test_repository_paths_must_stay_inside(key: str, value: str, expected: str) -> None:
    problem = only(model_problems(model_text(**{key: value})))
    assert problem.line == 8
    assert problem.field.startswith(f"spec.train.{key}")
    assert expected in problem.message


@pytest.mark.parametrize(
    ("outputs", "field", "expected"),
    [
        ("{artifact: ../model.pt}", "spec.outputs.artifact", "path escapes the output directory"),
        ("{artifact: /tmp/model.pt}", "spec.outputs.artifact", "absolute path"),
        ("{artifact: .}", "spec.outputs.artifact", "name a file or directory inside"),
        ("{artifact: m.pt, metrics: ../../m.jsonl}", "spec.outputs.metrics", "path escapes the output directory"),
        ("{artifact: m.jsonl, metrics: ./m.jsonl}", "spec.outputs.metrics", "cannot be the artifact"),
    ],
)
def test_output_paths_must_stay_inside_the_output_directory(outputs: str, field: str, expected: str) -> None:
    text = MINIMAL_MODEL.format(name="m").replace("  outputs:\n    artifact: model.pt\n", f"  outputs: {outputs}\n")
    problem = only(model_problems(text))
    assert (problem.line, problem.field) == (8, field)
    assert expected in problem.message


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("../outside.csv", "path escapes the repository"),
        ("file://relative/x", "file:///absolute/path"),
        ("s3://Bad_Bucket/x", "not a valid bucket name"),
        ("s3://bucket", "expected s3://bucket/key"),
        ("ftp://host/x", "unsupported location"),
    ],
)
def test_bad_data_locations(uri: str, expected: str) -> None:
    text = MINIMAL_MODEL.format(name="m") + f"  data:\n    - uri: '{uri}'\n      sha256: {SHA}\n"
    problem = only(model_problems(text))
    assert (problem.line, problem.field) == (11, "spec.data[0].uri")
    assert expected in problem.message


def test_the_same_data_twice_is_an_error_at_the_second() -> None:
    text = MINIMAL_MODEL.format(name="m") + f"  data:\n    - {{uri: a.csv, sha256: {SHA}}}\n"
    text += f"    - {{uri: ./a.csv, sha256: {SHA}}}\n"
    problem = only(model_problems(text))
    assert (problem.line, problem.field) == (12, "spec.data[1].uri")
    assert "listed twice" in problem.message


@pytest.mark.parametrize(
    ("yaml_value", "shown", "hint"),
    [("1", "int 1", '"1"'), ("0.5", "float 0.5", '"0.5"'), ("true", "bool True", '"true"'), ("", "null", '""')],
)
def test_env_values_must_be_quoted(yaml_value: str, shown: str, hint: str) -> None:
    problem = only(model_problems(model_text(env=f"\n      SEED: {yaml_value}")))
    assert (problem.line, problem.field) == (9, "spec.train.env.SEED")
    assert "must be strings: quote it" in problem.message
    assert hint in problem.message
    assert f"(got {shown})" in problem.message


@pytest.mark.parametrize(
    ("key", "expected"),
    [("GITOPSD_RUN_ID", "reserved for gitopsd"), ("gitopsd_x", "reserved"), ("1SEED", "not starting with a digit")],
)
def test_env_names(key: str, expected: str) -> None:
    problem = only(model_problems(model_text(env=f"{{{key}: 'v'}}")))
    assert (problem.line, problem.field) == (8, f"spec.train.env.{key}")
    assert expected in problem.message


def test_label_values_must_be_strings_and_odd_keys_are_quoted_in_the_field() -> None:
    text = MINIMAL_MODEL.format(name="m").replace("  name: m\n", "  name: m\n  labels: {app.io/tier: 3}\n")
    problem = only(model_problems(text))
    assert (problem.line, problem.field) == (5, "metadata.labels['app.io/tier']")
    assert "label values must be strings" in problem.message


def test_keys_that_yaml_reads_as_other_types_must_be_quoted() -> None:
    problem = only(model_problems(model_text(env="{1: one}")))
    assert (problem.line, problem.field) == (8, "spec.train.env.1")
    assert problem.message == "keys here must be strings: quote the key in YAML, got int 1"


def test_duplicate_keys_are_errors_with_both_lines() -> None:
    problems = model_problems("""\
        apiVersion: gitopsd/v1
        kind: Model
        metadata:
          name: iris
          name: iris
        spec:
          train: {command: x, command: y}
          outputs: {artifact: a}
        """)
    assert [(p.line, p.field) for p in problems] == [(5, "metadata.name"), (7, "spec.train.command")]
    assert "duplicate key 'name': already set on line 4" in problems[0].message
    assert "already set on line 7" in problems[1].message


def test_duplicate_keys_are_listed_with_the_other_problems() -> None:
    problems = model_problems("""\
        apiVersion: gitopsd/v1
        kind: Model
        metadata: {name: m}
        spec:
          train: {command: x, timeout: 5x}
          outputs: {artifact: a}
          outputs: {artifact: b}
        """)
    assert [(p.line, p.field) for p in problems] == [(5, "spec.train.timeout"), (7, "spec.outputs")]


def test_yaml_syntax_errors_give_the_line() -> None:
    problem = only(model_problems("apiVersion: gitopsd/v1\nkind: Model\nmetadata:\n  name: [iris\nspec: {}\n"))
    assert problem.line is not None
    assert problem.line >= 4
    assert problem.field == ""
    assert problem.message.startswith("invalid YAML:")
    assert "line 4" in problem.message


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("", None, "the file is empty"),
        ("# only a comment\n", None, "the file is empty"),
        ("- apiVersion: gitopsd/v1\n- kind: Model\n", 1, "found a list"),
        ("just words\n", 1, "found str 'just words'"),
    ],
)
def test_documents_that_are_not_a_mapping(text: str, line: int | None, expected: str) -> None:
    problem = only(model_problems(text))
    assert problem.line == line
    assert expected in problem.message
    if "empty" in expected:
        assert "apiVersion: gitopsd/v1" in problem.message


def test_wrong_kind_is_one_clear_error() -> None:
    problem = only(model_problems(REPOSITORY_EXAMPLE))
    assert (problem.line, problem.field) == (2, "kind")
    assert "belongs in gitops.yaml" in problem.message
    with pytest.raises(SpecError, match="belongs in a file under models/"):
        load_repository(MODEL_EXAMPLE)
    with pytest.raises(SpecError, match="unknown kind 'Modle': expected 'Model'"):
        load_model(MODEL_EXAMPLE.replace("kind: Model", "kind: Modle"), "m.yaml")


def test_wrong_or_missing_api_version_and_kind() -> None:
    problem = only(model_problems(MODEL_EXAMPLE.replace("gitopsd/v1", "gitopsd/v2")))
    assert (problem.line, problem.field) == (1, "apiVersion")
    assert problem.message == "unsupported apiVersion 'gitopsd/v2': this gitopsd reads 'gitopsd/v1'"
    problem = only(model_problems(MODEL_EXAMPLE.replace("kind: Model\n", "")))
    assert (problem.field, problem.message) == ("kind", "required field 'kind' is missing (expected 'kind: Model')")
    problems = model_problems(REPOSITORY_EXAMPLE.replace("gitopsd/v1", "v1"))
    assert [p.field for p in problems] == ["apiVersion", "kind"]


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        (
            "apiVersion: gitopsd/v1\nkind: Repository\ndefaults: {backend: slurm}\nbackends: {local: {}}\n",
            "defaults.backend",
            "'slurm' is not declared (declared: local)",
        ),
        (
            "apiVersion: gitopsd/v1\nkind: Repository\nregistry: {artifacts: 's3://theirs/models'}\n",
            "registry.artifacts",
            "'artifacts' belongs in the operator's configuration ([registry] artifacts",
        ),
        (
            "apiVersion: gitopsd/v1\nkind: Repository\nregistry: {endpoint_url: 'http://127.0.0.1:9'}\n",
            "registry.endpoint_url",
            "belongs in the operator's configuration",
        ),
        (
            "apiVersion: gitopsd/v1\nkind: Repository\ndefaults: {resources: {memory: 0}}\n",
            "defaults.resources.memory",
            "must be more than zero",
        ),
    ],
)
def test_repository_problems(text: str, field: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        load_repository(text)
    problem = only(info.value.problems)
    assert (problem.file, problem.line, problem.field) == ("gitops.yaml", 3, field)
    assert expected in problem.message


def test_wrong_types_name_the_value_and_what_is_expected() -> None:
    problems = model_problems(model_text(retries="'2'", resources="[1, 2]") + "  suspend: 'no'\n")
    found = {p.field: p.message for p in problems}
    assert found["spec.train.retries"] == "expected an integer, got str '2'"
    assert found["spec.train.resources"] == "expected a mapping, got a list"
    assert found["spec.suspend"] == "expected true or false, got str 'no'"


def test_an_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = MINIMAL_MODEL.format(name="m") + "  labels:\n" + "".join(f"    {line}\n" for line in lines)
    problem = only(model_problems(text))
    assert "aliases expand" in problem.message


def test_valid_files_never_need_the_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compose(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the node tree was composed for a valid file")

    monkeypatch.setattr(yaml, "compose", no_compose)
    load_model(MODEL_EXAMPLE.replace("--epochs 5", "--epochs 5 data/*.csv && echo done"), "m.yaml")
    load_repository(REPOSITORY_EXAMPLE)


# ---- JSON Schema ---------------------------------------------------------------------------------------------


def conforms(schema: dict[str, Any], value: Any, root: dict[str, Any]) -> bool:
    """A small structural JSON Schema check (the subset gitopsd's schema uses)."""
    if "$ref" in schema:
        return conforms(root["$defs"][schema["$ref"].split("/")[-1]], value, root)
    if "oneOf" in schema:
        return sum(conforms(s, value, root) for s in schema["oneOf"]) == 1
    if "anyOf" in schema:
        return any(conforms(s, value, root) for s in schema["anyOf"])
    if "const" in schema:
        return bool(value == schema["const"])
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if kind in ("integer", "number"):
        ok = isinstance(value, int if kind == "integer" else int | float) and not isinstance(value, bool)
        return ok and value >= schema.get("minimum", value)
    if kind in types and not isinstance(value, types[kind]):
        return False
    if kind == "string" and "pattern" in schema:
        return re.search(schema["pattern"], value) is not None
    if kind == "array":
        return all(conforms(schema.get("items", {}), v, root) for v in value)
    if kind == "object":
        props = schema.get("properties", {})
        if not all(k in value for k in schema.get("required", [])):
            return False
        extra = schema.get("additionalProperties", True)
        patterns = schema.get("patternProperties", {})
        for key, item in value.items():
            by_pattern = [s for p, s in patterns.items() if re.search(p, key)]
            if key in props:
                if not conforms(props[key], item, root):
                    return False
            elif by_pattern:
                if not all(conforms(s, item, root) for s in by_pattern):
                    return False
            elif extra is False or (isinstance(extra, dict) and not conforms(extra, item, root)):
                return False
    return True


def test_json_schema_describes_both_kinds() -> None:
    schema = json_schema()
    json.dumps(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    defs = schema["$defs"]
    assert {"RepositorySpec", "ModelSpec"} <= set(defs)
    assert {"apiVersion", "kind", "backends", "registry", "runs", "defaults"} == set(
        defs["RepositorySpec"]["properties"]
    )
    assert {"apiVersion", "kind", "metadata", "spec"} == set(defs["ModelSpec"]["properties"])
    assert "validate" in defs["ModelBody"]["properties"]
    objects = [d for d in defs.values() if d.get("type") == "object" and "properties" in d]
    assert objects
    assert all(d["additionalProperties"] is False for d in objects)
    env = defs["TrainSpec"]["properties"]["env"]
    assert env["additionalProperties"] is False
    assert defs["TrainSpec"]["properties"]["command"]["description"]


def test_json_schema_shows_the_defaults_made_per_model() -> None:
    """Empty mappings, lists and sections are made per model (pydantic would deep-copy a static one for every
    model); the schema still shows each as the field's default, exactly as a model that leaves it out has it."""
    defs = json_schema()["$defs"]
    model = ModelSpec.model_validate(yaml.safe_load(MINIMAL_MODEL.format(name="m")))
    body, train = model.spec, model.spec.train
    shown = {
        ("Metadata", "labels"): model.metadata.labels,
        ("TrainSpec", "env"): train.env,
        ("TrainSpec", "modules"): train.modules,
        ("ConvergenceSpec", "nan"): body.convergence.nan,
        ("ModelBody", "aliases"): body.aliases,
        ("ModelBody", "data"): body.data,
        ("ModelBody", "validate"): body.validate_gates,
        ("ModelBody", "convergence"): body.convergence.model_dump(),
    }
    for (name, field), value in shown.items():
        assert defs[name]["properties"][field]["default"] == value, (name, field)
    assert "default" not in defs["RegistryConfig"]["properties"]["tags"]  # a factory it never showed


def test_defaults_are_not_shared_between_models() -> None:
    text = MINIMAL_MODEL.format(name="m")
    one, two = load_model(text, "models/a.yaml"), load_model(text, "models/b.yaml")
    pairs = [
        (one.metadata.labels, two.metadata.labels),
        (one.spec.train.env, two.spec.train.env),
        (one.spec.train.modules, two.spec.train.modules),
        (one.spec.aliases, two.spec.aliases),
        (one.spec.data, two.spec.data),
        (one.spec.validate_gates, two.spec.validate_gates),
        (one.spec.convergence, two.spec.convergence),
        (one.spec.convergence.nan, two.spec.convergence.nan),
    ]
    assert all(a == b and a is not b for a, b in pairs)
    assert "labels" not in one.metadata.model_fields_set and "convergence" not in one.spec.model_fields_set


def test_json_schema_accepts_the_examples_and_rejects_typos() -> None:
    schema = json_schema()
    repo = yaml.safe_load(REPOSITORY_EXAMPLE)
    model = yaml.safe_load(MODEL_EXAMPLE)
    assert conforms(schema, repo, schema)
    assert conforms(schema, model, schema)
    assert conforms(schema, yaml.safe_load(MINIMAL_MODEL.format(name="m")), schema)
    model["spec"]["train"]["comand"] = model["spec"]["train"].pop("command")
    assert not conforms(schema, model, schema)
    model = yaml.safe_load(MODEL_EXAMPLE)
    model["spec"]["train"]["timeout"] = "30 parsecs"
    assert not conforms(schema, model, schema)
    model["spec"]["train"]["timeout"] = 1800
    assert conforms(schema, model, schema)
    model["spec"]["train"]["env"] = {"1SEED": "1"}
    assert not conforms(schema, model, schema)


def test_models_are_frozen() -> None:
    model = load_model(MINIMAL_MODEL.format(name="m"), "m.yaml")
    with pytest.raises(ValueError, match="frozen"):
        model.metadata.name = "other"
    assert isinstance(model, ModelSpec)


# ---- robustness ----------------------------------------------------------------------------------------------

_EXAMPLE_LINES = MODEL_EXAMPLE.splitlines(keepends=True)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(_EXAMPLE_LINES) - 1),
            st.sampled_from(["delete", "duplicate", "value", "insert"]),
            st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_edit_of_a_valid_file_loads_or_gives_located_problems(edits: list[tuple[int, str, str]]) -> None:
    lines = list(_EXAMPLE_LINES)
    for position, action, junk in edits:
        index = position % len(lines)
        if action == "delete" and len(lines) > 1:
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "value":
            head, _, _ = lines[index].partition(":")
            lines[index] = f"{head}: {junk}\n"
        else:
            lines.insert(index, junk + "\n")
    text = "".join(lines)
    problems = load_problems(text, "models/fuzz.yaml")
    assert problems is None or problems, "a SpecError always lists at least one problem"
    for problem in problems or []:
        assert problem.file == "models/fuzz.yaml"
        assert problem.message
        assert problem.line is None or 1 <= problem.line <= text.count("\n") + 2


def load_problems(text: str, file: str) -> list[SpecProblem] | None:
    """None when the text loads, else the problems it has; any other exception fails the test."""
    try:
        load_model(text, file)
    except SpecError as exc:
        return exc.problems
    return None


def test_copied_settings_share_nothing_mutable_with_the_original() -> None:
    from gitopsd.spec.schema import copy_settings

    original: dict[str, Any] = {
        "partition": "gpu",
        "n": 2,
        "x": 1.5,
        "on": True,
        "none": None,
        "list": [1, {"a": [2]}],
        "s": {3},
    }
    copied = copy_settings(original)
    assert copied == original
    assert copied["list"] is not original["list"] and copied["list"][1] is not original["list"][1]
    assert copied["list"][1]["a"] is not original["list"][1]["a"]
    assert copied["s"] is not original["s"]  # an unusual type is deep-copied all the same
