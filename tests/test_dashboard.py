"""
The web dashboard: its session cookie, CSRF tokens and security headers,
its SVG charts, its SQL sums on both store engines, and its pages through
the real Klein resource (StubTreq) with the store's real pool threads.
The browser tests are in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import urlencode

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from shellm.http.dashboard import charts
from shellm.http.dashboard.pages import Dashboard
from shellm.http.dashboard.session import (
    CSP,
    SessionSigner,
    cookie_header,
    cookie_value,
    csrf_ok,
    derive_secret,
)
from shellm.state import usage_summary
from shellm.state.keys import KeyStore
from shellm.state.store import Store
from tests.daemon import eventually
from tests.test_api import URL, Gateway, has_result
from tests.test_keys import ADMIN, NOW, SECRET, build

FORM = {"content-type": "application/x-www-form-urlencoded"}


# -- the session cookie and CSRF


def _signer(clock: Clock | None = None, secret: bytes = b"s" * 32) -> tuple[SessionSigner, Clock]:
    clock = clock or Clock()
    if clock.seconds() == 0:
        clock.advance(NOW)
    return SessionSigner(secret, clock), clock


def test_cookie_round_trip_and_expiry():
    """
    A cookie opens to the session it was issued for, until its expiry.
    """
    signer, clock = _signer()
    value, session = signer.issue("admin")
    assert signer.open(value) == session
    assert session.expires == NOW + signer.lifetime
    clock.advance(signer.lifetime - 1)
    assert signer.open(value) == session
    clock.advance(1)
    assert signer.open(value) is None


@pytest.mark.parametrize(
    "forge",
    [
        lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"),  # the signature changed
        lambda v: "eyJ3IjoiYWRtaW4iLCJlIjo5OTk5OTk5OTk5LCJjIjoieCJ9" + v[v.index(".") :],  # another payload
        lambda v: v.replace(".", ""),  # no signature
        lambda v: "",
        lambda v: v + "." + v,
    ],
)
def test_forged_or_altered_cookie_is_refused(forge):
    """
    A cookie whose payload or signature was changed opens to nothing.
    """
    signer, _ = _signer()
    value, _ = signer.issue("admin")
    assert signer.open(forge(value)) is None


def test_cookie_of_another_secret_is_refused():
    """
    A cookie signed under another secret (another server, or before the
    admin key changed) is refused.
    """
    clock = Clock()
    clock.advance(NOW)
    value, _ = SessionSigner(derive_secret(SECRET, "old-admin-key-0123456789"), clock).issue("admin")
    assert SessionSigner(derive_secret(SECRET, "new-admin-key-0123456789"), clock).open(value) is None
    assert SessionSigner(derive_secret(SECRET, "old-admin-key-0123456789"), clock).open(value) is not None


def test_csrf_and_login_tokens():
    """
    A form's token must be its session's; a login form's token must be one
    this server signed, and not expired.
    """
    signer, clock = _signer()
    _, session = signer.issue("admin")
    _, other = signer.issue("admin")
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, other.csrf)
    assert not csrf_ok(session, None)
    assert not csrf_ok(session, "")
    token = signer.login_token()
    assert signer.login_token_ok(token)
    assert not signer.login_token_ok(None)
    assert not signer.login_token_ok(token[:-1] + ("A" if token[-1] != "A" else "B"))
    # A session cookie is not a login token, nor the other way round.
    value, _ = signer.issue("admin")
    assert not signer.login_token_ok(value)
    assert signer.open(token) is None
    clock.advance(3600)
    assert not signer.login_token_ok(token)


def test_cookie_attributes():
    """
    The cookie is for the dashboard only, out of scripts' reach, never sent
    from another site, and Secure when asked.
    """
    plain = cookie_header("v", secure=False, max_age=60).decode()
    assert plain.split("; ") == ["shellm_dashboard=v", "Path=/dashboard", "Max-Age=60", "HttpOnly", "SameSite=Strict"]
    assert cookie_header("v", secure=True, max_age=60).decode().endswith("; Secure")
    assert cookie_value("a=1; shellm_dashboard=xyz; b=2") == "xyz"
    assert cookie_value(None) is None


def test_csp_allows_nothing_from_elsewhere():
    """
    The policy allows script and style from the page's own origin only, no
    inline script, and no framing.
    """
    rules = dict(rule.strip().split(" ", 1) for rule in CSP.split(";"))
    assert rules["default-src"] == "'none'"
    assert rules["script-src"] == "'self'"
    assert rules["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in CSP and "http" not in CSP


# -- charts


def test_bar_chart_values_on_hover_and_in_a_table():
    """
    Each bar has its exact values in a <title>, heights are proportional to
    the values on a round scale, and the same numbers are in a table.
    """
    from twisted.web.template import flattenString

    chart = charts.bar_chart(
        "Requests",
        ["<b>d1</b>", "d2", "d3"],
        [charts.Series("ok", "s1", (3.0, 0.0, 8.0)), charts.Series("errors", "s2", (1.0, 0.0, 2.0))],
    )
    out = []
    flattenString(None, chart).addCallback(out.append)
    html = out[0].decode()
    assert "<title>&lt;b&gt;d1&lt;/b&gt;: ok 3, errors 1</title>" in html
    assert "<title>d2: ok 0, errors 0</title>" in html
    assert "<b>" not in html
    heights = [float(h) for h in re.findall(r'height="([\d.]+)" class="s[12]"', html)]
    # Scale top 10 over 134 px: 3 -> 40.2, 1 -> 13.4, 8 -> 107.2, 2 -> 26.8.
    assert heights == [40.2, 13.4, 107.2, 26.8]
    assert "<td>d3</td><td>8</td><td>2</td>" in html


@pytest.mark.parametrize(
    "count, shown",
    [(0, "0 bytes"), (1023, "1,023 bytes"), (2360, "2.3 KiB"), (64 << 20, "64 MiB"), (3 << 40, "3,072 GiB")],
)
def test_sizes_read_as_people_read_them(count, shown):
    from shellm.http.dashboard.layout import size

    assert size(count) == shown


@pytest.mark.parametrize("value, top", [(0, 1), (1, 1), (3, 5), (7, 10), (10, 10), (11, 20), (420, 500), (0.3, 0.5)])
def test_scale_tops_are_round(value, top):
    assert charts.nice_ceiling(value) == pytest.approx(top)


# -- the sums, on both engines


async def _rows(store: Store, rows: list[tuple]) -> None:
    await store.interact(
        lambda cursor: cursor.executemany(
            "INSERT INTO usage (time, client, key_id, provider, model, status, error_code, input_tokens,"
            " output_tokens, cost_usd, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    )


@pytest_twisted.ensureDeferred
async def test_summary_sums_in_sql(store):
    """
    Per day and per hour, quiet buckets included; the last day's count,
    errors and p50/p95; errors by code; tokens and cost by provider and key.
    """
    now = NOW
    rows = [(now - 60 - i, "app", "key_a", "claude", "sonnet", 200, None, 10, 20, 0.01, 100 + i) for i in range(18)]
    rows += [(now - 120, "app", "key_a", "claude", "sonnet", 502, "provider_error", 5, 0, None, 5000)]
    rows += [(now - 3 * 86400, "envapp", None, "gemini", "flash", 429, None, 1, 2, None, 50)]
    rows += [(now - 40 * 86400, "app", "key_a", "claude", "sonnet", 200, None, 999, 999, 9.0, 1)]  # too old
    await _rows(store, rows)
    summary = await usage_summary.UsageSummaries(store).summarize(now)
    assert len(summary.daily) == usage_summary.DAYS and len(summary.hourly) == usage_summary.HOURS
    assert sum(b.requests for b in summary.daily) == 20
    assert sum(b.errors for b in summary.daily) == 2
    assert summary.daily[-1].requests == 19
    # NOW is on the hour: the hour holding it has just begun, the one before holds the rows.
    assert sum(b.requests for b in summary.hourly) == 19 and summary.hourly[-2].requests == 19
    assert summary.hourly[-1].start == NOW
    assert (summary.day_requests, summary.day_errors) == (19, 1)
    # 19 durations: 100..117 and 5000; the 10th is 109, the 19th (95 %) 5000.
    assert (summary.p50_ms, summary.p95_ms) == (109, 5000)
    assert dict(summary.errors_by_code) == {"provider_error": 1, "429": 1}
    by_provider = {s.name: s for s in summary.by_provider}
    assert by_provider["claude"].requests == 19
    assert by_provider["claude"].input_tokens == 18 * 10 + 5
    assert by_provider["claude"].cost_usd == pytest.approx(0.18)
    assert by_provider["gemini"].cost_usd is None
    assert {s.name for s in summary.by_key} == {"key_a", "client:envapp"}
    usage = await usage_summary.UsageSummaries(store).key_usage(now)
    assert set(usage) == {"key_a"} and usage["key_a"].requests == 19


@pytest_twisted.ensureDeferred
async def test_summary_of_an_empty_log(store):
    summary = await usage_summary.UsageSummaries(store).summarize(NOW)
    assert summary.day_requests == 0 and summary.p50_ms is None and summary.by_key == ()
    assert all(b.requests == 0 for b in summary.daily)


# -- the pages


class Browser:
    """
    A client of the dashboard through the real resource: keeps the cookie,
    sends forms with the page's CSRF token.
    """

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.cookie: str | None = None

    async def request(self, method: str, path: str, form: dict | None = None, headers: dict | None = None):
        sent = dict(FORM) if form is not None else {}
        if self.cookie:
            sent["cookie"] = "shellm_dashboard=" + self.cookie
        sent.update(headers or {})
        data = urlencode(form).encode() if form is not None else None
        d = self.gw.stub.request(method, URL + path, data=data, headers=sent, allow_redirects=False)

        def answered():
            self.gw.stub.flush()
            return has_result(d)

        assert await eventually(answered, timeout=10)
        response = await d
        body = (await response.content()).decode()
        for value in response.headers.getRawHeaders(b"set-cookie") or []:
            self.cookie = value.decode().split(";")[0].split("=", 1)[1] or None
        return response, body

    async def csrf(self, path: str) -> str:
        _, body = await self.request("GET", path)
        return re.search(r'name="csrf" value="([^"]+)"', body).group(1)

    async def login(self, key: str = ADMIN):
        token = await self.csrf("/dashboard/login")
        return await self.request("POST", "/dashboard/login", {"key": key, "csrf": token})


def with_dashboard(gw: Gateway, store: Store, secure: bool = False) -> Gateway:
    keys = KeyStore(store, SECRET, gw.clock)
    gw.api.dashboard = Dashboard(gw.api, keys, SessionSigner(derive_secret(SECRET, ADMIN), gw.clock), secure)
    return gw


@pytest.fixture
def dgw(store) -> Gateway:
    return with_dashboard(build(store), store)


def _header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode())
    return values[0].decode() if values else None


@pytest_twisted.ensureDeferred
async def test_without_an_admin_key_the_dashboard_says_how_to_set_one(store):
    gw = with_dashboard(build(store, admin_key=None), store)
    for path in ("/dashboard", "/dashboard/", "/dashboard/login"):
        response, body = await Browser(gw).request("GET", path)
        assert response.code == 200
    assert "SHELLM_ADMIN_KEY" in body and "keys create --admin" in body
    assert _header(response, "content-security-policy") == CSP


@pytest_twisted.ensureDeferred
async def test_login_refusals_and_the_cookie(dgw):
    """
    No session: pages send the browser to the login form.  A wrong key is
    refused (401), and so is a post without the form's token (403); the
    admin key gives a cookie with every attribute, and pages carry the
    security headers.
    """
    browser = Browser(dgw)
    response, body = await browser.request("GET", "/dashboard/")
    assert response.code == 303 and _header(response, "location") == "/dashboard/login", body
    response, body = await browser.login("not-the-admin-key-000000")
    assert response.code == 401 and "not an admin key" in body and browser.cookie is None
    response, body = await browser.request("POST", "/dashboard/login", {"key": ADMIN})
    assert response.code == 403 and browser.cookie is None
    response, body = await browser.request("POST", "/dashboard/login", {"key": ADMIN, "csrf": "forged.token"})
    assert response.code == 403 and browser.cookie is None
    token = await browser.csrf("/dashboard/login")
    response, _ = await browser.request(
        "POST", "/dashboard/login", {"key": ADMIN, "csrf": token}, {"sec-fetch-site": "cross-site"}
    )
    assert response.code == 403 and browser.cookie is None

    response, _ = await browser.login()
    assert response.code == 303 and _header(response, "location") == "/dashboard/"
    cookie = _header(response, "set-cookie")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert "Max-Age=43200" in cookie and "Secure" not in cookie
    assert ADMIN not in cookie
    response, body = await browser.request("GET", "/dashboard/")
    assert response.code == 200
    assert _header(response, "content-security-policy") == CSP
    assert _header(response, "x-frame-options") == "DENY"
    assert _header(response, "cache-control") == "no-store"
    assert "<svg" in body and "Requests per day" in body

    # Logging out needs the token too, and ends the cookie.
    response, _ = await browser.request("POST", "/dashboard/logout", {})
    assert response.code == 403
    token = await browser.csrf("/dashboard/")
    response, _ = await browser.request("POST", "/dashboard/logout", {"csrf": token})
    assert response.code == 303 and browser.cookie is None


@pytest_twisted.ensureDeferred
async def test_secure_cookie_when_asked(store):
    gw = with_dashboard(build(store), store, secure=True)
    response, _ = await Browser(gw).login()
    assert _header(response, "set-cookie").endswith("; Secure")


@pytest_twisted.ensureDeferred
async def test_keys_made_and_revoked_in_the_dashboard(dgw):
    """
    A key made in the dashboard is shown once and works at once; a form
    without the session's token changes nothing; revoking it in the
    dashboard makes the API refuse it.
    """
    browser = Browser(dgw)
    await browser.login()
    response, _ = await browser.request("POST", "/dashboard/keys", {"name": "ui-app", "rpm": "30"})
    assert response.code == 403
    token = await browser.csrf("/dashboard/keys")
    response, body = await browser.request(
        "POST", "/dashboard/keys", {"name": "ui-app", "rpm": "30", "models": "", "csrf": token}
    )
    assert response.code == 201, body
    key = re.search(r'<code id="new-key">(shellm_\w+)</code>', body).group(1)
    key_id = re.search(r'href="/dashboard/keys/(key_\w+)"', body).group(1)
    models = await dgw.stub.get(URL + "/v1/models", headers={"authorization": f"Bearer {key}"})
    assert models.code == 200

    _, listing = await browser.request("GET", "/dashboard/keys")
    assert "ui-app" in listing and key not in listing
    response, body = await browser.request(
        "POST", f"/dashboard/keys/{key_id}", {"name": "ui-app", "rpm": "0", "csrf": token}
    )
    assert response.code == 400 and "rpm" in body
    response, body = await browser.request(
        "POST", f"/dashboard/keys/{key_id}", {"name": "ui-app", "rpm": "12", "models": "claude", "csrf": token}
    )
    assert response.code == 200 and "Saved." in body

    response, _ = await browser.request("POST", f"/dashboard/keys/{key_id}/revoke", {"csrf": "wrong"})
    assert response.code == 403
    response, _ = await browser.request("POST", f"/dashboard/keys/{key_id}/revoke", {"csrf": token})
    assert response.code == 303
    refused = await dgw.stub.get(URL + "/v1/models", headers={"authorization": f"Bearer {key}"})
    assert refused.code == 401


@pytest_twisted.ensureDeferred
async def test_request_log_pages_and_bad_filters(dgw, store):
    """
    The request log pages back 50 rows at a time, filters by status, and
    answers a bad filter with a page that says so (400), not a traceback.
    """
    await _rows(
        store, [(NOW - i, "app", None, "claude", "m", 200 if i % 2 else 500, None, 1, 1, None, 5) for i in range(120)]
    )
    browser = Browser(dgw)
    await browser.login()
    response, body = await browser.request("GET", "/dashboard/requests")
    assert response.code == 200 and body.count("<tr>") == 51
    older = re.search(r'href="(/dashboard/requests\?cursor=\d+)" rel="next"', body).group(1)
    response, body = await browser.request("GET", older.replace("&amp;", "&"))
    assert response.code == 200 and body.count("<tr>") == 51
    response, body = await browser.request("GET", "/dashboard/requests?status=500")
    assert body.count('class="state-bad">500<') == 50
    response, body = await browser.request("GET", "/dashboard/requests?status=abc")
    assert response.code == 400 and "status" in body
    response, body = await browser.request("GET", "/dashboard/requests?since=yesterday")
    assert response.code == 400


@pytest_twisted.ensureDeferred
async def test_every_page_answers_html(dgw):
    browser = Browser(dgw)
    await browser.login()
    pages = ("/dashboard/", "/dashboard/requests", "/dashboard/keys", "/dashboard/jobs", "/dashboard/sessions")
    for path in (*pages, "/dashboard/templates", "/dashboard/templates/"):
        response, body = await browser.request("GET", path)
        assert response.code == 200, (path, body)
        assert body.startswith("<!DOCTYPE html>")
        assert 'aria-current="page"' in body
    for path in ("/dashboard/nothing-here", "/dashboard/templates/a/b", "/dashboard/templates//a"):
        response, body = await browser.request("GET", path)
        assert response.code == 404 and _header(response, "content-type").startswith("text/html"), path
    response, _ = await browser.request("DELETE", "/dashboard/templates/greet")
    assert response.code == 405 and _header(response, "content-type").startswith("text/html")
    token = await browser.csrf("/dashboard/")
    await browser.request("POST", "/dashboard/logout", {"csrf": token})
    response, _ = await browser.request("GET", "/dashboard/templates")
    assert response.code == 303 and _header(response, "location") == "/dashboard/login"
    response, _ = await browser.request("GET", "/dashboard/static/dashboard.js")
    assert response.code == 200 and _header(response, "content-type").startswith("text/javascript")
    response, _ = await browser.request("GET", "/dashboard/static/../../pyproject.toml")
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_closed_days_are_summed_once_a_day(store):
    """
    The days before today are read once and kept: a view reads only today's
    rows (and the last 48 hours'), so a row that lands late in a closed day
    is seen the next day, while today's are seen at once.
    """
    summaries = usage_summary.UsageSummaries(store)
    now = NOW + 3600  # well after midnight: yesterday is closed
    await _rows(store, [(now - 86400, "app", "key_a", "claude", "m", 200, None, 1, 1, None, 10)])
    first = await summaries.summarize(now)
    assert first.daily[-2].requests == 1
    await _rows(
        store,
        [
            (now - 86400, "app", "key_a", "claude", "m", 200, None, 1, 1, None, 10),
            (now - 10, "app", "key_a", "claude", "m", 200, None, 1, 1, None, 10),
        ],
    )
    second = await summaries.summarize(now)
    assert second.daily[-2].requests == 1 and second.daily[-1].requests == 1
    assert {s.name: s.requests for s in second.by_key} == {"key_a": 2}
    # The next day, the closed days are read again.
    third = await summaries.summarize(now + 86400)
    assert third.daily[-3].requests == 2 and third.daily[-2].requests == 1


@pytest_twisted.ensureDeferred
async def test_just_after_midnight_yesterday_is_read_again(store):
    """
    Within SETTLE of midnight the ledger may still be writing yesterday's
    last batch: those days are not kept yet, so a late row still counts.
    """
    summaries = usage_summary.UsageSummaries(store)
    midnight = NOW - NOW % 86400
    now = midnight + usage_summary.UsageSummaries.SETTLE / 5
    await _rows(store, [(midnight - 30, "app", "key_a", "claude", "m", 200, None, 1, 1, None, 10)])
    assert (await summaries.summarize(now)).daily[-2].requests == 1
    await _rows(store, [(midnight - 1, "app", "key_a", "claude", "m", 200, None, 1, 1, None, 10)])
    assert (await summaries.summarize(now)).daily[-2].requests == 2


@pytest_twisted.ensureDeferred
async def test_the_overview_ranks_twenty_keys_the_keys_pages_see_all(store):
    """
    The overview's table is the top twenty keys; each key's own usage (the
    keys pages) is there whatever its rank.
    """
    rows = [(NOW - 60, "app", f"key_{i:02d}", "claude", "m", 200, None, 1, 1, None, 10) for i in range(25)]
    rows += [(NOW - 60, "app", "key_00", "claude", "m", 200, None, 1, 1, None, 10)]
    await _rows(store, rows)
    summaries = usage_summary.UsageSummaries(store)
    summary = await summaries.summarize(NOW)
    assert len(summary.by_key) == 20 and summary.by_key[0].name == "key_00"
    usage = await summaries.key_usage(NOW)
    assert len(usage) == 25 and usage["key_24"].requests == 1 and usage["key_00"].requests == 2


@pytest_twisted.ensureDeferred
async def test_every_clients_sessions_listed_shown_and_deleted(dgw, store):
    """
    An administrator sees every client's sessions, newest first and paged,
    a session's facts without what its client wrote, and deletes one with
    the form (not without its token).
    """
    from shellm.state.conversations import Conversations

    conversations = Conversations(store, dgw.clock, 86400, 50, 100_000)
    dgw.api.conversations = conversations
    made = []
    for i in range(53):
        dgw.clock.advance(1)  # newest first is then the order they were made in
        made.append(await conversations.create_session(f"client-{i % 3}", None, "SECRET SYSTEM PROMPT", {}))
    browser = Browser(dgw)
    await browser.login()
    _, body = await browser.request("GET", "/dashboard/sessions")
    listed = re.findall(r'href="/dashboard/sessions/(sess_\w+)"', body)
    assert listed == [s.id for s in reversed(made)][:50]
    after = re.search(r'href="/dashboard/sessions\?(after=[^"]+)" rel="next"', body).group(1)
    _, body = await browser.request("GET", "/dashboard/sessions?" + after)
    assert re.findall(r'href="/dashboard/sessions/(sess_\w+)"', body) == [s.id for s in reversed(made)][50:]
    victim = made[0].id
    response, body = await browser.request("GET", f"/dashboard/sessions/{victim}")
    assert response.code == 200 and "client-0" in body and "SECRET" not in body
    response, _ = await browser.request("POST", f"/dashboard/sessions/{victim}/delete", {})
    assert response.code == 403
    token = await browser.csrf("/dashboard/sessions")
    response, _ = await browser.request("POST", f"/dashboard/sessions/{victim}/delete", {"csrf": token})
    assert response.code == 303
    assert await conversations.owner_of(victim) is None
    response, _ = await browser.request("GET", f"/dashboard/sessions/{victim}")
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_jobs_listed_shown_cancelled_and_redelivery_refused(db_setting):
    """
    The jobs page lists every client's jobs; a job's page cancels it (its
    run is stopped, as with DELETE /jobs/{id}); asking to send the webhook
    of a job that has none is refused with a page that says why.
    """
    from shellm.routing.auth import Authenticator
    from tests.test_jobs import make_setup, started

    setup = await make_setup(db_setting, gateway={"api_options": {"authenticator": Authenticator((), None, ADMIN)}})
    try:
        with_dashboard(setup.gw, setup.store)
        prompt = "PROMPT-TEXT-OF-A-CLIENT"
        job_id = (await (await setup.post("/jobs", {"model": "claude", "prompt": prompt})).json())["id"]
        run = await started(setup)
        browser = Browser(setup.gw)
        await browser.login()
        _, body = await browser.request("GET", "/dashboard/jobs")
        assert f'href="/dashboard/jobs/{job_id}"' in body
        response, body = await browser.request("GET", f"/dashboard/jobs/{job_id}")
        assert response.code == 200 and "running" in body and prompt not in body
        token = await browser.csrf(f"/dashboard/jobs/{job_id}")
        response, _ = await browser.request("POST", f"/dashboard/jobs/{job_id}/cancel", {})
        assert response.code == 403 and not run.cancelled
        response, _ = await browser.request("POST", f"/dashboard/jobs/{job_id}/cancel", {"csrf": token})
        assert response.code == 303 and run.cancelled
        run.reap()
        assert (await setup.job(job_id))["status"] == "cancelled"
        response, body = await browser.request("POST", f"/dashboard/jobs/{job_id}/redeliver", {"csrf": token})
        assert response.code == 409 and "no webhook" in body
        response, _ = await browser.request("GET", "/dashboard/jobs?status=nonsense")
        assert response.code == 400
    finally:
        setup.runner.stop()
        await setup.store.close()


@pytest_twisted.ensureDeferred
async def test_overview_with_the_store_down_still_shows_the_live_state(dgw, store):
    """
    When the store cannot be reached the overview says so and still shows
    the queues and providers; the other pages answer 503 with the reason.
    """
    browser = Browser(dgw)
    await browser.login()
    await store.close()
    response, body = await browser.request("GET", "/dashboard/")
    assert response.code == 200
    assert "usage figures are missing" in body and "Queues (now)" in body and "Requests per day" not in body
    response, body = await browser.request("GET", "/dashboard/requests")
    assert response.code == 503 and "state store" in body


# -- templates and the response cache


def _with_templates(gw: Gateway, store: Store, folder=None):
    from shellm.state.templates import TemplateStore

    gw.api.templates = TemplateStore(store, gw.clock, folder)
    return gw.api.templates


async def _save(templates, name: str, template: str, system: str | None = None, variables=None):
    from shellm.state.templates import draft

    return await templates.create("admin", name, draft(template, system, variables, None))


@pytest_twisted.ensureDeferred
async def test_templates_listed_shown_rendered_and_deleted(dgw, store, tmp_path):
    """
    The templates page lists each template (latest version, count,
    variables, source); a version's page shows its text and renders it with
    one field per variable or a JSON object, refusing what the admin API
    refuses; its versions are deleted one or all with the form's token, and
    a folder template offers no delete and refuses one.
    """
    from shellm.state.templates import TemplateFolder

    (tmp_path / "review.md").write_text("---\nsystem: You review {{ language }}.\n---\nReview:\n{{ code }}\n")
    (tmp_path / "broken.md").write_text("Hi {{ who")
    folder = TemplateFolder(str(tmp_path))
    folder.load()
    templates = _with_templates(dgw, store, folder)
    await _save(templates, "greet", "Hello {{ who }}", "Be <b>brief</b>.")
    dgw.clock.advance(1)
    await _save(templates, "greet", "Hi {{ who }}, {{ mood }}", "Be brief, {{ who }}.")
    browser = Browser(dgw)
    await browser.login()

    response, body = await browser.request("GET", "/dashboard/templates")
    assert response.code == 200 and 'href="/dashboard/templates" aria-current="page"' in body
    rows = re.findall(
        r'<tr><td><a href="/dashboard/templates/(\w+)">\w+</a></td><td>(\d+)</td><td>(\d+)</td><td>([^<]*)<', body
    )
    assert rows == [("review", "1", "1", "code, language"), ("greet", "2", "2", "who, mood")]
    assert "folder, read-only" in body and "broken.md" in body and "line 1, column 4" in body

    response, body = await browser.request("GET", "/dashboard/templates/greet?version=1")
    assert response.code == 200 and "Hello {{ who }}" in body and "Be &lt;b&gt;brief&lt;/b&gt;." in body
    assert 'name="var-who"' in body and 'name="var-mood"' not in body
    token = re.search(r'name="csrf" value="([^"]+)"', body).group(1)

    render = "/dashboard/templates/greet/render"
    response, _ = await browser.request("POST", render, {"var-who": "Ann", "var-mood": "glad"})
    assert response.code == 403
    response, body = await browser.request(
        "POST", render, {"csrf": token, "version": "2", "var-who": "<Ann>", "var-mood": "glad"}
    )
    assert response.code == 200, body
    assert '<pre class="text" id="rendered-prompt">Hi &lt;Ann&gt;, glad</pre>' in body
    assert '<pre class="text" id="rendered-system">Be brief, &lt;Ann&gt;.</pre>' in body
    response, body = await browser.request(
        "POST", render, {"csrf": token, "version": "1", "variables_json": '{"who": 3}'}
    )
    assert response.code == 200 and '<pre class="text" id="rendered-prompt">Hello 3</pre>' in body
    # What the admin API refuses, the form refuses, and the form keeps what was typed.
    response, body = await browser.request(
        "POST", render, {"csrf": token, "version": "1", "variables_json": '{"who": "x", "extra": 1}'}
    )
    assert response.code == 400 and "unknown template variables: 'extra'" in unescape(body)
    assert '>{"who": "x", "extra": 1}</textarea>' in unescape(body)
    response, body = await browser.request("POST", render, {"csrf": token, "variables_json": "{nope"})
    assert response.code == 400 and "not valid JSON" in body
    response, body = await browser.request("POST", render, {"csrf": token, "version": "0"})
    assert response.code == 400 and "version" in body
    response, body = await browser.request("POST", render, {"csrf": token, "var-who": "x" * 1001, "var-mood": ""})
    assert response.code == 400 and "maximum length of 1000" in body
    response, _ = await browser.request("GET", "/dashboard/templates/nothing")
    assert response.code == 404
    response, _ = await browser.request("GET", "/dashboard/templates/greet?version=9")
    assert response.code == 404

    # A folder template renders but has no delete button, and refuses a delete.
    response, body = await browser.request("GET", "/dashboard/templates/review")
    assert response.code == 200 and "/delete" not in body and "read-only" in body
    response, body = await browser.request("POST", "/dashboard/templates/review/delete", {"csrf": token})
    assert response.code == 409 and "read-only" in body

    delete = "/dashboard/templates/greet/delete"
    response, _ = await browser.request("POST", delete, {"version": "1"})
    assert response.code == 403 and len(await templates.versions("greet")) == 2
    response, _ = await browser.request("POST", delete, {"csrf": token, "version": "1"})
    assert response.code == 303 and _header(response, "location") == "/dashboard/templates/greet"
    assert [v["version"] for v in await templates.versions("greet")] == [2]
    response, _ = await browser.request("POST", delete, {"csrf": token})
    assert response.code == 303 and _header(response, "location") == "/dashboard/templates"
    assert await templates.versions("greet") == []
    response, _ = await browser.request("POST", delete, {"csrf": token})
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_templates_page_without_templates(dgw):
    """
    Without the templates store the page says what they need; a version's
    page is a 404.
    """
    browser = Browser(dgw)
    await browser.login()
    response, body = await browser.request("GET", "/dashboard/templates")
    assert response.code == 200 and "need the state store" in body
    response, _ = await browser.request("GET", "/dashboard/templates/greet")
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_overview_shows_the_cache_and_clears_it(dgw):
    """
    With caching off the overview says so; with it on it shows the hit
    ratio and counts, and its button (with the form's token) empties the
    cache as DELETE /admin/cache does.
    """
    from shellm.routing.cache import ResponseCache

    browser = Browser(dgw)
    await browser.login()
    _, body = await browser.request("GET", "/dashboard/")
    assert '<div class="value">off</div>' in body and "/dashboard/cache/clear" not in body

    dgw.api.cache = ResponseCache(dgw.clock, 3600, 10**6)
    for _ in range(3):
        response = await dgw.stub.post(
            URL + "/completions",
            json={"model": "claude", "prompt": "same question"},
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        assert response.code == 200, await response.text()
    stats = dgw.api.cache.stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (2, 1, 1)
    _, body = await browser.request("GET", "/dashboard/")
    cards = dict(
        (what, value)
        for value, what in re.findall(r'<div class="value">([^<]*)</div><div class="what">([^<]*)</div>', body)
    )
    assert cards["hit ratio"] == "66.7 %" and cards["hits"] == "2" and cards["misses"] == "1"
    assert cards["entries"] == "1" and cards["bypasses"] == "0"
    assert re.fullmatch(r"\d+ bytes / 976.6 KiB", cards["held / at most"])

    response, _ = await browser.request("POST", "/dashboard/cache/clear", {})
    assert response.code == 403 and dgw.api.cache.stats()["entries"] == 1
    token = await browser.csrf("/dashboard/")
    response, _ = await browser.request("POST", "/dashboard/cache/clear", {"csrf": token})
    assert response.code == 303 and _header(response, "location") == "/dashboard/"
    assert dgw.api.cache.stats()["entries"] == 0
