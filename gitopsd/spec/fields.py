"""The field types of spec files: each one parses, normalises and explains its own errors.

Durations become int seconds, sizes int MiB, paths normalised relative POSIX paths that cannot escape their
root; a wrong value gets a message that says what is accepted. Every number has an upper bound (the `MAX_`
constants below: generous for any real training, finite so that no spec asks for the absurd), and names are
safe as Git ref components, since versions are tagged `models/NAME/vN`. `gitopsd.spec.schema` builds the two
kinds of spec file from these types.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Callable
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from gitopsd.spec.gates import METRIC_PATTERN, parse_gate
from gitopsd.spec.text import forbidden_char
from gitopsd.units import DURATION_PATTERN, MEMORY_PATTERN, format_duration, parse_duration, parse_memory

API_VERSION = "gitopsd/v1"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"
ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
RESERVED_ENV_PREFIX = "GITOPSD_"

# ---- upper bounds ---------------------------------------------------------------------------------------
MAX_CPUS = 10_000
MAX_GPUS = 10_000
MAX_NODES = 10_000
MAX_MEMORY_MIB = 64 * 1024 * 1024  # 64Ti
MAX_TIMEOUT_S = 366 * 86_400
MAX_RETRIES = 100
MAX_CHECKPOINT_BEFORE_S = 6 * 3600
"""Latest a checkpoint signal may come before a job's time limit (Slurm's own bound is 65535 s)."""
MAX_SEGMENTS = 1000
MAX_RUNS_KEEP = 10_000
MAX_PATIENCE = 1_000_000
MAX_OBJECT_LOCK_DAYS = 36_500
MAX_VERSION = 1_000_000_000
MAX_MODULES = 64
MAX_ALIASES = 100
"""Aliases one model may declare: each is a registry row, an audit tag and an event when it moves or is refused."""
MAX_MODULE_NAME = 200


def problem(message: str, at: str = "") -> PydanticCustomError:
    """A validation error whose text is exactly `message`; `at` is a dotted path below the failing value."""
    return PydanticCustomError("spec", "{message}", {"message": message, "at": at})


def _short(value: object) -> str:
    """repr(value), cut to a length that fits one line of an error message."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else f"<{value.bit_length()}-bit integer>"
    return text if len(text) <= 80 else text[:77] + "..."


def _shown(value: object) -> str:
    return "null" if value is None else f"{type(value).__name__} {_short(value)}"


# ---- field types: each one parses, normalises and explains its own errors -------------------------


def _parsed(parse: Callable[[str | int], int], what: str, most: int, most_text: str) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise problem(f"expected {what}, got {_shown(value)}")
        try:
            parsed = parse(value)
        except ValueError as exc:
            raise problem(str(exc) if len(str(exc)) <= 400 else f"expected {what}, got {_shown(value)}") from None
        if parsed <= 0:
            raise problem(f"must be more than zero, got {_short(value)}")
        if parsed > most:
            raise problem(f"must be at most {most_text}, got {_short(value)}")
        return parsed

    return convert


def _units_schema(pattern: str, description: str, most: int) -> WithJsonSchema:
    either = [{"type": "integer", "minimum": 1, "maximum": most}, {"type": "string", "pattern": pattern}]
    return WithJsonSchema({"anyOf": either, "description": description})


Duration = Annotated[
    int,
    BeforeValidator(
        _parsed(
            parse_duration,
            "a duration such as '30m' or an integer number of seconds",
            MAX_TIMEOUT_S,
            f"{format_duration(MAX_TIMEOUT_S)} ({MAX_TIMEOUT_S} seconds)",
        )
    ),
    _units_schema(
        DURATION_PATTERN, "Seconds, or a duration such as '90s', '30m', '1h30m' or '01:30:00'.", MAX_TIMEOUT_S
    ),
]
CheckpointBefore = Annotated[
    int,
    BeforeValidator(
        _parsed(
            parse_duration,
            "a duration such as '2m' or an integer number of seconds",
            MAX_CHECKPOINT_BEFORE_S,
            f"{format_duration(MAX_CHECKPOINT_BEFORE_S)} ({MAX_CHECKPOINT_BEFORE_S} seconds)",
        )
    ),
    _units_schema(DURATION_PATTERN, "Seconds, or a duration such as '90s' or '2m'.", MAX_CHECKPOINT_BEFORE_S),
]
Memory = Annotated[
    int,
    BeforeValidator(_parsed(parse_memory, "a size such as '2Gi' or an integer number of MiB", MAX_MEMORY_MIB, "64Ti")),
    _units_schema(MEMORY_PATTERN, "MiB, or a size such as '512Mi', '2Gi' (binary) or '2G' (decimal).", MAX_MEMORY_MIB),
]


def _matching(pattern: str, what: str, rule: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):  # fullmatch: `$` alone would let a trailing newline through
            raise problem(f"invalid {what} {_short(value)}: {rule}")
        if what == "environment variable name" and value.upper().startswith(RESERVED_ENV_PREFIX):
            raise problem(f"invalid {what} {value!r}: the prefix {RESERVED_ENV_PREFIX} is reserved for gitopsd")
        return value

    return AfterValidator(check)


def _ref_safe(value: str) -> str:
    """What `git check-ref-format` refuses in a component of `models/NAME/vN` that NAME_PATTERN lets through."""
    if ".." in value:
        raise problem(f"invalid name {value!r}: '..' is not allowed (names become Git tags models/NAME/vN)")
    if value.endswith(".lock"):
        raise problem(f"invalid name {value!r}: a name cannot end with '.lock' (names become Git tags models/NAME/vN)")
    return value


