"""The two kinds of spec file (Repository and Model) as pydantic models, and what the reconciler asks of them.

These models are the contract between a team's Git repository and gitopsd: every field a user may write is
declared here with its type, its default and a description (which `json_schema()` hands to editors). After
validation durations are int seconds, sizes are int MiB and paths are normalised, so lower layers never parse
text. `resolve_train` merges a model's train section with the repository defaults into one flat value.
Turning YAML text into these models, with file and line in every error, is `gitopsd.spec.load`'s job.
"""

from __future__ import annotations

import copy
import functools
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from gitopsd.errors import SpecError, SpecProblem
from gitopsd.model import Checkpoint, Resources
from gitopsd.spec.fields import (
    API_VERSION,
    MAX_ALIASES,
    MAX_MODULES,
    AliasTarget,
    ApiVersion,
    BaseRef,
    CheckpointBefore,
    CommandText,
    Cpus,
    DataUri,
    Duration,
    EnvKey,
    EnvValue,
    GateText,
    Gpus,
    LabelValue,
    Memory,
    Metric,
    ModuleName,
    Name,
    Nodes,
    OutputPath,
    Patience,
    PluginType,
    RepoPath,
    Retries,
    RunsKeep,
    Segments,
    Sha256,
    problem,
)
from gitopsd.spec.gates import Gate, parse_gate

#: The meaning of spec files as this code reads them. Bump it with any change to the models below, their field
#: types or their loading that changes what a file means or which files are refused: caches of parsed specs
#: (`gitopsd.reconcile.speccache`) are keyed by it, and by a digest of this package's source besides.
SCHEMA_VERSION = 1

# ---- models ---------------------------------------------------------------------------------------


class _Spec(BaseModel):
    """Strict: YAML has already typed each value, so '2' never silently becomes 2, nor 1 the string '1'."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ResourcesSpec(_Spec):
    """What one run asks for. A field left out comes from the repository defaults, then the backend."""

    cpus: Cpus | None = Field(default=None, description="CPU cores for the training process.")
    memory: Memory | None = Field(default=None, description="Memory, e.g. '16Gi'; stored as MiB.")
    gpus: Gpus | None = Field(default=None, description="GPUs for the training process.")
    nodes: Nodes | None = Field(default=None, description="Nodes; more than 1 only for distributed training.")


class BackendConfig(_Spec):
    """One backend of the operator's that models may train on, and the settings this repository chooses."""

    type: PluginType | None = Field(default=None, description="Plugin type; if given, must be the operator's.")
    settings: dict[str, Any] = Field(
        default={}, description="Only the settings the operator allows (e.g. partition, qos), from its allow-list."
    )


class TagsConfig(_Spec):
    """Audit tags `models/NAME/vN` on the commit each version was trained from."""

    enabled: bool = Field(default=True, description="Create an annotated tag for every registered version.")
    push: bool = Field(default=False, description="Push the tags to the tracked repository's remote.")


class RegistryConfig(_Spec):
    """The registry as the repository sees it; where artifacts are stored is the operator's choice."""

    tags: TagsConfig = Field(default_factory=TagsConfig)


class RunsConfig(_Spec):
    """What gitopsd keeps of ended runs in STATE_DIR/runs."""

    keep: RunsKeep = Field(
        default=3,
        description="Ended runs per model that keep their whole directory; older ones keep only logs and records.",
    )


class Defaults(_Spec):
    """Applied to every model's train section where the model leaves a field out."""

    backend: Name | None = Field(default=None, description="Backend of models that name none.")
    retries: Retries = Field(default=0, description="Times a failed training is retried.")
    timeout: Duration | None = Field(default=None, description="Time limit of one training.")
    resources: ResourcesSpec = ResourcesSpec()


