"""The operator's configuration: a TOML file, validated strictly, with secrets only by reference.

`gitopsd run --config FILE` reads it; SIGHUP reads it again. The command line reads the same schema from
`--config FILE`, `$GITOPSD_CONFIG` or `$XDG_CONFIG_HOME/gitopsd/config.toml` (`state_dir` and `repositories` are
then optional). Everything that carries or reaches a credential, a host or a path outside a repository lives
here and never in a repository: backends and their connections (`[backends.NAME]`, with what a repository may
set under `allow` and the caps on what it may ask for), the artifact store (`[registry]`), for each repository
the backends it may use and its own store, and team policy (`[[policies]]`, `gitopsd.spec.policy`). Secrets
(webhook secrets, backend credentials) never appear in the file itself: a value is `file:/path`, `env:NAME` or
`credential:NAME` (a systemd credential in `$CREDENTIALS_DIRECTORY`), resolved when the daemon needs it and never
logged.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gitopsd.backends.protocol import SHARED_STATE_ENV
from gitopsd.daemon.apiauth import listen_problem, local_listen_problem
from gitopsd.daemon.lease import Timing
from gitopsd.errors import PermanentError
from gitopsd.reconcile.configsource import SECRET_REF, setup_of
from gitopsd.reconcile.outputs import OutputLimits
from gitopsd.source.verify import VerifyPolicy
from gitopsd.spec.fields import StoreUri
from gitopsd.spec.operator import AbsolutePath, Operator, OperatorBackend, OperatorRegistry
from gitopsd.spec.policy import PolicyRule, applicable
from gitopsd.units import parse_duration

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


class OutputLimitsConfig(_Config):
    """How much of a training's outputs gitopsd accepts (see `gitopsd.reconcile.outputs.OutputLimits`)."""

    artifact_bytes: Annotated[int, Field(ge=1)] = OutputLimits.artifact_bytes
    artifact_files: Annotated[int, Field(ge=1)] = OutputLimits.artifact_files
    metrics_bytes: Annotated[int, Field(ge=1)] = OutputLimits.metrics_bytes
    metrics_line_bytes: Annotated[int, Field(ge=1)] = OutputLimits.metrics_line_bytes

    def limits(self) -> OutputLimits:
        return OutputLimits(**self.model_dump())


class VerifyConfig(_Config):
    """Signed commits: every commit between the applied one and a new tip must be signed by an allowed key."""

    allowed_signers: Path | None = Field(default=None, description="SSH allowed-signers file (git's format).")
    gpg_keyring: Path | None = Field(default=None, description="OpenPGP keyring file or GnuPG home directory.")
    since: str | None = Field(default=None, description="A trusted commit; commits it reaches are not checked.")
    max_commits: int = Field(default=10_000, ge=1, description="The most new commits one pass checks.")

    @model_validator(mode="after")
    def _valid(self) -> VerifyConfig:
        self.policy()  # ValueError names what is wrong
        return self

    def policy(self) -> VerifyPolicy:
        return VerifyPolicy(allowed_signers=self.allowed_signers, gpg_keyring=self.gpg_keyring, since=self.since,
                            max_commits=self.max_commits)  # fmt: skip


class RepositoryConfig(_Config):
    name: Annotated[str, Field(pattern=NAME)]
    url: str = Field(min_length=1, description="Git URL or local path of the GitOps repository.")
    branch: str | None = None
    poll_interval: Seconds = 60
    watch: Path | None = Field(
        default=None, description="A local bare repository whose refs to watch (default: `url` if it is one)."
    )
    webhooks: Webhooks = Webhooks()
    backends: list[str] | None = Field(
        default=None, description="The operator's backends this repository may use (default: all of them)."
    )
    artifacts: StoreUri | None = Field(
        default=None, description="This repository's own artifact store (default: [registry] artifacts/<name>)."
    )
    verify: VerifyConfig | None = Field(default=None, description="Require signed commits (default: no check).")
    commit_url: str | None = Field(
        default=None,
        description="The dashboard links a commit here: an http(s) URL with {commit}, e.g. "
        "https://github.com/org/models/commit/{commit}.",
    )

    @field_validator("commit_url")
    @classmethod
    def _commit_link(cls, value: str | None) -> str | None:
        return value if value is None else check_commit_url(value)

    def watched(self) -> Path | None:
        """The bare repository to watch for pushes, if any."""
        if self.watch is not None:
            return self.watch
        path = Path(self.url).expanduser()
        return path if "://" not in self.url and (path / "HEAD").is_file() and (path / "refs").is_dir() else None


