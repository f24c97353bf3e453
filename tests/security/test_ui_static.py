"""The dashboard's static files keep the promises the CSP and docs/ui.md make, checked on the files themselves.

The page runs under `default-src 'self'` with no inline script, so the HTML must load every script from a file
and carry no event-handler attribute; nothing may come from another host (the dashboard works offline on a
login node); every string from the API (written by repositories and trainings: hostile) must enter the DOM as
text, so our modules never parse HTML (innerHTML and friends) or evaluate strings as code; every module they
import must be a file the server's allow-list serves (flat names in static/); and the vendored uPlot is the
release named in docs/ui.md, with its licence beside it.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path

import pytest

STATIC = Path(str(files("gitopsd.ui").joinpath("static")))
VENDORED = {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"}
OURS = sorted(p.name for p in STATIC.glob("*.js") if p.name not in VENDORED)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def _index() -> _Tags:
    parser = _Tags()
    parser.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    return parser


def test_the_page_has_no_inline_script_and_no_event_handler_attribute() -> None:
    page = _index()
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts, "index.html loads its scripts"
    assert all(attrs.get("src") for attrs in scripts), "every <script> has a src (CSP: no inline script)"
    assert page.script_text == []
    handlers = [(tag, name) for tag, attrs in page.tags for name in attrs if name.lower().startswith("on")]
    assert handlers == [], f"inline event handlers are blocked by the CSP: {handlers}"


def test_every_asset_the_page_names_is_a_served_static_file() -> None:
    page = _index()
    refs = [attrs.get("src") or attrs.get("href") for tag, attrs in page.tags if tag in ("script", "link")]
    local = [ref for ref in refs if ref and not ref.startswith("data:")]
    assert local, "the page names its script and style"
    for ref in local:
        assert ref.startswith("/ui/static/"), f"{ref}: assets come from /ui/static/ (no CDN, no other host)"
        name = ref.removeprefix("/ui/static/")
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name) and (STATIC / name).is_file(), ref


@pytest.mark.parametrize("name", OURS)
def test_each_module_imports_only_flat_static_files(name: str) -> None:
    source = (STATIC / name).read_text(encoding="utf-8")
    imports = re.findall(r"""(?:^|\n)\s*import\s[^;]*?from\s+["']([^"']+)["']""", source)
    imports += re.findall(r"""import\(\s*["']([^"']+)["']\s*\)""", source)
    for target in imports:
        assert re.fullmatch(r"\./[A-Za-z0-9_-]+\.js", target), f"{name} imports {target}: only ./NAME.js"
        assert (STATIC / target[2:]).is_file(), f"{name} imports {target}, which static/ does not have"


@pytest.mark.parametrize("name", OURS)
def test_no_module_parses_html_or_evaluates_strings(name: str) -> None:
    code = re.sub(r"//[^\n]*", "", (STATIC / name).read_text(encoding="utf-8"))  # comments may name them
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setTimeout(\"", "createContextualFragment", "DOMParser"):  # fmt: skip
        assert sink not in code, f"{name} uses {sink}: strings from the API must go in as text"


@pytest.mark.parametrize("name", [*OURS, "index.html", "style.css"])
def test_nothing_is_loaded_from_another_host(name: str) -> None:
    text = (STATIC / name).read_text(encoding="utf-8")
    urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"')]*", text))
    assert urls <= {"http://www.w3.org/2000/svg"}, f"{name} names another host: {urls - {'http://www.w3.org/2000/svg'}}"
    assert "@import" not in text and "url(http" not in text


def test_the_vendored_charting_library_is_the_documented_release_with_its_licence() -> None:
    script = (STATIC / "uPlot.iife.min.js").read_text(encoding="utf-8")
    assert script.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    licence = (STATIC / "uPlot.LICENSE").read_text(encoding="utf-8")
    assert "The MIT License" in licence and "Leon Sorokin" in licence
    assert (STATIC / "uPlot.min.css").stat().st_size > 0
    docs = (Path(__file__).parents[2] / "docs" / "ui.md").read_text(encoding="utf-8")
    assert "1.6.32" in docs and "uPlot.LICENSE" in docs, "docs/ui.md says where the vendored files came from"
