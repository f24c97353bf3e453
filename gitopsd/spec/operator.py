"""The operator's side of the trust boundary: which backends exist, how they are reached, and what a repository may
set on them; where artifacts go; and the caps on what one training may ask for.

A repository is untrusted input: any branch may be hostile, and `gitopsd plan` runs on pull requests. So
everything that carries or reaches a credential, a host or a path outside the repository (a Slurm REST URL and
its token source, `slurm_conf`, GPU lease files, the artifact store and its endpoint) is set here, by the
operator, in the daemon's TOML (or the same schema in the CLI's config.toml). A repository's `gitops.yaml` names
backends the operator declared and may set only the settings the operator lists under `allow`, each from its
allow-list of values. This module is the schema of that part of the configuration and the pure check of a
repository against it; reading the TOML and resolving secrets stay in `gitopsd.daemon.config`.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from gitopsd.model import Resources
from gitopsd.spec.fields import Cpus, Duration, Gpus, LockDays, Memory, Name, Nodes, PluginType, StoreUri
from gitopsd.spec.policy import PolicyRule

ANY = "*"
#: Settings that name a path on the operator's hosts: no repository may set them, whatever `allow` says (the
#: operator's configuration is refused when `allow` lists one). `runs_dir`: see `gitopsd.backends.protocol`;
#: `modules_init`, `module_path`: the Slurm backend's module system on the compute nodes (files a job sources).
HOST_ONLY_SETTINGS = ("runs_dir", "modules_init", "module_path")
#: Where the operator's settings live, for error messages that tell a repository author whom to ask.
OPERATOR_FILE = "the operator's configuration (the daemon's TOML, or ~/.config/gitopsd/config.toml)"


class _Operator(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Caps(_Operator):
    """The most one training on this backend may ask for; a model over a cap is refused (PolicyDenied)."""

    cpus: Cpus | None = Field(default=None, description="CPU cores per training.")
    memory: Memory | None = Field(default=None, description="Host memory per training, e.g. '256Gi'.")
    gpus: Gpus | None = Field(default=None, description="GPUs per training.")
    nodes: Nodes | None = Field(default=None, description="Nodes per training.")
    timeout: Duration | None = Field(default=None, description="Time limit of one training, e.g. '48h'.")


AllowList = Literal["*"] | list[str | int | float | bool]


class OperatorBackend(_Operator):
    """One backend the operator offers: its plugin, its settings, and what a repository may change of them."""

    type: PluginType | None = Field(default=None, description="Plugin type; the backend's name if left out.")
    settings: dict[str, Any] = Field(default={}, description="Passed to the backend plugin (connections too).")
    allow: dict[str, AllowList] = Field(
        default={},
        description="Settings a repository's gitops.yaml may set, each with its allowed values, or '*' for any "
        "value the plugin accepts; nothing else may be set by a repository.",
    )
    caps: Caps = Caps()

    @field_validator("allow")
    @classmethod
    def _no_host_paths(cls, allow: dict[str, AllowList]) -> dict[str, AllowList]:
        for key in HOST_ONLY_SETTINGS:
            if key in allow:
                raise ValueError(f"{key!r} is a path on the operator's hosts: a repository may never set it, "
                                 "remove it from allow")  # fmt: skip
        return allow

    def plugin(self, name: str) -> str:
        return self.type or name


class OperatorRegistry(_Operator):
    """Where versions' artifacts and records are stored; each repository of a daemon gets its own store."""

    artifacts: StoreUri | None = Field(
        default=None, description="file:///abs/dir or s3://bucket/prefix; default: STATE_DIR/artifacts."
    )
    endpoint_url: str | None = Field(
        default=None, pattern=r"^https?://", description="Endpoint of an S3-compatible store (MinIO, Ceph, ...)."
    )
    object_lock_days: LockDays | None = Field(
        default=None, description="Object Lock retention (GOVERNANCE) for artifacts, when the bucket has it."
    )


def _local_only() -> dict[str, OperatorBackend]:
    return {"local": OperatorBackend(type="local")}


def _absolute(value: str) -> str:
    if not value.startswith("/") or "\x00" in value:
        raise ValueError(f"{value!r}: expected an absolute path")
    return posixpath.normpath(value)


AbsolutePath = Annotated[str, AfterValidator(_absolute)]