class StandbyConfig(_Config):
    """One active daemon per repository across login nodes: a lease in a directory they all share
    (see `gitopsd.daemon.standby`). Unset: no lease, every daemon acts."""

    lease_dir: AbsolutePath = Field(description="A directory every login node sees (NFS, Lustre, GPFS).")
    ttl: Seconds = Field(default=30, description="How long a lease lasts without renewal.")
    renew: Seconds = Field(default=10, description="How often the active daemon renews, and a standby looks.")
    max_clock_skew: Seconds = Field(default=5, description="The most the login nodes' clocks may differ.")

    @model_validator(mode="after")
    def _keeps_a_lease(self) -> StandbyConfig:
        problem = self.timing().problem()
        if problem:
            raise ValueError(problem)
        return self

    def timing(self) -> Timing:
        return Timing(ttl=self.ttl, renew=self.renew, max_clock_skew=self.max_clock_skew)


LISTEN = r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):[0-9]{1,5}$"


class HttpConfig(_Config):
    """The HTTP listener; who may use its API is `gitopsd.daemon.apiauth`'s to say."""

    listen: str = Field(default="127.0.0.1:9090", pattern=LISTEN)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    token: SecretRef | None = Field(
        default=None, description="The bearer token /api/v1/* and /metrics require, by reference."
    )
    local_listen: str | None = Field(
        default=None, pattern=LISTEN, description="A loopback-only listener serving the API without a token."
    )

    @model_validator(mode="after")
    def _api_is_protected(self) -> HttpConfig:
        problem = listen_problem(self.listen, has_token=self.token is not None)
        if problem is None and self.local_listen is not None:
            problem = local_listen_problem(self.local_listen, self.listen)
        if problem:
            raise ValueError(problem)
        return self

    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


NotificationEvent = Literal["version-registered", "gate-failed", "training-failed", "alias-moved", "commit-rejected"]
NOTIFICATION_EVENTS: tuple[str, ...] = get_args(NotificationEvent)
"""The events a `webhook` or `slack` notification may send (docs/notifications.md)."""

STATUS_KINDS = ("github", "gitlab", "gitea")
"""The kinds of notification that post commit statuses (Forgejo speaks Gitea's API: kind `gitea`)."""

_DEFAULT_API = {"github": "https://api.github.com", "gitlab": "https://gitlab.com"}


