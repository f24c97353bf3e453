"""Fixtures of the browser tests: one headless Chromium per session, driven by Selenium, looking at a real
`gitopsd ui` process that serves a state directory the real reconciler filled (tests/browser/site.py).

Debian's `chromium` and `chromium-driver` are the browser (`make test` installs them). Without them (or
without the `selenium` package of the [test] extra) the browser tests are skipped on a developer's machine,
saying how to enable them, and FAIL under CI (`CI` set), where a missing browser must never pass unnoticed.

After each test: a screenshot of the page it left is kept in test-artifacts/browser/<test>.png, and the
browser's console must hold no SEVERE entry (a script error, a failed asset, a refused Content-Security-Policy).
A test that provokes failed requests on purpose (a stopped server) names what it expects with
`console.allow(...)`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.site import REPOSITORY, UiServer, build
from tests.conftest import GitRepo
from tests.ports import free_port

if TYPE_CHECKING:
    from selenium.webdriver import Chrome
    from selenium.webdriver.remote.webdriver import WebDriver

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
HOW_TO_ENABLE = (
    "install Debian's browser and its driver (`apt-get install chromium chromium-driver`; `make test` does) and "
    "the [test] extra (`pip install -e '.[test]'`, which brings selenium)"
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _unavailable(why: str) -> None:
    message = f"no browser for tests/browser ({why}): {HOW_TO_ENABLE}"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_selenium() -> None:
    """At the top of a browser test module: skip it (fail it under CI) when selenium is not installed."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        message = f"no browser for tests/browser (the selenium package is not installed): {HOW_TO_ENABLE}"
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="session")
def driver() -> Iterator[Chrome]:
    """A headless Chromium, 1400x1000, whose console messages the tests read."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("the selenium package is not installed")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if browser is None or chromedriver is None:
        _unavailable("`chromium` or `chromedriver` is not on PATH")
    assert browser is not None and chromedriver is not None
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


@dataclass
class Console:
    """The browser console of one test: SEVERE entries fail it unless they match an allowed pattern."""

    driver: Chrome
    allowed: list[str] = field(default_factory=list)

    def allow(self, *patterns: str) -> None:
        """Regular expressions of SEVERE messages this test provokes on purpose."""
        self.allowed.extend(patterns)

    def entries(self) -> list[dict[str, Any]]:
        return list(self.driver.get_log("browser"))  # type: ignore[no-untyped-call]

    def severe(self) -> list[str]:
        return [entry["message"] for entry in self.entries() if entry.get("level") == "SEVERE"
                and not any(re.search(pattern, entry["message"]) for pattern in self.allowed)]  # fmt: skip


def screenshot(driver: WebDriver, name: str) -> Path:
    """Keep what the browser shows now as test-artifacts/browser/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png")
    driver.save_screenshot(str(target))
    return target


@pytest.fixture
def console(driver: Chrome, request: pytest.FixtureRequest) -> Iterator[Console]:
    """Each test's console (emptied first); afterwards a screenshot, then no SEVERE entry may be left."""
    watched = Console(driver)
    watched.entries()  # drain what an earlier test left
    yield watched
    screenshot(driver, request.node.name)
    errors = watched.severe()
    assert not errors, f"console errors on {driver.current_url}:\n" + "\n".join(errors)


@dataclass
class Site:
    """The built repository, its state directory and the `gitopsd ui` serving it."""

    repo: GitRepo
    state: Path
    ui: UiServer
    repository: str = REPOSITORY

    def url(self, path: str) -> str:
        return self.ui.url + path


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("browser")
    repo, state = build(root)
    ui = UiServer(state=state, port=free_port(), log=root / "ui.log")
    ui.start()
    try:
        yield Site(repo=repo, state=state, ui=ui)
    finally:
        ui.stop()


@pytest.fixture
def page(driver: WebDriver, console: Console, site: Site) -> Callable[[str], WebDriver]:
    """Open a /ui path of the site in the browser (with the console checked after the test)."""

    def open_page(path: str) -> WebDriver:
        driver.get(site.url(path))
        return driver

    return open_page
