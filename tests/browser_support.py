"""A real headless Chromium for the dashboard's tests, driven by Selenium: Debian's `chromium`
and `chromium-driver` (installed by scripts/ensure-chromium when missing; offline afterwards).
The session fixture `chromium` finds them (or fails with the script's message, never skips);
`start_browser` starts one browser of a fixed window size, so that screenshots are comparable.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

PROJECT = Path(__file__).resolve().parent.parent
WINDOW = (1280, 800)
SCREENSHOTS = PROJECT / "build" / "screenshots"

T = TypeVar("T")


@dataclass(frozen=True)
class Chromium:
    browser: str
    driver: str


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    done = subprocess.run(
        [PROJECT / "scripts/ensure-chromium"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"no headless Chromium for the tests: {done.stderr.strip()}")
    browser, driver = done.stdout.strip().splitlines()[-2:]
    return Chromium(browser, driver)


def start_browser(chromium: Chromium) -> Any:
    """A headless Chromium (its WebDriver), English, of a fixed window size."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium.browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--lang=en-US",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(chromium.driver))
    driver.set_page_load_timeout(30)
    # --window-size is the window's outer size: make the page's viewport WINDOW exactly.
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
    outer = driver.get_window_size()
    driver.set_window_size(
        outer["width"] + WINDOW[0] - inner[0], outer["height"] + WINDOW[1] - inner[1]
    )
    return driver


def eventually(predicate: Callable[[], T], timeout: float = 20, what: str = "condition") -> T:
    """Polls `predicate` until it returns something truthy (and returns it); WebDriver's
    exceptions (an element not there yet, a stale one) count as not yet. Fails, naming the last
    of them, when the deadline passes."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except WebDriverException as exc:  # (not found yet, stale after a reload, ...)
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")
        time.sleep(0.1)


def screenshot(driver: Any, name: str) -> Path:
    """The browser's viewport as build/screenshots/<name>.png (a test artifact)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot of {name}"
    return path
