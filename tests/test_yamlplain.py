"""The fast path of spec loading (`gitopsd.spec.yamlplain`) agrees with the careful loader on every document it
answers for, and declines every document whose meaning needs the careful path."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsd.errors import SpecError
from gitopsd.spec import load
from gitopsd.spec.text import unsafe_values
from gitopsd.spec.yamlbound import MAX_DEPTH, MAX_EXPANDED_NODES, BoundedLoader, Refused
from gitopsd.spec.yamlplain import build_plain

PLAIN = """\
apiVersion: gitopsd/v1
kind: Model
metadata: {name: m1, labels: {team: "vision"}}
spec:
  suspend: yes
  train:
    command: python3 train.py --lr 1e-3
    env: {A: "1", "B": '2', C: "yes"}
    resources: {cpus: 017, gpus: 0x2, memory: 16Gi, nodes: 1_0}
    retries: -3
  data: [{uri: data/a.csv, sha256: null}, ~, true, Off, 1.5, .inf, -.Inf, 12e3, "0", 1:20, -1_0:3.5]
  outputs: {artifact: model.pt}
  "odd key": ''
  1: int key
  2.5: float key
  null: null key
  false: bool key
"""

#: Documents the fast path must leave to the careful path (each for its own reason).
NOT_PLAIN = {
    "alias": "a: &x [1, 2]\nb: *x\n",
    "anchor only": "a: &x 1\n",
    "merge key": "base: &b {x: 1}\nm:\n  <<: *b\n  y: 2\n",
    "duplicate key": "a: 1\nb: 2\na: 3\n",
    "duplicate key after resolution": "1: a\n0x1: b\n",
    "explicit tag": "a: !!str 12\n",
    "local tag": "a: !thing 12\n",
    "tagged mapping": "a: !!map {b: 1}\n",
    "timestamp": "a: 2024-01-01\n",
    "long number": "a: " + "1" * 65 + "\n",
    "binary": "a: !!binary aGVsbG8=\n",
    "set": "a: !!set {x, y}\n",
    "list key": "? [1, 2]\n: a\n",
    "mapping key": "? {a: 1}\n: b\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "empty": "",
    "comment only": "# nothing\n",
    "syntax error": "a: [1, 2\n",
    "tab indent": "a:\n\tb: 1\n",
    "too deep": "a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n",
    "value key": "=: 1\n",
}


def careful(text: str) -> object:
    return yaml.load(text, Loader=BoundedLoader)


def test_a_plain_document_gives_what_the_careful_loader_gives() -> None:
    plain = build_plain(PLAIN)
    assert plain is not None
    assert plain.value == careful(PLAIN)
    assert plain.suspect is False
    assert plain.value["spec"]["suspend"] is True  # YAML 1.1 booleans, as PyYAML reads them
    assert plain.value["spec"]["train"]["resources"]["cpus"] == 15  # and YAML 1.1 octal


@pytest.mark.parametrize("name", sorted(NOT_PLAIN))
def test_what_needs_the_careful_path_is_left_to_it(name: str) -> None:
    assert build_plain(NOT_PLAIN[name]) is None


@pytest.mark.parametrize(
    "text",
    [
        'a: "line\\nbreak"\n',
        'a: "\\x1b[31m"\n',
        '"k\\u202e": 1\n',
        "a: 9007199254740993\n",
        "a: " + "x" * 70_000 + "\n",
    ],
)
def test_text_the_character_rules_may_refuse_is_marked_suspect(text: str) -> None:
    plain = build_plain(text)
    assert plain is not None and plain.suspect
    assert list(unsafe_values(plain.value, "Repository"))


def test_a_clean_document_is_not_suspect_and_the_full_check_agrees() -> None:
    plain = build_plain("a: [one line, 2, 9007199254740992]\nb: {c: -9007199254740992}\n")
    assert plain is not None and not plain.suspect
    assert not list(unsafe_values(plain.value, "Repository"))


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["yes", "No", "on", "~", "null", "0o17", "017", "0x1F", "1_000", "1:30", "2024-01-01", "<<", "="]),
)
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), children)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(data=_documents, flow=st.sampled_from([None, True, False]), style=st.sampled_from([None, "'", '"']))
def test_any_document_the_fast_path_reads_means_the_same(data: object, flow: bool | None, style: str | None) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, default_style=style, allow_unicode=True)
    plain = build_plain(text)
    if plain is None:
        return
    assert plain.value == careful(text)
    if not plain.suspect:
        assert not list(unsafe_values(plain.value, "Model"))


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab:- \n[]{},&*!'\"#<=?|>01yn.~\t")), max_size=40))
def test_arbitrary_text_is_either_declined_or_read_as_the_careful_loader_reads_it(text: str) -> None:
    plain = build_plain(text)
    if plain is None:
        return
    assert plain.value == careful(text)
    assert yaml.compose(text, Loader=BoundedLoader) is not None


def test_load_model_gives_the_same_model_and_the_same_errors_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    good = (
        "apiVersion: gitopsd/v1\nkind: Model\nmetadata: {name: m1, labels: {team: vision}}\nspec:\n  suspend: yes\n"
        "  train:\n    command: python3 train.py\n    resources: {cpus: 017, memory: 16Gi}\n    timeout: 1:30:00\n"
        "  outputs: {artifact: model.pt}\n"
    )
    bad = good.replace("python3 train.py", "[not, a, string]").replace("cpus: 017", "cpus: -1")
    fast = load.load_model(good, "models/m1.yaml")
    with pytest.raises(SpecError) as fast_error:
        load.load_model(bad, "models/m1.yaml")
    monkeypatch.setattr(load, "build_plain", lambda text: None)
    assert load.load_model(good, "models/m1.yaml") == fast
    with pytest.raises(SpecError) as careful_error:
        load.load_model(bad, "models/m1.yaml")
    assert careful_error.value.problems == fast_error.value.problems


@settings(max_examples=500, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=10),
        st.sampled_from(["", "~", "null", "yes", "Off", "0x1f", "-.inf", "1:2", "2001-12-14", "<<", "=", "!a", "*b"]),
    ),
    implicit=st.tuples(st.booleans(), st.booleans()),
)
def test_tags_are_resolved_exactly_as_the_loader_resolves_them(text: str, implicit: tuple[bool, bool]) -> None:
    from yaml.nodes import ScalarNode

    from gitopsd.spec.yamlplain import _Builder

    parser = yaml.CSafeLoader("")
    try:
        assert _Builder(parser).tag_of(text, implicit) == parser.resolve(ScalarNode, text, implicit)  # type: ignore[no-untyped-call]
    finally:
        parser.dispose()


def test_a_document_past_the_value_bound_is_refused_at_the_value_that_crosses_it() -> None:
    """A mapping, its key, a list and its items: the walk refuses what the careful path would, at the first
    value past the bound, where the careful path would compose the whole file first."""
    at_the_bound = "a:\n" + "- 1\n" * (MAX_EXPANDED_NODES - 3)
    plain = build_plain(at_the_bound)
    assert plain is not None and plain.nodes == MAX_EXPANDED_NODES
    past = at_the_bound + "- 2\n"
    with pytest.raises(Refused) as walked:
        build_plain(past)
    assert (walked.value.line, walked.value.message) == (
        MAX_EXPANDED_NODES - 1,
        f"this document has more than {MAX_EXPANDED_NODES} values; a spec file may have at most that many",
    )
    with pytest.raises(Refused, match="this document has more than"):
        yaml.compose(past, Loader=BoundedLoader)
