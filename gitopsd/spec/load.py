"""YAML text -> validated spec, or a SpecError that lists every problem with its file, line and field.

A bad commit is rejected whole and `gitopsd status` shows why, so errors must point at the exact line a person
has to fix, and list all problems at once rather than one per push. Loading must also stay cheap for
repositories with thousands of models, so there are two paths: the fast one parses with libyaml and validates
with pydantic, and only when that fails (or a mapping repeats a key, which YAML would silently accept) is the
YAML node tree composed to find line numbers and to explain each problem in words. Before both, a plain document
(no alias, merge key, tag or repeated key: nearly every spec) is built in one walk by `gitopsd.spec.yamlplain`;
that path only ever returns a model that validates, and leaves everything else to the two paths here. All paths
parse with libyaml within the bounds of `gitopsd.spec.yamlbound` and check every string with
`gitopsd.spec.text`, so no spelling of YAML makes a document expand beyond its bounds or smuggles a control
character into a value.
"""

from __future__ import annotations

import difflib
import itertools
import types
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gitopsd.errors import SpecError, SpecProblem
from gitopsd.spec import basechain
from gitopsd.spec.fields import API_VERSION
from gitopsd.spec.schema import ModelSpec, RepositorySpec, choose_backend
from gitopsd.spec.text import forbidden_char, unsafe_values
from gitopsd.spec.yamlbound import BoundedLoader, Refused
from gitopsd.spec.yamlplain import Plain, build_plain

__all__ = ["check_models", "load_model", "load_repository", "model_of_plain"]

Spec = TypeVar("Spec", bound=BaseModel)

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"

_EXPECTED = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "list_type": "expected a list",
    "finite_number": "expected a finite number",
    "literal_error": "expected {expected}",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "string_pattern_mismatch": "must match the pattern {pattern}",
}


class _LinesOnly(yaml.CSafeLoader):
    """Composes a document that the plain walk has read (`yamlplain`) only for the lines of its nodes: nothing
    that locates a problem reads a scalar's tag, so none is resolved (a Python call per scalar, most of the
    cost of composing a file of many values)."""

    def resolve(self, kind: type[Node], value: object, implicit: object) -> str:
        return ""


def load_repository(text: str, file: str = "gitops.yaml") -> RepositorySpec:
    """Parse and validate the root gitops.yaml (kind Repository)."""
    return _load(text, file, RepositorySpec)


def load_model(text: str, file: str, plain: Plain | None = None) -> ModelSpec:
    """Parse and validate one model file (kind Model). `plain`: what `build_plain` made of `text`, when a
    helper already built it (`spec.prebuild`); else it is built here."""
    return _load(text, file, ModelSpec, plain)


#: Problems shown for one file: a hostile file can hold a hundred thousand, each costing a lookup of its line.
MAX_FILE_PROBLEMS = 20

#: How many other files a problem about a model name used twice names.
_OTHERS_SHOWN = 3


def check_models(models: Mapping[str, ModelSpec], repo: RepositorySpec) -> None:
    """Check what no single file can: unique model names and declared backends. One SpecError for all."""
    problems: list[SpecProblem] = []
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in sorted(models):
        by_name[models[path].name].append(path)
    bases = {m.name: m.spec.base.split("@")[0] for m in models.values() if m.spec.base}
    looped = basechain.cycles(bases)  # every chain walked once: a repository may be one long chain
    for path in sorted(models):
        model = models[path]
        same = by_name[model.name]
        if len(same) > 1:  # the first few others: ten thousand files may share one name
            others = [p for p in same[: _OTHERS_SHOWN + 1] if p != path][:_OTHERS_SHOWN]
            more = f" and {len(same) - 1 - len(others)} more" if len(same) - 1 > len(others) else ""
            message = f"model name {model.name!r} is also used by {', '.join(others)}{more}; names must be unique"
            problems.append(SpecProblem(file=path, line=None, field="metadata.name", message=message))
        backend, why = choose_backend(model, repo)
        if backend is None:
            problems.append(SpecProblem(file=path, line=None, field="spec.train.backend", message=why))
        problems.extend(_base_problems(path, model, bases, looped, by_name))
    if problems:
        raise SpecError(problems)


def _base_problems(
    path: str, model: ModelSpec, bases: Mapping[str, str], looped: Mapping[str, str], by_name: Mapping[str, list[str]]
) -> list[SpecProblem]:
    """A base model must be declared in the repository (`bases`: each fine-tuned model's base model by name), and
    following bases must never come back around (`looped`: `basechain.cycles`)."""
    if model.spec.base is None:
        return []
    name = bases[model.name]
    if name not in by_name:
        return [SpecProblem(file=path, line=None, field="spec.base",
                            message=f"base model {name!r} is not declared in this repository")]  # fmt: skip
    if model.name in looped:
        message = f"base models form a cycle: {looped[model.name]}"
        return [SpecProblem(file=path, line=None, field="spec.base", message=message)]
    return []


