"""The daemon's /ui behind its API token, in a real headless Chromium: a browser cannot send a bearer header
when it navigates, so it is sent to the login form, and the token typed there opens the dashboard (a session
cookie that is not the token itself). The daemon is `gitopsd run` as in tests/test_daemon.py."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from tests.browser.conftest import require_selenium

require_selenium()

from tests.browser.conftest import Console
from tests.browser.test_dashboard import until, wait_for
from tests.test_daemon import start_daemon

if TYPE_CHECKING:
    from selenium.webdriver import Chrome


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_daemons_dashboard_asks_for_the_token_and_logs_in(driver: Chrome, console: Console,
                                                               tmp_path: Path) -> None:  # fmt: skip
    console.allow(r"/ui/login - Failed to load resource: .* 401")  # the answer to the wrong token, on purpose
    with start_daemon(tmp_path) as daemon:
        assert _status(daemon.url + "/ui/api/overview") == 401, "the API needs the token"
        driver.delete_all_cookies()
        driver.get(daemon.url + "/ui/")
        until(driver, lambda: "/ui/login" in driver.current_url, "an anonymous visitor is sent to the login page")
        field = wait_for(driver, 'input[name="token"]')
        assert field.get_attribute("type") == "password"
        field.send_keys("not-the-token")
        field.submit()
        until(driver, lambda: "/ui/login" in driver.current_url, "a wrong token stays on the login page")
        assert "does not match" in wait_for(driver, '[role="alert"]').text
        assert driver.get_cookie("gitopsd_ui") is None

        field = wait_for(driver, 'input[name="token"]')
        field.clear()
        field.send_keys(daemon.token)
        field.submit()
        wait_for(driver, '[data-testid="model-row"][data-model="blobs"]', timeout=30)
        assert driver.title == "Overview · gitopsd"
        assert "/ui/login" not in driver.current_url
        cookie = driver.get_cookie("gitopsd_ui")
        assert cookie is not None and cookie["httpOnly"] and cookie["path"] == "/ui"
        assert daemon.token not in cookie["value"], "the browser never keeps the token itself"
        driver.get(daemon.url + "/ui/cluster")  # the daemon's own view of its backends
        backends = wait_for(driver, '[data-testid="backends"]')
        until(driver, lambda: "local" in backends.text, "the daemon's backends are listed")
        driver.delete_all_cookies()
