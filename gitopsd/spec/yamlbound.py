"""A YAML loader whose cost is bounded whatever the document says, because spec files come from anyone who
can push.

A few hundred bytes of YAML can make a billion values: each alias (`*a`) refers to an anchored node, and a
node made of ten aliases of a node made of ten aliases... multiplies. The parser shares such nodes, so parsing
stays cheap, but everything that later walks the document (validation, JSON digests, status) pays for the
expanded size. So the size is measured on the node graph the parser built, before anything walks it: every
node counts once per reference to it, however the YAML spells the aliases (block or flow style, with or
without blanks). A document is refused when it expands to more than `MAX_EXPANDED_NODES` values or
`MAX_EXPANDED_CHARS` characters of scalar text, nests deeper than `MAX_DEPTH`, or holds a node that contains
itself. Integer and float scalars longer than `MAX_NUMBER_CHARS` are refused before Python converts them
(`1:59:59:...` in base 60 costs quadratic time). The bytes of one file are bounded by `gitopsd.spec.bounds`
before this loader sees them, which bounds the parser's own work.
"""

from __future__ import annotations

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPANDED_CHARS",
    "MAX_EXPANDED_NODES",
    "MAX_NUMBER_CHARS",
    "BoundedLoader",
    "Refused",
    "too_many_values",
]

#: Values (scalars, lists, mappings) of one document, each alias counted as a copy of what it refers to.
MAX_EXPANDED_NODES = 100_000
#: Characters of scalar text of one document, each alias counted as a copy of what it refers to.
MAX_EXPANDED_CHARS = 4 * 1024 * 1024
#: Levels of nesting of lists and mappings.
MAX_DEPTH = 64
#: Characters of one integer or float scalar.
MAX_NUMBER_CHARS = 64


class Refused(Exception):
    """A document over one of the bounds; `line` is 1-based, of the node where the bound was crossed."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def too_many_values(line: int) -> Refused:
    """The refusal of a document with more than `MAX_EXPANDED_NODES` values and no alias among them; `line`:
    where the count crosses the bound."""
    message = f"this document has more than {MAX_EXPANDED_NODES} values; a spec file may have at most that many"
    return Refused(message, line)


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def check_bounds(root: Node) -> None:
    """Raise `Refused` if the document under `root` breaks a bound; cost: one visit of each distinct node."""
    if not _check_tree(root):
        _check_graph(root)


def _check_tree(root: Node) -> bool:
    """Bounds of a document without shared nodes (the usual case, checked cheaply); False when a node is
    shared (an alias), which needs `_check_graph`."""
    seen: set[int] = set()
    stack: list[tuple[Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            return False
        seen.add(id(node))
        if len(seen) > MAX_EXPANDED_NODES:
            raise too_many_values(_line(node))
        value = node.value
        if isinstance(value, list) and value:
            if depth >= MAX_DEPTH:
                raise Refused(f"lists and mappings are nested more than {MAX_DEPTH} levels deep", _line(node))
            if isinstance(node, MappingNode):
                stack.extend((child, depth + 1) for pair in value for child in pair)
            else:
                stack.extend((child, depth + 1) for child in value)
    return True  # no alias: the text is no larger than the file, which is bounded before parsing


def _check_graph(root: Node) -> None:
    """Bounds of a document with aliases, each alias counted as a copy of the node it refers to."""
    done: dict[int, tuple[int, int, int]] = {}  # id -> (expanded nodes, expanded chars, depth), each capped
    open_: set[int] = set()  # nodes whose children are being measured: meeting one again is a cycle
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, measured = stack.pop()
        key = id(node)
        if not measured:
            if key in done:
                continue
            if key in open_:
                raise Refused("a YAML alias refers to a node that contains it; a spec cannot be recursive", _line(node))
            open_.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))
            continue
        open_.discard(key)
        children = [done[id(child)] for child in _children(node)]
        nodes = min(1 + sum(c[0] for c in children), MAX_EXPANDED_NODES + 1)
        chars = min(sum(c[1] for c in children), MAX_EXPANDED_CHARS + 1)
        if isinstance(node, ScalarNode):
            chars = min(chars + len(node.value), MAX_EXPANDED_CHARS + 1)
        depth = 1 + max((c[2] for c in children), default=0)
        done[key] = (nodes, chars, depth)
        if nodes > MAX_EXPANDED_NODES or chars > MAX_EXPANDED_CHARS:
            shared = len(done) < nodes  # more values than distinct nodes: aliases made it this big
            what = f"{MAX_EXPANDED_NODES} values" if nodes > MAX_EXPANDED_NODES else f"{MAX_EXPANDED_CHARS} characters"
            how = "YAML aliases expand this document to" if shared else "this document has"
            raise Refused(f"{how} more than {what}; a spec file may have at most {what}", _line(node))
        if depth > MAX_DEPTH:
            raise Refused(f"lists and mappings are nested more than {MAX_DEPTH} levels deep", _line(node))


def _number_length(node: ScalarNode, kind: str) -> None:
    if len(node.value) > MAX_NUMBER_CHARS:
        message = f"{kind} of {len(node.value)} characters: numbers in a spec have at most {MAX_NUMBER_CHARS}"
        raise Refused(message, _line(node))


class BoundedLoader(yaml.CSafeLoader):
    """libyaml's safe loader with the bounds of this module; `yaml.load` and `yaml.compose` both use them."""

    def get_single_node(self) -> Node | None:
        node: Node | None = super().get_single_node()
        if node is not None:
            check_bounds(node)
        return node

    def construct_bounded_int(self, node: ScalarNode) -> int:
        _number_length(node, "an integer")
        value: int = self.construct_yaml_int(node)
        return value

    def construct_bounded_float(self, node: ScalarNode) -> float:
        _number_length(node, "a number")
        value: float = self.construct_yaml_float(node)
        return value


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_bounded_int)
BoundedLoader.add_constructor("tag:yaml.org,2002:float", BoundedLoader.construct_bounded_float)