def lines_in(text: str | None) -> Callable[[str], int | None]:
    """The line of a field (dotted, as in SpecProblem.field) in a document that has already loaded cleanly;
    the document is composed at the first field asked for, and only then, however many are asked."""
    composed: list[Node | None] = []

    def line_of(field: str) -> int | None:
        if not composed:
            composed.append(yaml.compose(text, Loader=yaml.CSafeLoader) if text is not None else None)
        root = composed[0]
        return _locate(root, tuple(field.split(".")))[0] if root is not None else None

    return line_of


# ---- the two paths --------------------------------------------------------------------------------


def _load(text: str, file: str, cls: type[Spec], plain: Plain | None = None) -> Spec:
    try:
        return _load_bounded(text, file, cls, build_plain(text) if plain is None else plain)
    except Refused as exc:
        raise SpecError([SpecProblem(file=file, line=exc.line, field="", message=exc.message)]) from None


def model_of_plain(plain: Plain | None) -> ModelSpec | None:
    """The model a plain document (`build_plain`, perhaps built by another process) validates to; None when its
    file must be loaded from its text (`load_model`), which explains every problem with its line."""
    return _of_plain(plain, ModelSpec)


def _of_plain(plain: Plain | None, cls: type[Spec]) -> Spec | None:
    return _validated_plain(plain, cls)[0]


def _validated_plain(plain: Plain | None, cls: type[Spec]) -> tuple[Spec | None, list[ErrorDetails]]:
    """The model a plain document validates to, or pydantic's errors about it; (None, []) when it is not a plain
    document of the kind (None, suspect strings, not a mapping, another kind): the careful path decides."""
    if plain is None or plain.suspect or not isinstance(plain.value, dict) or plain.value.get("kind") != _kind_of(cls):
        return None, []
    try:
        return cls.model_validate(plain.value), []
    except ValidationError as exc:
        return None, exc.errors()


def _load_bounded(text: str, file: str, cls: type[Spec], plain: Plain | None) -> Spec:
    kind = _kind_of(cls)
    model, errors = _validated_plain(plain, cls)
    if model is not None:
        return model
    # The careful path: the document is composed for its lines. When the plain walk went through it, its values
    # are that walk's (what the loader would construct) and nothing is left to check but lines: within bounds, no
    # repeated key. Otherwise they are constructed from a parse of their own (constructing merge keys rewrites
    # the nodes, whose lines must stay those of the text) and the composition checks the bounds again.
    try:
        data = plain.value if plain is not None else yaml.load(text, Loader=BoundedLoader)
        root = yaml.compose(text, Loader=_LinesOnly if plain is not None else BoundedLoader)
    except yaml.YAMLError as exc:
        raise SpecError([_syntax_problem(exc, file)]) from None
    duplicates = [] if plain is not None else list(itertools.islice(_duplicate_keys(root, file), MAX_FILE_PROBLEMS + 1))
    unsafe: list[tuple[tuple[int | str, ...], str]] = []
    if isinstance(data, dict) and data.get("kind") == kind:
        if plain is None or plain.suspect:
            unsafe = list(itertools.islice(unsafe_values(data, kind), MAX_FILE_PROBLEMS + 1))
        if not duplicates and not unsafe and not errors:
            try:
                return cls.model_validate(data)
            except ValidationError as exc:
                errors = exc.errors()
    located = [_unsafe_problem(root, file, loc, message) for loc, message in unsafe[:MAX_FILE_PROBLEMS]]
    problems = duplicates[:MAX_FILE_PROBLEMS] + located
    covered = {p.field for p in located}
    problems.extend(
        p for p in _document_problems(root, data, file=file, cls=cls, errors=errors) if p.field not in covered
    )
    if not problems:  # nothing the careful path can name (as a valid document would be): let pydantic say so
        return cls.model_validate(data)
    more = _more_problems(file)
    cut = len(duplicates) > MAX_FILE_PROBLEMS or len(unsafe) > MAX_FILE_PROBLEMS or more in problems
    problems = sorted(
        dict.fromkeys(p for p in problems if p != more), key=lambda p: (p.line is None, p.line or 0, p.field)
    )
    if cut or len(problems) > MAX_FILE_PROBLEMS:
        problems = [*problems[:MAX_FILE_PROBLEMS], more]
    raise SpecError(problems)


