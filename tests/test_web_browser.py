"""The admin page in a real browser: headless Debian Chromium through Selenium, against the
standalone server (`python -m balance_refill.web.serve`) on 127.0.0.1 with a token and the
embedded demo data.

Steps: sign in with the token, find a user, grant credits with a reason through the
confirmation step, see the new balance and ledger row, pause auto refill, open the policy
page with a dry-run preview, view the user page at a phone's width; then check the
browser's console has no errors (a CSP violation would be one). A screenshot of each page
goes to `test-artifacts/`.

Needs `chromium` and `chromium-driver` (apt). Without them the test is skipped locally and
fails when `CI` is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-test-token-0123456789"  # noqa: S105 - a test token
USER = "ben@example.com"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        reason = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server() -> Iterator[str]:
    """The standalone server on a free loopback port, with a token and the demo data."""
    _need_browser()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    env["BALANCE_REFILL_ADMIN_TOKEN"] = TOKEN
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "balance_refill.web.serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/login", timeout=2):  # noqa: S310 - loopback
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"the server did not start:\n{log.read().decode()}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="br-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shot(driver: Any, name: str) -> None:
    """A full-page screenshot: the window is made as tall as the page first."""
    ARTIFACTS.mkdir(exist_ok=True)
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, 600)  # measure the page, not the previous window
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    height = int(metrics["cssContentSize"]["height"]) + 90
    driver.set_window_size(width, max(600, min(height, 6000)))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _submit(driver: Any, by: str, selector: str) -> None:
    """Click a submit button (or link) and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(by, selector).click()
    WebDriverWait(driver, 15).until(expected_conditions.staleness_of(page))


def test_sign_in_find_grant_pause_in_chromium(server: str, browser: Any) -> None:  # noqa: PLR0915 - one story
    """The operator's path through the page in a real browser, with no console errors."""
    from selenium.webdriver.common.by import By

    d = browser
    find = d.find_element

    d.get(f"{server}/")
    assert "Sign-in required" in d.title
    unauthorized = d.get_log("browser")  # drains the log: this 401 was asked for
    assert all("401" in e["message"] for e in unauthorized), unauthorized
    d.get(f"{server}/login")
    _shot(d, "01-sign-in")
    find(By.ID, "login-name").send_keys("alice")
    find(By.ID, "login-token").send_keys(TOKEN)
    _submit(d, By.ID, "login-submit")
    assert "Overview" in d.title, d.page_source[:2000]
    assert "Demo data" in find(By.CSS_SELECTOR, ".banner").text
    assert "alice" in find(By.CSS_SELECTOR, ".who").text
    _shot(d, "02-overview")

    _submit(d, By.LINK_TEXT, "Find a user")
    find(By.ID, "user-id").send_keys(USER)
    _submit(d, By.ID, "find-submit")
    assert USER in find(By.TAG_NAME, "h1").text
    before = int(find(By.ID, "balance").text.replace(",", ""))
    _shot(d, "03-user")

    find(By.XPATH, "//summary[normalize-space()='Grant credits']").click()
    find(By.ID, "grant-amount").send_keys("1234")
    find(By.ID, "grant-reason").send_keys("refund for ticket <b>42</b>")
    _submit(d, By.CSS_SELECTOR, "#grant-form button[type=submit]")
    assert "Confirm" in d.title
    assert "Grant 1,234 credits" in find(By.ID, "summary").text
    _shot(d, "04-confirm-grant")
    _submit(d, By.ID, "confirm-submit")

    assert int(find(By.ID, "balance").text.replace(",", "")) == before + 1234
    notice = find(By.ID, "notice").text
    assert "New ledger row: admin, +1,234" in notice
    assert "by alice" in notice
    row = find(By.CSS_SELECTOR, "table.ledger tbody tr").text
    assert "+1,234" in row
    assert "alice" in row
    assert "refund for ticket <b>42</b>" in row  # shown as text, not markup
    _shot(d, "05-granted")

    assert find(By.ID, "auto-refill").text == "on"
    find(By.XPATH, "//summary[normalize-space()='Pause auto refill']").click()
    find(By.ID, "auto-refill-reason").send_keys("abuse report 7")
    _submit(d, By.CSS_SELECTOR, "#auto-refill-form button[type=submit]")
    assert "Pause automatic refills" in find(By.ID, "summary").text
    _submit(d, By.ID, "confirm-submit")
    assert find(By.ID, "auto-refill").text == "paused"
    assert "setAutoRefill" in find(By.CSS_SELECTOR, "table.ledger tbody tr").text
    _shot(d, "06-paused")

    d.get(f"{server}/policy?preview=1")
    assert "Sweep preview" in d.page_source
    assert "would refill" in d.page_source
    _shot(d, "07-policy")

    d.set_window_size(390, 844)
    d.get(f"{server}/users?id={USER}")
    _shot(d, "08-user-phone")
    d.set_window_size(1280, 900)

    errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