class NotificationConfig(_Config):
    """One sink of notifications (`[[notifications]]`): commit statuses on a forge, or events to a webhook.

    Everything here is the operator's: the address, the project and the credentials (by reference, resolved at
    send time). A repository chooses none of it."""

    name: Annotated[str, Field(pattern=NAME)]
    kind: Literal["github", "gitlab", "gitea", "webhook", "slack"]
    url: str | None = Field(
        default=None,
        description="github/gitlab/gitea: the API base URL (default https://api.github.com, https://gitlab.com; "
        "required for gitea); webhook: the receiver's URL; slack: the incoming-webhook URL by reference.",
    )
    project: str | None = Field(
        default=None, description="github/gitea: OWNER/REPO; gitlab: the project id or its path GROUP/PROJECT."
    )
    token: SecretRef | None = Field(default=None, description="github/gitlab/gitea: the API token, by reference.")
    secret: SecretRef | None = Field(default=None, description="webhook: the HMAC-SHA256 key, by reference.")
    repositories: list[str] | None = Field(default=None, description="Which repositories (default: all).")
    events: list[NotificationEvent] | None = Field(
        default=None, description="webhook/slack: which events (default: all)."
    )
    context: str | None = Field(
        default=None, max_length=255, description="Statuses: the status context (default gitopsd/<repository>)."
    )
    target_url: str | None = Field(default=None, description="Statuses: the link a status carries (default none).")
    timeout: Seconds = Field(default=10, description="Seconds one request may take.")
    max_pending: int = Field(default=1000, ge=1, description="Deliveries kept for this sink while it fails.")

    @model_validator(mode="after")
    def _complete(self) -> NotificationConfig:
        if self.kind in STATUS_KINDS:
            if not self.project:
                raise ValueError(f"kind {self.kind!r} needs `project` (the repository on the forge)")
            if self.token is None:
                raise ValueError(f"kind {self.kind!r} needs `token` (file:, env: or credential:)")
            if self.kind in ("github", "gitea") and not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+",
                                                                     self.project):  # fmt: skip
                raise ValueError(f"project {self.project!r}: expected OWNER/REPO")
            if self.kind == "gitea" and not self.url:
                raise ValueError("kind 'gitea' needs `url`, the Gitea or Forgejo server (https://host)")
            if self.events is not None:
                raise ValueError(f"kind {self.kind!r} posts commit statuses: `events` is for webhook and slack")
        else:
            for field_name in ("project", "token", "context", "target_url"):
                if getattr(self, field_name) is not None:
                    raise ValueError(f"`{field_name}` is for commit statuses (github, gitlab, gitea)")
        if self.kind == "webhook" and (not self.url or self.secret is None):
            raise ValueError("kind 'webhook' needs `url` (the receiver) and `secret` (the HMAC key, by reference)")
        if self.kind == "slack" and (not self.url or not re.match(SECRET_REF, self.url)):
            raise ValueError("kind 'slack' needs `url`, the incoming-webhook URL by reference (it is a secret): "
                             "file:, env: or credential:")  # fmt: skip
        if self.kind != "webhook" and self.secret is not None:
            raise ValueError("`secret` is for kind 'webhook'")
        if self.kind != "slack" and self.url is not None and not re.match(r"^https?://[^\s/]+", self.url):
            raise ValueError(f"url {self.url!r}: expected http(s)://host[/path]")
        return self

    def api(self) -> str:
        """The base URL requests go to (for slack: the reference of the secret URL)."""
        return (self.url or _DEFAULT_API.get(self.kind, "")).rstrip("/")

    def context_for(self, repository: str) -> str:
        return self.context or f"gitopsd/{repository}"

    def serves(self, repository: str) -> bool:
        return self.repositories is None or repository in self.repositories


