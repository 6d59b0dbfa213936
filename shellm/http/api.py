"""
The HTTP API: Klein routes that parse, hand over to the router, and write
the result in the endpoint's dialect.  Every error, including 404, 405 and
413, is a JSON body, shaped by the dialect of the route that answers.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

from attrs import evolve
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.routing import RequestRedirect

from shellm import __version__, structured
from shellm.completion import Completion, CompletionRequest
from shellm.errors import (
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    ShellmError,
    UnsupportedMediaType,
)
from shellm.http.dialects import anthropic, openai, seed
from shellm.http.exposure import health_summary
from shellm.http.headers import header, presented_token
from shellm.http.responses_api import ResponsesAPI
from shellm.http.sessions_api import SessionsAPI, SessionStream, open_turn
from shellm.http.sse import EventStream
from shellm.http.template_use import expand_seed
from shellm.routing.accounting import Accounting
from shellm.routing.auth import Authenticator, AuthRequired, Client, ModelNotAllowed
from shellm.routing.budgets import check_budget
from shellm.routing.cache import HIT, UNCACHED, CacheHit, ResponseCache, read_control
from shellm.routing.health import overall_status
from shellm.routing.limits import Limiter
from shellm.routing.router import Admission, Router
from shellm.state.conversations import Conversations
from shellm.state.ledger import PERIODS, Ledger
from shellm.state.metrics import Metrics
from shellm.state.templates import TemplateStore

if TYPE_CHECKING:
    from shellm.http.jobs_api import JobsAPI


def json_bytes(body) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def with_length(request, body: bytes) -> bytes:
    """
    C{body}, announced by its length: a whole answer needs no chunked framing.
    """
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def _endpoint(request) -> str:
    return request.path.decode("ascii", "replace")[:100]


def speaks(dialect):
    """
    Declare the dialect a route answers in, its errors included.
    """

    def decorate(handler):
        @functools.wraps(handler)
        def handle(self, request, *args, **kwargs):
            request.dialect = dialect
            return handler(self, request, *args, **kwargs)

        return handle

    return decorate


def unrouted_dialect(path: bytes):
    """
    The dialect for a request no route took (a 404 or 405): the one its
    path prefix belongs to, so an SDK can read the error it gets.
    """
    if path.startswith(b"/v1/messages"):
        return anthropic
    if path.startswith(b"/v1/"):
        return openai
    return seed


class ShellmAPI:
    app = Klein()
    log = Logger()

    def __init__(
        self,
        clock,
        router: Router,
        max_prompt_chars: int,
        heartbeat: float,
        authenticator: Authenticator | None = None,
        limiter: Limiter | None = None,
        ledger: Ledger | None = None,
        metrics: Metrics | None = None,
        metrics_public: bool = False,
        admin=None,
        conversations: Conversations | None = None,
        templates: TemplateStore | None = None,
        dashboard=None,
        cache: ResponseCache | None = None,
    ):
        """
        @param authenticator: the client keys; none means auth is off.
        @param metrics_public: serve C{/metrics} without a key when auth is on.
        @param limiter: the request-rate limits; none means unlimited.
        @param ledger: where usage is recorded; none means nowhere.
        @param admin: the C{/admin/} API (L{shellm.http.admin_api.AdminAPI}),
            if keys are administered here.
        @param conversations: sessions and stored responses; none means
            neither is available.
        @param templates: the prompt templates requests may name; none means
            none may.
        @param cache: the response cache; none (or one with no TTL) means
            answers are not cached.
        """
        #: The response cache, when answers are cached.
        self.cache = cache if cache is not None and cache.enabled else None
        self._admin = admin
        #: The web dashboard, if any: anything with the dashboard's Klein C{app}
        #: (L{shellm.http.dashboard.pages.Dashboard}, or in the daemon the
        #: C{LazyDashboard} that builds one on first use).
        self.dashboard = dashboard
        self._clock = clock
        self._router = router
        self._max_prompt_chars = max_prompt_chars
        self._heartbeat = heartbeat
        self.authenticator = authenticator or Authenticator(())
        self._limiter = limiter
        self._ledger = ledger
        self.metrics = metrics or Metrics(router.queues, router.circuits, router.quota)
        self.accounting = Accounting(clock, self.metrics, ledger)
        if self.cache is not None:
            self.metrics.watch_cache(self.cache)
        self._metrics_public = metrics_public
        self.conversations = conversations
        self.templates = templates
        self._sessions = SessionsAPI(self, conversations)
        self._responses = ResponsesAPI(self, conversations, clock)
        #: Completion requests being answered (queued, running or writing).
        self.in_flight = 0
        self._idle_waiters: list[Deferred] = []
        self._openapi: bytes | None = None
        self._started = clock.seconds()
        #: The jobs API (L{shellm.http.jobs_api.JobsAPI}), when jobs are on.
        self.jobs: JobsAPI | None = None

    def resource(self):
        return self.app.resource()

    # -- helpers

    def _respond(self, request, status: int, body) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        self._request_id_headers(request)
        return with_length(request, json_bytes(body))

    def _request_id_headers(self, request) -> None:
        # Both Anthropic SDKs read the id from request-id, not X-Request-Id.
        request.setHeader(b"x-request-id", request.request_id.encode("ascii"))
        if (request.dialect or unrouted_dialect(request.path)) is anthropic:
            request.setHeader(b"request-id", request.request_id.encode("ascii"))

    def _read_json(self, request) -> dict:
        if request.content.overflowed:
            raise RequestTooLarge(f"the request body is larger than {request.content.cap} bytes")
        kind = (header(request, b"content-type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise UnsupportedMediaType("Content-Type must be application/json")
        request.content.seek(0)
        return seed.parse_json_body(request.content.read())

    def _error(self, request, error: ShellmError) -> bytes:
        dialect = request.dialect or unrouted_dialect(request.path)
        return self._respond(request, error.status, dialect.error_json(error, request.request_id))

    def _authenticate(self, request) -> Client:
        client = self.authenticator.authenticate(presented_token(request))
        request.log_fields["client"] = client.name
        return client

    def _has_key(self, request) -> bool:
        """
        Whether the caller may see what the open endpoints keep back: auth
        is off, or it sent a valid key.
        """
        try:
            self._authenticate(request)
        except AuthRequired:
            return False
        return True

    async def _admit(
        self, client: Client, completion_request: CompletionRequest, endpoint: str
    ) -> Admission | CacheHit:
        """
        Model allow-list, then the response cache (a hit needs no provider,
        queue or budget, only its place in the rate limits; an identical
        request under way is waited for), then the router's admission (a
        provider and a place in its queue), then rate limits: a request
        refused by a full queue or an unusable provider uses none of its
        client's quota.
        """
        entry = completion_request.entry
        if not client.may_use(completion_request.model, entry.provider):
            raise ModelNotAllowed(f"client {client.name} may not use {completion_request.model}")
        ticket = await self.cache.consult(client.scope, completion_request) if self.cache is not None else None
        if ticket is not None and ticket.status == HIT:
            if self._limiter is not None:
                await self._limiter.admit(client)
            return CacheHit(entry, self._clock.seconds(), ticket)
        try:
            return await self._admit_to_router(client, completion_request, endpoint, ticket)
        except BaseException:
            if ticket is not None and self.cache is not None:
                self.cache.abandon(ticket)
            raise

    async def _admit_to_router(self, client, completion_request, endpoint, ticket) -> Admission:
        """
        Budget, the router's admission, rate limits; the admission carries
        the cache's C{ticket} to L{_serve}.
        """
        try:
            if self._ledger is not None:
                await check_budget(self._ledger, client, self._clock.seconds())
            admission = self._router.admit(completion_request, self._permits(client))
        except ShellmError as error:
            self.accounting.record(
                client.name,
                completion_request,
                error.status,
                None,
                self._clock.seconds(),
                key_id=client.id,
                endpoint=endpoint,
                error_code=error.code,
            )
            raise
        if self._limiter is not None:
            try:
                await self._limiter.admit(client)
            except BaseException:
                admission.withdraw()
                raise
        admission.cache = ticket
        return admission

    @staticmethod
    def _permits(client: Client):
        return lambda entry: client.may_use(entry.alias, entry.provider)

    async def _serve(
        self,
        client: Client,
        completion_request: CompletionRequest,
        admission: Admission,
        sink,
        streaming=False,
        endpoint: str | None = None,
        turn=None,
    ) -> Completion:
        """
        Run an admitted completion and account for it, however it ends.

        @param turn: the conversation turn it is (a session's, a stored
            response's): committed once the answer is complete, abandoned
            however else the request ends.
        """
        started = admission.admitted_at
        status, completion, code = 500, None, "internal_error"
        self.in_flight += 1
        ticket = admission.cache
        try:
            permits = self._permits(client)

            def answer(to):
                # Structured answers are validated, and repaired once (a second run).
                return structured.answer(
                    completion_request,
                    lambda to: self._router.run(
                        admission,
                        completion_request,
                        self.accounting.timing_first_delta(admission.entry.provider, started, to),
                        permits=permits,
                        streaming=streaming,
                    ),
                    lambda again, to: self._router.complete(again, to, permits, streaming),
                    to,
                    streaming,
                )

            if ticket is not None and self.cache is not None:
                completion = await self.cache.serve(ticket, completion_request, answer, sink)
            else:
                completion = await answer(sink)
            if turn is not None:
                await turn.commit(completion)
            status, code = 200, None
            return completion
        except ShellmError as error:
            status, code = error.status, error.code
            raise
        except CancelledError:
            status, code = 499, "client_gone"
            raise
        finally:
            if turn is not None and status != 200:
                turn.abandon()
            self.in_flight -= 1
            self.accounting.record(
                client.name,
                completion_request,
                status,
                completion,
                started,
                key_id=client.id,
                endpoint=endpoint,
                error_code=code,
                cached=ticket is not None and ticket.status == HIT,
            )
            if not self.in_flight:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    waiter.callback(None)

    def idle(self) -> Deferred:
        """
        Fires when no completion request is being answered (at once if none
        is); cancelling it stops waiting.
        """
        if not self.in_flight:
            return succeed(None)
        waiter: Deferred = Deferred(lambda d: self._idle_waiters.remove(d))
        self._idle_waiters.append(waiter)
        return waiter

    def _queue_headers(self, request, provider: str) -> None:
        queue = self._router.queue_for(provider)
        request.setHeader(b"x-queue-depth", str(queue.pending).encode())
        request.setHeader(b"x-queue-active", str(queue.active).encode())

    def _quota_headers(self, request, provider: str) -> None:
        """
        On answers a CLI served: where its subscription windows stand, one
        C{x-shellm-quota-<window>: <used>;reset=<epoch>;status=<status>}
        header per known window of the whole provider (a model's own quota
        shows in C{/usage/quota}).
        """
        if self._router.providers[provider].kind != "cli":
            return
        state = self._router.quota.state(provider)
        request.setHeader(b"x-shellm-quota-state", state.state.encode())
        for window in state.windows:
            if window.model is not None:
                continue
            value = "" if window.used is None else f"{window.used:g}"
            if window.resets_at is not None:
                value += f";reset={int(window.resets_at)}"
            value += f";status={window.status}"
            name = "x-shellm-quota-" + window.kind.replace("_", "-")
            request.setHeader(name.encode("ascii", "replace"), value.lstrip(";").encode("ascii", "replace"))

    @staticmethod
    def used_template(request, completion_request: CompletionRequest, label: str) -> CompletionRequest:
        """
        Say which template version made the prompt: a response header, and
        the request log.
        """
        request.setHeader(b"x-shellm-template", label.encode("ascii"))
        return evolve(completion_request, template=label)

    def _cache_headers(self, request, admission) -> None:
        """
        C{X-SheLLM-Cache: hit|miss|bypass} when answers are cached, and on
        a hit C{Age}, the seconds since the answer was stored (RFC 9111).
        """
        if self.cache is None:
            return
        ticket = admission.cache
        status = ticket.status if ticket is not None else "bypass"
        request.log_fields["cache"] = status
        request.setHeader(b"x-shellm-cache", status.encode())
        if ticket is not None and ticket.answer is not None:
            age = max(0, int(self._clock.seconds() - ticket.answer.stored_at))
            request.setHeader(b"age", str(age).encode())

    # -- for the mounted sub-apps (sessions, responses)

    authenticate = _authenticate
    read_json = _read_json
    respond = _respond

    @property
    def models(self):
        return self._router.models

    @property
    def router(self) -> Router:
        return self._router

    @property
    def clock(self):
        return self._clock

    @property
    def max_prompt_chars(self) -> int:
        return self._max_prompt_chars

    def answer_failure(self, request, failure):
        """
        A mounted sub-app's error, answered as this app's own.
        """
        if failure.check(ShellmError):
            return self.shellm_error(request, failure)
        if failure.check(WerkzeugNotFound, RequestRedirect):
            return self.not_found(request, failure)
        if failure.check(WerkzeugMethodNotAllowed):
            return self.method_not_allowed(request, failure)
        return self.unexpected(request, failure)

    # -- errors

    @app.handle_errors(ShellmError)
    def shellm_error(self, request, failure):
        error = failure.value
        if error.code == "auth_required":
            request.setHeader(b"www-authenticate", b'Bearer realm="shellm"')
        if error.retry_after is not None:
            request.setHeader(b"retry-after", str(error.retry_after).encode())
        if error.should_retry is not None:
            request.setHeader(b"x-should-retry", b"true" if error.should_retry else b"false")
        if "provider" in request.log_fields:
            self._queue_headers(request, request.log_fields["provider"])
        return self._error(request, error)

    # werkzeug would redirect /admin to /admin/ (a mounted app's prefix); an
    # API answers that path as what it is, an endpoint that does not exist.
    @app.handle_errors(WerkzeugNotFound, RequestRedirect)
    def not_found(self, request, failure):
        error = NotFound(f"no such endpoint: {request.path.decode('ascii', 'replace')[:200]}")
        return self._error(request, error)

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def method_not_allowed(self, request, failure):
        allowed = failure.value.valid_methods or []
        request.setHeader(b"allow", ", ".join(allowed).encode())
        error = MethodNotAllowed(
            f"{request.method.decode('ascii', 'replace')} is not allowed here; use {' or '.join(allowed)}"
        )
        return self._error(request, error)

    @app.handle_errors(Exception)
    def unexpected(self, request, failure):
        if failure.check(CancelledError):
            return None  # the client left; nothing to answer
        self.log.failure("unhandled error", failure, request_id=request.request_id)
        return self._error(request, InternalError("internal error"))

    async def _complete(self, request, client, completion_request, admission) -> Completion:
        # The router gathers the text itself: non-streaming is the same run
        # with nobody listening to the deltas.
        completion = await self._serve(
            client,
            completion_request,
            admission,
            lambda event: None,
            endpoint=_endpoint(request),
            turn=getattr(request, "turn", None),
        )
        request.log_fields.update(provider=completion.provider, queued_ms=completion.queued_ms)
        self._queue_headers(request, completion.provider)
        self._quota_headers(request, completion.provider)
        self._cache_headers(request, admission)
        return completion

    async def _stream(self, request, client, completion_request, admission, writer) -> None:
        """
        Answer as server-sent events written by a dialect's C{writer}.  What
        could refuse the request at once (a full queue, an unusable provider)
        already did, as an ordinary HTTP error, in L{_admit}; once the stream
        is open, failures become the dialect's error event, never a clean end.
        """
        self._request_id_headers(request)
        self._queue_headers(request, admission.entry.provider)
        self._quota_headers(request, admission.entry.provider)
        self._cache_headers(request, admission)
        stream = EventStream(request, self._clock, self._heartbeat, opening=writer.start())
        try:
            completion = await self._serve(
                client,
                completion_request,
                admission,
                lambda event: stream.write(writer.delta(event.text)),
                streaming=True,
                endpoint=_endpoint(request),
                turn=getattr(request, "turn", None),
            )
        except ShellmError as error:
            stream.write(writer.fail(error))
        except CancelledError:
            raise
        except Exception:
            self.log.failure("stream failed", request_id=request.request_id)
            stream.write(writer.fail(InternalError("internal error")))
        else:
            request.log_fields.update(provider=completion.provider, queued_ms=completion.queued_ms)
            stream.write(writer.finish(completion))
        finally:
            stream.close()

    async def _take_on(self, request, dialect):
        """
        Who is asking and for what: the key first (an unknown caller learns
        nothing about validation), then the body, then the admission.
        """
        return await self._take_on_body(request, dialect, self._authenticate(request), self._read_json(request))

    async def _take_on_body(self, request, dialect, client: Client, body: dict):
        """
        L{_take_on} for a request whose key and body were already read.
        """
        template = await expand_seed(self.templates, body) if dialect is seed else None
        # A session turn holds its session from here: abandoned on any refusal.
        session = dialect is seed and "session_id" in body
        turn = request.turn = await open_turn(self.conversations, client.scope, body) if session else None
        try:
            completion_request, options = dialect.parse_request(
                body,
                self._router.models,
                self._max_prompt_chars,
                request.request_id,
            )
            control = read_control(body, header(request, b"cache-control"))
            # A session's history lives on the server: its turns are never cached.
            control = control if turn is None else UNCACHED
            if control != completion_request.cache:
                completion_request = evolve(completion_request, cache=control)
            if turn is not None:
                completion_request = turn.frame(completion_request, self._max_prompt_chars)
            if template is not None:
                completion_request = self.used_template(request, completion_request, template.label)
            request.request_id = completion_request.request_id  # the body may name one
            request.log_fields.update(provider=completion_request.entry.provider, model=completion_request.model)
            return (
                client,
                completion_request,
                options,
                await self._admit(client, completion_request, _endpoint(request)),
            )
        except BaseException:
            if turn is not None:
                turn.abandon()
            raise

    # -- routes

    @app.route("/admin/", branch=True)
    @speaks(seed)
    def admin(self, request):
        if self._admin is None or not self.authenticator.admin_enabled:
            raise NotFound(f"no such endpoint: {request.path.decode('ascii', 'replace')[:200]}")
        return self._admin.resource()

    @app.route("/dashboard")
    @speaks(seed)
    def dashboard_bare(self, request):
        return self.dashboard_pages(request)

    @app.route("/dashboard/", branch=True)
    @speaks(seed)
    def dashboard_pages(self, request):
        if self.dashboard is None:
            raise NotFound(f"no such endpoint: {request.path.decode('ascii', 'replace')[:200]}")
        return self._mount(request, self.dashboard.app)

    @app.route("/completions", methods=["POST"])
    @speaks(seed)
    async def completions(self, request):
        client = self._authenticate(request)
        body = self._read_json(request)
        if self.jobs is not None and "callback_url" in body:
            # With a callback, the request is a job: 202 now, the answer later.
            return await self.jobs.accept(request, client, body)
        client, completion_request, _, admission = await self._take_on_body(request, seed, client, body)
        completion = await self._complete(request, client, completion_request, admission)
        body = seed.completion_json(completion)
        if request.turn is not None:
            body.update(request.turn.to_json())
        return self._respond(request, 200, body)

    @app.route("/jobs", branch=True)
    @speaks(seed)
    def jobs_routes(self, request):
        if self.jobs is None:
            raise NotFound("jobs are not enabled")
        return self.jobs.resource()

    @app.route("/completions/stream", methods=["POST"])
    @speaks(seed)
    async def completions_stream(self, request):
        client, completion_request, _, admission = await self._take_on(request, seed)
        writer = seed.SeedStream(completion_request.request_id)
        if request.turn is not None:
            writer = SessionStream(completion_request.request_id, request.turn)
        await self._stream(request, client, completion_request, admission, writer)

    @staticmethod
    def _mount(request, app: Klein):
        if not request.postpath:
            request.postpath = [b""]  # the mount point itself is the sub-app's "/"
        return app.resource()

    @app.route("/sessions", branch=True)
    @speaks(seed)
    def sessions(self, request):
        return self._mount(request, self._sessions.app)

    @app.route("/v1/responses", branch=True)
    @speaks(openai)
    def responses(self, request):
        return self._mount(request, self._responses.app)

    @app.route("/v1/chat/completions", methods=["POST"])
    @speaks(openai)
    async def chat_completions(self, request):
        client, completion_request, options, admission = await self._take_on(request, openai)
        if options.stream:
            writer = openai.ChatStream(options, self._clock.seconds())
            return await self._stream(request, client, completion_request, admission, writer)
        completion = await self._complete(request, client, completion_request, admission)
        return self._respond(request, 200, openai.completion_json(completion, options, self._clock.seconds()))

    @app.route("/v1/messages", methods=["POST"])
    @speaks(anthropic)
    async def messages(self, request):
        client, completion_request, options, admission = await self._take_on(request, anthropic)
        if options.stream:
            writer = anthropic.MessageStream(options)
            return await self._stream(request, client, completion_request, admission, writer)
        completion = await self._complete(request, client, completion_request, admission)
        return self._respond(request, 200, anthropic.completion_json(completion, options))

    @staticmethod
    def _models_dialect(request):
        """
        The model list is both SDKs' endpoint: the Anthropic SDK says so with
        its version header.
        """
        request.dialect = anthropic if header(request, b"anthropic-version") else openai
        return request.dialect

    @app.route("/v1/models", methods=["GET"])
    def list_models(self, request):
        dialect = self._models_dialect(request)
        self._authenticate(request)
        return self._respond(request, 200, dialect.models_json(self._router.models, self._started))

    @app.route("/v1/models/<path:model_id>", methods=["GET"])
    def get_model(self, request, model_id):
        dialect = self._models_dialect(request)
        self._authenticate(request)
        entry = self._router.models.resolve(model_id)
        if entry is None:
            raise dialect.unknown_model(model_id)
        return self._respond(request, 200, dialect.model_json(entry, self._started))

    @app.route("/providers", methods=["GET"])
    async def providers(self, request):
        self._authenticate(request)
        healths = await self._router.health.current()
        listing = []
        for name, provider in self._router.providers.items():
            health = healths.get(name)
            listing.append(
                {
                    "name": name,
                    "kind": provider.kind,
                    "models": self._router.models.aliases_of(name),
                    "installed": health.installed if health else None,
                    "authenticated": health.authenticated if health else None,
                    "supports": provider.capabilities.to_json(),
                    "circuit": self._router.circuits[name].to_json(),
                }
            )
        return self._respond(
            request,
            200,
            {
                "providers": listing,
                "models": [
                    {"id": e.alias, "provider": e.provider, "upstream_model": e.upstream} for e in self._router.models
                ],
            },
        )

    @app.route("/health", methods=["GET"])
    async def health(self, request):
        healths = await self._router.health.current()
        if not self._has_key(request):
            store_up = self._ledger.store.up if self._ledger else None
            return self._respond(request, 200, health_summary(healths, self._router.queues, store_up))
        providers = {}
        for name, health in healths.items():
            quota = self._router.quota.state(name)
            providers[name] = {
                **health.to_json(),
                "circuit": self._router.circuits[name].to_json(),
                "quota": {"state": quota.state, "resets_at": quota.resets_at},
            }
        return self._respond(
            request,
            200,
            {
                "status": overall_status(healths),
                "providers": providers,
                "queue": {**self._router.queues["cli"].to_json(), "http": self._router.queues["http"].to_json()},
                "uptime_seconds": round(self._clock.seconds() - self._started),
                "version": __version__,
                "store": self._ledger.store.to_json() if self._ledger else None,
            },
        )

    @app.route("/usage", methods=["GET"])
    async def usage(self, request):
        client = self._authenticate(request)
        period = (request.args.get(b"period") or [b"24h"])[0].decode("ascii", "replace")
        if period not in PERIODS:
            raise InvalidRequest(f"period must be one of {', '.join(PERIODS)}")
        if self._ledger is None:
            raise InternalError("no usage ledger is configured")
        scope = client.name if self.authenticator.enabled and not client.admin else None
        key_id = client.id if scope is not None else None
        totals = await self._ledger.totals(self._clock.seconds() - PERIODS[period], scope, key_id)
        return self._respond(
            request,
            200,
            {
                "period": period,
                "client": scope,
                **totals,
            },
        )

    @app.route("/usage/quota", methods=["GET"])
    def usage_quota(self, request):
        """
        Each provider's subscription windows as its CLI last reported them,
        and whether the router skips it until a reset.
        """
        self._authenticate(request)
        quota = self._router.quota
        return self._respond(
            request,
            200,
            {
                "threshold": quota.threshold,
                "providers": {name: quota.state(name).to_json() for name in self._router.providers},
            },
        )

    @app.route("/metrics", methods=["GET"])
    def metrics_text(self, request):
        if not self._metrics_public:
            self._authenticate(request)
        request.setHeader(b"content-type", self.metrics.content_type.encode())
        request.setHeader(b"x-request-id", request.request_id.encode("ascii"))
        return with_length(request, self.metrics.render())

    @app.route("/openapi.json", methods=["GET"])
    def openapi_document(self, request):
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-request-id", request.request_id.encode("ascii"))
        if self._openapi is None:
            from shellm.http import openapi

            self._openapi = openapi.rendered(self._router.models, self._max_prompt_chars)
        return with_length(request, self._openapi)

    # The sub-apps run completions the way these routes do.
    admit = _admit
    complete = _complete
    stream = _stream
