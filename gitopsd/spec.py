"""The two kinds of spec file (Repository and Model) as pydantic models, and what the reconciler asks of them.

These models are the contract between a team's Git repository and gitopsd: every field a user may write is
declared here with its type, its default and a description (which `json_schema()` hands to editors). After
validation durations are int seconds, sizes are int MiB and paths are normalised, so lower layers never parse
text. `resolve_train` merges a model's train section with the repository defaults into one flat value.
Turning YAML text into these models, with file and line in every error, is `gitopsd.specload`'s job.
"""

from __future__ import annotations

import copy
import functools
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gitopsd.errors import SpecError, SpecProblem
from gitopsd.gates import METRIC_PATTERN, Gate, parse_gate
from gitopsd.model import Resources
from gitopsd.units import DURATION_PATTERN, MEMORY_PATTERN, parse_duration, parse_memory

API_VERSION = "gitopsd/v1"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"
ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
RESERVED_ENV_PREFIX = "GITOPSD_"


def problem(message: str, at: str = "") -> PydanticCustomError:
    """A validation error whose text is exactly `message`; `at` is a dotted path below the failing value."""
    return PydanticCustomError("spec", "{message}", {"message": message, "at": at})


def _shown(value: object) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


# ---- field types: each one parses, normalises and explains its own errors -------------------------


def _parsed(parse: Callable[[str | int], int], what: str) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise problem(f"expected {what}, got {_shown(value)}")
        try:
            parsed = parse(value)
        except ValueError as exc:
            raise problem(str(exc)) from None
        if parsed <= 0:
            raise problem(f"must be more than zero, got {value!r}")
        return parsed

    return convert


def _units_schema(pattern: str, description: str) -> WithJsonSchema:
    either = [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": pattern}]
    return WithJsonSchema({"anyOf": either, "description": description})


Duration = Annotated[
    int,
    BeforeValidator(_parsed(parse_duration, "a duration such as '30m' or an integer number of seconds")),
    _units_schema(DURATION_PATTERN, "Seconds, or a duration such as '90s', '30m', '1h30m' or '01:30:00'."),
]
Memory = Annotated[
    int,
    BeforeValidator(_parsed(parse_memory, "a size such as '2Gi' or an integer number of MiB")),
    _units_schema(MEMORY_PATTERN, "MiB, or a size such as '512Mi', '2Gi' (binary) or '2G' (decimal)."),
]


def _matching(pattern: str, what: str, rule: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise problem(f"invalid {what} {value!r}: {rule}")
        if what == "environment variable name" and value.upper().startswith(RESERVED_ENV_PREFIX):
            raise problem(f"invalid {what} {value!r}: the prefix {RESERVED_ENV_PREFIX} is reserved for gitopsd")
        return value

    return AfterValidator(check)


_NAME_RULE = "use lowercase letters, digits, '.', '_', '-', start and end with a letter or digit, at most 64"
Name = Annotated[
    str,
    _matching(NAME_PATTERN, "name", _NAME_RULE),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN}),
]
_METRIC = f"^{METRIC_PATTERN}$"
Metric = Annotated[
    str,
    _matching(_METRIC, "metric name", "use letters, digits, '_', '.', '/', '-', not starting with a digit"),
    WithJsonSchema({"type": "string", "pattern": _METRIC}),
]
Sha256 = Annotated[
    str,
    _matching(SHA256_PATTERN, "sha256", "expected 64 lowercase hexadecimal characters"),
    WithJsonSchema({"type": "string", "pattern": SHA256_PATTERN}),
]
EnvKey = Annotated[
    str,
    _matching(ENV_KEY_PATTERN, "environment variable name", "use letters, digits, '_', not starting with a digit"),
    WithJsonSchema({"type": "string", "pattern": ENV_KEY_PATTERN}),
]


def _quoted(what: str) -> BeforeValidator:
    def check(value: object) -> str:
        if isinstance(value, str):
            return value
        text = str(value).lower() if isinstance(value, bool) else "" if value is None else str(value)
        raise problem(f'{what} must be strings: quote it in YAML, e.g. "{text}" (got {_shown(value)})')

    return BeforeValidator(check)


EnvValue = Annotated[str, _quoted("environment values"), WithJsonSchema({"type": "string"})]
LabelValue = Annotated[str, _quoted("label values"), WithJsonSchema({"type": "string"})]


def _command(value: str) -> str:
    if not value.strip():
        raise problem("the command is empty: give the shell command that trains the model")
    return value


def _relative(value: str, root: str) -> str:
    if not value:
        raise problem(f"empty path: give a path relative to the {root}")
    if "\\" in value or "\x00" in value:
        raise problem(f"invalid path {value!r}: use '/' as the separator; no backslashes or NUL characters")
    if value.startswith("/"):
        raise problem(f"absolute path {value!r} is not allowed: give a path relative to the {root}")
    normal = posixpath.normpath(value)
    if normal == ".." or normal.startswith("../"):
        raise problem(f"path escapes the {root}: {value!r} leads outside it")
    return normal


