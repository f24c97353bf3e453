"""The field types of spec files: each one parses, normalises and explains its own errors.

Durations become int seconds, sizes int MiB, paths normalised relative POSIX paths that cannot escape their
root; a wrong value gets a message that says what is accepted. `gitopsd.spec.schema` builds the two kinds of spec file
from these types.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from gitopsd.spec.gates import METRIC_PATTERN, parse_gate
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
CommandText = Annotated[str, AfterValidator(_command)]

BASE_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?@([1-9][0-9]*|[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?)$"
BaseRef = Annotated[
    str,
    _matching(BASE_PATTERN, "base model", "NAME@N (a version) or NAME@ALIAS (e.g. blobs@production)"),
    WithJsonSchema({"type": "string", "pattern": BASE_PATTERN}),
]