_NAME_RULE = "use lowercase letters, digits, '.', '_', '-', start and end with a letter or digit, at most 64"
NAME_SCHEMA_PATTERN = r"^(?!.*\.\.)(?!.*\.lock$)[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"
Name = Annotated[
    str,
    _matching(NAME_PATTERN, "name", _NAME_RULE),
    AfterValidator(_ref_safe),
    WithJsonSchema({"type": "string", "pattern": NAME_SCHEMA_PATTERN}),
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


@functools.lru_cache(maxsize=1024)
def _relative(value: str, root: str) -> str:
    """`value` as a normal relative path under `root`, or a problem. Remembered (a bounded cache: a repository
    cannot grow it) because ten thousand models name the same few workdirs and output files three times each."""
    if not value:
        raise problem(f"empty path: give a path relative to the {root}")
    if "\\" in value or "\x00" in value:
        raise problem(f"invalid path {_short(value)}: use '/' as the separator; no backslashes or NUL characters")
    char = forbidden_char(value)
    if char is not None:  # the run's workdir is written into job scripts (`#SBATCH --chdir`, `cd`)
        raise problem(f"invalid path {_short(value)}: {char} is not allowed in a path")
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
    char = forbidden_char(value)
    if char is not None:  # `\s` in the gate grammar would accept a newline
        raise problem(f"invalid gate {_short(value)}: {char} is not allowed in a gate")
    try:
        parse_gate(value)
    except ValueError as exc:
        raise problem(str(exc)) from None
    return value


def _alias_target(value: object) -> int | str:
    if value == "latest" or (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_VERSION):
        return value  # an int or "latest"
    expected = f"a version number (1, 2, ... at most {MAX_VERSION}) or 'latest'"
    raise problem(f"an alias points at {expected}, got {_shown(value)}")


def _api_version(value: object) -> object:
    if value != API_VERSION:
        raise problem(f"unsupported apiVersion {value!r}: this gitopsd reads {API_VERSION!r}")
    return value


GateText = Annotated[str, AfterValidator(_gate_text)]
AliasTarget = Annotated[
    int | str,
    PlainValidator(_alias_target),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_VERSION}, {"const": "latest"}]}),
]
ApiVersion = Annotated[Literal["gitopsd/v1"], BeforeValidator(_api_version)]
PluginType = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Entry point in 'gitopsd.backends'.")]
Cpus = Annotated[int, Field(ge=1, le=MAX_CPUS)]
Gpus = Annotated[int, Field(ge=0, le=MAX_GPUS)]
Nodes = Annotated[int, Field(ge=1, le=MAX_NODES)]
Retries = Annotated[int, Field(ge=0, le=MAX_RETRIES)]
Segments = Annotated[int, Field(ge=1, le=MAX_SEGMENTS)]
RunsKeep = Annotated[int, Field(ge=0, le=MAX_RUNS_KEEP)]
Patience = Annotated[int, Field(ge=1, le=MAX_PATIENCE)]
LockDays = Annotated[int, Field(ge=1, le=MAX_OBJECT_LOCK_DAYS)]
CommandText = Annotated[str, AfterValidator(_command)]

#: An environment module, NAME or NAME/VERSION (Lmod also nests: a/b/c). It is written into a job script and
#: handed to `module load`, so it is held to a strict grammar: each part starts with a letter, digit or '_'
#: (never '-': it would be read as an option of `module`), and no part is '.' or '..' (no path tricks).
MODULE_PATTERN = r"^[A-Za-z0-9_+][A-Za-z0-9_.+-]*(/[A-Za-z0-9_+.][A-Za-z0-9_.+-]*)*$"


def _module_name(value: str) -> str:
    if len(value) > MAX_MODULE_NAME:
        raise problem(f"invalid module {_short(value)}: at most {MAX_MODULE_NAME} characters")
    if not re.fullmatch(MODULE_PATTERN, value) or any(part in (".", "..") for part in value.split("/")):
        raise problem(
            f"invalid module {_short(value)}: use NAME or NAME/VERSION of letters, digits, '_', '.', '+', '-', "
            "each part starting with a letter, digit or '_' (e.g. gcc/12.2.0, cuda/12.1)"
        )
    return value


ModuleName = Annotated[
    str,
    AfterValidator(_module_name),
    WithJsonSchema({"type": "string", "pattern": MODULE_PATTERN, "maxLength": MAX_MODULE_NAME}),
]

BASE_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?@([1-9][0-9]*|[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?)$"


def _base_version(value: str) -> str:
    """NAME@N names a version: N, all digits, from 1 to MAX_VERSION (a larger one is never stored, and would
    not fit the registry's integers)."""
    number = value.rpartition("@")[2]
    if number.isdigit() and not 0 < int(number) <= MAX_VERSION:
        raise problem(f"invalid base model {_short(value)}: a version number is 1, 2, ... at most {MAX_VERSION}")
    return value


BaseRef = Annotated[
    str,
    _matching(BASE_PATTERN, "base model", "NAME@N (a version) or NAME@ALIAS (e.g. blobs@production)"),
    AfterValidator(_base_version),
    WithJsonSchema({"type": "string", "pattern": BASE_PATTERN}),
]