class DaemonConfig(_Config):
    _source: tuple[Path, str] | None = PrivateAttr(default=None)  # the file and text `load_config` parsed
    state_dir: Path | None = Field(default=None, description="Required by `gitopsd run`.")
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    http: HttpConfig = HttpConfig()
    repositories: list[RepositoryConfig] = Field(default=[], description="At least one for `gitopsd run`.")
    backends: dict[Annotated[str, Field(pattern=NAME)], OperatorBackend] = Field(
        default_factory=lambda: Operator().backends,
        description="The backends repositories may train on (default: one `local` backend).",
    )
    registry: OperatorRegistry = OperatorRegistry()
    output_limits: OutputLimitsConfig = OutputLimitsConfig()
    data_roots: list[AbsolutePath] = Field(
        default=[], description="Absolute directories under which models may name file:// data (default: none)."
    )
    environment: dict[str, SecretRef | str] = Field(
        default={},
        description="Variables for backends (e.g. AWS_SHARED_CREDENTIALS_FILE, SLURM_CONF); secrets by reference.",
    )
    standby: StandbyConfig | None = Field(
        default=None, description="Active/standby across login nodes through a shared lease (default: none)."
    )
    policies: list[PolicyRule] = Field(
        default=[],
        description="Team policy, read top-down: the first rule that matches a model decides its team and its "
        "limits alone (see docs/policy.md).",
    )

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{str(value)!r}: expected an absolute path (a relative one would follow the directory "
                             "gitopsd is started in)")  # fmt: skip
        return value

    @field_validator("policies")
    @classmethod
    def _policies_name_what_exists(cls, policies: list[PolicyRule], info: ValidationInfo) -> list[PolicyRule]:
        """Each rule's repositories and backends are declared in this file (a typo would silently match nothing)."""
        repositories = {r.name for r in info.data.get("repositories", [])}
        backends = set(info.data.get("backends", {}))
        errors: list[InitErrorDetails] = []
        for i, rule in enumerate(policies):
            for field, names, known, what in (("repositories", rule.repositories, repositories, "[[repositories]]"),
                                              ("backends", rule.backends, backends, "[backends]")):  # fmt: skip
                for j, name in enumerate(names or ()):
                    if name not in known:
                        declared = ", ".join(sorted(known)) or "none"
                        message = f"{name!r} is not declared in {what} (declared: {declared})"
                        error = PydanticCustomError("policy", "{message}", {"message": message})
                        errors.append(InitErrorDetails(type=error, loc=(i, field, j), input=name))
        if errors:
            raise ValidationError.from_exception_data("policies", errors)
        return policies

    notifications: list[NotificationConfig] = Field(
        default=[], description="Commit statuses and event notifications (docs/notifications.md; default: none)."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> DaemonConfig:
        names = [r.name for r in self.repositories]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"repository names must be unique: {', '.join(duplicates)} used twice")
        for repo in self.repositories:
            unknown = sorted(set(repo.backends or ()) - set(self.backends))
            if unknown:
                offered = ", ".join(sorted(self.backends)) or "none"
                raise ValueError(f"repository {repo.name!r} names backends not in [backends]: {', '.join(unknown)} "
                                 f"(declared: {offered})")  # fmt: skip
        sinks = [n.name for n in self.notifications]
        twice = sorted({n for n in sinks if sinks.count(n) > 1})
        if twice:
            raise ValueError(f"notification names must be unique: {', '.join(twice)} used twice")
        known = {r.name for r in self.repositories}
        for sink in self.notifications:
            strangers = sorted(set(sink.repositories or ()) - known)
            if strangers:
                raise ValueError(f"notification {sink.name!r} names repositories not in [[repositories]]: "
                                 f"{', '.join(strangers)}")  # fmt: skip
        stores = [(r.name, uri) for r in self.repositories if (uri := self.operator_for(r).registry.artifacts)]
        for i, (name, uri) in enumerate(stores):
            for other, theirs in stores[i + 1 :]:
                if _nested(uri, theirs):
                    raise ValueError(f"repositories {name!r} and {other!r} would share the artifact store {uri}: "
                                     "each repository needs its own (versions are numbered per store)")  # fmt: skip
        return self

    def state_dir_of(self, repo: RepositoryConfig) -> Path:
        if self.state_dir is None:
            raise PermanentError("state_dir is not set in the configuration")
        return self.state_dir / repo.name

    def operator(self) -> Operator:
        """The backends and store for command-line use without a repository of this file."""
        return Operator(backends=self.backends, registry=self.registry, data_roots=self.data_roots,
                        policies=applicable(self.policies, None))  # fmt: skip

    def operator_for(self, repo: RepositoryConfig) -> Operator:
        """The backends repository `repo` may use and its own artifact store."""
        backends = {n: b for n, b in self.backends.items() if repo.backends is None or n in repo.backends}
        artifacts = repo.artifacts
        if artifacts is None and self.registry.artifacts is not None:
            artifacts = self.registry.artifacts.rstrip("/") + "/" + repo.name
        registry = self.registry.model_copy(update={"artifacts": artifacts})
        return Operator(backends=backends, registry=registry, data_roots=self.data_roots,
                        policies=applicable(self.policies, repo.name),
                        budget_peers=self._budget_peers(repo))  # fmt: skip

    def _budget_peers(self, repo: RepositoryConfig) -> tuple[tuple[str, str, tuple[tuple[int, PolicyRule], ...]], ...]:
        """The other repositories covered by a rule with a weekly budget that also covers `repo`."""
        if self.state_dir is None:
            return ()
        weekly = {i for i, rule in applicable(self.policies, repo.name) if rule.max_gpu_hours_per_week is not None}
        peers = []
        for other in self.repositories:
            theirs = applicable(self.policies, other.name)
            if other.name != repo.name and weekly & {i for i, _ in theirs}:
                peers.append((other.name, str(self.state_dir_of(other)), theirs))
        return tuple(peers)

    def settled_setup(self, repo: RepositoryConfig | None) -> str | None:
        """The operator part of a settled-pass fingerprint (`gitopsd.reconcile.configsource`) of a reconciler
        whose operator and output limits this configuration gives, for repository `repo` (None: `operator()`);
        None when it was not loaded from a file."""
        if self._source is None:
            return None
        path, text = self._source
        return setup_of(path, text, None if repo is None else repo.name)

    def for_daemon(self, path: Path) -> DaemonConfig:
        """This configuration, if `gitopsd run` can serve it; PermanentError naming what is missing."""
        if self.state_dir is None:
            raise PermanentError(f"{path}: state_dir: required by `gitopsd run`")
        if not self.repositories:
            raise PermanentError(f"{path}: repositories: `gitopsd run` needs at least one [[repositories]]")
        self.check_backend_settings(path)
        return self

    def check_backend_settings(self, path: Path) -> None:
        """Let each installed backend plugin refuse its settings here (PermanentError naming the file and each
        backend), before any pass meets them: a typo or a bad value is the operator's, not a repository's."""
        from gitopsd.backends.settingcheck import setting_problems

        offered = ((name, backend.plugin(name), backend.settings) for name, backend in self.backends.items())
        problems = [f"{path}: backends.{name}.settings: {message}" for name, message in setting_problems(offered)]
        if problems:
            raise PermanentError("\n".join(problems))


