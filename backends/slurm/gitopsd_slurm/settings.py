"""The Slurm backend's settings, read once from `gitops.yaml` and checked before anything is submitted.

`backends: {NAME: {type: slurm, settings: {...}}}` is passed to the plugin as plain YAML values. This module
turns them into frozen dataclasses, with cluster-wide defaults (partition, account, qos, time, ...) and limits,
and refuses a wrong or unknown key with a message that names the backend, the key, the value and what is
expected, so that a typo in Git is refused when the commit is loaded instead of submitting the wrong job.

These values come from the repository and end up in `#SBATCH` lines, command lines and HTTP requests, so
each follows Slurm's own grammar: partition, account, QOS and cluster names are `[A-Za-z0-9_.-]+` (a partition
may be a comma-separated list), a constraint is a feature expression (`name`, `&`, `|`, `!`, `[...]`, `(...)`,
`*N`), and no string holds a control character, so none can add a line to a job script. Every number has a
finite upper bound.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitopsd.errors import PermanentError

TRANSPORTS = ("cli", "rest")
ACCOUNTING = ("auto", "slurmdbd", "jobcomp", "none")
DEFAULT_API_VERSION = "v0.0.38"
_TOP_KEYS = (
    "transport", "cluster", "partition", "account", "qos", "constraint", "exclusive", "time", "slurm_conf",
    "rest", "limits", "accounting", "poll_min_s", "poll_max_s", "check_interval_s", "command_timeout_s", "grace_s",
    "runs_dir",
)  # fmt: skip
_REST_KEYS = ("url", "api_version", "user", "token_file", "token_env", "token_lifespan_s")
_LIMIT_KEYS = ("max_gpus_per_node", "max_cpus_per_node", "max_memory_mb_per_node", "max_nodes")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: A Slurm partition, account, QOS or cluster name.
NAME = r"[A-Za-z0-9_.-]+"
_PARTITIONS = re.compile(rf"{NAME}(?:,{NAME})*")
_NAME = re.compile(NAME)
_USER = re.compile(r"[A-Za-z0-9_.@-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_API_VERSION = re.compile(r"v\d+(?:\.\d+){0,3}")
_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f]+")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONSTRAINT_TOKEN = re.compile(rf"{NAME}|\*\d+|[&|!()\[\]]")
MAX_TEXT = 1024
MAX_TIME_MIN = 366 * 24 * 60
_COUNT_MOST = {
    "max_gpus_per_node": 10_000,
    "max_cpus_per_node": 100_000,
    "max_memory_mb_per_node": 64 * 1024 * 1024,
    "max_nodes": 100_000,
    "token_lifespan_s": 366 * 86_400,
    "grace_s": 3_600,
}
_SECONDS_MOST = 86_400.0


def is_constraint(text: str) -> bool:
    """Whether `text` is a Slurm feature expression: features joined by `&` (and) or `|` (or), each maybe
    negated (`!`), counted (`*N`), or grouped in `(...)` or `[...]`; e.g. `a100&(ib|roce)`, `[rack1*2&rack2*4]`."""
    tokens = _CONSTRAINT_TOKEN.findall(text)
    if "".join(tokens) != text:
        return False
    closing = {"(": ")", "[": "]"}
    opened: list[str] = []
    operand = True  # an operand (feature, '!', '(' or '[') comes next, else an operator or a close
    counted = False
    for token in tokens:
        if operand:
            if token in closing:
                opened.append(closing[token])
            elif _NAME.fullmatch(token):
                operand, counted = False, False
            elif token != "!":
                return False
        elif token in ("&", "|"):
            operand = True
        elif token.startswith("*") and not counted:
            counted = True
        elif token in (")", "]") and opened and opened[-1] == token:
            opened.pop()
            counted = False
        else:
            return False
    return not operand and not opened


@dataclass(frozen=True, kw_only=True)
class RestSettings:
    """How to reach slurmrestd: base URL, OpenAPI plugin version, and where the JWT comes from."""

    url: str
    api_version: str = DEFAULT_API_VERSION
    user: str | None = None
    token_file: Path | None = None
    token_env: str | None = None
    token_lifespan_s: int = 3600


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Caps set in gitops.yaml; each one left out comes from the cluster's own nodes."""

    max_gpus_per_node: int | None = None
    max_cpus_per_node: int | None = None
    max_memory_mb_per_node: int | None = None
    max_nodes: int | None = None


