"""
C{/dashboard}: the pages, mounted by L{shellm.http.api}.  Each page is one
handler that reads what it shows in a bounded number of store queries
(never one per row), renders it into the one layout template, and sends it
with the security headers of L{shellm.http.dashboard.session}.  Every
change is a form post carrying the session's CSRF token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.template import Tag, flattenString, tags
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.routing import RequestRedirect

from shellm.errors import InvalidRequest, ShellmError, StoreUnavailable
from shellm.http.admin_api import MAX_GRACE, check_key_fields
from shellm.http.dashboard import charts
from shellm.http.dashboard.forms import arg, peer, query, status_arg, time_arg
from shellm.http.dashboard.layout import (
    HERE,
    Page,
    brief,
    by_name,
    card,
    csrf_field,
    key_inputs,
    key_label,
    money,
    option,
    post_button,
    size,
    state,
    when,
)
from shellm.http.dashboard.session import (
    COOKIE,
    DashboardSession,
    SessionSigner,
    cookie_header,
    cookie_value,
    csrf_ok,
    same_origin,
    set_security_headers,
)
from shellm.http.dashboard.template_pages import TemplatePages
from shellm.http.headers import header
from shellm.routing.auth import AuthRequired
from shellm.state import request_log, usage_summary
from shellm.state.conversations import SessionNotFound
from shellm.state.jobs import STATUSES
from shellm.state.keys import KeyRecord, KeyStore, NameTaken
from shellm.state.request_log import LogFilter

if TYPE_CHECKING:
    from shellm.http.api import ShellmAPI

_STATIC = {
    "dashboard.css": ("text/css; charset=utf-8", HERE.child("static").child("dashboard.css")),
    "dashboard.js": ("text/javascript; charset=utf-8", HERE.child("static").child("dashboard.js")),
}
#: Rows per page of the request log and the job list.
PAGE_ROWS = 50
#: How often the overview reloads itself (seconds).
REFRESH = 60


class Forbidden(ShellmError):
    status = 403
    code = "forbidden"


class LoginNeeded(Exception):
    """
    No valid session: a page sends the browser to the login form.
    """


class Dashboard:
    """
    The dashboard's routes.  Reads the gateway's live state through the
    API object it is mounted by, and durable state through the store.
    """

    app = Klein()
    log = Logger()

    def __init__(self, api: ShellmAPI, keys: KeyStore, signer: SessionSigner, secure_cookie: bool):
        """
        @param secure_cookie: mark the cookie C{Secure} even over plain HTTP
            (behind a proxy that ends TLS).
        """
        self._api = api
        self._keys = keys
        self._signer = signer
        self._secure_cookie = secure_cookie
        self._summaries = usage_summary.UsageSummaries(keys.store)
        self._template_pages = TemplatePages(self)

    def resource(self) -> Any:
        return self.app.resource()

    @property
    def _clock(self) -> Any:
        return self._api.clock

    def _now(self) -> float:
        return float(self._clock.seconds())

    # -- answering

    async def _html(self, request: IRequest, page: Page, status: int = 200) -> bytes:
        body = b"<!DOCTYPE html>\n" + await flattenString(request, page)
        request.setResponseCode(status)
        set_security_headers(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    def _redirect(self, request: IRequest, location: str) -> bytes:
        set_security_headers(request)
        request.setResponseCode(303)
        request.setHeader(b"location", location.encode("ascii"))
        request.setHeader(b"content-length", b"0")
        return b""

    # -- for the mounted templates pages (template_pages.py)

    @property
    def api(self) -> ShellmAPI:
        return self._api

    def session(self, request: IRequest) -> DashboardSession:
        return self._session(request)

    def session_posting(self, request: IRequest) -> DashboardSession:
        return self._changing(request)

    async def html(self, request: IRequest, page: Page, status: int = 200) -> bytes:
        return await self._html(request, page, status)

    def redirect(self, request: IRequest, location: str) -> bytes:
        return self._redirect(request, location)

    def answer_failure(self, request: IRequest, failure: Failure) -> Any:
        """
        A mounted page's failure, answered as this app's own are.
        """
        handlers: list[tuple[type[BaseException], Any]] = [
            (LoginNeeded, self.login_needed),
            (ShellmError, self.shellm_error),
            (WerkzeugNotFound, self.not_found),
            (RequestRedirect, self.not_found),
            (WerkzeugMethodNotAllowed, self.method_not_allowed),
        ]
        for kind, handler in handlers:
            if failure.check(kind):
                return handler(request, failure)
        return self.unexpected(request, failure)

    @app.route("/templates/")
    def templates_slash(self, request: IRequest) -> Any:
        return self.templates(request)

    @app.route("/templates", branch=True)
    def templates(self, request: IRequest) -> Any:
        if not request.postpath:
            request.postpath = [b""]  # the mount point itself is the sub-app's "/"
        return self._template_pages.resource()

    def _secure(self, request: IRequest) -> bool:
        return self._secure_cookie or bool(request.isSecure())

    # -- who is there

    def _session(self, request: IRequest) -> DashboardSession:
        """
        The logged-in admin's session, still an admin's.

        @raise LoginNeeded: otherwise.
        """
        session = self._signer.open(cookie_value(header(request, b"cookie")))
        if session is None or not self._still_admin(session.who):
            raise LoginNeeded()
        return session

    def _still_admin(self, who: str) -> bool:
        authenticator = self._api.authenticator
        if who == "admin":
            # The secret is bound to SHELLM_ADMIN_KEY: a signature that holds
            # means it is the same key.
            return authenticator.admin_key_set
        ring = authenticator.ring
        if ring is None:
            return False
        now = self._now()
        return any(record.id == who and record.admin and record.status(now) == "active" for record in ring.records)

    def _changing(self, request: IRequest) -> DashboardSession:
        """
        The session of a form post, with its CSRF token checked.

        @raise Forbidden: a missing or wrong token, or another site's post.
        """
        session = self._session(request)
        if not same_origin(request) or not csrf_ok(session, arg(request, "csrf")):
            raise Forbidden("this form did not come from this dashboard (CSRF check failed); reload the page")
        return session

    # -- errors

    @app.handle_errors(LoginNeeded)
    def login_needed(self, request: IRequest, failure: Failure) -> bytes:
        if request.method == b"GET":
            return self._redirect(request, "/dashboard/login")
        return self._plain_error(request, 403, "Your session ended: log in again.")

    @app.handle_errors(ShellmError)
    async def shellm_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, ShellmError)
        return await self._html(
            request, Page("Refused", tags.p(str(error)), notice=str(error), error=True), error.status
        )

    # werkzeug would redirect a path it merges (//) or completes (a slash):
    # a page answers it as the missing page it is.
    @app.handle_errors(WerkzeugNotFound, RequestRedirect)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return self._plain_error(request, 404, "No such page.")

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = getattr(failure.value, "valid_methods", None) or []
        request.setHeader(b"allow", ", ".join(allowed).encode())
        return self._plain_error(request, 405, "Method not allowed.")

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure("dashboard page failed", failure)
        return self._plain_error(request, 500, "Something went wrong; the daemon's log says what.")

    def _plain_error(self, request: IRequest, status: int, text: str) -> bytes:
        body = (
            "<!DOCTYPE html><html lang=en><meta charset=utf-8><title>SheLLM</title>"
            f'<p>{text}</p><p><a href="/dashboard/">Dashboard</a></p></html>'
        ).encode()
        request.setResponseCode(status)
        set_security_headers(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    # -- static files and login

    @app.route("/static/<name>", methods=["GET"])
    def static(self, request: IRequest, name: str) -> bytes:
        if name not in _STATIC:
            raise WerkzeugNotFound()
        kind, path = _STATIC[name]
        body = path.getContent()
        set_security_headers(request)
        request.setHeader(b"cache-control", b"max-age=3600")
        request.setHeader(b"content-type", kind.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    def _unconfigured(self) -> Page:
        return Page(
            "Dashboard not set up",
            [
                tags.p("The dashboard is for administrators, and no admin key is configured."),
                tags.p(
                    "Set ",
                    tags.code("SHELLM_ADMIN_KEY"),
                    " (at least 16 random characters) in the daemon's environment or env file, or make an admin key"
                    " with ",
                    tags.code("shellm keys create --admin NAME"),
                    ", then restart the daemon (or send it SIGHUP) and log in here with that key.",
                ),
            ],
        )

    def _login_page(self, failed: str | None = None) -> Page:
        form = tags.form(method="post", action="/dashboard/login", class_="stack")(
            tags.input(type="hidden", name="csrf", value=self._signer.login_token()),
            tags.label(
                "Admin key",
                tags.input(type="password", name="key", id="key", autocomplete="current-password", required="required"),
            ),
            tags.button(type="submit")("Log in"),
        )
        return Page("Log in", form, notice=failed, error=failed is not None)

    @app.route("/login", methods=["GET"])
    async def login_form(self, request: IRequest) -> bytes:
        if not self._api.authenticator.admin_enabled:
            return await self._html(request, self._unconfigured())
        return await self._html(request, self._login_page())

    @app.route("/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        if not self._api.authenticator.admin_enabled:
            return await self._html(request, self._unconfigured(), 403)
        if not same_origin(request) or not self._signer.login_token_ok(arg(request, "csrf")):
            page = self._login_page("The login form expired or did not come from this page: try again.")
            return await self._html(request, page, 403)
        token = arg(request, "key") or ""
        try:
            client = self._api.authenticator.authenticate(token.strip())
        except (AuthRequired, ShellmError):
            client = None
        if client is None or not client.admin:
            self.log.warn("dashboard login refused from {peer}", peer=peer(request))
            return await self._html(request, self._login_page("That is not an admin key."), 401)
        value, _ = self._signer.issue(client.id or "admin")
        request.setHeader(b"set-cookie", cookie_header(value, self._secure(request), int(self._signer.lifetime)))
        self.log.info("dashboard login by {who}", who=client.name)
        return self._redirect(request, "/dashboard/")

    @app.route("/logout", methods=["POST"])
    def logout(self, request: IRequest) -> bytes:
        self._changing(request)
        request.setHeader(b"set-cookie", cookie_header("", self._secure(request), 0))
        return self._redirect(request, "/dashboard/login")

    # -- overview

    @app.route("/", methods=["GET"])
    async def overview(self, request: IRequest) -> bytes:
        if not self._api.authenticator.admin_enabled:
            return await self._html(request, self._unconfigured())
        session = self._session(request)
        started = time.process_time()
        content = [tags.div(hidden="hidden", **{"data-refresh": str(REFRESH)})]
        notice = None
        try:
            summary = await self._summaries.summarize(self._now())
            names = await self._key_names()
        except StoreUnavailable as error:
            # The live state is worth showing most when the store is down.
            notice = f"{error} The usage figures are missing until it is back."
        else:
            content += self._summary_view(summary, names)
        content += self._cache_view(session)
        content += await self._live_view()
        self.log.debug("overview rendered in {cpu} ms of CPU", cpu=round(1000 * (time.process_time() - started)))
        return await self._html(request, Page("Overview", content, "overview", session, notice, notice is not None))

    async def _key_names(self) -> dict[str, str]:
        return {record.id: record.name for record in await self._keys.all()}

    def _summary_view(self, summary: usage_summary.Summary, names: dict[str, str]) -> list[Tag]:
        rate = f"{100 * summary.day_errors / summary.day_requests:.1f} %" if summary.day_requests else "—"
        tokens_in = sum(s.input_tokens for s in summary.by_provider)
        tokens_out = sum(s.output_tokens for s in summary.by_provider)
        costs = [s.cost_usd for s in summary.by_provider if s.cost_usd is not None]
        cards = tags.div(class_="cards")(
            card(f"{summary.day_requests:,}", "requests, last 24 h"),
            card(rate, "error rate, last 24 h"),
            card("—" if summary.p50_ms is None else f"{summary.p50_ms:,} ms", "p50 latency, 24 h"),
            card("—" if summary.p95_ms is None else f"{summary.p95_ms:,} ms", "p95 latency, 24 h"),
            card(f"{tokens_in:,} / {tokens_out:,}", "tokens in / out, 30 d"),
            card(money(sum(costs)) if costs else "—", "cost where known, 30 d"),
        )
        daily = charts.bar_chart(
            "Requests per day, last 30 days (errors in red)",
            [when(b.start)[5:10] for b in summary.daily],
            [
                charts.Series("ok", "s1", tuple(float(b.requests - b.errors) for b in summary.daily)),
                charts.Series("errors", "s2", tuple(float(b.errors) for b in summary.daily)),
            ],
            every=5,
        )
        hourly = charts.bar_chart(
            "Requests per hour, last 48 hours (UTC)",
            [when(b.start)[5:13] + "h" for b in summary.hourly],
            [
                charts.Series("ok", "s1", tuple(float(b.requests - b.errors) for b in summary.hourly)),
                charts.Series("errors", "s2", tuple(float(b.errors) for b in summary.hourly)),
            ],
            every=8,
        )
        errors = charts.share_bars(
            "Errors by code, last 30 days", [(code, float(n)) for code, n in summary.errors_by_code]
        )

        def shares(rows: Sequence[usage_summary.Share], named: bool) -> Tag:
            return charts.table(
                ["", "requests", "tokens in", "tokens out", "cost"],
                [
                    [
                        key_label(s.name, names) if named else s.name,
                        f"{s.requests:,}",
                        f"{s.input_tokens:,}",
                        f"{s.output_tokens:,}",
                        money(s.cost_usd),
                    ]
                    for s in rows
                ],
            )

        return [
            cards,
            tags.h2("Traffic"),
            tags.div(class_="grid2")(daily, hourly),
            tags.h2("Errors"),
            errors,
            tags.h2("Tokens by provider, last 30 days"),
            tags.div(class_="scroll")(shares(summary.by_provider, False)),
            tags.h2("Tokens by key, last 30 days"),
            tags.div(class_="scroll")(shares(summary.by_key, True)),
        ]

    def _cache_view(self, session: DashboardSession) -> list[Tag]:
        cache = self._api.cache
        if cache is None:
            return [
                tags.h2("Response cache"),
                tags.div(class_="cards")(card("off", "answers are not cached (SHELLM_CACHE_TTL is 0)")),
            ]
        stats = cache.stats()
        ratio = stats["hit_ratio"]
        return [
            tags.h2("Response cache (since the daemon started)"),
            tags.div(class_="cards")(
                card("—" if ratio is None else f"{100 * ratio:.1f} %", "hit ratio"),
                card(f"{stats['hits']:,}", "hits"),
                card(f"{stats['misses']:,}", "misses"),
                card(f"{stats['bypasses']:,}", "bypasses"),
                card(f"{stats['entries']:,}", "entries"),
                card(f"{size(stats['bytes'])} / {size(stats['max_bytes'])}", "held / at most"),
            ),
            tags.p(post_button(session, "/dashboard/cache/clear", "Clear cache", danger=True)),
        ]

    @app.route("/cache/clear", methods=["POST"])
    def clear_cache(self, request: IRequest) -> bytes:
        session = self._changing(request)
        cache = self._api.cache
        cleared = cache.clear() if cache is not None else 0
        self.log.info("response cache cleared by {who} (dashboard): {count} entries", who=session.who, count=cleared)
        return self._redirect(request, "/dashboard/")

    async def _live_view(self) -> list[Tag]:
        router = self._api.router
        queues = charts.table(
            ["queue", "active", "waiting", "max concurrent", "max waiting"],
            [
                [name, q["active"], q["pending"], q["max_concurrent"], q["max_queue_depth"]]
                for name, q in ((name, queue.to_json()) for name, queue in router.queues.items())
            ],
        )
        healths = await router.health.current()
        providers = []
        windows = []
        for name in router.providers:
            health = healths.get(name)
            circuit = router.circuits[name].to_json()
            quota = router.quota.state(name)
            usable = None if health is None else bool(health.installed and health.authenticated)
            providers.append(
                [
                    name,
                    state("unknown" if health is None else "usable" if usable else "unusable", usable),
                    state(circuit["state"], circuit["state"] == "closed"),
                    state(quota.state, quota.state == "ok" or None),
                    when(quota.resets_at),
                ]
            )
            for window in quota.windows:
                windows.append(
                    [
                        name,
                        window.kind,
                        window.status or "—",
                        "—" if window.used is None else f"{100 * window.used:.0f} %",
                        when(window.resets_at),
                    ]
                )
        return [
            tags.h2("Queues (now)"),
            tags.div(class_="scroll")(queues),
            tags.h2("Providers (now)"),
            tags.div(class_="scroll")(
                charts.table(["provider", "health", "circuit", "quota", "quota resets (UTC)"], providers)
            ),
            tags.h2("Subscription windows"),
            tags.div(class_="scroll")(
                charts.table(["provider", "window", "status", "used", "resets (UTC)"], windows)
                if windows
                else tags.p(class_="muted")("No provider has reported a window yet.")
            ),
        ]

    # -- the request log

    @app.route("/requests", methods=["GET"])
    async def requests(self, request: IRequest) -> bytes:
        session = self._session(request)
        given = {name: (arg(request, name) or "").strip() for name in ("key", "provider", "status", "since", "until")}
        where = LogFilter(
            since=time_arg("since", given["since"]),
            until=time_arg("until", given["until"]),
            key=given["key"] or None,
            provider=given["provider"] or None,
            status=status_arg(given["status"]),
        )
        cursor = arg(request, "cursor")
        if cursor is not None and not cursor.isdigit():
            raise InvalidRequest("cursor: not a cursor this page gave")
        page = await request_log.page(self._keys.store, where, PAGE_ROWS, int(cursor) if cursor else None)
        names = await self._key_names()
        providers = sorted(self._api.router.providers)
        filters = tags.form(method="get", action="/dashboard/requests", class_="filters")(
            tags.label(
                "Key",
                tags.select(name="key")(
                    option("", "any", given["key"]),
                    *[option(key_id, name, given["key"]) for key_id, name in sorted(names.items(), key=by_name)],
                ),
            ),
            tags.label(
                "Provider",
                tags.select(name="provider")(
                    option("", "any", given["provider"]), *[option(p, p, given["provider"]) for p in providers]
                ),
            ),
            tags.label("Status", tags.input(name="status", value=given["status"], inputmode="numeric", size="5")),
            tags.label("From (UTC)", tags.input(type="datetime-local", name="since", value=given["since"])),
            tags.label("To (UTC)", tags.input(type="datetime-local", name="until", value=given["until"])),
            tags.button(type="submit")("Filter"),
        )
        rows = [
            [
                when(row["time"]),
                key_label(row["key_id"], names) if row["key_id"] else row["client"],
                row["endpoint"] or "—",
                row["provider"] or "—",
                row["model"] or "—",
                state(str(row["status"]), int(row["status"]) < 400),
                row["error_code"] or "",
                "—" if row["duration_ms"] is None else f"{row['duration_ms']:,}",
                f"{row['input_tokens'] or 0:,} / {row['output_tokens'] or 0:,}",
                row["request_id"] or "",
            ]
            for row in page["requests"]
        ]
        pager = tags.nav(class_="pager", **{"aria-label": "Pages"})(
            tags.a(href="/dashboard/requests?" + query(given))("Newest")
        )
        if page["next_cursor"]:
            pager(tags.a(href="/dashboard/requests?" + query(given, cursor=page["next_cursor"]), rel="next")("Older"))
        content = [
            filters,
            tags.div(class_="scroll")(
                charts.table(
                    ["time (UTC)", "key", "endpoint", "provider", "model", "status", "error", "ms", "tokens", "id"],
                    rows,
                    caption=f"{len(rows)} requests" + (", newest first" if rows else ""),
                )
            ),
            pager,
        ]
        return await self._html(request, Page("Requests", content, "requests", session))

    # -- keys

    @app.route("/keys", methods=["GET"])
    async def keys(self, request: IRequest) -> bytes:
        session = self._session(request)
        return await self._html(request, await self._keys_page(session))

    async def _keys_page(self, session: DashboardSession, notice: str | None = None, error: bool = False) -> Page:
        now = self._now()
        records = await self._keys.all()
        usage = await self._summaries.key_usage(now)
        used = await self._keys.last_used()
        rows = []
        for record in records:
            share = usage.get(record.id)
            rows.append(
                [
                    tags.a(href=f"/dashboard/keys/{record.id}")(record.name),
                    tags.code(record.prefix + "…"),
                    state(record.status(now), record.status(now) == "active"),
                    "admin" if record.admin else ", ".join(record.models) if record.models else "every model",
                    str(record.rpm),
                    f"{share.requests:,}" if share else "0",
                    f"{share.input_tokens + share.output_tokens:,}" if share else "0",
                    when(used.get(record.id)),
                ]
            )
        for client in self._api.authenticator.clients:
            rows.append([client.name, "—", state("from SHELLM_CLIENTS", None), "—", str(client.rpm), "", "", ""])
        create = tags.form(method="post", action="/dashboard/keys", class_="stack")(
            csrf_field(session),
            *key_inputs(None),
            tags.button(type="submit")("Create key"),
        )
        content = [
            tags.div(class_="scroll")(
                charts.table(
                    ["name", "prefix", "status", "models", "rpm", "requests 30 d", "tokens 30 d", "last used (UTC)"],
                    rows,
                )
            ),
            tags.h2("New key"),
            create,
        ]
        return Page("Keys", content, "keys", session, notice, error)

    def _fields(self, request: IRequest, creating: bool) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for name in ("name", "note"):
            value = (arg(request, name) or "").strip()
            if value or not creating:
                body[name] = value or (None if name == "note" else value)
        models = (arg(request, "models") or "").replace(",", " ").split()
        body["models"] = models or None
        for name in ("rpm", "daily_tokens", "monthly_tokens"):
            value = (arg(request, name) or "").strip()
            if value:
                if not value.isdigit():
                    raise InvalidRequest(f"{name}: must be a positive integer")
                body[name] = int(value)
            elif name != "rpm":
                body[name] = None
        if creating:
            body = {name: value for name, value in body.items() if value is not None}
        return check_key_fields(body, creating, self._api.models, self._now())

    async def _refresh_keys(self) -> None:
        ring = self._api.authenticator.ring
        if ring is not None:
            await ring.refresh()

    @app.route("/keys", methods=["POST"])
    async def create_key(self, request: IRequest) -> bytes:
        session = self._changing(request)
        try:
            fields = self._fields(request, creating=True)
            record, key = await self._keys.create("dashboard:" + session.who, fields)
        except (InvalidRequest, NameTaken) as error:
            text = (
                f"name: a live key is already called {error.args[0]!r}" if isinstance(error, NameTaken) else str(error)
            )
            return await self._html(request, await self._keys_page(session, text, True), 400)
        self.log.info("key {id} ({prefix}) created from the dashboard", id=record.id, prefix=record.prefix)
        await self._refresh_keys()
        return await self._html(request, self._shown_once(session, record, key, "created"), 201)

    def _shown_once(self, session: DashboardSession, record: KeyRecord, key: str, what: str) -> Page:
        content = [
            tags.p(f"The key {record.name!r} was {what}. It is shown this once: copy it now."),
            tags.div(class_="secret")(
                tags.code(id="new-key")(key),
                tags.button(type="button", hidden="hidden", **{"data-copy": "new-key"})("Copy"),
            ),
            tags.p(tags.a(href=f"/dashboard/keys/{record.id}")("Back to the key")),
        ]
        return Page(f"Key {what}", content, "keys", session)

    async def _record(self, key_id: str) -> KeyRecord:
        record = await self._keys.get(key_id)
        if record is None:
            raise WerkzeugNotFound()
        return record

    @app.route("/keys/<key_id>", methods=["GET"])
    async def key(self, request: IRequest, key_id: str) -> bytes:
        session = self._session(request)
        return await self._html(request, await self._key_page(session, await self._record(key_id)))

    async def _key_page(
        self, session: DashboardSession, record: KeyRecord, notice: str | None = None, error: bool = False
    ) -> Page:
        now = self._now()
        share = (await self._summaries.key_usage(now)).get(record.id)
        facts = charts.table(
            ["", ""],
            [
                ["id", record.id],
                ["prefix", record.prefix + "…"],
                ["status", record.status(now)],
                ["created (UTC)", when(record.created_at)],
                ["expires (UTC)", when(record.expires_at)],
                ["rotation grace until", when(record.prev_valid_until if record.prev_hash else None)],
                ["requests, 30 d", f"{share.requests:,}" if share else "0"],
                ["tokens in / out, 30 d", f"{share.input_tokens:,} / {share.output_tokens:,}" if share else "0 / 0"],
                ["cost, 30 d", money(share.cost_usd) if share else "—"],
            ],
        )
        content: list[Tag] = [facts]
        if record.status(now) != "revoked" and not record.admin:
            base = f"/dashboard/keys/{record.id}"
            content += [
                tags.h2("Limits and models"),
                tags.form(method="post", action=base, class_="stack")(
                    csrf_field(session), *key_inputs(record), tags.button(type="submit")("Save")
                ),
                tags.h2("Rotate"),
                tags.form(method="post", action=base + "/rotate", class_="stack")(
                    csrf_field(session),
                    tags.label(
                        "Old key keeps working for (seconds)",
                        tags.input(name="grace_seconds", value="0", inputmode="numeric"),
                    ),
                    tags.button(type="submit")("Rotate key"),
                ),
                tags.h2("Revoke"),
                post_button(session, base + "/revoke", "Revoke key", danger=True),
            ]
        return Page(f"Key {record.name}", content, "keys", session, notice, error)

    async def _live(self, key_id: str) -> KeyRecord:
        record = await self._record(key_id)
        if record.revoked_at is not None or record.admin:
            raise Forbidden("this key cannot be changed here (revoked, or an admin key)")
        return record

    @app.route("/keys/<key_id>", methods=["POST"])
    async def change_key(self, request: IRequest, key_id: str) -> bytes:
        session = self._changing(request)
        record = await self._live(key_id)
        try:
            fields = self._fields(request, creating=False)
            changed = await self._keys.update("dashboard:" + session.who, key_id, fields)
        except (InvalidRequest, NameTaken) as error:
            text = (
                f"name: a live key is already called {error.args[0]!r}" if isinstance(error, NameTaken) else str(error)
            )
            return await self._html(request, await self._key_page(session, record, text, True), 400)
        await self._refresh_keys()
        return await self._html(request, await self._key_page(session, changed or record, "Saved."))

    @app.route("/keys/<key_id>/rotate", methods=["POST"])
    async def rotate_key(self, request: IRequest, key_id: str) -> bytes:
        session = self._changing(request)
        await self._live(key_id)
        grace_text = (arg(request, "grace_seconds") or "0").strip()
        if not grace_text.isdigit() or int(grace_text) > MAX_GRACE:
            raise InvalidRequest(f"grace_seconds: must be a number of seconds from 0 to {MAX_GRACE}")
        rotated = await self._keys.rotate("dashboard:" + session.who, key_id, float(grace_text))
        if rotated is None:
            raise WerkzeugNotFound()
        await self._refresh_keys()
        return await self._html(request, self._shown_once(session, rotated[0], rotated[1], "rotated"))

    @app.route("/keys/<key_id>/revoke", methods=["POST"])
    async def revoke_key(self, request: IRequest, key_id: str) -> bytes:
        session = self._changing(request)
        await self._live(key_id)
        await self._keys.revoke("dashboard:" + session.who, key_id)
        self.log.info("key {id} revoked from the dashboard", id=key_id)
        await self._refresh_keys()
        return self._redirect(request, f"/dashboard/keys/{key_id}")

    # -- jobs

    @app.route("/jobs", methods=["GET"])
    async def jobs(self, request: IRequest) -> bytes:
        session = self._session(request)
        jobs_api = self._api.jobs
        if jobs_api is None:
            return await self._html(request, Page("Jobs", tags.p("Jobs are not enabled."), "jobs", session))
        status = arg(request, "status") or None
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
        after = arg(request, "cursor")
        found = await jobs_api.jobs_store.list_jobs(None, status, PAGE_ROWS + 1, after)
        shown = found[:PAGE_ROWS]
        rows = [
            [
                tags.a(href=f"/dashboard/jobs/{job.id}")(job.id),
                job.client,
                job.status,
                when(job.created_at),
                when(job.finished_at),
            ]
            for job in shown
        ]
        filters = tags.form(method="get", action="/dashboard/jobs", class_="filters")(
            tags.label(
                "Status",
                tags.select(name="status")(
                    option("", "any", status or ""), *[option(s, s, status or "") for s in STATUSES]
                ),
            ),
            tags.button(type="submit")("Filter"),
        )
        pager = tags.nav(class_="pager", **{"aria-label": "Pages"})(tags.a(href="/dashboard/jobs")("First"))
        if len(found) > PAGE_ROWS:
            query = urlencode({"cursor": shown[-1].id, **({"status": status} if status else {})})
            pager(tags.a(href="/dashboard/jobs?" + query, rel="next")("Next"))
        content = [
            filters,
            tags.div(class_="scroll")(
                charts.table(["job", "client", "status", "created (UTC)", "finished (UTC)"], rows)
            ),
            pager,
        ]
        return await self._html(request, Page("Jobs", content, "jobs", session))

    @app.route("/jobs/<job_id>", methods=["GET"])
    async def job(self, request: IRequest, job_id: str) -> bytes:
        session = self._session(request)
        jobs_api = self._api.jobs
        if jobs_api is None:
            raise WerkzeugNotFound()
        job = await jobs_api.jobs_store.get(job_id, None)
        if job is None:
            raise WerkzeugNotFound()
        deliveries = await jobs_api.jobs_store.deliveries(job.id)
        shown = job.to_json()
        facts = charts.table(
            ["", ""],
            [["client", job.client]]
            + [[name, brief(shown[name])] for name in ("status", "attempts", "callback_url", "error")]
            + [[name + " (UTC)", when(shown[name])] for name in ("created_at", "started_at", "finished_at")],
        )
        content: list[Tag] = [tags.div(class_="scroll")(facts)]
        if deliveries:
            head = sorted({name for d in deliveries for name in d})
            content += [
                tags.h2("Webhook deliveries"),
                tags.div(class_="scroll")(charts.table(head, [[brief(d.get(h)) for h in head] for d in deliveries])),
            ]
        base = f"/dashboard/jobs/{job.id}"
        content.append(
            tags.p(
                post_button(session, base + "/cancel", "Cancel job", danger=True),
                " ",
                post_button(session, base + "/redeliver", "Send the webhook again"),
            )
        )
        return await self._html(request, Page(f"Job {job.id}", content, "jobs", session))

    @app.route("/jobs/<job_id>/cancel", methods=["POST"])
    async def cancel_job(self, request: IRequest, job_id: str) -> bytes:
        self._changing(request)
        if self._api.jobs is None:
            raise WerkzeugNotFound()
        await self._api.jobs.cancel_job(job_id, None)
        return self._redirect(request, f"/dashboard/jobs/{job_id}")

    @app.route("/jobs/<job_id>/redeliver", methods=["POST"])
    async def redeliver_job(self, request: IRequest, job_id: str) -> bytes:
        self._changing(request)
        if self._api.jobs is None:
            raise WerkzeugNotFound()
        await self._api.jobs.redeliver_job(job_id)
        return self._redirect(request, f"/dashboard/jobs/{job_id}")

    # -- sessions

    def _conversations(self) -> Any:
        if self._api.conversations is None:
            raise WerkzeugNotFound()
        return self._api.conversations

    @app.route("/sessions", methods=["GET"])
    async def sessions(self, request: IRequest) -> bytes:
        session = self._session(request)
        if self._api.conversations is None:
            return await self._html(request, Page("Sessions", tags.p("Sessions are not enabled."), "sessions", session))
        after = arg(request, "after")
        found, more = await self._conversations().list_all_sessions(PAGE_ROWS, after)
        names = await self._key_names()
        rows = [
            [
                tags.a(href=f"/dashboard/sessions/{s.id}")(s.id),
                key_label(s.client, names),
                s.model or "—",
                when(s.created_at),
                when(s.expires_at),
            ]
            for s in found
        ]
        pager = tags.nav(class_="pager", **{"aria-label": "Pages"})(tags.a(href="/dashboard/sessions")("First"))
        if more and found:
            pager(tags.a(href="/dashboard/sessions?" + urlencode({"after": found[-1].id}), rel="next")("Next"))
        content = [
            tags.div(class_="scroll")(
                charts.table(["session", "owner", "model", "created (UTC)", "expires (UTC)"], rows)
            ),
            pager,
        ]
        return await self._html(request, Page("Sessions", content, "sessions", session))

    @app.route("/sessions/<session_id>", methods=["GET"])
    async def session_detail(self, request: IRequest, session_id: str) -> bytes:
        session = self._session(request)
        conversations = self._conversations()
        owner = await conversations.owner_of(session_id)
        if owner is None:
            raise WerkzeugNotFound()
        try:
            found, exchanges = await conversations.get_session(owner, session_id)
        except SessionNotFound:
            raise WerkzeugNotFound() from None
        names = await self._key_names()
        facts = charts.table(
            ["", ""],
            [
                ["owner", key_label(owner, names)],
                ["model", found.model or "—"],
                # What the client said stays out of the page: only its size.
                ["system prompt", f"{len(found.system):,} characters" if found.system else "—"],
                ["metadata", brief(found.metadata)],
                ["turns", str(found.turns)],
                ["characters", f"{found.chars:,}"],
                ["created (UTC)", when(found.created_at)],
                ["updated (UTC)", when(found.updated_at)],
                ["expires (UTC)", when(found.expires_at)],
            ],
        )
        turns = charts.table(
            ["turn", "time (UTC)", "tokens in / out"],
            [
                [str(i + 1), when(e.created_at), f"{e.input_tokens or 0:,} / {e.output_tokens or 0:,}"]
                for i, e in enumerate(exchanges)
            ],
            caption=f"{len(exchanges)} turns (their text is not shown here)",
        )
        content = [
            tags.div(class_="scroll")(facts),
            tags.div(class_="scroll")(turns),
            tags.p(post_button(session, f"/dashboard/sessions/{session_id}/delete", "Delete session", danger=True)),
        ]
        return await self._html(request, Page(f"Session {session_id}", content, "sessions", session))

    @app.route("/sessions/<session_id>/delete", methods=["POST"])
    async def delete_session(self, request: IRequest, session_id: str) -> bytes:
        self._changing(request)
        conversations = self._conversations()
        owner = await conversations.owner_of(session_id)
        if owner is not None:
            try:
                await conversations.delete_session(owner, session_id)
            except SessionNotFound:
                pass
        return self._redirect(request, "/dashboard/sessions")


__all__ = ["COOKIE", "Dashboard"]