class Operator(_Operator):
    """What the reconciler needs of the operator's configuration for one repository."""

    backends: dict[Name, OperatorBackend] = Field(default_factory=_local_only)
    registry: OperatorRegistry = OperatorRegistry()
    data_roots: list[AbsolutePath] = Field(
        default=[], description="Directories under which models may name file:// data (default: none)."
    )
    policies: tuple[tuple[int, PolicyRule], ...] = Field(
        default=(), description="The [[policies]] rules that cover this repository, each with its index (in order)."
    )
    budget_peers: tuple[tuple[str, str, tuple[tuple[int, PolicyRule], ...]], ...] = Field(
        default=(),
        description="The other repositories of the daemon that share a weekly budget with this one: (name, state "
        "directory, the rules that cover it), so that a team's week counts its runs in every one of them.",
    )

    def allows_data(self, path: str) -> bool:
        """Whether an absolute, normalised path lies under one of the data roots."""
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in self.data_roots)


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """One thing a repository set that the operator does not allow, at `field` of gitops.yaml."""

    field: str
    message: str


def refusals(backends: Mapping[str, Any], operator: Operator) -> list[Refusal]:
    """What a repository's `backends:` section sets beyond what the operator allows. Pure.

    `backends` maps a backend name to its `type` and `settings` as written in gitops.yaml.
    """
    found: list[Refusal] = []
    for name, declared in backends.items():
        at = f"backends.{name}"
        mine = operator.backends.get(name)
        if mine is None:
            offered = ", ".join(sorted(operator.backends)) or "none"
            message = f"backend {name!r} is not offered by {OPERATOR_FILE} (it offers: {offered})"
            found.append(Refusal(field=at, message=message))
            continue
        if declared.type is not None and declared.type != mine.plugin(name):
            why = f"backend {name!r} is of type {mine.plugin(name)!r} in {OPERATOR_FILE}, not {declared.type!r}"
            found.append(Refusal(field=f"{at}.type", message=why))
        for key, value in declared.settings.items():
            if refused := _refused_setting(name, key, value, mine.allow):
                found.append(Refusal(field=f"{at}.settings.{key}", message=refused))
    return found


def _refused_setting(backend: str, key: str, value: object, allow: Mapping[str, AllowList]) -> str | None:
    if key in HOST_ONLY_SETTINGS:
        return f"{key!r} is a path on the operator's hosts: only {OPERATOR_FILE} sets it, never a repository"
    allowed = allow.get(key)
    if allowed is None:
        may = ", ".join(sorted(allow)) or "nothing"
        return f"{key!r} belongs in {OPERATOR_FILE}, not in the repository (a repository may set: {may})"
    if isinstance(allowed, list) and not _listed(value, allowed):
        shown = ", ".join(str(v) for v in allowed)
        return f"{value!r} is not allowed for backend {backend!r} (allowed: {shown})"
    return None


def _listed(value: object, allowed: list[str | int | float | bool]) -> bool:
    return any(type(value) is type(a) and value == a for a in allowed)


def effective_backends(backends: Mapping[str, Any], operator: Operator) -> dict[str, tuple[str, dict[str, Any]]]:
    """Backend name -> (plugin type, settings) as the repository may use them: the operator's settings, with the
    repository's allowed values on top. A repository that declares no backends may use every one offered.

    Call only after `refusals` found nothing.
    """
    names = list(backends) or list(operator.backends)
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in names:
        mine = operator.backends[name]
        settings = copy.deepcopy(mine.settings)
        declared = backends.get(name)
        if declared is not None:
            settings.update(copy.deepcopy(declared.settings))
        out[name] = (mine.plugin(name), settings)
    return out


def over_caps(resources: Resources, timeout_s: int | None, caps: Caps) -> str | None:
    """Why a training with these resources and time limit is over the operator's caps, or None. Pure."""
    asks = [
        ("cpus", resources.cpus, caps.cpus, ""),
        ("memory", resources.memory_mb, caps.memory, " MiB"),
        ("gpus", resources.gpus, caps.gpus, ""),
        ("nodes", resources.nodes, caps.nodes, ""),
        ("timeout", timeout_s, caps.timeout, " s"),
    ]
    for what, asked, cap, unit in asks:
        if cap is not None and asked is not None and asked > cap:
            return f"{what} {asked}{unit} is over the operator's cap of {cap}{unit} for this backend"
    if caps.timeout is not None and timeout_s is None:
        return f"no timeout set, and the operator caps trainings on this backend at {caps.timeout} s: set one"
    return None
