"""The fast path of reading a spec file: a plain YAML document built into Python values in one walk.

Almost every spec file is plain: mappings, lists and scalars, no anchors or aliases, no merge keys, no explicit
tags, no repeated key, a few levels deep. For such a document PyYAML's generic constructor (generators, a state
machine per node, a second walk for the bounds and a third for unsafe characters) costs several times what the
document needs, and so does composing libyaml's node tree (a Python call per node to the path resolver). So
`build_plain` reads libyaml's events directly, resolves each scalar's tag with the loader's own resolver (the
call the composer makes, with the same arguments), and builds the values in one recursive walk that also counts
nodes and depth and notes every string or integer that might break the rules of `gitopsd.spec.text`.

It only ever answers for documents whose meaning is beyond doubt. Whatever it does not handle itself (an alias,
a merge key, a tag other than str, int, float, bool and null, a non-scalar key, a repeated key, a number longer
than the bounds allow, nesting near the depth bound, a syntax error) makes it return None, and the caller loads
the document through the careful path, which gives the same values and every error with its file, line and
field. So this module can make loading faster but never changes what a document means or which ones are
refused. The one refusal it makes itself is one the careful path would make too: a document that goes on past
`MAX_EXPANDED_NODES` values with no alias among them has more values than a spec file may have, whatever
follows; the walk stops there and names the line, where the careful path would compose the whole file first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from yaml.events import (
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import ScalarNode

from gitopsd.spec.text import MAX_INTEGER, MAX_TEXT_CHARS, suspect_text
from gitopsd.spec.yamlbound import MAX_DEPTH, MAX_EXPANDED_NODES, MAX_NUMBER_CHARS, Refused, too_many_values

__all__ = ["Plain", "build_plain"]

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
#: A node's tag when the document gives none, or only the non-specific "!": the resolver decides.
_IMPLICIT = (None, "!")

_CONSTRUCTOR = yaml.constructor.SafeConstructor()


class _NotPlain(Exception):
    """The document needs the careful path."""


class Plain:
    """A plain document's value, whether any of its strings or integers needs the full check of
    `gitopsd.spec.text.unsafe_values` (False: that check would find nothing), and how many nodes it has."""

    __slots__ = ("nodes", "suspect", "value")

    def __init__(self, value: Any, suspect: bool, nodes: int = 0) -> None:
        self.value = value
        self.suspect = suspect
        self.nodes = nodes


class _Builder:
    """One document's values from libyaml's events; raises `_NotPlain` at the first thing it leaves to the
    careful path."""

    __slots__ = ("get", "implicit", "nodes", "resolve", "suspect")

    def __init__(self, parser: yaml.CSafeLoader) -> None:
        self.get: Callable[[], Event | None] = parser.get_event
        self.resolve: Callable[..., str] = parser.resolve
        # The loader's implicit resolvers by first character, as `Resolver.resolve` reads them; with any path
        # resolver (none is registered for the safe loader) every scalar goes through `resolve` itself.
        implicit: dict[str | None, list[tuple[str, Any]]] = parser.yaml_implicit_resolvers
        self.implicit = None if parser.yaml_path_resolvers or None in implicit else implicit
        self.nodes = 0
        self.suspect = False

    def tag_of(self, text: str, implicit: tuple[bool, bool]) -> str:
        """`Resolver.resolve(ScalarNode, text, implicit)`, without its per-call overhead when that is the same."""
        resolvers = self.implicit
        if resolvers is None:
            return self.resolve(ScalarNode, text, implicit)
        if implicit[0]:
            for tag, pattern in resolvers.get(text[0] if text else "", ()):
                if pattern.match(text):
                    return tag
        return _STR

    def document(self) -> Plain:
        get = self.get
        if type(get()) is not StreamStartEvent or type(get()) is not DocumentStartEvent:
            raise _NotPlain  # an empty stream: the careful path says what a spec file must start with
        value = self.value(get(), 1)
        if type(get()) is not DocumentEndEvent or type(get()) is not StreamEndEvent:
            raise _NotPlain  # more than one document
        return Plain(value, self.suspect, self.nodes)

    def value(self, event: Any, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_EXPANDED_NODES:
            raise _over_the_bound(event)
        kind = type(event)
        if kind is ScalarEvent:
            return self.scalar(event)
        if kind is MappingStartEvent:
            self.collection(event, depth)
            return self.mapping(depth)
        if kind is SequenceStartEvent:
            self.collection(event, depth)
            items = []
            get = self.get
            while type(item := get()) is not SequenceEndEvent:
                items.append(self.value(item, depth + 1))
            return items
        raise _NotPlain  # an alias

    @staticmethod
    def collection(event: Any, depth: int) -> None:
        if event.anchor is not None or event.tag not in _IMPLICIT or depth >= MAX_DEPTH - 1:
            raise _NotPlain

    def mapping(self, depth: int) -> dict[Any, Any]:
        get = self.get
        data: dict[Any, Any] = {}
        while type(event := get()) is not MappingEndEvent:
            if type(event) is not ScalarEvent:
                raise _NotPlain  # a key that is a list, a mapping or an alias
            self.nodes += 1
            if self.nodes > MAX_EXPANDED_NODES:
                raise _over_the_bound(event)
            key = self.scalar(event)
            if key in data:
                raise _NotPlain  # a repeated key: the careful path names every one with its line
            data[key] = self.value(get(), depth + 1)
        return data

    def scalar(self, event: Any) -> Any:
        text: str = event.value
        if event.anchor is not None or event.tag not in _IMPLICIT:
            raise _NotPlain  # an anchor, or an explicit tag
        tag = self.tag_of(text, event.implicit)
        if tag == _STR:
            if len(text) > MAX_TEXT_CHARS or suspect_text(text):
                self.suspect = True
            return text
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return _CONSTRUCTOR.bool_values[text.lower()]
        if tag in (_INT, _FLOAT) and len(text) <= MAX_NUMBER_CHARS:
            node = ScalarNode(tag, text)
            if tag == _FLOAT:
                return _CONSTRUCTOR.construct_yaml_float(node)
            number: int = _CONSTRUCTOR.construct_yaml_int(node)
            if abs(number) > MAX_INTEGER:
                self.suspect = True
            return number
        raise _NotPlain  # merge keys, timestamps, over-long numbers


def _over_the_bound(event: Any) -> Refused:
    """The refusal of a document whose value or key `event` is one more than a spec file may have."""
    return too_many_values(event.start_mark.line + 1)


def build_plain(text: str) -> Plain | None:
    """The value of `text` if it is a plain document (see the module's docstring), else None. A document whose
    values up to the bound were all plain and that has more is refused here (`Refused`, with the line where the
    count crosses the bound): with no alias among them, the careful path would refuse it too, only later."""
    parser = yaml.CSafeLoader(text)
    try:
        return _Builder(parser).document()
    except (yaml.YAMLError, _NotPlain, ValueError, KeyError):
        return None
    finally:
        parser.dispose()
