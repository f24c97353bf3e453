"""Desired state at a commit: every model spec parsed, resolved against `gitops.yaml`, and given its run key.

Loading is incremental: the loader remembers the last commit it loaded and, for a new commit, re-parses only the
spec files a tree diff says changed. Run keys are recomputed only for models whose inputs moved. A commit with
any invalid spec is rejected whole (`SpecError` listing every problem) and the last good state stays cached;
the rejection is remembered too, so a bad commit costs one parse however many passes see it. Reading is bounded
(`gitopsd.spec.bounds`): sizes come from the blobs' headers and files over a bound are refused unread. The
settings of each declared backend are checked by its plugin when `gitops.yaml` changes, so a bad setting is a
spec problem of the commit rather than a surprise at submit time.

The run key is the content identity of one training: the canonical fields that affect training, the Git tree
id of the code it runs, its data digests, its Python requirements and the resolved backend settings. Labels,
descriptions, aliases, suspension, retries, timeouts and gates do not change it; those that decide whether a
failed key deserves another attempt (retries, timeout, gates) go into the spec digest instead. So do the
checkpoint settings (signal, before, max_segments): they decide how one attempt is cut into jobs and when it
has run out of them, not what it trains, and a model without them keeps the digest it always had.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from gitopsd.backends.settingcheck import backend_setting_problems
from gitopsd.errors import SpecError, SpecProblem
from gitopsd.reconcile.canonical import canonical_json
from gitopsd.reconcile.gcpause import collector_paused
from gitopsd.reconcile.speccache import Keys, Parsed, SpecCache
from gitopsd.source.mirror import Source
from gitopsd.spec import prebuild
from gitopsd.spec.bounds import DATA_HASH_BYTES, SpecLimits, decode_spec, size_problems
from gitopsd.spec.layout import REPO_SPEC
from gitopsd.spec.load import check_models, load_model, model_of_plain
from gitopsd.spec.operator import Operator
from gitopsd.spec.resolve import data_problems, load_repository_for, repository_data_problems
from gitopsd.spec.schema import ModelSpec, RepositorySpec, ResolvedTrain, TrainResolver, repository_paths
from gitopsd.spec.yamlplain import Plain

T = TypeVar("T")
log = logging.getLogger("gitopsd")


@dataclass(frozen=True, kw_only=True)
class DesiredModel:
    name: str
    path: str
    spec: ModelSpec
    train: ResolvedTrain
    code_tree: str
    run_key: str
    spec_digest: str

    @property
    def suspend(self) -> bool:
        return bool(self.spec.spec.suspend)


@dataclass(frozen=True, kw_only=True)
class DesiredState:
    commit: str
    repo: RepositorySpec
    models: Mapping[str, DesiredModel]


def digest(value: Any) -> str:
    """sha256 of the canonical JSON of `value`."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def training_identity(model: ModelSpec, train: ResolvedTrain) -> dict[str, Any]:
    """The spec fields that change what a training produces (not whether we keep it)."""
    body = model.spec
    identity: dict[str, Any] = {
        "backend": {"name": train.backend, "type": train.backend_type, "settings": train.keyed_settings},
        "command": train.command,
        "workdir": train.workdir,
        "env": dict(sorted(train.env.items())),
        "resources": {
            "cpus": train.resources.cpus,
            "memory_mb": train.resources.memory_mb,
            "gpus": train.resources.gpus,
            "nodes": train.resources.nodes,
        },
        "data": [{"uri": d.uri, "sha256": d.sha256} for d in body.data],
        "outputs": body.outputs.model_dump(mode="json"),
        "convergence": body.convergence.model_dump(mode="json"),
    }
    # How the command starts and the modules it runs with change the training; each enters the identity only
    # when set, so that the run keys of models that set neither stay what they were before these fields existed.
    if train.resources.launcher != "none":
        identity["launcher"] = train.resources.launcher
    if train.resources.modules:
        identity["modules"] = list(train.resources.modules)
    return identity


def keys_for(model: ModelSpec, train: ResolvedTrain, code_tree: str, requirements_id: str | None) -> tuple[str, str]:
    """(run key, spec digest) of one model at one commit."""
    run_key = digest(
        {"v": 1, "train": training_identity(model, train), "code": code_tree, "requirements": requirements_id}
    )
    spec_digest = digest(
        {
            "run_key": run_key,
            "retries": train.retries,
            "timeout": train.timeout_s,
            "validate": list(model.spec.validate_gates),
            **({"checkpoint": asdict(train.checkpoint)} if train.checkpoint is not None else {}),
        }
    )
    return run_key, spec_digest


