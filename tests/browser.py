"""A real headless Chromium for dashboard tests, driven by Selenium.

Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver);
without them a test skips with one line, or fails under DISTBUILD_REQUIRE_ALL=1.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import PROJECT, skip_or_fail

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# When set (a path relative to the project, e.g. docs/dashboard.png), the request page
# is saved there mid-build; the normal run writes nothing into the tree.
SCREENSHOT = "DISTBUILD_SCREENSHOT"


def chromium():
    """A new headless Chromium session (the caller quits it)."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            skip_or_fail(f"{path} is absent (apt-get install {package})")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def screenshot(driver, name: str = SCREENSHOT) -> Path | None:
    """Save the page where $DISTBUILD_SCREENSHOT says, if it says."""
    target = os.environ.get(name)
    if not target:
        return None
    path = Path(target) if Path(target).is_absolute() else PROJECT / target
    driver.save_screenshot(str(path))
    return path
