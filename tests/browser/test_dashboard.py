"""The dashboard in a real headless Chromium, against `gitopsd ui` serving a state directory the real reconciler
filled with the local backend (tests/browser/site.py): what a user sees on each page, live curves, recovery
after a restart, keyboard use and hostile repository content. DOM hooks: docs of issue 15's contract."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING

from tests.browser.conftest import require_selenium

require_selenium()

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser.conftest import Console, Site, screenshot
from tests.browser.site import HOSTILE, gitopsd, start_live

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

Page = Callable[[str], "WebDriver"]
TERMINAL = {"Succeeded", "Failed", "Registered", "Cancelled", "TimedOut"}


def wait_for(driver: WebDriver, css: str, timeout: float = 15) -> WebElement:
    """The first element matching css, once there is one."""
    found: list[WebElement] = []

    def present(_: object) -> bool:
        found[:] = driver.find_elements(By.CSS_SELECTOR, css)
        return bool(found)

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(present, f"no {css} on {driver.current_url}")
    return found[0]


def until(driver: WebDriver, condition: Callable[[], bool], message: str, timeout: float = 15) -> None:
    def check(_: object) -> bool:
        try:
            return condition()
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(check, message)


def row(driver: WebDriver, model: str) -> WebElement:
    return wait_for(driver, f'[data-testid="model-row"][data-model="{model}"]')


def points(driver: WebDriver, metric: str) -> int:
    chart = driver.find_element(By.CSS_SELECTOR, f'[data-testid="chart-{metric}"]')
    return int(chart.get_attribute("data-points") or 0)


def visible_models(driver: WebDriver) -> set[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, '[data-testid="model-row"]')
    return {r.get_attribute("data-model") or "" for r in rows if r.is_displayed()}


def api(site: Site, path: str) -> dict[str, object]:
    with urllib.request.urlopen(site.url(path), timeout=5) as answer:
        doc: dict[str, object] = json.loads(answer.read())
    return doc


def test_the_overview_lists_the_demo_model_ready_with_its_version(page: Page, site: Site) -> None:
    driver = page("/ui/")
    blobs = row(driver, "blobs")
    assert driver.title == "Overview · gitopsd"
    assert blobs.get_attribute("data-repository") == site.repository
    assert blobs.get_attribute("data-condition") == "Ready"
    assert "Ready" in blobs.find_element(By.CSS_SELECTOR, '[data-testid="condition"]').text
    assert blobs.find_element(By.CSS_SELECTOR, '[data-testid="latest-version"]').text.strip() == "v1"
    blobs.find_element(By.CSS_SELECTOR, f'a[href$="/ui/models/{site.repository}/blobs"]')
    assert row(driver, "strict").get_attribute("data-condition") == "Stalled"

    card = wait_for(driver, f'[data-testid="repo-card"][data-repository="{site.repository}"]')
    assert site.repo.git("rev-parse", "HEAD")[:7] in card.text, "the applied commit is on the repository's card"
    assert not card.find_elements(By.CSS_SELECTOR, '[data-testid="repo-error"]')

    Select(driver.find_element(By.CSS_SELECTOR, '[data-testid="filter-condition"]')).select_by_value("Stalled")
    until(driver, lambda: visible_models(driver) == {"strict", "hostile"}, "the condition filter keeps the Stalled")
    assert "condition=Stalled" in driver.current_url, "filters are kept in the URL"
    screenshot(driver, "overview-stalled")
    driver.get(driver.current_url)  # a shared URL opens with the same filter
    row(driver, "strict")
    until(driver, lambda: visible_models(driver) == {"strict", "hostile"}, "the filter of a shared URL applies")
    assert Select(driver.find_element(By.CSS_SELECTOR, '[data-testid="filter-condition"]')).first_selected_option \
        .get_attribute("value") == "Stalled"  # fmt: skip


def test_a_running_trainings_curve_grows_while_the_page_watches(page: Page, site: Site) -> None:
    start_live(site.repo, site.state)
    driver = page(f"/ui/models/{site.repository}/live")
    wait_for(driver, '[data-testid="chart-loss"]', timeout=20)
    until(driver, lambda: points(driver, "loss") > 0, "the live run's first points are drawn", timeout=20)
    assert driver.title == "live · gitopsd"
    run = wait_for(driver, '[data-testid="run-row"]')
    assert run.get_attribute("data-phase") not in TERMINAL
    driver.execute_script("window.__sameDocument = true;")
    seen = [points(driver, "loss")]
    deadline = time.monotonic() + 20
    while len(seen) < 3 and time.monotonic() < deadline:
        now = points(driver, "loss")
        if now > seen[-1]:
            seen.append(now)
        time.sleep(0.1)
    assert len(seen) >= 3, f"the curve did not grow twice in 20 s: data-points went {seen}"
    assert driver.execute_script("return window.__sameDocument === true;"), "the page was reloaded"


def test_a_failed_gate_shows_its_threshold_line_and_the_reason(page: Page, site: Site) -> None:
    driver = page(f"/ui/models/{site.repository}/strict")
    line = wait_for(driver, '[data-testid="gate-line"][data-metric="accuracy"]')
    assert float(line.get_attribute("data-threshold") or "nan") == 1.01
    wait_for(driver, '[data-testid="chart-accuracy"]')
    until(driver, lambda: points(driver, "accuracy") == 40, "the 40 epochs of the failed run are drawn")
    run = wait_for(driver, '[data-testid="runs"] [data-testid="run-row"]')
    assert run.get_attribute("data-phase") == "Failed"
    failed = wait_for(driver, '[data-testid="runs"] [data-testid="gate-failed"]')
    assert "accuracy" in failed.text and "1.01" in failed.text, failed.text
    assert "0.985" in failed.text, f"the value that missed the gate is shown: {failed.text}"
    assert driver.title == "strict · gitopsd"


def test_the_model_page_shows_versions_the_alias_timeline_and_a_plateau_stop(page: Page, site: Site) -> None:
    driver = page(f"/ui/models/{site.repository}/blobs")
    versions = wait_for(driver, '[data-testid="versions"]')
    until(driver, lambda: "v1" in versions.text or "blobs@1" in versions.text, "version 1 is listed")
    wait_for(driver, '[data-testid="alias-history"] [data-testid="alias-event"]')
    events = driver.find_elements(By.CSS_SELECTOR, '[data-testid="alias-history"] [data-testid="alias-event"]')
    kinds = [event.get_attribute("data-kind") for event in events]
    assert "refused" in kinds and "set" in kinds, f"the first pass refused production (no v1 yet), then set it: {kinds}"
    assert "production" in events[kinds.index("set")].text
    lines = driver.find_elements(By.CSS_SELECTOR, '[data-testid="gate-line"]')
    assert {(g.get_attribute("data-metric"), g.get_attribute("data-threshold")) for g in lines} >= {
        ("accuracy", "0.9"), ("loss", "0.5")}  # fmt: skip

    driver.get(site.url(f"/ui/models/{site.repository}/flat"))
    verdict = wait_for(driver, '[data-testid="verdict"]')
    until(driver, lambda: "plateau" in (verdict.text + (verdict.get_attribute("title") or "")).lower(),
          "the plateau stop is marked as such")  # fmt: skip
    until(driver, lambda: points(driver, "loss") >= 3, "the reports before the stop are drawn")


def test_the_lineage_of_a_fine_tuned_version_links_to_its_base(page: Page, site: Site) -> None:
    driver = page(f"/ui/versions/{site.repository}/blobs-tuned/1")
    graph = wait_for(driver, '[data-testid="lineage-graph"]')
    wait_for(driver, '[data-testid="lineage-node"]')
    assert driver.title == "blobs-tuned@1 · gitopsd"
    nodes = graph.find_elements(By.CSS_SELECTOR, '[data-testid="lineage-node"]')
    kinds = [node.get_attribute("data-kind") for node in nodes]
    assert {"commit", "spec", "run", "artifact", "version"} <= set(kinds), kinds
    assert kinds.count("version") >= 2, f"the version and its base: {kinds}"
    href = f"/ui/versions/{site.repository}/blobs/1"
    links = graph.find_elements(By.CSS_SELECTOR, f'a[href$="{href}"]')
    owners = [driver.execute_script(
        "const n = arguments[0].closest('[data-testid=lineage-node]'); return n && n.dataset.kind;", link)
        for link in links]  # fmt: skip
    assert "version" in owners, f"the base's version node links to {href}: links in nodes of kinds {owners}"
    base = links[owners.index("version")]
    base.click()
    until(driver, lambda: driver.current_url.endswith(f"/ui/versions/{site.repository}/blobs/1"), "to the base")
    until(driver, lambda: driver.title == "blobs@1 · gitopsd", "the base's page is titled after it")
    wait_for(driver, '[data-testid="lineage-graph"] [data-testid="lineage-node"][data-kind="commit"]')


def test_the_page_recovers_when_the_server_restarts(page: Page, site: Site, console: Console) -> None:
    console.allow(r"net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|EMPTY_RESPONSE)")
    driver = page("/ui/")
    row(driver, "blobs")
    banner = driver.find_element(By.CSS_SELECTOR, '[data-testid="conn-banner"]')
    assert not banner.is_displayed()
    driver.execute_script("window.__sameDocument = true;")
    site.ui.stop()
    until(driver, banner.is_displayed, "the banner says the server is unreachable", timeout=20)
    assert "unreachable" in banner.text and banner.get_attribute("role") == "status"
    screenshot(driver, "overview-unreachable")
    site.repo.edit("models/blobs-tuned.yaml", "team: tuning", "team: restarted")
    site.repo.commit("Move blobs-tuned to another team while the dashboard is down")
    gitopsd(site.state, "reconcile")
    site.ui.start()
    until(driver, lambda: not banner.is_displayed(), "the banner goes once the server is back", timeout=40)
    teams = driver.find_element(By.CSS_SELECTOR, '[data-testid="filter-team"]')
    until(driver, lambda: "restarted" in [o.get_attribute("value") for o in Select(teams).options],
          "the data changed while the server was down shows without a reload")  # fmt: skip
    assert driver.execute_script("return window.__sameDocument === true;"), "the page was reloaded"


def test_the_keyboard_reaches_the_skip_link_and_a_model_and_titles_name_pages(page: Page, site: Site) -> None:
    driver = page("/ui/")
    row(driver, "blobs")
    ActionChains(driver).send_keys(Keys.TAB).perform()
    skip = driver.switch_to.active_element
    shown = skip.get_attribute("outerHTML")
    assert skip.tag_name == "a" and (skip.get_attribute("href") or "").endswith("#main"), shown
    target = f"/ui/models/{site.repository}/blobs"
    for _ in range(80):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        focused = driver.switch_to.active_element
        if (focused.get_attribute("href") or "").endswith(target):
            break
    else:
        raise AssertionError(f"80 Tab presses never reached the link to {target}")
    style = driver.execute_script(
        "const s = getComputedStyle(arguments[0]); return [s.outlineStyle, s.outlineWidth, s.boxShadow];", focused
    )
    assert (style[0] != "none" and style[1] != "0px") or style[2] != "none", f"no visible focus: {style}"
    screenshot(driver, "overview-keyboard-focus")
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    until(driver, lambda: driver.current_url.endswith(target), "Enter follows the focused link")
    until(driver, lambda: driver.title == "blobs · gitopsd", "the model page is titled after the model")
    assert driver.find_element(By.ID, "main").tag_name == "main"
    driver.get(site.url("/ui/cluster"))
    until(driver, lambda: driver.title == "Cluster · gitopsd", "the cluster page's title")
    nav = {a.text.strip() for a in driver.find_elements(By.CSS_SELECTOR, "nav a")}
    assert {"Overview", "Cluster"} <= nav, nav


def test_hostile_labels_and_logs_are_shown_as_text_and_run_nothing(page: Page, site: Site) -> None:
    driver = page("/ui/")
    hostile = row(driver, "hostile")
    teams = Select(driver.find_element(By.CSS_SELECTOR, '[data-testid="filter-team"]'))
    until(driver, lambda: HOSTILE in [o.text for o in teams.options], "the hostile team is offered as text")
    assert hostile.get_attribute("data-condition") == "Stalled"
    assert not driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]'), "the label became an element"
    assert driver.title == "Overview · gitopsd"

    driver.get(site.url(f"/ui/models/{site.repository}/hostile"))
    tail = wait_for(driver, '[data-testid="log-tail"]')
    until(driver, lambda: HOSTILE in tail.text, "the training's hostile output is in the log tail, as text")
    assert tail.tag_name == "pre"
    assert not driver.find_elements(By.CSS_SELECTOR, 'img[src="x"]'), "the log became an element"
    assert not driver.find_elements(By.CSS_SELECTOR, "main img"), "a metric's name became an element"
    assert driver.title == "hostile · gitopsd"


def test_the_cluster_page_says_when_there_is_no_gpu(page: Page, site: Site) -> None:
    driver = page("/ui/cluster")
    gpus = wait_for(driver, '[data-testid="gpus"]')
    backends = wait_for(driver, '[data-testid="backends"]')
    wait_for(driver, '[data-testid="queue"]')
    doc = api(site, "/ui/api/cluster")
    until(driver, lambda: "local" in backends.text, "the local backend is listed")
    if doc["gpus"] is None:
        error = str(doc["gpus_error"])
        assert error, "no inventory comes with the reason"
        until(driver, lambda: error in gpus.text, f"the page says why there is no GPU ({error!r})")
    else:  # a machine with GPUs: they are listed instead
        until(driver, lambda: "GPU" in gpus.text, "the GPUs are listed")
    assert driver.title == "Cluster · gitopsd"