class PerModel(Generic[T]):
    """A value derived from each desired model, recomputed only for models that changed between commits.

    The loader keeps the same `DesiredModel` object for a model whose inputs did not change, so identity tells
    what to recompute: a one-spec commit costs one call, not one per model.
    """

    def __init__(self, derive: Callable[[DesiredModel], T]) -> None:
        self._derive = derive
        self._source: DesiredState | None = None
        self._values: dict[str, T] = {}

    def of(self, desired: DesiredState) -> dict[str, T]:
        if self._source is not desired:
            before = self._source.models if self._source is not None else {}
            old = self._values
            self._values = {
                name: old[name] if before.get(name) is model and name in old else self._derive(model)
                for name, model in desired.models.items()
            }
            self._source = desired
        return self._values


class _KeyBook:
    """The run keys and spec digests of one load, through the parse cache where there is one: looked up by a
    digest of everything they are computed from, computed and stored where the cache does not know them."""

    def __init__(self, cache: SpecCache | None, context: str, before: Mapping[str, str], *, incremental: bool) -> None:
        self.cache = cache
        self.context = context  # what a key depends on beyond the spec, the code tree and the requirements
        self.before = before  # path -> what its key was looked up by, in the load before
        self.incremental = incremental
        self.now: dict[str, str] = {}
        self.fresh: dict[str, Keys] = {}
        self._all: dict[str, Keys] | None = None

    def unchanged(self, path: str) -> None:
        """The model of `path` keeps its keys from the load before."""
        if path in self.before:
            self.now[path] = self.before[path]

    def keys(
        self, path: str, blob: str, spec: ModelSpec, train: ResolvedTrain, code_tree: str, requirements: str | None
    ) -> tuple[str, str]:
        if self.cache is None:
            return keys_for(spec, train, code_tree, requirements)
        keyed_by = self.now[path] = digest([blob, self.context, code_tree, requirements])
        if self.incremental:  # the few models that changed, looked up one by one
            known = self.cache.keys([keyed_by]).get(keyed_by)
        else:
            self._all = self.cache.keys() if self._all is None else self._all
            known = self._all.get(keyed_by)
        if known is None:
            known = self.fresh[keyed_by] = Keys(*keys_for(spec, train, code_tree, requirements))
        return known.run_key, known.spec_digest

    def store(self) -> None:
        """Give the cache the keys it did not know, pruned by the keys of every model of this commit, the unchanged
        ones too: a daemon's loader makes only incremental loads, and a commit that changes a shared code tree
        gives each model a new key."""
        if self.cache is not None and self.fresh:
            self.cache.store_keys(self.fresh, keep=self.now.values())


