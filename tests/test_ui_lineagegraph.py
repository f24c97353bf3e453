"""The lineage graph of the version page: the chain through bases, cycles cut, forge links, hostile strings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitopsd.ui.lineagegraph import MAX_DEPTH, MAX_TEXT, base_of, chain, commit_link, graph, redacted, text

SHA1 = "a" * 40


def version(model: str, number: int, base: str | None = None, **lineage: Any) -> dict[str, Any]:
    return {
        "model": model,
        "number": number,
        "created_at": 1.0,
        "metrics": {"accuracy": 0.95},
        "artifact": {"sha256": f"{number:064x}", "size": 10, "uri": "file:///store"},
        "lineage": {
            "commit": SHA1,
            "commit_info": {"subject": "Train it", "author": "A <a@b>"},
            "spec_path": f"models/{model}.yaml",
            "run_id": f"{model}-{number}",
            "job_id": str(number),
            "backend": {"name": "slurm", "type": "slurm"},
            "job": {"host": "gpu1", "node_names": ["gpu1", "gpu2"], "gpus": [{"name": "H100", "uuid": "GPU-1"}],
                    "driver_version": "550.1"},
            "base": {"label": base, "ref": base, "sha256": "b" * 64} if base else None,
            **lineage,
        },
    }  # fmt: skip


def registry(*versions: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(v["model"], v["number"]): v for v in versions}


def test_a_fine_tuned_version_chains_to_its_base_and_the_base_links_to_its_page() -> None:
    book = registry(version("tuned", 1, "blobs@2"), version("blobs", 2))
    versions = chain(lambda m, n: book.get((m, n)), "tuned", 1)
    assert [(v["model"], v["number"]) for v in versions] == [("tuned", 1), ("blobs", 2)]
    doc = graph(versions, repository="my repo", commit_url="https://forge.example/org/r/commit/{commit}")
    nodes = {n["id"]: n for n in doc["nodes"]}
    kinds = sorted({n["kind"] for n in doc["nodes"]})
    assert kinds == ["artifact", "commit", "job", "run", "spec", "version"]
    assert nodes["version:tuned@1"]["url"] is None
    assert nodes["version:blobs@2"]["url"] == "/ui/versions/my%20repo/blobs/2"
    assert nodes["version:blobs@2"]["detail"]["metrics"] == "accuracy=0.95", "the base's own facts are kept"
    edges = {(e["from"], e["to"], e["label"]) for e in doc["edges"]}
    assert ("version:blobs@2", "run:tuned-1", "fine-tuned from") in edges
    assert ("artifact:" + f"{1:064x}", "version:tuned@1", "registered as") in edges
    commit = nodes[f"commit:{SHA1}"]
    assert commit["url"] == f"https://forge.example/org/r/commit/{SHA1}"
    job = nodes["job:tuned-1:1"]["detail"]
    assert job["nodes"] == "gpu1, gpu2" and job["gpus"] == "H100 GPU-1" and job["driver"] == "550.1"
    for node in doc["nodes"]:
        assert all(isinstance(v, str) for v in node["detail"].values())
    ids = {n["id"] for n in doc["nodes"]}
    assert all(e["from"] in ids and e["to"] in ids for e in doc["edges"])


def test_a_base_the_registry_lacks_is_a_node_without_a_link() -> None:
    versions = chain(lambda m, n: registry(version("tuned", 1, "gone@3")).get((m, n)), "tuned", 1)
    assert len(versions) == 1
    nodes = {n["id"]: n for n in graph(versions, repository="r")["nodes"]}
    assert nodes["version:gone@3"]["url"] is None


def test_cycles_are_cut_and_depth_is_bounded() -> None:
    loop = registry(version("a", 1, "b@1"), version("b", 1, "a@1"))
    assert [(v["model"], v["number"]) for v in chain(lambda m, n: loop.get((m, n)), "a", 1)] == [("a", 1), ("b", 1)]
    graph(chain(lambda m, n: loop.get((m, n)), "a", 1), repository="r")  # finite
    long = registry(*(version("m", n, f"m@{n + 1}") for n in range(1, 100)))
    got = chain(lambda m, n: long.get((m, n)), "m", 1)
    assert len(got) == MAX_DEPTH


@pytest.mark.parametrize(
    ("template", "commit", "url"),
    [
        ("https://f/c/{commit}", SHA1, f"https://f/c/{SHA1}"),
        ("https://f/c/{commit}", "c" * 64, "https://f/c/" + "c" * 64),
        ("http://f/{commit}?x=1", SHA1, f"http://f/{SHA1}?x=1"),
        ("https://u:secret@f/{commit}", SHA1, f"https://***@f/{SHA1}"),
        ("javascript:alert(1)//{commit}", SHA1, None),
        ("/relative/{commit}", SHA1, None),
        ("https://f/c/", SHA1, None),
        ("https://f/c/{commit}", "abc", None),
        ("https://f/c/{commit}", "A" * 40, None),
        ("https://f/c/{commit}", "../" + SHA1, None),
        (None, SHA1, None),
        ("https://f/c/{commit}", None, None),
    ],
)
def test_commit_link(template: str | None, commit: object, url: str | None) -> None:
    assert commit_link(template, commit) == url


def test_hostile_strings_stay_plain_bounded_and_redacted() -> None:
    evil = version(
        "m", 1, commit_info={"subject": "<script>alert(1)</script> see https://user:pw@host/x?token=abc"},
        job={"host": "x" * 10_000, "nodes": [[[["deep"]]]], "gpus": "not a list"},
    )  # fmt: skip
    nodes = {n["kind"]: n for n in graph([evil], repository="r")["nodes"]}
    subject = nodes["commit"]["detail"]["subject"]
    assert subject.startswith("<script>"), "kept as text: the page inserts it with textContent"
    assert "pw" not in subject and "abc" not in subject
    assert len(nodes["job"]["detail"]["host"]) == MAX_TEXT
    assert all(len(n["label"]) <= 200 for n in nodes.values())


def test_redacted_walks_nested_data() -> None:
    data: Any = {"url": "https://t:s@h/r", "n": float("nan"), "list": [{"k": "ftp://a:b@c"}]}
    assert redacted(data) == {"url": "https://***@h/r", "n": None, "list": [{"k": "ftp://***@c"}]}
    deep: Any = "x"
    for _ in range(100):
        deep = [deep]
    out = redacted(deep)
    depth = 0
    while isinstance(out, list):
        out, depth = out[0], depth + 1
    assert isinstance(out, str) and depth <= 17


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=30))  # fmt: skip
def test_text_is_always_a_bounded_string(value: object) -> None:
    shown = text(value)
    assert isinstance(shown, str) and len(shown) <= MAX_TEXT


def test_base_of() -> None:
    assert base_of(version("a", 1, "b@2")) == ("b", 2)
    assert base_of({"lineage": {"base": {"label": "nonsense"}}}) is None
    assert base_of({"lineage": {"base": {"label": "b@0"}}}) is None
    assert base_of({"lineage": None}) is None
    no_base: Mapping[str, Any] = version("a", 1)
    assert base_of(no_base) is None
