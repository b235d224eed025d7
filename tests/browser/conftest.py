"""A real headless Chromium (Debian's chromium + chromium-driver) driven by Selenium against
pytest-django's live server, for the operators' admin pages.

`make test` installs the two packages where /usr/bin/chromedriver is missing and it runs as root
(`make browser`). Where they are still missing, the browser tests FAIL under CI (CI=true) with
what to install, and are skipped elsewhere with that reason. Screenshots go to SCREENSHOTS_DIR
(default var/screenshots/, gitignored); their paths are listed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
MISSING = ("headless Chromium is not installed ({what} missing): run `make browser` as root, or "
           "`apt-get install -y chromium chromium-driver` (Debian's packages)")
_SHOTS = pytest.StashKey[list[Path]]()


def screenshots_dir() -> Path:
    path = Path(os.environ.get("SCREENSHOTS_DIR") or ROOT / "var" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    shots = config.stash.get(_SHOTS, [])
    if shots:
        terminalreporter.section("admin screenshots")
        for path in shots:
            terminalreporter.write_line(str(path))


def _missing() -> str | None:
    for what in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(what) and os.access(what, os.X_OK)):
            return MISSING.format(what=what)
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: make install (requirements-dev.txt)"
    return None


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One headless Chromium for the session; downloads land in its `download_dir`."""
    problem = _missing()
    if problem:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1000", "--lang=en-US", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # Its own profile: the tests never touch a user's.
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.download_dir = downloads
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def screenshot(chromium, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """screenshot(name) saves the whole page as SCREENSHOTS_DIR/<name>.png and returns its path."""

    def take(name: str) -> Path:
        height = chromium.execute_script("return Math.max(document.body.scrollHeight, 700)")
        chromium.set_window_size(1600, min(int(height) + 140, 4000))
        path = screenshots_dir() / f"{name}.png"
        chromium.save_screenshot(str(path))
        chromium.set_window_size(1600, 1000)
        request.config.stash.setdefault(_SHOTS, []).append(path)
        return path

    return take


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def download(chromium, click: Callable[[], None], suffix: str, timeout: float = 15.0) -> Path:
    """Clicks, then waits for a finished download ending in `suffix` and moves it out of the way."""
    folder: Path = chromium.download_dir
    for old in folder.iterdir():
        old.unlink()
    click()
    files = wait_for(lambda: [p for p in folder.iterdir() if p.name.endswith(suffix)], timeout, f"a {suffix} download")
    assert isinstance(files, list)
    target = Path(tempfile.mkdtemp()) / files[0].name
    shutil.move(files[0], target)
    return target