def _nested(a: str, b: str) -> bool:
    """Whether one store URI is the other or lies inside it."""
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def check_commit_url(template: str) -> str:
    """`template` if it can link a commit in the dashboard: an http(s) URL holding `{commit}` and no other brace,
    no credentials and no space; ValueError saying what to write otherwise."""
    example = "e.g. https://github.com/org/models/commit/{commit}"
    parts = urlsplit(template)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL with {{commit}}, {example}")
    rest = template.replace("{commit}", "")
    if "{commit}" not in template or "{" in rest or "}" in rest:
        raise ValueError(f"write {{commit}} where the commit goes, and no other {{ or }}, {example}")
    if "@" in parts.netloc:
        raise ValueError("no credentials in a link every browser of the dashboard gets")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in template):
        raise ValueError("no spaces or control characters in the URL")
    return template


def load_config(path: Path) -> DaemonConfig:
    """Parse and validate FILE; every problem is named with its TOML path."""
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except OSError as exc:
        raise PermanentError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PermanentError(f"{path}: invalid TOML: {exc}") from exc
    try:
        config = DaemonConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: {_where(e['loc'])}: {_said(e['type'], e['loc'], e['msg'])}" for e in exc.errors()]
        raise PermanentError("\n".join(lines)) from None
    config._source = (path, text)
    return config


def _said(kind: str, loc: tuple[int | str, ...], message: str) -> str:
    """A problem in the operator's words: an unknown key with the nearest known one, a check's own message without
    pydantic's "Value error, " before it."""
    if kind == "extra_forbidden" and loc and isinstance(loc[-1], str):
        import difflib

        known = _known_keys()
        if loc[-1] in known:  # TOML puts every key after a [table] header into that table
            return "not a key of this table (keys after a [table] header belong to it: move this one above it)"
        near = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.75)
        return "unknown key" + (f" (did you mean {near[0]!r}?)" if near else "")
    return message.removeprefix("Value error, ")


def _known_keys() -> set[str]:
    """Every key a configuration table may have, at any depth."""
    keys: set[str] = set()
    todo: list[type[BaseModel]] = [DaemonConfig]
    seen: set[type[BaseModel]] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            keys.add(info.alias or name)
            todo.extend(_models_in(info.annotation))
    return keys


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


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


def resolve_environment(config: DaemonConfig) -> dict[str, str]:
    """The variables `[environment]` exports, secret references resolved. PermanentError naming the variable
    (never its value) when one cannot be resolved, before anything is exported."""
    resolved: dict[str, str] = {}
    for name, value in config.environment.items():
        if not re.match(SECRET_REF, value):
            resolved[name] = value
            continue
        try:
            resolved[name] = resolve_secret(value).decode()
        except PermanentError as exc:
            raise PermanentError(f"[environment] {name}: {exc}") from None
        except UnicodeDecodeError:
            raise PermanentError(f"[environment] {name}: secret {value} is not UTF-8 text") from None
    return resolved


def apply_environment(config: DaemonConfig, resolved: dict[str, str] | None = None) -> None:
    """Export the configured variables for backends (secret references resolved; `resolved`: already done by
    `resolve_environment`), and the state directory every repository shares, where backends keep what must be
    host-wide (the nvidia backend's GPU leases)."""
    values = resolve_environment(config) if resolved is None else resolved
    if config.state_dir is not None:
        os.environ[SHARED_STATE_ENV] = str(config.state_dir)
    os.environ.update(values)
