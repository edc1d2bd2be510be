"""The Functions pages, health, narrow screens and keyboard focus, in a real browser (Debian's headless Chromium).

Against an embedded ``fileproc serve`` with a function deployed by the CLI
(two versions) and a pipeline that runs it on each upload. Screenshots of
each page go to the test's tmp folder (and ``$FILEPROC_SCREENSHOTS`` when
set), narrow ones at 400 px. The last test stops the server and expects the
banner that says the dashboard gets no answers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as seen

from tests.procs import Process, fileproc, wait_healthy, write_config
from tests.servers import free_port
from tests.test_ui_browser import ADMIN, Site, chrome
from tests.test_ui_functions import HANDLER

NARROW = 400
PAGES = ["/ui", "/ui/jobs", "/ui/functions", "/ui/functions/echo", "/ui/usage", "/ui/pipelines", "/ui/why",
         "/ui/streams", "/ui/search"]


class FunctionsSite(Site):
    def narrow(self, width: int = NARROW) -> None:
        self.browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": 800, "deviceScaleFactor": 1, "mobile": True})

    def wide(self) -> None:
        self.browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def narrow_screenshot(self, name: str) -> None:
        height = self.browser.execute_script("return document.documentElement.scrollHeight")
        self.browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": NARROW, "height": max(800, min(int(height), 4000)), "deviceScaleFactor": 1, "mobile": True})
        path = self.root / "screenshots" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        self.browser.save_screenshot(str(path))
        if os.environ.get("FILEPROC_SCREENSHOTS"):
            target = Path(os.environ["FILEPROC_SCREENSHOTS"])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)
        self.narrow()

    def upload(self, key: str) -> None:
        (self.buckets / "inbox").mkdir(parents=True, exist_ok=True)
        (self.buckets / "inbox" / key).write_text(f"a file called {key}\n")

    def refreshed(self) -> int:
        return int(self.browser.execute_script("return Number(document.body.dataset.refreshed || 0)"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionsSite]:
    root = tmp_path_factory.mktemp("ui-functions")
    port = free_port()
    config = write_config(root / "fileproc.toml", {
        "data_dir": str(root / "data"),
        "functions": {"alias_seconds": 0},
        "api": {"port": port, "admin_token": ADMIN, "webhook_token": "browser-webhook-token"},
        "watcher": {"settle_seconds": 0.2},
        "pipelines": [{"name": "echoes", "match": {"bucket": "inbox"}, "steps": [{"function": "echo"}],
                       "output": {"bucket": "out", "key": "{key}/{name}"}}],
    })
    code = root / "echo"
    code.mkdir()
    for version in ("one", "two"):
        (code / "app.py").write_text(HANDLER.replace('VERSION = "one"', f'VERSION = "{version}"'))
        fileproc(config, "functions", "deploy", str(code), "--name", "echo", "--handler", "app.handler",
                 "--retries", "0", "--env", "GREETING=hi")
    server = Process(config, ["serve"], root / "serve.log")
    browser = None
    try:
        wait_healthy(port, server)
        browser = chrome()
        yield FunctionsSite(root, port, server, browser)
    finally:
        if browser is not None:
            browser.quit()
        server.stop()


def test_the_functions_list_and_page_show_monitoring_logs_versions_and_configuration(site: FunctionsSite) -> None:
    site.log_in()
    site.upload("good.txt")
    site.upload("bad.txt")
    site.open("/ui/jobs")
    site.wait(lambda b: len(b.find_elements(By.CSS_SELECTOR, '#jobs tr[data-status="succeeded"]')) >= 1
              and len(b.find_elements(By.CSS_SELECTOR, '#jobs tr[data-status="failed"]')) >= 1, 60)

    site.browser.find_element(By.LINK_TEXT, "Functions").click()  # from the navigation
    row = site.wait(seen.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-function="echo"]')))
    assert "v2" in row.text and "live→v2" in row.text.replace(" ", "") and "50.0 %" in row.text
    site.screenshot("functions")

    row.find_element(By.TAG_NAME, "a").click()
    site.wait(seen.presence_of_element_located((By.ID, "chart-invocations")))
    assert site.browser.find_element(By.ID, "total-invocations").text == "2"
    assert site.browser.find_element(By.ID, "total-errors").text == "1"
    bars = site.browser.find_elements(By.CSS_SELECTOR, "#chart-invocations svg rect")
    assert bars and all(bar.size["height"] > 0 for bar in bars)
    assert site.browser.find_elements(By.CSS_SELECTOR, "#chart-duration svg circle")  # p50/p95/p99 points
    # The log of an invocation, unfolded: what the handler printed between START and REPORT.
    summary = site.browser.find_element(By.CSS_SELECTOR, ".invocation-log summary")
    summary.click()
    log = site.browser.find_element(By.CSS_SELECTOR, ".invocation-log pre").text
    assert log.startswith("START RequestId") and "looking at" in log and "REPORT RequestId" in log
    assert "GREETING=hi" in site.browser.find_element(By.ID, "configuration").text
    assert "cannot take bad.txt" in site.browser.find_element(By.ID, "dead-letters").text
    site.screenshot("function")

    site.open("/ui/functions/echo?window=7d")
    site.wait(seen.presence_of_element_located((By.CSS_SELECTOR, "h2 a.current")))
    assert site.browser.find_element(By.CSS_SELECTOR, "h2 a.current").text == "7d"
    site.screenshot("function-7d")


def test_rollback_then_a_saved_test_event_invokes_the_older_version(site: FunctionsSite) -> None:
    site.log_in()
    site.open("/ui/functions/echo")
    site.browser.execute_script("window.confirm = () => true")
    site.browser.find_element(By.ID, "rollback-1").click()
    note = site.wait(seen.presence_of_element_located((By.ID, "note")))
    assert "live is now version 1" in note.text
    live = site.browser.find_element(By.CSS_SELECTOR, '#versions tr[data-key="v1"]').text
    assert "live" in live
    site.screenshot("function-rolled-back")

    event = site.browser.find_element(By.ID, "event")
    event.clear()
    event.send_keys('{"Records": [{"s3": {"bucket": {"name": "inbox"}, "object": {"key": "good.txt"}}}]}')
    site.browser.find_element(By.ID, "event-name").send_keys("good-one")
    site.browser.find_element(By.ID, "save-event").click()
    site.wait(seen.text_to_be_present_in_element((By.ID, "note"), "Saved the test event good-one"))
    assert site.browser.find_element(By.CSS_SELECTOR, "#saved-event option:checked").text == "good-one"
    assert "good.txt" in site.browser.find_element(By.ID, "event").get_attribute("value")

    site.browser.find_element(By.ID, "invoke").click()
    site.wait(lambda b: "/ui/jobs/" in b.current_url and b.find_elements(By.CSS_SELECTOR, "h1 .s-succeeded"), 60)
    page = site.text()
    assert "invoke (async) echo" in page
    assert site.browser.find_element(By.CSS_SELECTOR, "tr.attempt td.version").text == "v1"
    site.browser.find_element(By.CSS_SELECTOR, ".attempt-result summary").click()
    assert '"version": "one"' in site.browser.find_element(By.CSS_SELECTOR, ".attempt-result pre").text
    site.browser.find_element(By.CSS_SELECTOR, ".attempt-log summary").click()
    assert "REPORT RequestId" in site.browser.find_element(By.CSS_SELECTOR, ".attempt-log pre").text
    site.screenshot("job-invoked")


def test_a_dead_letter_is_redriven_from_the_page(site: FunctionsSite) -> None:
    site.log_in()
    site.open("/ui/functions/echo")
    button = site.wait(seen.presence_of_element_located((By.CSS_SELECTOR, "#dead-letters button[name=one]")))
    letter = button.get_attribute("value")
    button.click()
    note = site.wait(seen.presence_of_element_located((By.ID, "note")))
    assert "Redrove 1 dead letter(s)" in note.text
    # It ran again and failed again: a new dead letter, the redriven one gone.
    site.wait(lambda b: b.find_elements(By.CSS_SELECTOR, "#dead-letters tr.dead-letter")
              and not b.find_elements(By.CSS_SELECTOR, f'#dead-letters tr[data-key="dl-{letter}"]'), 60)
    site.screenshot("function-redriven")


def test_the_overview_puts_health_first_with_each_worker_and_part(site: FunctionsSite) -> None:
    site.log_in()
    site.open("/ui")
    site.wait(seen.presence_of_element_located((By.CSS_SELECTOR, "#workers tr.worker")), 60)
    worker = site.browser.find_element(By.CSS_SELECTOR, "#workers tr.worker")
    assert worker.get_attribute("data-silent") == "false" and "fileproc-" in worker.text and "ago" in worker.text
    for part in ("broker", "database", "storage"):
        assert site.browser.find_element(By.ID, f"part-{part}").get_attribute("data-ok") == "true", part
    heading = site.browser.find_elements(By.CSS_SELECTOR, "#overview h2")[0]
    assert heading.text.lower() == "health"  # first
    exact = site.browser.find_element(By.CSS_SELECTOR, "#workers time")
    assert exact.get_attribute("title").endswith(" UTC") and exact.get_attribute("datetime")
    site.screenshot("overview-health")


@pytest.mark.parametrize("screen", [NARROW, 360])
def test_every_page_fits_a_narrow_screen_with_its_navigation_visible(site: FunctionsSite, screen: int) -> None:
    site.log_in()
    site.narrow(screen)
    try:
        for path in PAGES:
            site.open(path)
            site.wait(seen.presence_of_element_located((By.ID, "main")))
            width = site.browser.execute_script("return document.scrollingElement.scrollWidth")
            assert width <= screen, f"{path} is {width} px wide on a {screen} px screen"
            for name in ("Functions", "Usage", "Why?"):
                link = site.browser.find_element(By.LINK_TEXT, name)
                box = site.browser.execute_script("const r = arguments[0].getBoundingClientRect();"
                                                  "return [r.left, r.right, r.width, r.height]", link)
                assert link.is_displayed() and box[0] >= 0 and box[1] <= screen and box[2] > 10 and box[3] > 10, \
                    (path, name, box)
            if screen == NARROW:
                site.narrow_screenshot("narrow-" + (path.strip("/").replace("/", "-") or "ui"))
    finally:
        site.wide()


def test_focus_stays_put_across_a_live_refresh_and_a_skip_link_leads_to_the_content(site: FunctionsSite) -> None:
    site.log_in()
    site.open("/ui/jobs")
    link = site.wait(seen.presence_of_element_located((By.CSS_SELECTOR, "#jobs tr[data-job] a")))
    site.browser.execute_script("arguments[0].focus(); window.focusedBefore = arguments[0]", link)
    before = site.refreshed()
    site.wait(lambda b: site.refreshed() >= before + 2)  # two refreshes (3 s each) went by
    assert site.browser.execute_script("return document.activeElement === window.focusedBefore")
    assert site.browser.execute_script("return document.activeElement.closest('#jobs') !== null")
    assert site.browser.find_element(By.ID, "jobs").get_attribute("aria-live") == "polite"

    site.open("/ui/jobs")
    site.browser.find_element(By.TAG_NAME, "body").send_keys("\t")  # the first Tab: the skip link
    skip = site.browser.switch_to.active_element
    assert skip.get_attribute("class") == "skip" and skip.is_displayed()
    skip.send_keys("\n")
    site.wait(lambda b: b.execute_script("return document.activeElement.id") == "main")


def test_a_banner_says_so_when_the_server_stops_answering(site: FunctionsSite) -> None:
    # Last: it stops the server.
    site.log_in()
    site.open("/ui/jobs")
    site.wait(lambda b: site.refreshed() >= 1)
    assert not site.browser.find_element(By.ID, "offline").is_displayed()
    assert site.server.stop() == 0
    banner = site.wait(seen.visibility_of_element_located((By.ID, "offline")), 30)
    assert banner.get_attribute("role") == "alert"
    assert "No answer from the fileproc server" in banner.text and "out of date" in banner.text
    size = banner.size
    assert size["width"] >= 1000 and size["height"] >= 30  # across the page, not a small label
    site.screenshot("server-gone")