def _more_problems(file: str) -> SpecProblem:
    """The last problem of a file with more than `MAX_FILE_PROBLEMS`."""
    message = f"this file has more problems than the {MAX_FILE_PROBLEMS} shown; fix these and check it again"
    return SpecProblem(file=file, line=None, field="", message=message)


def _unsafe_problem(root: Node | None, file: str, loc: tuple[int | str, ...], message: str) -> SpecProblem:
    line, field = _locate(root, loc) if root is not None else (None, "")
    return SpecProblem(file=file, line=line, field=field, message=message)


def _document_problems(
    root: Node | None, data: Any, *, file: str, cls: type[Spec], errors: list[ErrorDetails]
) -> list[SpecProblem]:
    """Everything wrong with a document: its top level, its kind, and each validation error, located."""
    kind = _kind_of(cls)
    start = f"start it with 'apiVersion: {API_VERSION}' and 'kind: {kind}'"
    if root is None or data is None:
        return [SpecProblem(file=file, line=None, field="", message=f"the file is empty: {start}")]
    if not isinstance(data, dict) or not isinstance(root, MappingNode):
        found = "a list" if isinstance(data, list) else f"{type(data).__name__} {data!r}"
        message = f"expected a mapping of keys (apiVersion, kind, ...) at the top level, found {found}"
        return [SpecProblem(file=file, line=_line(root), field="", message=message)]
    if "kind" in data and data["kind"] != kind:
        line, field = _locate(root, ("kind",))
        problems = [SpecProblem(file=file, line=line, field=field, message=_wrong_kind(data["kind"], kind))]
        if data.get("apiVersion", API_VERSION) != API_VERSION:
            line, field = _locate(root, ("apiVersion",))
            message = f"unsupported apiVersion {data['apiVersion']!r}: this gitopsd reads {API_VERSION!r}"
            problems.insert(0, SpecProblem(file=file, line=line, field=field, message=message))
        return problems
    if not errors:
        try:
            cls.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
    more = [_more_problems(file)] if len(errors) > MAX_FILE_PROBLEMS else []  # each located costs a lookup
    errors = errors[:MAX_FILE_PROBLEMS]
    # "unknown key 'comand'; did you mean 'command'?" already says that 'command' is missing
    typos = {(*e["loc"][:-1], _suggestion(cls, tuple(e["loc"]))) for e in errors if e["type"] == "extra_forbidden"}
    return [
        _problem(e, root, file, cls) for e in errors if e["type"] != "missing" or tuple(e["loc"]) not in typos
    ] + more


def _wrong_kind(found: object, kind: str) -> str:
    if found == "Repository":
        return "kind 'Repository' belongs in gitops.yaml at the repository root; model files need kind 'Model'"
    if found == "Model":
        return "kind 'Model' belongs in a file under models/; gitops.yaml needs kind 'Repository'"
    return f"unknown kind {found!r}: expected {kind!r}"


# ---- locating and explaining problems -------------------------------------------------------------


def _syntax_problem(exc: yaml.YAMLError, file: str) -> SpecProblem:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return SpecProblem(file=file, line=None, field="", message=f"invalid YAML: {exc}")
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} on line {exc.context_mark.line + 1})"
    return SpecProblem(file=file, line=mark.line + 1 if mark else None, field="", message=message)


