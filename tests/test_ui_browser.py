"""The dashboard in a real browser: headless Chromium (Debian's) driven by Selenium.

Against an embedded ``fileproc serve`` (its own worker, folder watcher and
broker): files dropped into a bucket folder are processed while the pages
watch. Each page is saved as a screenshot under the test's tmp folder (and
copied to ``$FILEPROC_SCREENSHOTS`` when that is set) to look at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import image_bytes
from tests.procs import FUNCTIONS_DIR, Process, wait_healthy, write_config
from tests.servers import free_port

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ADMIN = "browser-admin-token"

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    if os.environ.get("CI"):
        raise RuntimeError("chromium and chromium-driver are not installed (.ci/run installs them)")
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as seen  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


class Site:
    def __init__(self, root: Path, port: int, server: Process, browser: WebDriver) -> None:
        self.root, self.base, self.server, self.browser = root, f"http://127.0.0.1:{port}", server, browser
        self.buckets = root / "data" / "buckets"

    def open(self, path: str) -> None:
        self.browser.get(self.base + path)

    def wait(self, condition, timeout: float = 30):  # type: ignore[no-untyped-def]
        try:
            # The live refresh swaps parts of the page every few seconds: an element found a moment
            # before may be gone, which is a reason to look again, not a failure.
            return WebDriverWait(self.browser, timeout, poll_frequency=0.2,
                                 ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                                 ).until(condition)
        except Exception as error:
            self.screenshot("failure")
            raise AssertionError(f"the page never showed it ({type(error).__name__}); "
                                 f"serve's log:\n{self.server.tail()}") from None

    def text(self) -> str:
        return self.browser.find_element(By.TAG_NAME, "body").text

    def screenshot(self, name: str) -> None:
        # The whole page, not only the window: a laptop's width, as tall as the content.
        height = self.browser.execute_script("return document.documentElement.scrollHeight")
        self.browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1440, "height": max(900, min(int(height), 3000)), "deviceScaleFactor": 1, "mobile": False})
        path = self.root / "screenshots" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        self.browser.save_screenshot(str(path))
        self.browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        if os.environ.get("FILEPROC_SCREENSHOTS"):
            target = Path(os.environ["FILEPROC_SCREENSHOTS"])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)

    def log_in(self) -> None:
        if self.browser.get_cookie("fileproc_session"):
            return
        self.open("/ui/login")
        self.browser.find_element(By.ID, "token").send_keys(ADMIN)
        self.browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        self.wait(seen.url_to_be(self.base + "/ui"))


def chrome() -> WebDriver:
    """Debian's headless Chromium at 1440x900, driven by its chromedriver."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1440,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    return webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("ui")
    port = free_port()
    config = write_config(root / "fileproc.toml", {
        "data_dir": str(root / "data"),
        "functions": {"paths": [str(FUNCTIONS_DIR)]},
        "api": {"port": port, "admin_token": ADMIN, "webhook_token": "browser-webhook-token"},
        "watcher": {"settle_seconds": 0.2},
        "pipelines": [
            {"name": "thumbnails", "match": {"bucket": "uploads", "suffix": [".jpg", ".png"]},
             "steps": [{"function": "thumbnail", "params": {"sizes": [128]}}],
             "output": {"bucket": "derived", "key": "{pipeline}/{key}/{name}"}},
            {"name": "documents", "match": {"bucket": "docs"}, "steps": [{"function": "index"}],
             "output": {"bucket": "derived", "key": "{pipeline}/{key}/{name}"}},
            {"name": "gated", "match": {"bucket": "inbox"},
             "steps": [{"function": "gate", "params": {"marker": str(root / "open")}}],
             "output": {"bucket": "derived", "key": "{pipeline}/{key}/{name}"}},
        ],
    })
    server = Process(config, ["serve"], root / "serve.log")
    browser = None
    try:
        wait_healthy(port, server)
        browser = chrome()
        yield Site(root, port, server, browser)
    finally:
        if browser is not None:
            browser.quit()
        assert server.stop() == 0, server.tail()


def test_a_wrong_token_is_refused_and_the_right_one_logs_in(site: Site) -> None:
    site.open("/ui/jobs")
    site.wait(seen.url_contains("/ui/login"))
    site.browser.find_element(By.ID, "token").send_keys("browser-webhook-token")
    site.browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    site.wait(seen.presence_of_element_located((By.CSS_SELECTOR, ".error")))
    assert "not the admin token" in site.text()
    assert site.browser.get_cookie("fileproc_session") is None
    site.screenshot("login-refused")

    site.browser.find_element(By.ID, "token").send_keys(ADMIN)
    site.browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    site.wait(seen.url_to_be(site.base + "/ui/jobs"))  # back where it was going
    cookie = site.browser.get_cookie("fileproc_session")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert ADMIN not in site.browser.current_url


