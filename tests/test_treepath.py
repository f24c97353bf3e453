"""The pure check of where a repository path leads once symbolic links are followed."""

from __future__ import annotations

import pytest

from gitopsd.source.treepath import MAX_LINKS, escape

LINKS = {
    "data/evil": "/etc/shadow",
    "data/up": "../../outside",
    "data/current": "v2",
    "latest": "data",
    "loop": "loop",
    "hop/a": "../hop/b",
    "hop/b": "../data/v2",
    "deep/x": "../../../../x",
}


def lookup(path: str) -> str | None:
    return LINKS.get(path, "")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("data/v2", None),
        ("data/current", None),
        ("latest/current", None),
        ("hop/a", None),
        ("./data/../data/v2", None),
        ("data/evil", "'data/evil' is a symbolic link to '/etc/shadow', outside the repository"),
        ("latest/evil", "'data/evil' is a symbolic link to '/etc/shadow', outside the repository"),
        ("data/up", "'data/up' is a symbolic link to '../../outside', outside the repository"),
        ("deep/x", "'deep/x' is a symbolic link to '../../../../x', outside the repository"),
        ("../x", "'../x' leads outside the repository"),
        ("loop", "'loop': too many levels of symbolic links"),
    ],
)
def test_where_a_path_leads(path: str, reason: str | None) -> None:
    assert escape(path, lookup) == reason


def test_a_chain_of_links_is_followed_up_to_the_kernels_limit() -> None:
    chain = {f"l{i}": f"l{i + 1}" for i in range(MAX_LINKS)}
    assert escape("l0", lambda p: chain.get(p, "")) is None
    chain[f"l{MAX_LINKS}"] = f"l{MAX_LINKS + 1}"
    assert "too many levels" in (escape("l0", lambda p: chain.get(p, "")) or "")


@pytest.mark.parametrize(
    ("path", "submodule"),
    [("vendor", "vendor"), ("vendor/src", "vendor"), ("libs/../vendor/x", "vendor"), ("into-vendor/src", "vendor")],
)
def test_a_path_into_a_submodule_is_refused_even_through_a_link(path: str, submodule: str) -> None:
    links = {"into-vendor": "vendor"}
    why = escape(path, lambda p: links.get(p, ""), lambda p: p == "vendor")
    assert why == f"{submodule!r} is a Git submodule, which gitopsd does not check out (commit its files instead)"
    assert escape("vendored", lambda p: "", lambda p: p == "vendor") is None
