"""The package layout a newcomer reads: few entries at the top, one documented folder per subsystem, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gitopsd"
SUBSYSTEMS = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def test_the_top_folder_is_short_and_every_subsystem_is_a_folder() -> None:
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 14, entries  # dunder files, py.typed, the vocabulary and the subsystems
    assert SUBSYSTEMS == ["backends", "cli", "daemon", "reconcile", "registry", "source", "spec", "ui"]
    loose = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert loose == {"model", "errors", "units"}, "only the shared vocabulary lives at the top"


@pytest.mark.parametrize("init", sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_package_says_what_it_owns(init: Path) -> None:
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and len(doc.split()) >= 20, f"{init} needs a docstring: what it owns, what it may import"


def test_every_module_says_why_it_exists() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    missing = [str(p.relative_to(ROOT)) for p in modules if not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []


def test_the_architecture_document_names_every_folder() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    for name in [*SUBSYSTEMS, "backends/local"]:
        assert f"gitopsd/{name}/" in text, name
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()


def test_the_docs_stand_on_their_own() -> None:
    """A user's clone has no ../shared: the README and docs/ never point there."""
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "backends").glob("*/README.md")]:
        assert "../shared" not in doc.read_text(), doc


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_between_files() -> None:
    graph = grimp.build_graph("gitopsd", "gitopsd_slurm", "gitopsd_nvidia")
    modules = {m for m in graph.modules if not m.endswith("__main__")}
    assert _cycles(graph, modules) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("a", "b", "c"):
        graph.add_module(name)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="a")
    graph.add_import(importer="b", imported="c")
    assert _cycles(graph, {"a", "b", "c"}) == [["a", "b"]]