@dataclass(frozen=True, kw_only=True)
class SlurmSettings:
    """Everything the backend was configured with; see the module docstring and README's "Slurm backend"."""

    transport: str = "cli"
    cluster: str = ""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    time_min: int | None = None
    slurm_conf: Path | None = None
    rest: RestSettings | None = None
    limits: Limits = field(default_factory=Limits)
    accounting: str = "auto"
    poll_min_s: float = 1.0
    poll_max_s: float = 15.0
    check_interval_s: float = 30.0
    command_timeout_s: float = 30.0
    grace_s: int = 10
    runs_dir: Path | None = None  # the operator's shared run root (a host path: never from a repository)


class _Reader:
    """Reads one mapping of settings, naming `where` (e.g. "backend 'hpc' setting rest.url") in every error."""

    def __init__(self, backend: str, prefix: str, values: Mapping[str, Any], known: tuple[str, ...]) -> None:
        self.backend, self.prefix, self.values = backend, prefix, values
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
                raise self.error(str(key), values[key], "no such setting" + hint)

    def error(self, key: str, value: Any, expected: str) -> PermanentError:
        return PermanentError(f"backend {self.backend!r} setting {self.prefix}{key}: {expected}, got {value!r}")

    def text(
        self, key: str, default: str | None = None, grammar: re.Pattern[str] | None = None, expected: str = ""
    ) -> str | None:
        """A string setting: one line, no control characters, at most MAX_TEXT characters, and when `grammar`
        is given, matching it whole (`expected` says what it accepts)."""
        value = self.values.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, value, "expected a non-empty string")
        if len(value) > MAX_TEXT:
            raise self.error(key, value[:60] + "...", f"expected at most {MAX_TEXT} characters, got {len(value)}")
        if _CONTROL.search(value):
            raise self.error(key, value, "expected one line of text without control characters")
        if grammar is not None and not grammar.fullmatch(value):
            raise self.error(key, value, f"expected {expected}")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.values.get(key, choices[0])
        if value not in choices:
            raise self.error(key, value, f"expected one of {', '.join(choices)}")
        return str(value)

    def flag(self, key: str) -> bool:
        value = self.values.get(key, False)
        if not isinstance(value, bool):
            raise self.error(key, value, "expected true or false")
        return value

    def count(self, key: str, default: int | None = None) -> int | None:
        value = self.values.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise self.error(key, value, "expected a positive integer")
        most = _COUNT_MOST[key]
        if value is not None and value > most:
            raise self.error(key, value, f"expected at most {most}")
        return value

    def seconds(self, key: str, default: float, *, zero_ok: bool) -> float:
        value = self.values.get(key, default)
        bad = (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
            or (value == 0 and not zero_ok)
        )
        if bad:
            raise self.error(key, value, "expected a number of seconds" + (" (0 or more)" if zero_ok else " above 0"))
        if value > _SECONDS_MOST:
            raise self.error(key, value, f"expected at most {_SECONDS_MOST:g} seconds")
        return float(value)

    def section(self, key: str) -> Mapping[str, Any]:
        value = self.values.get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(key, value, "expected a mapping")
        return value