def _line(node: Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _key_text(key: object) -> str:
    text = str(key)
    if not text or any(c in text for c in ".[] ") or text != text.strip() or forbidden_char(text):
        return f"[{text!r}]"
    return f".{text}"


def _locate(root: Node, loc: tuple[int | str, ...]) -> tuple[int | None, str]:
    """The 1-based line of the deepest node `loc` reaches (a key's own line), and loc as a dotted field."""
    node: Node | None = root
    line = _line(root)
    field = ""
    for part in loc:
        if isinstance(node, MappingNode):
            match = _entries(node).get(str(part))
            node = match[1] if match else None
            line = _line(match[0]) if match else line
            field += _key_text(part)
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = _line(node)
            field += f"[{part}]"
        else:
            node = None
            field += f"[{part}]" if isinstance(part, int) else _key_text(part)
    return line, field.lstrip(".")


#: Each mapping node's entries by key, made once per node: a document with thousands of problems in one mapping
#: (an `env` of ten thousand numbers) would otherwise scan it once per problem.
_ENTRIES: weakref.WeakKeyDictionary[MappingNode, dict[str, tuple[Node, Node]]] = weakref.WeakKeyDictionary()


def _entries(node: MappingNode) -> dict[str, tuple[Node, Node]]:
    """The node's scalar keys and their (key, value) nodes; a repeated key: its last entry, as loading keeps."""
    found = _ENTRIES.get(node)
    if found is None:
        found = {k.value: (k, v) for k, v in node.value if isinstance(k, ScalarNode)}
        _ENTRIES[node] = found
    return found


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null (nothing)"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _problem(err: ErrorDetails, root: Node, file: str, cls: type[BaseModel]) -> SpecProblem:
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == "spec" and ctx.get("at"):
        loc += tuple(int(p) if p.isdigit() else p for p in str(ctx["at"]).split("."))
    is_key = bool(loc) and loc[-1] == "[key]"
    loc = loc[:-1] if is_key else loc
    kind = err["type"]
    if kind == "missing":
        line, field = _locate(root, loc[:-1])
        extra = f" (expected 'kind: {_kind_of(cls)}')" if loc == ("kind",) else ""
        field = (field + _key_text(loc[-1])).lstrip(".")
        return SpecProblem(file=file, line=line, field=field, message=f"required field {loc[-1]!r} is missing{extra}")
    line, field = _locate(root, loc)
    if kind == "extra_forbidden":
        return SpecProblem(file=file, line=line, field=field, message=_unknown_key(cls, loc))
    if kind == "spec":
        return SpecProblem(file=file, line=line, field=field, message=err["msg"])
    if kind == "too_long":  # a list or mapping over its bound (modules, aliases): the count, not the whole value
        message = f"at most {ctx['max_length']} entries, got {len(err['input'])}"
        return SpecProblem(file=file, line=line, field=field, message=message)
    template = _EXPECTED.get(kind)
    expected = template.format(**ctx) if template else err["msg"]
    if is_key:
        expected = (
            "keys here must be strings: quote the key in YAML" if kind == "string_type" else f"bad key: {expected}"
        )
    return SpecProblem(file=file, line=line, field=field, message=f"{expected}, got {_shown(err['input'])}")


def _kind_of(cls: type[BaseModel]) -> str:
    return "Model" if cls is ModelSpec else "Repository"


def _suggestion(cls: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """The valid key closest to the unknown key at the end of `loc`, if one is close enough."""
    close = difflib.get_close_matches(str(loc[-1]), _keys_at(cls, loc[:-1]), n=1, cutoff=0.6)
    return close[0] if close else None


#: Fields that moved from gitops.yaml to the operator's configuration, and where they live there.
_OPERATOR_FIELDS: dict[tuple[int | str, ...], str] = {
    ("registry", "artifacts"): "[registry] artifacts",
    ("registry", "endpoint_url"): "[registry] endpoint_url",
    ("registry", "object_lock_days"): "[registry] object_lock_days",
}


def _unknown_key(cls: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    if cls is RepositorySpec and (where := _OPERATOR_FIELDS.get(tuple(loc))):
        return (
            f"{loc[-1]!r} belongs in the operator's configuration ({where} in the daemon's TOML, or in "
            "~/.config/gitopsd/config.toml), not in the repository"
        )
    key, valid, close = str(loc[-1]), _keys_at(cls, loc[:-1]), _suggestion(cls, loc)
    if close:
        return f"unknown key {key!r}; did you mean {close!r}?"
    if valid:
        return f"unknown key {key!r}; expected one of: {', '.join(valid)}"
    return f"unknown key {key!r}"


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def _keys_at(cls: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys a mapping at `loc` may hold, following the model's field types."""
    tp: Any = cls
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {f.alias or name: f for name, f in tp.model_fields.items()}
            if part not in fields:
                return []
            tp = fields[str(part)].annotation
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or name for name, f in tp.model_fields.items()]
    return []


def _walk(root: Node, path: str = "") -> Iterator[tuple[str, MappingNode]]:
    """Every mapping node of the tree with its dotted path, each node once even when aliases repeat it."""
    seen: set[int] = set()
    stack: list[tuple[str, Node]] = [(path, root)]
    while stack:
        where, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            yield where, node
            stack.extend((where + _key_text(k.value), v) for k, v in node.value if isinstance(k, ScalarNode))
        elif isinstance(node, SequenceNode):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(node.value))


def _duplicate_keys(root: Node | None, file: str) -> Iterator[SpecProblem]:
    if root is None:
        return
    constructor = BoundedLoader("")
    for where, node in _walk(root):
        first: dict[object, int | None] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = key_node.value if key_node.tag == _STR_TAG else constructor.construct_object(key_node)
            if key in first:
                message = (
                    f"duplicate key {key_node.value!r}: already set on line {first[key]}; "
                    "YAML would silently keep only the last value, so remove one"
                )
                field = (where + _key_text(key_node.value)).lstrip(".")
                yield SpecProblem(file=file, line=_line(key_node), field=field, message=message)
            else:
                first[key] = _line(key_node)