def _output_path(value: str) -> str:
    normal = _relative(value, "output directory")
    if normal == ".":
        raise problem(f"invalid path {value!r}: name a file or directory inside the run's output directory")
    return normal


RepoPath = Annotated[str, AfterValidator(lambda value: _relative(value, "repository"))]
OutputPath = Annotated[str, AfterValidator(_output_path)]
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _uri(value: str, *, data: bool) -> str:
    """A data URI (data=True) or an artifact store URI, normalised."""
    scheme = _SCHEME.match(value)
    name = scheme.group(1) if scheme else ""
    rest = value[len(name) + 3 :]
    if data and not scheme:
        return _relative(value, "repository")
    if name == "file":
        if not rest.startswith("/"):
            raise problem(f"invalid file URI {value!r}: expected file:///absolute/path (three slashes)")
        return "file://" + posixpath.normpath(rest).replace("//", "/")
    if name == "s3":
        bucket, _, key = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise problem(f"invalid S3 URI {value!r}: {bucket!r} is not a valid bucket name")
        if data and not key.strip("/"):
            raise problem(f"invalid S3 URI {value!r}: expected s3://bucket/key")
        return value
    if name == "https" and data:
        if not urlsplit(value).hostname:
            raise problem(f"invalid URI {value!r}: expected https://host/path")
        return value
    if data:
        expected = "a repository-relative path, file:///absolute/path, s3://bucket/key or https://host/path"
    else:
        expected = "file:///absolute/path or s3://bucket/prefix"
    raise problem(f"unsupported location {value!r}: expected {expected}")


DataUri = Annotated[str, AfterValidator(lambda value: _uri(value, data=True))]
StoreUri = Annotated[str, AfterValidator(lambda value: _uri(value, data=False))]


def _gate_text(value: str) -> str:
    try:
        parse_gate(value)
    except ValueError as exc:
        raise problem(str(exc)) from None
    return value


def _alias_target(value: object) -> int | str:
    if value == "latest" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value  # an int or "latest"
    raise problem(f"an alias points at a version number (1, 2, ...) or 'latest', got {_shown(value)}")


def _api_version(value: object) -> object:
    if value != API_VERSION:
        raise problem(f"unsupported apiVersion {value!r}: this gitopsd reads {API_VERSION!r}")
    return value


GateText = Annotated[str, AfterValidator(_gate_text)]
AliasTarget = Annotated[
    int | str,
    PlainValidator(_alias_target),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"const": "latest"}]}),
]
ApiVersion = Annotated[Literal["gitopsd/v1"], BeforeValidator(_api_version)]
Count = Annotated[int, Field(ge=1)]
PluginType = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Entry point in 'gitopsd.backends'.")]
Amount = Annotated[int, Field(ge=0)]


# ---- models ---------------------------------------------------------------------------------------


class _Spec(BaseModel):
    """Strict: YAML has already typed each value, so '2' never silently becomes 2, nor 1 the string '1'."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ResourcesSpec(_Spec):
    """What one run asks for. A field left out comes from the repository defaults, then the backend."""

    cpus: Count | None = Field(default=None, description="CPU cores for the training process.")
    memory: Memory | None = Field(default=None, description="Memory, e.g. '16Gi'; stored as MiB.")
    gpus: Amount | None = Field(default=None, description="GPUs for the training process.")
    nodes: Count | None = Field(default=None, description="Nodes; more than 1 only for distributed training.")


class BackendConfig(_Spec):
    """One backend models may train on."""

    type: PluginType | None = Field(default=None, description="Plugin type; the backend's name if left out.")
    settings: dict[str, Any] = Field(default={}, description="Passed to the backend plugin as is.")


class RegistryConfig(_Spec):
    artifacts: StoreUri | None = Field(default=None, description="file:///abs/path or s3://bucket/prefix.")


class Defaults(_Spec):
    """Applied to every model's train section where the model leaves a field out."""

    backend: Name | None = Field(default=None, description="Backend of models that name none.")
    retries: Amount = Field(default=0, description="Times a failed training is retried.")
    timeout: Duration | None = Field(default=None, description="Time limit of one training.")
    resources: ResourcesSpec = ResourcesSpec()


class RepositorySpec(_Spec):
    """The root gitops.yaml: backends, registry and defaults of the whole repository."""

    api_version: ApiVersion = Field(alias="apiVersion")
    kind: Literal["Repository"]
    backends: dict[Name, BackendConfig] = Field(
        default={"local": BackendConfig(type="local")}, description="Backends by name; models refer to this name."
    )
    registry: RegistryConfig = RegistryConfig()
    defaults: Defaults = Defaults()

    @model_validator(mode="after")
    def _backends_declared(self) -> RepositorySpec:
        if not self.backends:
            raise problem("declare at least one backend (or leave 'backends' out to get 'local')", "backends")
        chosen, declared = self.defaults.backend, ", ".join(sorted(self.backends))
        if chosen is not None and chosen not in self.backends:
            raise problem(f"backend {chosen!r} is not declared (declared: {declared})", "defaults.backend")
        return self

    @classmethod
    def default(cls) -> RepositorySpec:
        """The configuration used when a repository has no gitops.yaml: one local backend, no defaults."""
        return cls.model_validate({"apiVersion": API_VERSION, "kind": "Repository"})

    def backend_type(self, name: str) -> str:
        """The plugin type of a declared backend (its name unless `type` says otherwise)."""
        return self.backends[name].type or name


