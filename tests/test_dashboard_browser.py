"""
The dashboard in a real browser: headless Chromium driven by selenium
against a real daemon (a subprocess, so the browser's blocking calls run in
a thread and never stall the daemon or the reactor reading its output).
A screenshot of each page is saved under tests/screenshots/.

Skipped when Chromium, its driver or selenium is missing, unless C{CI} is
set: then that is a failure.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from shellm.http.dashboard.session import CSP
from tests.daemon import Daemon, wait_until
from tests.test_openapi import ADMIN_KEY, _all_providers_env

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = os.path.join(os.path.dirname(__file__), "screenshots")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _need_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        reason = "the browser tests need " + ", ".join(missing) + " (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail("CI is set but " + reason, pytrace=False)
        pytest.skip(reason)


def browser(width: int = 1280, height: int = 1000) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={max(width, 500)},{height}")
    if width < 500:
        # A desktop window is at least 500 px wide: a phone is emulated.
        options.add_experimental_option(
            "mobileEmulation", {"deviceMetrics": {"width": width, "height": 844, "pixelRatio": 1.0}}
        )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def http(url: str, key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """
    One blocking GET (this runs in the browser's thread).
    """
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


class Session:
    """
    One browser on the dashboard: pages, forms, screenshots, console checks.
    """

    def __init__(self, driver: Any, base: str):
        self.driver = driver
        self.base = base

    def go(self, path: str) -> None:
        self.driver.get(self.base + path)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def heading(self) -> str:
        return str(self.find("h1").text)

    def shoot(self, name: str) -> str:
        os.makedirs(SCREENSHOTS, exist_ok=True)
        path = os.path.join(SCREENSHOTS, name + ".png")
        # The whole page, not just the window.
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        width = self.driver.get_window_size()["width"]
        self.driver.set_window_size(width, max(600, min(int(height) + 120, 4000)))
        self.driver.save_screenshot(path)
        return path

    def console_errors(self) -> list[dict[str, Any]]:
        return [entry for entry in self.driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]

    def click(self, css: str) -> None:
        """
        Click what loads another page, and wait until it has (the old
        page's window object is gone and the new one is complete).
        """
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.execute_script("window.shellmOldPage = true")
        self.find(css).click()
        WebDriverWait(self.driver, 10, ignored_exceptions=(WebDriverException,)).until(
            lambda driver: driver.execute_script(
                "return window.shellmOldPage === undefined && document.readyState === 'complete'"
            )
        )

    def login(self, key: str) -> None:
        self.go("/dashboard/login")
        self.find("#key").send_keys(key)
        self.click("form.stack button[type=submit]")

    def submit(self, form_css: str) -> None:
        self.click(form_css + " button[type=submit]")


def run_in_browser(scenario: Callable[[Session], Any], base: str, width: int = 1280) -> Any:
    def run() -> Any:
        driver = browser(width)
        try:
            return scenario(Session(driver, base))
        finally:
            driver.quit()

    return deferToThread(run)


def _fill_request_log(db: str, rows: int) -> None:
    """
    Rows as the ledger writes them, spread over the last days, so the
    charts and the paging have something to show.
    """
    import time

    now = time.time()
    with sqlite3.connect(db) as connection:
        # In time order, as the ledger appends them.
        connection.executemany(
            "INSERT INTO usage (time, client, key_id, endpoint, provider, model, status, error_code,"
            " input_tokens, output_tokens, cost_usd, duration_ms, queued_ms, request_id)"
            " VALUES (?, 'app', NULL, '/v1/chat/completions', ?, 'm', ?, ?, ?, ?, ?, ?, 0, ?)",
            sorted(
                (
                    now - 3600 * (i % 200) - i,
                    ("claude", "gemini", "cerebras")[i % 3],
                    (200, 200, 200, 200, 200, 200, 200, 429, 502, 200)[i % 10],
                    {7: "rate_limited", 8: "provider_error"}.get(i % 10),
                    40 + i % 50,
                    100 + i % 300,
                    0.0005 * (i % 3 == 2) or None,
                    200 + (i * 37) % 3000,
                    f"req-{i}",
                )
                for i in range(rows)
            ),
        )


@pytest.fixture
def need_browser() -> Iterator[None]:
    _need_browser()
    yield


@pytest_twisted.ensureDeferred
async def test_dashboard_in_a_browser(need_browser, tmp_path, marker):
    """
    Log in, see the overview's charts (and the response cache's figures)
    after traffic, make a key in the UI and use it through the API, revoke
    it and see the API refuse it, page through the request log, render a
    template, log out; every page with the CSP header, no
    console error, the script and style sheet loaded (nothing blocked), and
    a screenshot.
    """
    daemon = Daemon({**_all_providers_env(marker), "SHELLM_CACHE_TTL": "600"}, marker, str(tmp_path))
    try:
        await daemon.started()
        response = await treq.post(
            daemon.url + "/admin/templates",
            json.dumps({"name": "greet", "template": "Hello {{ who }}!", "system": "Be brief."}).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert response.code == 201, await response.text()
        # Older rows, then real traffic through a fake CLI, and a refusal.
        await deferToThread(_fill_request_log, str(tmp_path / "shellm.db"), 150)
        for i in range(4):
            response = await treq.post(
                daemon.url + "/completions",
                json.dumps({"model": "claude", "prompt": f"hello {i}"}).encode(),
                headers={"content-type": "application/json", "authorization": f"Bearer {ADMIN_KEY}"},
            )
            assert response.code == 200, await response.text()
        response = await treq.post(
            daemon.url + "/completions",
            b'{"model": "no-such-model", "prompt": "x"}',
            headers={"content-type": "application/json", "authorization": f"Bearer {ADMIN_KEY}"},
        )
        await response.content()

        def scenario(s: Session) -> dict[str, Any]:
            seen: dict[str, Any] = {}
            s.go("/dashboard/")
            assert s.heading() == "Log in"
            # A wrong key is refused, on the page.
            s.login("not-the-admin-key-0000000")
            assert "not an admin key" in s.find(".notice.error").text
            # The browser reports the refusal's 401 itself; that is the only entry.
            refusal = s.console_errors()
            assert [entry["message"].split(" - ")[0] for entry in refusal] == [s.base + "/dashboard/login"], refusal
            s.login(ADMIN_KEY)
            assert s.heading() == "Overview", s.driver.page_source[:2000]
            charts = s.finds("figure.chart svg")
            assert len(charts) >= 3
            bars = s.finds("svg.chart g.bar title")
            assert any("ok" in bar.get_attribute("textContent") for bar in bars)
            assert "Requests per day" in s.driver.page_source
            # Four different prompts: four misses for the response cache.
            assert "hit ratio" in s.driver.page_source and s.find("form[action='/dashboard/cache/clear']")
            # The style sheet applies (the header is a flex row).
            assert s.find("header").value_of_css_property("display") == "flex"
            seen["overview"] = s.shoot("overview")

            s.go("/dashboard/requests")
            first = [row.text for row in s.finds("tbody tr")]
            assert len(first) == 50
            s.click("a[rel=next]")
            second = [row.text for row in s.finds("tbody tr")]
            assert len(second) == 50 and not set(first) & set(second)
            seen["requests"] = s.shoot("requests")

            s.go("/dashboard/keys")
            s.find("form.stack input[name=name]").send_keys("browser-app")
            s.submit("form.stack")
            assert s.heading() == "Key created"
            key = s.find("#new-key").text
            # The script ran (CSP allowed it): it shows the copy button.
            assert s.find("button[data-copy]").is_displayed()
            seen["key-created"] = s.shoot("key-created")
            status, _, _ = http(s.base + "/v1/models", key)
            assert status == 200
            s.click("main a[href^='/dashboard/keys/']")
            assert s.heading() == "Key browser-app"
            seen["key"] = s.shoot("key")
            s.click("form[action$='/revoke'] button")
            assert "revoked" in s.find("main table").text
            status, _, _ = wait_until(
                lambda: (answer := http(s.base + "/v1/models", key))[0] == 401 and answer, 5, "the key refused"
            )
            s.go("/dashboard/keys")
            seen["keys"] = s.shoot("keys")

            s.go("/dashboard/templates")
            assert s.heading() == "Templates"
            seen["templates"] = s.shoot("templates")
            s.click("main a[href='/dashboard/templates/greet']")
            s.find("textarea[name=var-who]").send_keys("<browser>")
            s.submit("form[action$='/render']")
            assert s.find("#rendered-prompt").text == "Hello <browser>!"
            assert s.find("#rendered-system").text == "Be brief."
            seen["template"] = s.shoot("template")

            for path in ("/dashboard/jobs", "/dashboard/sessions"):
                s.go(path)
                assert s.heading() in ("Jobs", "Sessions")
                seen[path.rsplit("/", 1)[1]] = s.shoot(path.rsplit("/", 1)[1])

            seen["errors"] = s.console_errors()
            s.click("form.logout button")
            assert s.heading() == "Log in"
            s.go("/dashboard/keys")
            assert s.heading() == "Log in"
            seen["errors"] += s.console_errors()
            return seen

        seen = await run_in_browser(scenario, daemon.url)
        assert seen["errors"] == []
        for name in ("overview", "requests", "keys", "key", "key-created", "templates", "template", "jobs", "sessions"):
            assert os.path.getsize(seen[name]) > 5000

        # At a phone's width nothing runs off the side.
        def phone(s: Session) -> tuple[int, int, list[dict[str, Any]]]:
            s.login(ADMIN_KEY)
            widths = s.driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            s.shoot("overview-phone")
            return int(widths[0]), int(widths[1]), s.console_errors()

        scroll_width, window_width, errors = await run_in_browser(phone, daemon.url, width=390)
        assert window_width == 390
        assert scroll_width <= window_width
        assert errors == []

        for path in ("/dashboard/", "/dashboard/login", "/dashboard/static/dashboard.js"):
            response = await treq.get(daemon.url + path, allow_redirects=False)
            await response.content()
            assert response.headers.getRawHeaders("content-security-policy") == [CSP], path
            assert response.headers.getRawHeaders("x-frame-options") == ["DENY"], path
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_forms_without_their_token_are_refused(need_browser, tmp_path, marker):
    """
    In the browser: a form whose CSRF token was removed (or the login
    form's) is refused with a 403 and changes nothing.
    """
    daemon = Daemon(_all_providers_env(marker), marker, str(tmp_path))
    try:
        await daemon.started()

        def scenario(s: Session) -> tuple[str, str, int]:
            s.go("/dashboard/login")
            s.driver.execute_script("document.querySelector('input[name=csrf]').remove()")
            s.find("#key").send_keys(ADMIN_KEY)
            s.click("form.stack button[type=submit]")
            login_refused = s.find(".notice.error").text
            s.login(ADMIN_KEY)
            s.go("/dashboard/keys")
            s.driver.execute_script("document.querySelector('form.stack input[name=csrf]').remove()")
            s.find("form.stack input[name=name]").send_keys("forged")
            s.submit("form.stack")
            refused = s.driver.page_source
            s.go("/dashboard/keys")
            return login_refused, refused, s.driver.page_source.count("forged")

        login_refused, refused, forged = await run_in_browser(scenario, daemon.url)
        assert "expired or did not come from this page" in login_refused
        assert "CSRF" in refused
        assert forged == 0
    finally:
        await daemon.stop()
