"""Headless Chromium (Debian's chromium and chromium-driver, through selenium) for the report
tests: open a page, wait until a script's result satisfies a predicate, click, screenshot, and
collect SEVERE console messages. No network: the pages must be self-contained."""

import shutil
import time
from contextlib import contextmanager
from pathlib import Path


class Page:
    def __init__(self, driver):
        self.driver = driver

    def run(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait_for(self, script: str, ready, timeout: float = 60):
        deadline = time.time() + timeout
        value = None
        while time.time() < deadline:
            value = self.run(script)
            if ready(value):
                return value
            time.sleep(0.5)
        return value

    def screenshot(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def severe_errors(self) -> list:
        return [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def network_requests(self) -> list[str]:
        """URLs the page fetched that are not the page itself (``file:`` / ``data:``)."""
        entries = self.run("return performance.getEntriesByType('resource').map(e => e.name)")
        return [e for e in entries if not e.startswith(("file:", "data:", "blob:"))]


@contextmanager
def open_page(path: Path, width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver_path, "chromium and chromedriver come with `make test`"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},"
                 f"{height}", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(Path(path).resolve().as_uri())
        yield Page(driver)
    finally:
        driver.quit()
