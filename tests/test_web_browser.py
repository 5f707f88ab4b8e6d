"""The admin page in a real browser: headless Debian Chromium through Selenium, against the
standalone server (`python -m balance_refill.web.serve`) on 127.0.0.1 with a token and the
embedded demo data (which holds LibreChat-written spend rows and a `users` collection).

Every step waits for what it needs (the next page's marker element, the document
complete) instead of racing the page: an element is found again after each navigation
and a lookup that hits the old document is retried until the new one is there.

Stories: sign in, find, grant, pause; back and reload after a confirmed grant grants
once; a signed-out session's cookie is refused; every table at a phone's 390 px width is
readable (element widths compared: nothing one letter per line, nothing off-screen);
a user page on LibreChat-written rows; the policy edited (amount), previewed with its
charts, applied, and a refill decided by the new version (it runs last: it changes the
demo's policy). The server reads the policy store every second (`--policy-refresh 1`). Screenshots of every page at 1366 and 390 px go
to `test-artifacts/` (or to `BALANCE_REFILL_SCREENSHOTS`, e.g. docs/screenshots).

Needs `chromium` and `chromium-driver` (apt). Without them the tests are skipped locally
and fail when `CI` is set.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("BALANCE_REFILL_SCREENSHOTS") or ROOT / "test-artifacts")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-test-token-0123456789"  # noqa: S105 - a test token
USER = "ben@example.com"
ALICE = "65f1c0ffee0000000000a11c"
WAIT = 30  # seconds: an upper bound for a condition, never a fixed sleep
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
PHONE, DESKTOP = 390, 1366


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


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The standalone server on a free loopback port, with a token and the demo data."""
    _need_browser()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    env["BALANCE_REFILL_ADMIN_TOKEN"] = TOKEN
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "balance_refill.web.serve",
            "--port",
            str(port),
            "--policy-refresh",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # wait for the server to answer (it seeds the demo data first)
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
    options.add_argument(f"--window-size={DESKTOP},900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# -- waiting for the page, not racing it ---------------------------------------------------


def _until(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    """Wait until `condition(driver)` is truthy; lookups that hit a document being
    replaced are retried, not failed."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.support.wait import WebDriverWait

    wait = WebDriverWait(
        driver,
        WAIT,
        poll_frequency=0.1,
        ignored_exceptions=(
            NoSuchElementException,
            StaleElementReferenceException,
            WebDriverException,  # "Node with given id does not belong to the document"
        ),
    )
    return wait.until(condition, message=f"waiting for {what}")


def _ready(driver: Any) -> bool:
    return bool(driver.execute_script("return document.readyState") == "complete")


def find(driver: Any, by: str, selector: str) -> Any:
    """The element, once the document is complete and the element is displayed."""

    def present(d: Any) -> Any:
        if not _ready(d):
            return False
        element = d.find_element(by, selector)
        return element if element.is_displayed() else False

    return _until(driver, present, f"{by}={selector}")


def text_of(driver: Any, by: str, selector: str) -> str:
    return str(_until(driver, lambda d: _ready(d) and d.find_element(by, selector).text, selector))


def open_page(driver: Any, url: str, marker: tuple[str, str]) -> None:
    """Go to `url` and wait for its marker element."""
    driver.get(url)
    find(driver, *marker)


def submit(driver: Any, by: str, selector: str, marker: tuple[str, str]) -> None:
    """Click a submit button (or link), wait until this document is gone and the next
    page's marker element is there."""
    from selenium.webdriver.support import expected_conditions

    page = find(driver, "tag name", "html")
    _until(driver, lambda d: d.find_element(by, selector).click() or True, f"click {selector}")
    _until(driver, expected_conditions.staleness_of(page), "the next page")
    find(driver, *marker)


def type_into(driver: Any, element_id: str, value: str) -> None:
    _until(driver, lambda d: d.find_element("id", element_id).send_keys(value) or True, element_id)


def shot(driver: Any, name: str, width: int) -> None:
    """A full-page screenshot at `width`: the window is made as tall as the page first."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(width, 600)
    find(driver, "tag name", "main")
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, max(600, min(height + 90, 6000)))
    find(driver, "tag name", "main")
    driver.save_screenshot(str(SHOTS / f"{name}-{width}.png"))


def both_widths(driver: Any, name: str) -> None:
    shot(driver, name, DESKTOP)
    shot(driver, name, PHONE)
    driver.set_window_size(DESKTOP, 900)


def sign_in(driver: Any, server: str, name: str = "alice") -> None:
    open_page(driver, f"{server}/login", ("id", "login-token"))
    type_into(driver, "login-name", name)
    type_into(driver, "login-token", TOKEN)
    submit(driver, "id", "login-submit", ("css selector", ".who"))


def balance(driver: Any) -> int:
    return int(text_of(driver, "id", "balance").replace(",", ""))


# -- the stories ---------------------------------------------------------------------------


def test_sign_in_find_grant_pause_in_chromium(server: str, browser: Any) -> None:
    """The operator's path through the page in a real browser, with no console errors."""
    d = browser
    open_page(d, f"{server}/", ("tag name", "h1"))
    assert "Sign-in required" in d.title
    unauthorized = d.get_log("browser")  # drains the log: this 401 was asked for
    assert all("401" in e["message"] for e in unauthorized), unauthorized
    sign_in(d, server)
    assert "Overview" in d.title
    assert "Demo data" in text_of(d, "css selector", ".banner")
    assert "alice" in text_of(d, "css selector", ".who")

    submit(d, "link text", "Find a user", ("id", "user-id"))
    type_into(d, "user-id", USER)
    submit(d, "id", "find-submit", ("id", "balance"))
    assert USER in text_of(d, "tag name", "h1")
    before = balance(d)

    find(d, "xpath", "//summary[normalize-space()='Grant credits']").click()
    type_into(d, "grant-amount", "1234")
    type_into(d, "grant-reason", "refund for ticket <b>42</b>")
    submit(d, "css selector", "#grant-form button[type=submit]", ("id", "summary"))
    assert "Confirm" in d.title
    assert "Grant 1,234 credits" in text_of(d, "id", "summary")
    submit(d, "id", "confirm-submit", ("id", "notice"))
    assert balance(d) == before + 1234
    notice = text_of(d, "id", "notice")
    assert "New ledger row: admin, +1,234" in notice
    assert "by alice" in notice
    row = text_of(d, "css selector", "table.ledger tbody tr")
    assert "+1,234" in row
    assert "refund for ticket <b>42</b>" in row  # shown as text, not markup

    assert text_of(d, "id", "auto-refill") == "on"
    find(d, "xpath", "//summary[normalize-space()='Pause auto refill']").click()
    type_into(d, "auto-refill-reason", "abuse report 7")
    submit(d, "css selector", "#auto-refill-form button[type=submit]", ("id", "summary"))
    assert "Pause automatic refills" in text_of(d, "id", "summary")
    submit(d, "id", "confirm-submit", ("id", "notice"))
    assert text_of(d, "id", "auto-refill") == "paused"
    row = text_of(d, "css selector", "table.ledger tbody tr")
    assert "paused auto refill" in row
    assert "abuse report 7" in row

    open_page(d, f"{server}/policy?preview=1", ("tag name", "h1"))
    assert "would refill" in d.page_source
    errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []


def test_back_and_reload_after_a_grant_does_not_grant_twice(server: str, browser: Any) -> None:
    """Finding 2: grant 2,500 and confirm, press Back, reload (the form is resubmitted):
    the page says "Already applied" and the balance rose once."""
    d = browser
    sign_in(d, server, "bob")
    open_page(d, f"{server}/users?id=42&as=int", ("id", "balance"))
    before = balance(d)
    find(d, "xpath", "//summary[normalize-space()='Grant credits']").click()
    type_into(d, "grant-amount", "2500")
    type_into(d, "grant-reason", "goodwill")
    submit(d, "css selector", "#grant-form button[type=submit]", ("id", "confirm-submit"))
    submit(d, "id", "confirm-submit", ("id", "notice"))
    assert balance(d) == before + 2500
    page = find(d, "tag name", "html")
    d.back()
    from selenium.webdriver.support import expected_conditions

    _until(d, expected_conditions.staleness_of(page), "the previous page")
    d.refresh()  # headless Chromium resubmits the review's POST
    title = text_of(d, "tag name", "h1")
    if "Confirm" in title:  # a browser that served the review from its cache: confirm it
        submit(d, "id", "confirm-submit", ("id", "stale-title"))
        title = text_of(d, "tag name", "h1")
    assert title == "Already applied"
    open_page(d, f"{server}/users?id=42&as=int", ("id", "balance"))
    assert balance(d) == before + 2500
    ledger = text_of(d, "css selector", "table.ledger tbody")
    assert ledger.count("+2,500") == 1


def test_a_signed_out_session_cookie_is_refused(server: str, browser: Any) -> None:
    """Finding 3: after Sign out, putting the old session cookie back gets 401."""
    d = browser
    sign_in(d, server, "carol")
    cookie = d.get_cookie("br_session")
    assert cookie is not None
    submit(d, "xpath", "//button[normalize-space()='Sign out']", ("id", "login-token"))
    d.add_cookie({k: cookie[k] for k in ("name", "value", "path", "secure", "httpOnly")})
    open_page(d, f"{server}/", ("tag name", "h1"))
    assert "Sign-in required" in d.title
    d.get_log("browser")  # the 401 was asked for


LAYOUT = """
const viewport = document.documentElement.clientWidth;
const problems = [];
if (document.documentElement.scrollWidth > viewport + 1) {
  problems.push(`page scrolls sideways: ${document.documentElement.scrollWidth} > ${viewport}`);
}
for (const el of document.querySelectorAll('main td, main th, main .tile .v, main h1, main p')) {
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) continue;  // not shown
  const text = el.innerText.trim();
  if (r.right > viewport + 1 || r.left < -1) {
    problems.push(`off-screen: ${el.tagName} "${text.slice(0, 30)}" ${r.left}..${r.right}`);
  }
  const words = text.split(/\\s+/).filter(w => w.length >= 4);
  if (words.length && r.width < 48) {
    problems.push(`squeezed: ${el.tagName} "${text.slice(0, 30)}" is ${r.width}px wide`);
  }
  const line = parseFloat(getComputedStyle(el).lineHeight) || 20;
  if (text.length >= 4 && !text.includes(' ') && r.height > line * Math.max(3, text.length / 3)) {
    problems.push(`one letter per line: ${el.tagName} "${text.slice(0, 30)}"`);
  }
}
return problems;
"""


def test_every_page_fits_a_phone_and_is_screenshotted(server: str, browser: Any) -> None:
    """Finding 6: at 390 px every table on every page is readable (element widths
    compared: nothing off-screen, nothing one letter per line); each page is also
    captured at 1366 and 390 px."""
    d = browser
    open_page(d, f"{server}/login", ("id", "login-token"))
    both_widths(d, "01-sign-in")
    sign_in(d, server, "dave")
    pages = [
        ("02-overview", "/", ("css selector", ".tiles")),
        ("03-find-results", "/users?q=ali", ("id", "results")),
        ("04-user-librechat-rows", f"/users?id={ALICE}", ("id", "balance")),
        ("05-user-ben", f"/users?id={USER}", ("id", "balance")),
        ("06-list-at-zero", "/lists?kind=zero", ("tag name", "h1")),
        ("07-list-tier-pro", "/lists?kind=tier&tier=pro", ("tag name", "h1")),
        ("08-policy-preview", "/policy?preview=1", ("tag name", "h1")),
        ("09-find-form", "/users", ("id", "user-id")),
        ("13-policy-versions", "/policy", ("id", "version-list")),
        ("14-policy-editor", "/policy/edit", ("id", "policy-form")),
    ]
    problems: dict[str, list[str]] = {}
    for name, path, marker in pages:
        open_page(d, server + path, marker)
        both_widths(d, name)
        d.set_window_size(PHONE, 844)
        open_page(d, server + path, marker)
        found = d.execute_script(LAYOUT)
        if found:
            problems[name] = found
        d.set_window_size(DESKTOP, 900)
    open_page(d, f"{server}/users?id={USER}", ("id", "balance"))
    find(d, "xpath", "//summary[normalize-space()='Grant credits']").click()
    type_into(d, "grant-amount", "10")
    type_into(d, "grant-reason", "screenshot")
    submit(d, "css selector", "#grant-form button[type=submit]", ("id", "confirm-submit"))
    both_widths(d, "10-confirm")
    submit(d, "id", "confirm-submit", ("id", "notice"))
    both_widths(d, "11-granted")
    d.back()
    d.refresh()
    if "Confirm" in text_of(d, "tag name", "h1"):
        submit(d, "id", "confirm-submit", ("id", "stale-title"))
    find(d, "id", "stale-title")
    both_widths(d, "12-already-applied")
    assert problems == {}


def test_a_user_page_on_librechat_written_rows(server: str, browser: Any) -> None:
    """Finding 1 and 7 in the browser: Alice's rows from LibreChat's message path show as
    spends with their model, the chart ends at her balance, nothing errors."""
    d = browser
    sign_in(d, server, "erin")
    open_page(d, f"{server}/users?id={ALICE}", ("id", "balance"))
    assert "Alice Martin" in text_of(d, "id", "profile")
    ledger = text_of(d, "css selector", "table.ledger tbody")
    assert "completion spend" in ledger
    assert "gpt-4o-mini" in ledger
    assert "≈" in ledger
    note = text_of(d, "id", "balance-chart-note")
    assert "rebuilt" in note
    dots = d.find_elements("css selector", "svg circle.dot title")
    last = dots[-1].get_attribute("textContent").rsplit(": ", 1)[1]
    assert last == text_of(d, "id", "balance")
    errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []


def _charts_drawn(driver: Any) -> bool:
    """Every preview chart is loaded and has a size (the SVG images decoded)."""
    return bool(
        driver.execute_script(
            "const imgs = [...document.querySelectorAll('.sim-chart img')];"
            "return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0"
            " && i.getBoundingClientRect().width > 200);"
        )
    )


def test_edit_preview_apply_and_a_refill_by_the_new_version(server: str, browser: Any) -> None:
    """Issue 17: edit the free tier's amount, preview it (summary and four charts drawn),
    apply it through review and confirm, see version 2 active in the list, and refill a
    user by hand: the ledger row says it was decided by policy v2. Screenshots of the
    preview and the version list at 1366 and 390 px; the preview fits a phone."""
    d = browser
    sign_in(d, server, "fran")
    open_page(d, f"{server}/policy", ("id", "version-list"))
    assert text_of(d, "id", "active-version") == "version 1"
    submit(d, "id", "edit-policy", ("id", "policy-form"))
    amount = find(d, "id", "t0-amount")
    assert amount.get_attribute("value") == "10000"
    amount.clear()
    type_into(d, "t0-amount", "987654")
    find(d, "id", "days").clear()
    type_into(d, "days", "90")
    submit(d, "id", "preview-submit", ("id", "preview"))
    assert "Preview: the last 90 days replayed" in text_of(d, "id", "preview-title")
    assert "credits granted" in text_of(d, "id", "preview-summary")
    _until(d, _charts_drawn, "the preview's charts")
    assert find(d, "id", "t0-amount").get_attribute("value") == "987654"  # the form kept
    both_widths(d, "15-policy-edit-and-simulated-preview")
    d.set_window_size(PHONE, 844)
    _until(d, _charts_drawn, "the charts at phone width")
    assert d.execute_script(LAYOUT) == []
    d.set_window_size(DESKTOP, 900)

    type_into(d, "reason", "more credits for free users")
    submit(d, "id", "review-submit", ("id", "confirm-submit"))
    changes = text_of(d, "id", "policy-changes")
    assert "tiers.free.amount" in changes
    assert "987654" in changes
    submit(d, "id", "confirm-submit", ("id", "policy-notice"))
    assert "Version 2 was stored and is now active" in text_of(d, "id", "policy-notice")
    assert text_of(d, "id", "active-version") == "version 2"
    newest = text_of(d, "css selector", "#version-list tbody tr")
    assert "fran" in newest
    assert "more credits for free users" in newest
    assert "active" in newest
    both_widths(d, "16-policy-versions-after-apply")

    def switched(driver: Any) -> bool:  # the server reads the store once a second
        open_page(driver, f"{server}/policy", ("id", "version-list"))
        return text_of(driver, "id", "in-process-version") == "2"

    _until(d, switched, "the server to decide with version 2")
    open_page(d, f"{server}/users?id=42&as=int", ("id", "balance"))  # a user in tier free
    find(d, "xpath", "//summary[normalize-space()='Refill now']").click()
    type_into(d, "refill-now-reason", "try the new amount")
    submit(d, "xpath", "//button[normalize-space()='Review refill']", ("id", "confirm-submit"))
    submit(d, "id", "confirm-submit", ("id", "notice"))
    assert balance(d) == 987_654
    row = text_of(d, "css selector", "table.ledger tbody tr")
    assert "policy v2" in row
    assert "try the new amount" in row
    errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
