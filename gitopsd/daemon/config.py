"""The daemon's own configuration: a TOML file, validated strictly, with secrets only by reference.

`gitopsd run --config FILE` reads it; SIGHUP reads it again. Secrets (webhook secrets, backend credentials)
never appear in the file itself: a value is `file:/path`, `env:NAME` or `credential:NAME` (a systemd
credential in `$CREDENTIALS_DIRECTORY`), resolved when the daemon needs it and never logged.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from gitopsd.backends.protocol import SHARED_STATE_ENV
from gitopsd.errors import PermanentError
from gitopsd.units import parse_duration

SECRET_REF = r"^(file:|env:|credential:).+"
NAME = r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"


def _seconds(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a duration such as '60s', '5m' or a number of seconds")
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds


Seconds = Annotated[int, BeforeValidator(_seconds)]
SecretRef = Annotated[str, Field(pattern=SECRET_REF, description="file:/path, env:NAME or credential:NAME")]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Webhooks(_Config):
    """Secrets of the forge webhooks that may trigger this repository (each by reference)."""

    github: SecretRef | None = None
    gitlab: SecretRef | None = None
    gitea: SecretRef | None = None
    bitbucket: SecretRef | None = None
    generic: SecretRef | None = None


class RepositoryConfig(_Config):
    name: Annotated[str, Field(pattern=NAME)]
    url: str = Field(min_length=1, description="Git URL or local path of the GitOps repository.")
    branch: str | None = None
    poll_interval: Seconds = 60
    watch: Path | None = Field(
        default=None, description="A local bare repository whose refs to watch (default: `url` if it is one)."
    )
    webhooks: Webhooks = Webhooks()

    def watched(self) -> Path | None:
        """The bare repository to watch for pushes, if any."""
        if self.watch is not None:
            return self.watch
        path = Path(self.url).expanduser()
        return path if "://" not in self.url and (path / "HEAD").is_file() and (path / "refs").is_dir() else None


class HttpConfig(_Config):
    listen: str = Field(default="127.0.0.1:9090", pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):[0-9]{1,5}$")
    max_body_bytes: int = Field(default=1 << 20, ge=1024)

    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class DaemonConfig(_Config):
    state_dir: Path
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    http: HttpConfig = HttpConfig()
    repositories: list[RepositoryConfig] = Field(min_length=1)
    environment: dict[str, SecretRef | str] = Field(
        default={},
        description="Variables for backends (e.g. AWS_SHARED_CREDENTIALS_FILE, SLURM_CONF); secrets by reference.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> DaemonConfig:
        names = [r.name for r in self.repositories]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"repository names must be unique: {', '.join(duplicates)} used twice")
        return self

    def state_dir_of(self, repo: RepositoryConfig) -> Path:
        return self.state_dir / repo.name


def load_config(path: Path) -> DaemonConfig:
    """Parse and validate FILE; every problem is named with its TOML path."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise PermanentError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PermanentError(f"{path}: invalid TOML: {exc}") from exc
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: {_where(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise PermanentError("\n".join(lines)) from None


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def resolve_secret(ref: str) -> bytes:
    """The secret a reference names. Raises PermanentError naming the reference (never the secret)."""
    kind, _, rest = ref.partition(":")
    try:
        if kind == "file":
            return Path(rest).read_bytes().strip()
        if kind == "env":
            return os.environ[rest].encode()
        if kind == "credential":
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise PermanentError(
                    f"secret {ref}: $CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)"
                )
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", rest):
                raise PermanentError(f"secret {ref}: not a credential name")
            return (Path(directory) / rest).read_bytes().strip()
    except OSError as exc:
        raise PermanentError(f"secret {ref}: cannot read: {exc.strerror}") from exc
    except KeyError:
        raise PermanentError(f"secret {ref}: the variable is not set") from None
    raise PermanentError(f"secret {ref}: expected file:, env: or credential:")


def apply_environment(config: DaemonConfig) -> None:
    """Export the configured variables for backends (secret references resolved), and the state directory
    every repository shares, where backends keep what must be host-wide (the nvidia backend's GPU leases)."""
    os.environ[SHARED_STATE_ENV] = str(config.state_dir)
    for name, value in config.environment.items():
        os.environ[name] = resolve_secret(value).decode() if re.match(SECRET_REF, value) else value