class Metadata(_Spec):
    name: Name = Field(description="Unique in the repository; versions are named name@N.")
    description: str | None = Field(default=None, description="Free text; never affects training.")
    labels: dict[str, LabelValue] = Field(default={}, description="Free string labels; never affect training.")


class PythonSpec(_Spec):
    requirements: RepoPath = Field(description="requirements.txt (repository-relative) installed first.")


class TrainSpec(_Spec):
    """How to train: the command, where it runs, its environment and what it asks of the backend."""

    backend: Name | None = Field(default=None, description="A backend of gitops.yaml; else defaults.backend.")
    command: Annotated[str, AfterValidator(_command)] = Field(description="Shell command that trains the model.")
    workdir: RepoPath = Field(default=".", description="Repository-relative directory the command runs in.")
    env: dict[EnvKey, EnvValue] = Field(default={}, description="Environment variables; values are strings.")
    python: PythonSpec | None = None
    resources: ResourcesSpec = ResourcesSpec()
    retries: Amount | None = Field(default=None, description="Times a failed training is retried.")
    timeout: Duration | None = Field(default=None, description="Time limit of one training, e.g. '30m'.")


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
    patience: Count = Field(description="Reports without improvement before the run is stopped.")
    min_delta: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="Smallest change that counts.")


class ConvergenceSpec(_Spec):
    """Rules checked on the metrics while the training runs, to stop a hopeless run early."""

    nan: list[Metric] = Field(default=[], description="Metrics that must stay finite.")
    diverge: DivergeSpec | None = None
    plateau: PlateauSpec | None = None


class ModelBody(_Spec):
    """The `spec` of a model file."""

    suspend: bool = Field(default=False, description="When true, nothing is trained or moved for this model.")
    aliases: dict[Name, AliasTarget] = Field(default={}, description="Alias name -> version number or 'latest'.")
    train: TrainSpec
    data: list[DataSpec] = Field(default=[], description="Inputs, each pinned by its SHA-256.")
    outputs: OutputsSpec
    validate_gates: list[GateText] = Field(default=[], alias="validate", description="Gates, e.g. 'accuracy >= 0.9'.")
    convergence: ConvergenceSpec = ConvergenceSpec()

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
    command: str
    workdir: str
    env: dict[str, str]
    requirements: str | None
    resources: Resources
    retries: int
    timeout_s: int | None


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def choose_backend(model: ModelSpec, repo: RepositorySpec) -> tuple[str | None, str]:
    """The backend a model trains on, or None and the reason why there is none."""
    declared = ", ".join(sorted(repo.backends))
    name = model.spec.train.backend or repo.defaults.backend
    if name is None:
        if len(repo.backends) == 1:
            return next(iter(repo.backends)), ""
        why = "no backend chosen: set spec.train.backend, or defaults.backend in gitops.yaml"
        return None, f"{why} (declared: {declared})"
    if name not in repo.backends:
        return None, f"backend {name!r} is not declared in gitops.yaml (declared: {declared})"
    return name, ""


def resolve_train(model: ModelSpec, repo: RepositorySpec, *, file: str | None = None) -> ResolvedTrain:
    """Merge the model's train section with the repository defaults; SpecError if its backend is unknown."""
    backend, why = choose_backend(model, repo)
    if backend is None:
        where = file or f"model {model.name}"
        raise SpecError([SpecProblem(file=where, line=None, field="spec.train.backend", message=why)])
    train, defaults = model.spec.train, repo.defaults
    mine, theirs = train.resources, defaults.resources
    resources = Resources(
        cpus=_first(mine.cpus, theirs.cpus) or 1,
        memory_mb=_first(mine.memory, theirs.memory),
        gpus=_first(mine.gpus, theirs.gpus) or 0,
        nodes=_first(mine.nodes, theirs.nodes) or 1,
    )
    return ResolvedTrain(
        backend=backend,
        backend_type=repo.backend_type(backend),
        settings=copy.deepcopy(repo.backends[backend].settings),
        command=train.command,
        workdir=train.workdir,
        env=dict(train.env),
        requirements=train.python.requirements if train.python else None,
        resources=resources,
        retries=_first(train.retries, defaults.retries) or 0,
        timeout_s=_first(train.timeout, defaults.timeout),
    )


@functools.cache
def _either() -> TypeAdapter[RepositorySpec | ModelSpec]:
    return TypeAdapter(Annotated[RepositorySpec | ModelSpec, Field(discriminator="kind")])


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) for both kinds of spec file, chosen by `kind`; for editors and CI."""
    schema = copy.deepcopy(_either().json_schema(by_alias=True, mode="validation"))
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
