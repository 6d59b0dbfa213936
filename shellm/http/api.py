"""
The HTTP API: Klein routes that parse, hand over to the router, and write
the result in the endpoint's dialect.  Every error, including 404, 405 and
413, is a JSON body.
"""

from __future__ import annotations

import json

from klein import Klein
from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from shellm import __version__
from shellm.completion import Completion, CompletionRequest, TextDelta
from shellm.errors import (
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    ShellmError,
    UnsupportedMediaType,
)
from shellm.http import openapi
from shellm.http.dialects import anthropic, openai, seed
from shellm.http.sse import EventStream
from shellm.routing.auth import Authenticator, Client, ModelNotAllowed, token_from_headers
from shellm.routing.health import overall_status
from shellm.routing.limits import RateLimiter
from shellm.routing.router import Router
from shellm.state.ledger import PERIODS, Ledger, UsageRecord
from shellm.state.metrics import Metrics


def json_bytes(body) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


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
        limiter: RateLimiter | None = None,
        ledger: Ledger | None = None,
        metrics: Metrics | None = None,
    ):
        """
        @param authenticator: the client keys; none means auth is off.
        @param limiter: the request-rate limits; none means unlimited.
        @param ledger: where usage is recorded; none means nowhere.
        """
        self._clock = clock
        self._router = router
        self._max_prompt_chars = max_prompt_chars
        self._heartbeat = heartbeat
        self.authenticator = authenticator or Authenticator(())
        self._limiter = limiter
        self._ledger = ledger
        self.metrics = metrics or Metrics(router.queues, router.circuits)
        #: Completion requests being answered (queued, running or writing).
        self.in_flight = 0
        self._openapi = json_bytes(openapi.document([entry.alias for entry in router.models], max_prompt_chars))
        self._started = clock.seconds()

    def resource(self):
        return self.app.resource()

    # -- helpers

    def _respond(self, request, status: int, body) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-request-id", request.request_id.encode("ascii"))
        return json_bytes(body)

    def _read_json(self, request) -> dict:
        if request.content.overflowed:
            raise RequestTooLarge(f"the request body is larger than {request.content.cap} bytes")
        kind = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise UnsupportedMediaType("Content-Type must be application/json")
        request.content.seek(0)
        return seed.parse_json_body(request.content.read())

    def _dialect(self, request):
        """
        The compatible dialect a request speaks, by path (and, for the
        model list, the Anthropic SDK's version header); L{None} for seed.
        """
        path = request.path
        if path.startswith(b"/v1/messages") or (
            path.startswith(b"/v1/models") and request.getHeader("anthropic-version")
        ):
            return anthropic
        if path.startswith(b"/v1/"):
            return openai
        return None

    def _error(self, request, error: ShellmError) -> bytes:
        dialect = self._dialect(request)
        body = (
            dialect.error_json(error, request.request_id)
            if dialect
            else {**error.to_json(), "request_id": request.request_id}
        )
        return self._respond(request, error.status, body)

    def _authenticate(self, request) -> Client:
        client = self.authenticator.authenticate(
            token_from_headers(request.getHeader("authorization"), request.getHeader("x-api-key"))
        )
        request.log_fields["client"] = client.name
        return client

    async def _admit(self, client: Client, completion_request: CompletionRequest) -> None:
        """
        Model allow-list, then rate limits: all before any queueing.
        """
        entry = completion_request.entry
        if not client.may_use(completion_request.model, entry.provider):
            raise ModelNotAllowed(f"client {client.name} may not use {completion_request.model}")
        if self._limiter is not None:
            await self._limiter.admit(client)

    async def _serve(
        self, client: Client, completion_request: CompletionRequest, sink, streaming: bool = False
    ) -> Completion:
        """
        Run a completion and account for it, however it ends.
        """
        started = self._clock.seconds()
        provider = completion_request.entry.provider
        first = []

        def timed(event: TextDelta) -> None:
            if not first:
                first.append(True)
                self.metrics.first_token.labels(provider).observe(self._clock.seconds() - started)
            sink(event)

        status, completion = 500, None
        try:
            completion = await self._router.complete(
                completion_request,
                timed,
                permits=lambda entry: client.may_use(entry.alias, entry.provider),
                streaming=streaming,
            )
            status = 200
            return completion
        except ShellmError as error:
            status = error.status
            raise
        except CancelledError:
            status = 499
            raise
        finally:
            self._account(client, completion_request, status, completion, started)

    def _account(self, client, completion_request, status, completion, started) -> None:
        provider = completion.provider if completion else completion_request.entry.provider
        elapsed = self._clock.seconds() - started
        self.metrics.requests.labels(provider, completion_request.model, str(status), client.name).inc()
        self.metrics.duration.labels(provider).observe(elapsed)
        usage = completion.usage if completion else None
        if completion is not None:
            self.metrics.queue_wait.labels(provider).observe(completion.queued_ms / 1000)
        if usage is not None:
            self.metrics.tokens.labels(provider, client.name, "input").inc(usage.input_tokens)
            self.metrics.tokens.labels(provider, client.name, "output").inc(usage.output_tokens)
        if self._ledger is not None:
            self._ledger.record(
                UsageRecord(
                    time=self._clock.seconds(),
                    client=client.name,
                    provider=provider,
                    model=completion.model if completion else completion_request.model,
                    status=status,
                    input_tokens=usage.input_tokens if usage else None,
                    output_tokens=usage.output_tokens if usage else None,
                    cost_usd=completion.cost_usd if completion else None,
                    duration_ms=completion.duration_ms if completion else round(elapsed * 1000),
                    queued_ms=completion.queued_ms if completion else None,
                    request_id=completion_request.request_id,
                )
            )

    def _queue_headers(self, request, provider: str) -> None:
        queue = self._router.queue_for(provider)
        request.setHeader(b"x-queue-depth", str(queue.pending).encode())
        request.setHeader(b"x-queue-active", str(queue.active).encode())

    # -- errors

    @app.handle_errors(ShellmError)
    def shellm_error(self, request, failure):
        error = failure.value
        if error.code == "auth_required":
            request.setHeader(b"www-authenticate", b'Bearer realm="shellm"')
        if error.retry_after is not None:
            request.setHeader(b"retry-after", str(error.retry_after).encode())
        if "provider" in request.log_fields:
            self._queue_headers(request, request.log_fields["provider"])
        return self._error(request, error)

    @app.handle_errors(WerkzeugNotFound)
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

    async def _complete(self, request, client, completion_request) -> Completion:
        # The router gathers the text itself: non-streaming is the same run
        # with nobody listening to the deltas.
        self.in_flight += 1
        try:
            completion = await self._serve(client, completion_request, lambda event: None)
        finally:
            self.in_flight -= 1
        request.log_fields.update(provider=completion.provider, queued_ms=completion.queued_ms)
        self._queue_headers(request, completion.provider)
        return completion

    async def _stream(self, request, client, completion_request, writer) -> None:
        """
        Answer as server-sent events written by a dialect's C{writer}.  A
        refusal that comes at once (queue full, provider unusable) is still
        an ordinary HTTP error; once the stream is open, failures become the
        dialect's error event, never a clean end.
        """
        stream = None
        early: list[bytes] = []  # deltas that came before the stream opened

        def write(frames):
            if stream is None:
                early.extend(frames)
            else:
                for data in frames:
                    stream.write(data)

        self.in_flight += 1
        try:
            running = ensureDeferred(
                self._serve(
                    client,
                    completion_request,
                    lambda event: write(writer.delta(event.text)),
                    streaming=True,
                )
            )
            if running.called and isinstance(running.result, Failure):
                await running  # raises: an ordinary error response
            request.setHeader(b"x-request-id", request.request_id.encode("ascii"))
            self._queue_headers(request, completion_request.entry.provider)
            stream = EventStream(request, self._clock, self._heartbeat)
            write(early)  # frames made before the stream opened, starting frames included
            write(writer.start())
            try:
                completion = await running
            except ShellmError as error:
                write(writer.fail(error))
            except CancelledError:
                raise
            except Exception:
                self.log.failure("stream failed", request_id=request.request_id)
                write(writer.fail(InternalError("internal error")))
            else:
                request.log_fields.update(provider=completion.provider, queued_ms=completion.queued_ms)
                write(writer.finish(completion))
            finally:
                stream.close()
        finally:
            self.in_flight -= 1

    async def _parse(self, request, dialect):
        """
        Who is asking and for what: the key first (an unknown caller learns
        nothing about validation), then the body, then the client's limits.
        """
        client = self._authenticate(request)
        completion_request, options = dialect.parse_request(
            self._read_json(request),
            self._router.models,
            self._max_prompt_chars,
            request.request_id,
        )
        request.request_id = completion_request.request_id  # the body may name one
        request.log_fields.update(provider=completion_request.entry.provider, model=completion_request.model)
        await self._admit(client, completion_request)
        return client, completion_request, options

    # -- routes

    @app.route("/completions", methods=["POST"])
    async def completions(self, request):
        client, completion_request, _ = await self._parse(request, seed)
        completion = await self._complete(request, client, completion_request)
        return self._respond(request, 200, seed.completion_json(completion))

    @app.route("/completions/stream", methods=["POST"])
    async def completions_stream(self, request):
        client, completion_request, _ = await self._parse(request, seed)
        await self._stream(request, client, completion_request, seed.SeedStream(completion_request.request_id))

    @app.route("/v1/chat/completions", methods=["POST"])
    async def chat_completions(self, request):
        client, completion_request, options = await self._parse(request, openai)
        if options.stream:
            return await self._stream(
                request, client, completion_request, openai.ChatStream(options, self._clock.seconds())
            )
        completion = await self._complete(request, client, completion_request)
        return self._respond(request, 200, openai.completion_json(completion, options, self._clock.seconds()))

    @app.route("/v1/messages", methods=["POST"])
    async def messages(self, request):
        client, completion_request, options = await self._parse(request, anthropic)
        if options.stream:
            return await self._stream(request, client, completion_request, anthropic.MessageStream(options))
        completion = await self._complete(request, client, completion_request)
        return self._respond(request, 200, anthropic.completion_json(completion, options))

    @app.route("/v1/models", methods=["GET"])
    def list_models(self, request):
        self._authenticate(request)
        return self._respond(request, 200, self._dialect(request).models_json(self._router.models, self._started))

    @app.route("/v1/models/<path:model_id>", methods=["GET"])
    def get_model(self, request, model_id):
        self._authenticate(request)
        dialect = self._dialect(request)
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
        providers = {}
        for name, health in healths.items():
            providers[name] = {**health.to_json(), "circuit": self._router.circuits[name].to_json()}
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
        scope = client.name if self.authenticator.enabled else None
        totals = await self._ledger.totals(self._clock.seconds() - PERIODS[period], scope)
        return self._respond(
            request,
            200,
            {
                "period": period,
                "client": scope,
                **totals,
            },
        )

    @app.route("/metrics", methods=["GET"])
    def metrics_text(self, request):
        request.setHeader(b"content-type", self.metrics.content_type.encode())
        request.setHeader(b"x-request-id", request.request_id.encode("ascii"))
        return self.metrics.render()

    @app.route("/openapi.json", methods=["GET"])
    def openapi_document(self, request):
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-request-id", request.request_id.encode("ascii"))
        return self._openapi