class RepositorySpec(_Spec):
    """The root gitops.yaml: backends, registry and defaults of the whole repository."""

    api_version: ApiVersion = Field(alias="apiVersion")
    kind: Literal["Repository"]
    backends: dict[Name, BackendConfig] = Field(
        default={},
        description="The operator's backends this repository uses, by name (default: every one offered).",
    )
    registry: RegistryConfig = RegistryConfig()
    runs: RunsConfig = RunsConfig()
    defaults: Defaults = Defaults()

    #: Per backend, the settings that enter the run key; filled in by `gitopsd.spec.resolve`.
    _keyed: dict[str, dict[str, Any]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _backends_declared(self) -> RepositorySpec:
        chosen, declared = self.defaults.backend, ", ".join(sorted(self.backends))
        if chosen is not None and self.backends and chosen not in self.backends:
            raise problem(f"backend {chosen!r} is not declared (declared: {declared})", "defaults.backend")
        return self

    @classmethod
    def default(cls) -> RepositorySpec:
        """The configuration used when a repository has no gitops.yaml: one local backend, no defaults."""
        return cls.model_validate({"apiVersion": API_VERSION, "kind": "Repository"})

    def keyed_settings(self, name: str) -> dict[str, Any]:
        """The settings of backend `name` that a repository may choose, and so enter the run key."""
        settings: dict[str, Any] = copy_settings(self._keyed.get(name, {}))
        return settings

    def backend_type(self, name: str) -> str:
        """The plugin type of a declared backend (its name unless `type` says otherwise)."""
        return self.backends[name].type or name


class Metadata(_Spec):
    name: Name = Field(description="Unique in the repository; versions are named name@N.")
    description: str | None = Field(
        default=None, description="Free text; never affects training. May span lines; no other control characters."
    )
    labels: dict[str, LabelValue] = Field(
        default_factory=dict, description="Free string labels, one line each; never affect training."
    )


class PythonSpec(_Spec):
    requirements: RepoPath = Field(description="requirements.txt (repository-relative) installed first.")


class CheckpointSpec(_Spec):
    """A training that saves its state on a signal before its job's time limit and is resumed by a new job."""

    signal: Literal["USR1", "USR2", "TERM"] = Field(
        default="USR1", description="Signal that asks the training to save its state and exit."
    )
    before: CheckpointBefore = Field(default=120, description="How long before the job's time limit it comes.")
    max_segments: Segments = Field(default=10, description="Most jobs one run may take, the first included.")

    def resolved(self) -> Checkpoint:
        return Checkpoint(signal=self.signal, before_s=self.before, max_segments=self.max_segments)


class TrainSpec(_Spec):
    """How to train: the command, where it runs, its environment and what it asks of the backend."""

    backend: Name | None = Field(default=None, description="A backend of gitops.yaml; else defaults.backend.")
    command: CommandText = Field(description="Shell command that trains the model.")
    workdir: RepoPath = Field(default=".", description="Repository-relative directory the command runs in.")
    env: dict[EnvKey, EnvValue] = Field(default_factory=dict, description="Environment variables; values are strings.")
    python: PythonSpec | None = None
    resources: ResourcesSpec = ResourcesSpec()
    retries: Retries | None = Field(default=None, description="Times a failed training is retried.")
    timeout: Duration | None = Field(default=None, description="Time limit of one training, e.g. '30m'.")
    launcher: Literal["none", "srun", "torchrun"] = Field(
        default="none",
        description="none: the command runs once, on the first node; srun: once per node (RANK, WORLD_SIZE, "
        "MASTER_ADDR, ... set); torchrun: one torchrun agent per node, which runs the command's words "
        "(SCRIPT.py ARGS, or -m MODULE ARGS). Other than none needs a Slurm backend.",
    )
    modules: list[ModuleName] = Field(
        default_factory=list,
        max_length=MAX_MODULES,
        description="Environment modules (Lmod) loaded on the compute node before the command, e.g. cuda/12.1.",
    )
    checkpoint: CheckpointSpec | None = Field(
        default=None,
        description="Chain jobs across time limits and preemption; the timeout is then each job's limit.",
    )

    @model_validator(mode="after")
    def _launch(self) -> TrainSpec:
        for index, name in enumerate(self.modules):
            if name in self.modules[:index]:
                raise problem(f"module {name!r} is listed twice", f"modules.{index}")
        if self.launcher == "torchrun":
            why = torchrun_command_problem(self.command)
            if why:
                raise problem(why, "command")
        return self

    @model_validator(mode="after")
    def _checkpoint_before_timeout(self) -> TrainSpec:
        if self.checkpoint is not None and self.timeout is not None:
            check_checkpoint_before(self.checkpoint.before, self.timeout)
        return self


def torchrun_command_problem(command: str) -> str | None:
    """Why `command` cannot be what torchrun runs, or None. With `launcher: torchrun` the command is split into
    words like a shell would (but never run by one) and the words follow torchrun's own options: SCRIPT.py ARGS,
    -m MODULE ARGS, or --no-python PROGRAM ARGS."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return f"with launcher torchrun the command is split into words and handed to torchrun: {exc}"
    if not words:
        return "with launcher torchrun the command names the script torchrun runs, e.g. 'train.py --epochs 3'"
    if words[0].startswith("-") and words[0] not in ("-m", "--module", "--no-python", "--no_python"):
        return (
            f"with launcher torchrun the command starts with the script torchrun runs (or -m MODULE, or "
            f"--no-python PROGRAM), not with the option {words[0]!r}: gitopsd sets torchrun's own options"
        )
    return None


def check_checkpoint_before(before_s: int, limit_s: int, *, limit: str = "timeout") -> None:
    """`before` must leave the training at least half of its job's time limit: the signal is sent up to a
    minute early, and a training that is signalled at once never gets anywhere."""
    if before_s * 2 > limit_s:
        raise problem(
            f"checkpoint.before ({before_s} s) must be at most half of the {limit} ({limit_s} s): "
            "shorten checkpoint.before or raise the time limit",
            "checkpoint.before",
        )


class DataSpec(_Spec):
    """One input, pinned by digest: a changed digest is a different training."""

    uri: DataUri = Field(description="Repository-relative path, file:///abs/path, s3://bucket/key or https://...")
    sha256: Sha256 = Field(description="SHA-256 of the data, 64 lowercase hex characters.")


class OutputsSpec(_Spec):
    """What the training writes under $GITOPSD_OUTPUT_DIR."""

    artifact: OutputPath = Field(description="The trained model, relative to the run's output directory.")
    metrics: OutputPath = Field(default="metrics.jsonl", description="JSON-lines metrics, in the output directory.")

    @model_validator(mode="after")
    def _distinct(self) -> OutputsSpec:
        if self.artifact == self.metrics:
            raise problem(f"the metrics file cannot be the artifact ({self.metrics!r})", "metrics")
        return self


class DivergeSpec(_Spec):
    metric: Metric
    above: float = Field(allow_inf_nan=False, description="Stop the run when the metric goes above this.")


class PlateauSpec(_Spec):
    metric: Metric
    mode: Literal["min", "max"] = Field(default="min", description="min: lower is better; max: higher is better.")
    patience: Patience = Field(description="Reports without improvement before the run is stopped.")
    min_delta: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="Smallest change that counts.")


class ConvergenceSpec(_Spec):
    """Rules checked on the metrics while the training runs, to stop a hopeless run early."""

    nan: list[Metric] = Field(default_factory=list, description="Metrics that must stay finite.")
    diverge: DivergeSpec | None = None
    plateau: PlateauSpec | None = None


class ModelBody(_Spec):
    """The `spec` of a model file."""

    suspend: bool = Field(default=False, description="When true, nothing is trained or moved for this model.")
    aliases: dict[Name, AliasTarget] = Field(
        default_factory=dict, max_length=MAX_ALIASES, description="Alias name -> version number or 'latest'."
    )
    base: BaseRef | None = Field(
        default=None,
        description="Fine-tune from this version: NAME@N or NAME@ALIAS; its artifact is handed to the run.",
    )
    train: TrainSpec
    data: list[DataSpec] = Field(default_factory=list, description="Inputs, each pinned by its SHA-256.")
    outputs: OutputsSpec
    validate_gates: list[GateText] = Field(
        default_factory=list, alias="validate", description="Gates, e.g. 'accuracy >= 0.9'."
    )
    convergence: ConvergenceSpec = Field(default_factory=ConvergenceSpec)

    @model_validator(mode="after")
    def _unique_data(self) -> ModelBody:
        seen: set[str] = set()
        for index, item in enumerate(self.data):
            if item.uri in seen:
                raise problem(f"data {item.uri!r} is listed twice", f"data.{index}.uri")
            seen.add(item.uri)
        return self

    @property
    def gates(self) -> tuple[Gate, ...]:
        return tuple(parse_gate(text) for text in self.validate_gates)


class ModelSpec(_Spec):
    """One file under models/: what to train, on what data, and what a good result is."""

    api_version: ApiVersion = Field(alias="apiVersion")
    kind: Literal["Model"]
    metadata: Metadata
    spec: ModelBody

    @property
    def name(self) -> str:
        return self.metadata.name


# ---- what the reconciler needs --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ResolvedTrain:
    """A model's train section with every default filled in from the repository spec."""

    backend: str
    backend_type: str
    settings: dict[str, Any]
    keyed_settings: dict[str, Any]
    command: str
    workdir: str
    env: dict[str, str]
    requirements: str | None
    resources: Resources
    retries: int
    timeout_s: int | None
    checkpoint: Checkpoint | None = None


_SCALARS = (str, int, float, bool, type(None))


def copy_settings(value: Any) -> Any:
    """A deep copy of backend settings (YAML or TOML values: mappings, lists, scalars), made for each model, so
    faster than `copy.deepcopy` for the usual shapes; any other type is left to `copy.deepcopy`."""
    if type(value) is dict:
        return {k: v if type(v) in _SCALARS else copy_settings(v) for k, v in value.items()}
    if type(value) is list:
        return [v if type(v) in _SCALARS else copy_settings(v) for v in value]
    return value if type(value) in _SCALARS else copy.deepcopy(value)


def choose_backend(model: ModelSpec, repo: RepositorySpec) -> tuple[str | None, str]:
    """The backend a model trains on, or None and the reason why there is none."""
    name = model.spec.train.backend or repo.defaults.backend
    if name is not None and name in repo.backends:
        return name, ""
    declared = ", ".join(sorted(repo.backends))
    if name is None:
        if len(repo.backends) == 1:
            return next(iter(repo.backends)), ""
        why = "no backend chosen: set spec.train.backend, or defaults.backend in gitops.yaml"
        return None, f"{why} (available: {declared})"
    return None, f"backend {name!r} is not available to this repository (available: {declared})"


def repository_paths(model: ModelSpec, train: ResolvedTrain) -> list[tuple[str, str]]:
    """(field, path) of what a run takes from the repository: its workdir, requirements file and repository data.

    Exactly what its run key covers and what is exported into its run directory; each must stay inside the
    repository once symbolic links are followed.
    """
    paths = [("spec.train.workdir", train.workdir)]
    if train.requirements:
        paths.append(("spec.train.python.requirements", train.requirements))
    return paths + [(f"spec.data[{i}].uri", d.uri) for i, d in enumerate(model.spec.data) if "://" not in d.uri]


def resolve_train(model: ModelSpec, repo: RepositorySpec, *, file: str | None = None) -> ResolvedTrain:
    """Merge the model's train section with the repository defaults; SpecError if its backend is unknown."""
    return TrainResolver(repo).resolve(model, file=file)


class TrainResolver:
    """`resolve_train` for the many models of one repository: what depends on the repository alone (its defaults,
    each backend's type and settings) is read once, not once per model. Each model still gets its own copies of
    the settings, as from `resolve_train`."""

    def __init__(self, repo: RepositorySpec) -> None:
        self.repo = repo
        defaults = repo.defaults
        self._default_backend = defaults.backend
        self._only = next(iter(repo.backends)) if len(repo.backends) == 1 else None
        self._backends = {
            name: (repo.backend_type(name), config.settings, repo.keyed_settings(name))
            for name, config in repo.backends.items()
        }
        res = defaults.resources
        self._cpus, self._memory, self._gpus, self._nodes = res.cpus, res.memory, res.gpus, res.nodes
        self._retries, self._timeout = defaults.retries, defaults.timeout

    def resolve(self, model: ModelSpec, *, file: str | None = None) -> ResolvedTrain:
        train = model.spec.train
        backend = train.backend or self._default_backend or self._only
        if backend is None or backend not in self._backends:
            backend, why = choose_backend(model, self.repo)  # says why there is none
            if backend is None:
                where = file or f"model {model.name}"
                raise SpecError([SpecProblem(file=where, line=None, field="spec.train.backend", message=why)])
        backend_type, settings, keyed = self._backends[backend]
        mine = train.resources
        timeout = train.timeout if train.timeout is not None else self._timeout
        retries = train.retries if train.retries is not None else self._retries
        resources = Resources(
            cpus=(mine.cpus if mine.cpus is not None else self._cpus) or 1,
            memory_mb=mine.memory if mine.memory is not None else self._memory,
            gpus=(mine.gpus if mine.gpus is not None else self._gpus) or 0,
            nodes=(mine.nodes if mine.nodes is not None else self._nodes) or 1,
            launcher=train.launcher,
            modules=tuple(train.modules),
        )
        return ResolvedTrain(
            backend=backend,
            backend_type=backend_type,
            settings=copy_settings(settings),
            keyed_settings=copy_settings(keyed),
            command=train.command,
            workdir=train.workdir,
            env=dict(train.env),
            requirements=train.python.requirements if train.python else None,
            resources=resources,
            retries=retries or 0,
            timeout_s=timeout,
            checkpoint=_checkpoint(model, timeout, file) if train.checkpoint is not None else None,
        )


def _checkpoint(model: ModelSpec, timeout_s: int | None, file: str | None) -> Checkpoint | None:
    """The model's checkpoint settings, checked against a timeout it takes from the repository defaults."""
    spec = model.spec.train.checkpoint
    if spec is None:
        return None
    if timeout_s is not None and spec.before * 2 > timeout_s:
        where = file or f"model {model.name}"
        message = (
            f"before ({spec.before} s) must be at most half of defaults.timeout ({timeout_s} s) of gitops.yaml: "
            "shorten it or set spec.train.timeout"
        )
        raise SpecError([SpecProblem(file=where, line=None, field="spec.train.checkpoint.before", message=message)])
    return spec.resolved()


class _Defaults(GenerateJsonSchema):
    """Shows the default of a field whose default is made per model (`default_factory`) as if it were static.

    An empty mapping, list or section as a static default is deep-copied by pydantic for every model that leaves
    the field out (most of a model's validation time); a factory makes a fresh one for much less, and the schema
    still says what the default is. Only the factories below are shown, so the schema stays what it was."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        for shown in _SHOWN_FACTORIES:
            if factory is shown:
                return shown()
        return super().get_default_value(schema)


_SHOWN_FACTORIES: tuple[Callable[[], object], ...] = (dict, list, ConvergenceSpec)


@functools.cache
def _either() -> TypeAdapter[RepositorySpec | ModelSpec]:
    return TypeAdapter(Annotated[RepositorySpec | ModelSpec, Field(discriminator="kind")])


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) for both kinds of spec file, chosen by `kind`; for editors and CI."""
    schema = copy.deepcopy(_either().json_schema(by_alias=True, mode="validation", schema_generator=_Defaults))
    _close_keyed_mappings(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gitopsd spec file",
        "description": "A gitopsd Repository (gitops.yaml) or Model (models/**/*.yaml) document.",
        **schema,
    }


def _close_keyed_mappings(schema: Any) -> None:
    """Mappings whose keys follow a pattern (env, aliases, backends) accept no other keys either."""
    if isinstance(schema, dict):
        if "patternProperties" in schema:
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            _close_keyed_mappings(value)
    elif isinstance(schema, list):
        for value in schema:
            _close_keyed_mappings(value)