def test_a_job_succeeds_live_after_an_upload_and_shows_its_thumbnail(site: Site) -> None:
    site.log_in()
    site.open("/ui/jobs")
    (site.buckets / "uploads" / "pets").mkdir(parents=True, exist_ok=True)
    (site.buckets / "uploads" / "pets" / "cat.jpg").write_bytes(image_bytes(640, 400, "darkorange"))
    # No reload: the page's own refresh brings the job in, then its success.
    row = '#jobs tr[data-status="succeeded"]'
    site.wait(seen.presence_of_element_located((By.CSS_SELECTOR, row)))
    assert "pets/cat.jpg" in site.browser.find_element(By.CSS_SELECTOR, row).text
    assert site.browser.find_element(By.ID, "live").text.startswith("live")
    site.screenshot("jobs")

    site.browser.find_element(By.CSS_SELECTOR, f"{row} a").click()
    site.wait(seen.presence_of_element_located((By.CSS_SELECTOR, "img.preview")))
    preview = site.browser.find_element(By.CSS_SELECTOR, "img.preview")
    site.wait(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", preview))
    size = site.browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", preview)
    assert size == [128, 80]  # the thumbnail itself, streamed from storage
    assert "thumbnail" in site.browser.find_element(By.CSS_SELECTOR, "table.attempts").text
    site.screenshot("job-succeeded")


def test_a_failed_job_shows_its_reason_and_a_retry_makes_it_succeed(site: Site) -> None:
    site.log_in()
    (site.buckets / "inbox").mkdir(parents=True, exist_ok=True)
    (site.buckets / "inbox" / "report.csv").write_text("a,b\n1,2\n")
    site.open("/ui/jobs?status=failed")
    failed = '#jobs tr[data-status="failed"] a'
    site.wait(seen.presence_of_element_located((By.CSS_SELECTOR, failed)))
    site.screenshot("jobs-failed")
    site.browser.find_element(By.CSS_SELECTOR, failed).click()
    reason = site.wait(seen.visibility_of_element_located((By.ID, "reason")))
    assert "waiting for" in reason.text and "not there yet" in reason.text
    site.browser.find_element(By.CSS_SELECTOR, "tr.trace summary").click()  # the traceback, unfolded
    assert "PermanentError" in site.browser.find_element(By.CSS_SELECTOR, "tr.trace pre").text
    site.screenshot("job-failed")

    (site.root / "open").touch()
    site.browser.find_element(By.ID, "retry").click()
    site.wait(lambda b: "Job #" in b.title + b.find_element(By.TAG_NAME, "h1").text
              and b.find_elements(By.CSS_SELECTOR, "h1 .s-succeeded"))
    attempts = [row.get_attribute("data-status") for row in site.browser.find_elements(By.CSS_SELECTOR, "tr.attempt")]
    assert attempts == ["retried", "succeeded"]
    assert not site.browser.find_elements(By.ID, "reason")
    site.screenshot("job-retried")


def test_a_key_is_tested_against_the_rules(site: Site) -> None:
    site.log_in()
    site.open("/ui/pipelines")
    field = site.browser.find_element(By.NAME, "target")
    field.send_keys("uploads/pets/dog.jpg")
    field.submit()
    verdict = site.wait(seen.presence_of_element_located((By.ID, "verdicts")))
    assert "goes through 1 pipeline" in verdict.text
    assert "derived/thumbnails/pets/dog.jpg/NAME" in verdict.text
    assert "match.bucket: 'uploads' is not 'inbox'" in verdict.text  # the other one, and why not
    site.screenshot("pipelines-match")

    field = site.browser.find_element(By.NAME, "target")
    field.clear()
    field.send_keys("uploads/notes.txt")
    field.submit()
    site.wait(seen.text_to_be_present_in_element((By.ID, "verdicts"), "No pipeline takes uploads/notes.txt"))
    assert "match.suffix: 'notes.txt' does not end with .jpg or .png" in site.text()


def test_the_api_docs_fetch_their_schema_with_the_session_not_a_token_in_the_url(site: Site) -> None:
    site.log_in()
    site.open("/docs")
    site.wait(seen.url_to_be(site.base + "/ui/docs"))
    # What the docs page's own script does (Swagger UI itself comes from a CDN this machine may not reach).
    fetched = site.browser.execute_async_script(
        "const done = arguments[0];"
        "fetch('/ui/openapi.json').then(r => r.json().then(spec => done([r.status, Object.keys(spec.paths)])))")
    assert fetched[0] == 200 and "/jobs" in fetched[1]
    assert ADMIN not in site.browser.page_source and ADMIN not in site.browser.current_url


def test_overview_and_why_show_what_happened(site: Site) -> None:
    site.log_in()
    site.open("/ui")
    site.wait(seen.presence_of_element_located((By.ID, "overview")))
    text = site.text()
    assert all(title in text.lower() for title in ("jobs by status", "throughput", "queues", "reconciliation"))
    assert "2 succeeded" in text  # the thumbnail and the retried job, in the last hour
    site.screenshot("overview")

    site.open("/ui/why?target=uploads/pets/cat.jpg")
    site.wait(seen.presence_of_element_located((By.CSS_SELECTOR, ".whyjob")))
    text = site.text()
    assert "watcher" in text and "in storage" in text
    site.screenshot("why")


def test_an_uploaded_document_is_found_by_search_and_usage_counts_each_function(site: Site) -> None:
    # Last in this file: the overview above counts the jobs of the hour.
    site.log_in()
    (site.buckets / "docs").mkdir(exist_ok=True)
    (site.buckets / "docs" / "harbour.txt").write_text(
        "The lighthouse keeper logged every ship that entered the harbour after dusk.\n")
    site.open("/ui/jobs?pipeline=documents")
    site.wait(seen.text_to_be_present_in_element((By.CSS_SELECTOR, "table"), "succeeded"), 60)

    def found(browser: WebDriver) -> bool:  # the indexer commits in batches: search again until it shows
        site.open("/ui/search?q=lighthouse")
        return bool(browser.find_elements(By.CSS_SELECTOR, ".hits mark"))

    site.wait(found, 60)
    hit = site.browser.find_element(By.CSS_SELECTOR, ".hits li")
    assert "docs/harbour.txt" in hit.text
    assert [m.text for m in hit.find_elements(By.TAG_NAME, "mark")] == ["lighthouse"]
    site.screenshot("search")

    site.open("/ui/usage?since=1d")
    rows = {row.find_element(By.TAG_NAME, "code").text: row.text
            for row in site.browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")}
    assert {"thumbnail", "gate", "index"} <= set(rows), rows
    assert rows["index"].split()[1] == "1"  # one request: the document above
    site.screenshot("usage")