class DesiredLoader:
    """Loads desired state from a `Source`, caching the last good commit and re-parsing only what changed.

    The first commit it loads lives as long as the process that loads it (a daemon's models, a command's): it is
    frozen out of the cyclic collector's sight (`collector_paused(freeze=True)`), so that neither the collection
    right after the load nor those of later passes scan tens of thousands of long-lived spec objects again."""

    def __init__(
        self,
        source: Source,
        operator: Operator | None = None,
        limits: SpecLimits | None = None,
        cache: SpecCache | None = None,
    ) -> None:
        """`cache`: the state directory's parse cache (`reconcile.speccache`), read for every blob this loader
        has not parsed itself and, when writable, given what it parses; None parses everything."""
        self.source = source
        self.operator = operator or Operator()
        self.limits = limits or SpecLimits()
        self.cache = cache
        self._state: DesiredState | None = None
        self._files: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._inputs: dict[str, tuple[str | None, ...]] = {}
        self._keyed_by: dict[str, str] = {}  # path -> what its run key is cached by (`SpecCache.keys`)
        self._data_digests: dict[str, str | None] = {}  # blob id -> its sha256 (None: too large to hash here)
        self._data_commit: str | None = None  # the commit `_data_paths` is of
        self._data_paths: dict[str, str | None] = {}  # data path -> `_data_digest`
        self._fresh_digests: dict[str, str] = {}  # blob id -> sha256, hashed by this load, for the cache
        self._rejected: tuple[str, SpecError] | None = None
        self._escape_commit: str | None = None
        self._escape_seen: dict[str, str | None] = {}

    @property
    def last_good(self) -> DesiredState | None:
        return self._state

    def load(self, commit: str) -> DesiredState:
        if self._state is not None and self._state.commit == commit:
            return self._state
        if self._rejected is not None and self._rejected[0] == commit:
            raise self._rejected[1]
        try:
            with collector_paused(freeze=self._state is None):
                files, sizes, specs, repo = self._parse(commit)
                models = self._resolve(commit, repo, specs, files)
        except SpecError as exc:
            self._rejected = (commit, exc)
            raise
        self._files, self._sizes, self._specs = files, sizes, specs
        self._state = DesiredState(commit=commit, repo=repo, models=models)
        return self._state

    def _read(self, files: Mapping[str, str], path: str) -> str:
        return decode_spec(self.source.blob_bytes(files[path]), path)

    def _parse(self, commit: str) -> tuple[dict[str, str], dict[str, int], dict[str, ModelSpec], RepositorySpec]:
        if self._state is None:
            files = self.source.spec_files(commit, self.limits)
            changed = set(files)
            sizes: dict[str, int] = {}
        else:
            changed = self.source.changed_spec_files(self._state.commit, commit)
            files = dict(self._files)
            sizes = dict(self._sizes)
            for path in changed:
                blob = self.source.object_id(commit, path)
                if blob is None:
                    files.pop(path, None)
                    sizes.pop(path, None)
                else:
                    files[path] = blob
        for path in changed & files.keys():
            sizes[path] = self.source.blob_size(files[path])
        problems = size_problems(sizes, self.limits)
        if any(p.file not in files for p in problems):  # the whole set is over a bound: read none of it
            raise SpecError(problems)
        unread = {p.file for p in problems}
        repo = self._state.repo if self._state is not None and REPO_SPEC not in changed else None
        if repo is None:
            repo = RepositorySpec.default()
            if REPO_SPEC not in unread:
                try:
                    text = self._read(files, REPO_SPEC) if REPO_SPEC in files else None
                    repo = load_repository_for(self.operator, text, REPO_SPEC)
                except SpecError as exc:
                    problems.extend(exc.problems)
                else:
                    problems.extend(backend_setting_problems(repo))
        specs = {p: s for p, s in self._specs.items() if p in files}
        paths = [p for p in sorted(changed) if p != REPO_SPEC and p in files and p not in unread]
        for path, parsed in self._load_models(files, sizes, paths).items():
            if parsed.model is not None:
                specs[path] = parsed.model
            else:
                problems.extend(parsed.problems)
        if not problems:
            try:
                check_models(specs, repo)
            except SpecError as exc:
                problems.extend(exc.problems)
            problems.extend(data_problems(specs, self.operator))
        if problems:
            raise SpecError(problems)
        return files, sizes, specs, repo

    def _load_models(self, files: Mapping[str, str], sizes: Mapping[str, int], paths: list[str]) -> dict[str, Parsed]:
        """What loading each of `paths` gives, from the cache where it knows the blob, else parsed (and then
        given to the cache)."""
        known = self.cache.parsed({p: files[p] for p in paths}) if self.cache is not None else {}
        out: dict[str, Parsed] = dict(known)
        unknown = [p for p in paths if p not in known]
        # a second core, on a cold load: it builds the files from the last one backwards until it meets this process
        with prebuild.helper(unknown, lambda p: self._read(files, p), {p: files[p] for p in unknown}) as helper:
            for path in helper.mine():
                out[path] = self._parsed(files, path, None)
            built = helper.results()
        for path in unknown[helper.taken :]:
            out[path] = self._parsed(files, path, built.get(path))
        if self.cache is not None and unknown:
            self.cache.store_parsed({p: (files[p], sizes[p], out[p]) for p in unknown}, keep=files)
        return {p: out[p] for p in paths}

    def _parsed(self, files: Mapping[str, str], path: str, plain: Plain | None) -> Parsed:
        """What loading `path` gives; `plain`: what the helper built of it, if it did (`spec.prebuild`)."""
        model = model_of_plain(plain)
        if model is not None:
            return Parsed(model)
        try:
            return Parsed(load_model(self._read(files, path), path, plain))
        except SpecError as exc:
            return Parsed(None, tuple(exc.problems))

    def _escapes(self, commit: str, path: str, spec: ModelSpec, train: ResolvedTrain) -> list[SpecProblem]:
        """The model's workdir, requirements and repository data must not lead outside the repository."""
        return [
            SpecProblem(file=path, line=None, field=field, message=f"{why}: refused")
            for field, rel in repository_paths(spec, train)
            if (why := self._escape(commit, rel))
        ]

    def _escape(self, commit: str, rel: str) -> str | None:
        """`Source.escape`, once per path of a commit (most models share their workdir)."""
        if self._escape_commit != commit:
            self._escape_commit, self._escape_seen = commit, {}
        if rel not in self._escape_seen:
            self._escape_seen[rel] = self.source.escape(commit, rel)
        return self._escape_seen[rel]

    def _data_problems(
        self, commit: str, path: str, spec: ModelSpec, object_id: Callable[[str], str | None]
    ) -> list[SpecProblem]:
        """`repository_data_problems` of a model at `commit`: each blob hashed once (`_data_digest`)."""

        def exists(rel: str) -> bool:
            return object_id(rel) is not None

        def digest(rel: str) -> str | None:
            return self._data_digest(commit, rel)

        return repository_data_problems(path, spec, exists, digest, where=" at this commit")

    def _data_digest(self, commit: str, rel: str) -> str | None:
        """The sha256 of the plain file `rel` of `commit`, if it is one of at most `DATA_HASH_BYTES`: looked up once
        per path of a commit (many models name the same file), hashed once per blob."""
        if self._data_commit != commit:
            self._data_commit, self._data_paths = commit, {}
        if rel not in self._data_paths:
            blob = self.source.file_blob(commit, rel)
            if blob is not None and blob not in self._data_digests:
                if len(self._data_digests) >= 10_000:  # a daemon's life: bounded, however many blobs it meets
                    self._data_digests.clear()
                known = self.cache.digest(blob) if self.cache is not None else None
                if known is None:
                    known = self.source.blob_sha256(blob, DATA_HASH_BYTES)
                    if known is not None:
                        self._fresh_digests[blob] = known
                self._data_digests[blob] = known
            self._data_paths[rel] = None if blob is None else self._data_digests[blob]
        return self._data_paths[rel]

    @staticmethod
    def _missing(path: str, train: ResolvedTrain, code_tree: str | None) -> list[SpecProblem]:
        if code_tree is None:
            message = f"directory {train.workdir!r} does not exist at this commit"
            return [SpecProblem(file=path, line=None, field="spec.train.workdir", message=message)]
        message = f"file {train.requirements!r} does not exist at this commit"
        return [SpecProblem(file=path, line=None, field="spec.train.python.requirements", message=message)]

    def _resolve(
        self, commit: str, repo: RepositorySpec, specs: Mapping[str, ModelSpec], files: Mapping[str, str]
    ) -> dict[str, DesiredModel]:
        previous = self._state.models if self._state is not None else {}
        by_path = {m.path: m for m in previous.values()}
        tree_ids: dict[str, str | None] = {}

        def object_id(path: str) -> str | None:
            if path not in tree_ids:
                tree_ids[path] = self.source.object_id(commit, path)
            return tree_ids[path]

        repo_digest = digest(repo.model_dump(mode="json"))
        # what a run key depends on beyond the spec, the code tree and the requirements: the repository's
        # configuration and the settings the operator lets it choose, as `resolve_train` reads them
        context = digest({"repo": repo_digest, "keyed": {n: repo.keyed_settings(n) for n in sorted(repo.backends)}})
        book = _KeyBook(self.cache, context, self._keyed_by, incremental=bool(previous))
        models: dict[str, DesiredModel] = {}
        inputs_now: dict[str, tuple[str | None, ...]] = {}
        problems: list[SpecProblem] = []
        resolver = TrainResolver(repo)
        for path, spec in specs.items():
            old = by_path.get(path)
            same_spec = old is not None and self._inputs.get(path, ())[:2] == (files[path], repo_digest)
            train = old.train if old is not None and same_spec else resolver.resolve(spec, file=path)
            code_tree = object_id(train.workdir)
            requirements = object_id(train.requirements) if train.requirements else None
            if code_tree is None or (train.requirements and requirements is None):
                # a path through a link or a submodule is missing from the tree: say why, not only that
                problems.extend(self._escapes(commit, path, spec, train) or self._missing(path, train, code_tree))
                continue
            # the blobs of its repository data too: a commit that changes only a data file is checked again
            data = tuple(object_id(d.uri) for d in spec.spec.data if "://" not in d.uri)
            inputs = inputs_now[path] = (files[path], repo_digest, code_tree, requirements, *data)
            if old is not None and self._inputs.get(path) == inputs:
                models[old.name] = old
                book.unchanged(path)
                continue
            escapes = self._escapes(commit, path, spec, train) or self._data_problems(commit, path, spec, object_id)
            if escapes:
                problems.extend(escapes)
                continue
            run_key, spec_digest = book.keys(path, files[path], spec, train, code_tree, requirements)
            models[spec.name] = DesiredModel(
                name=spec.name,
                path=path,
                spec=spec,
                train=train,
                code_tree=code_tree,
                run_key=run_key,
                spec_digest=spec_digest,
            )
        if problems:
            raise SpecError(problems)
        book.store()
        if self.cache is not None and self._fresh_digests:
            self.cache.store_digests(self._fresh_digests)
        self._fresh_digests = {}
        self._inputs = inputs_now
        self._keyed_by = book.now
        return models