def parse_time_minutes(value: Any) -> int:
    """Minutes of a Slurm time limit: an integer of minutes, Slurm's "[D-]HH:MM:SS" / "MM:SS", or "90m", "2h".

    Raises ValueError on anything else. Slurm counts whole minutes, so seconds are rounded up.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    if not isinstance(value, str):
        raise ValueError("expected minutes or a duration text")
    text = value.strip()
    if match := re.fullmatch(r"(\d+)\s*([smhd])", text):
        seconds = int(match[1]) * _UNIT_S[match[2]]
    elif match := re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text):
        days = int(match[1] or 0)
        parts = [int(p) for p in match.groups()[1:] if p is not None]
        if match[1] is not None:  # D-HH[:MM[:SS]]
            parts += [0] * (3 - len(parts))
            hours, minutes, secs = parts
        elif len(parts) == 3:  # HH:MM:SS
            hours, minutes, secs = parts
        elif len(parts) == 2:  # MM:SS
            hours, minutes, secs = 0, parts[0], parts[1]
        else:  # MM
            hours, minutes, secs = 0, parts[0], 0
        seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    else:
        raise ValueError("expected minutes (e.g. 90), Slurm's [D-]HH:MM:SS, or a number with s, m, h or d")
    if seconds <= 0:
        raise ValueError("must be positive")
    return -(-seconds // 60)


def _time_minutes(value: Any) -> int:
    if isinstance(value, str) and len(value) > 32:
        raise ValueError("expected at most 32 characters")
    minutes = parse_time_minutes(value)
    if minutes > MAX_TIME_MIN:
        raise ValueError(f"expected at most {MAX_TIME_MIN} minutes (366 days)")
    return minutes


def parse_settings(backend: str, values: Mapping[str, Any]) -> SlurmSettings:
    """Check and convert the settings of Slurm backend `backend`; PermanentError names what is wrong."""
    top = _Reader(backend, "", values, _TOP_KEYS)
    transport = top.choice("transport", TRANSPORTS)
    time_min = None
    if values.get("time") is not None:
        try:
            time_min = _time_minutes(values["time"])
        except ValueError as exc:
            raise top.error("time", values["time"], str(exc)) from None
    rest = None
    section = top.section("rest")
    if section or transport == "rest":
        rest_reader = _Reader(backend, "rest.", section, _REST_KEYS)
        url = rest_reader.text("url", None, _URL, "the http(s):// URL of slurmrestd")
        if url is None:
            raise rest_reader.error("url", url, "expected the http(s):// URL of slurmrestd")
        token_file = rest_reader.text("token_file")
        api_version = rest_reader.text("api_version", DEFAULT_API_VERSION, _API_VERSION, "a version such as v0.0.38")
        rest = RestSettings(
            url=url.rstrip("/"),
            api_version=api_version or DEFAULT_API_VERSION,
            user=rest_reader.text("user", None, _USER, "a user name (letters, digits, '_', '.', '@', '-')"),
            token_file=Path(token_file) if token_file else None,
            token_env=rest_reader.text("token_env", None, _ENV_NAME, "an environment variable name"),
            token_lifespan_s=rest_reader.count("token_lifespan_s", 3600) or 3600,
        )
    limits = _Reader(backend, "limits.", top.section("limits"), _LIMIT_KEYS)
    slurm_conf = top.text("slurm_conf")
    poll_min = top.seconds("poll_min_s", 1.0, zero_ok=True)
    poll_max = top.seconds("poll_max_s", 15.0, zero_ok=True)
    if poll_max < poll_min:
        raise top.error("poll_max_s", poll_max, f"expected at least poll_min_s ({poll_min:g})")
    names = "a Slurm name (letters, digits, '_', '.', '-')"
    constraint = top.text("constraint")
    if constraint is not None and not is_constraint(constraint):
        raise top.error(
            "constraint", constraint, "expected a Slurm feature expression such as a100, a100&ib, gpu|cpu, [r1*2&r2*4]"
        )
    return SlurmSettings(
        transport=transport,
        cluster=top.text("cluster", backend, _NAME, names) or backend,
        partition=top.text("partition", None, _PARTITIONS, "a Slurm partition name, or several separated by ','"),
        account=top.text("account", None, _NAME, names),
        qos=top.text("qos", None, _NAME, names),
        constraint=constraint,
        exclusive=top.flag("exclusive"),
        time_min=time_min,
        slurm_conf=Path(slurm_conf) if slurm_conf else None,
        rest=rest,
        limits=Limits(**{key: limits.count(key) for key in _LIMIT_KEYS}),
        accounting=top.choice("accounting", ACCOUNTING),
        poll_min_s=poll_min,
        poll_max_s=poll_max,
        check_interval_s=top.seconds("check_interval_s", 30.0, zero_ok=True),
        command_timeout_s=top.seconds("command_timeout_s", 30.0, zero_ok=False),
        grace_s=top.count("grace_s", 10) or 10,
        runs_dir=_runs_dir(top),
    )


def _runs_dir(top: _Reader) -> Path | None:
    """`runs_dir`: an absolute path, normalised; where this backend's run directories go (`runs_dir/RUN_ID`), on
    the filesystem the compute nodes share. Whether it exists is checked at start-up (`runs_dir_problem`)."""
    value = top.text("runs_dir")
    if value is None:
        return None
    if not value.startswith("/"):
        raise top.error("runs_dir", value, "expected an absolute path on the filesystem the compute nodes share")
    return Path(os.path.normpath(value))
