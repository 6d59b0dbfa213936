"""
The HTTP API: Klein routes that parse, hand over to the router, and write
the result in the endpoint's dialect.  Every error, including 404, 405 and
413, is a JSON body.
"""

from __future__ import annotations

import json

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from shellm import __version__
from shellm.completion import TextDelta
from shellm.dialects import seed
from shellm.errors import (
    InternalError,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    ShellmError,
    UnsupportedMediaType,
)
from shellm.health import overall_status
from shellm.router import Router
from shellm.sse import EventStream


def json_bytes(body) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


class ShellmAPI:
    app = Klein()
    log = Logger()

    def __init__(self, clock, router: Router, max_prompt_chars: int, heartbeat: float):
        self._clock = clock
        self._router = router
        self._max_prompt_chars = max_prompt_chars
        self._heartbeat = heartbeat
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
            raise RequestTooLarge(
                f"the request body is larger than {request.content.cap} bytes"
            )
        kind = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise UnsupportedMediaType("Content-Type must be application/json")
        request.content.seek(0)
        return seed.parse_json_body(request.content.read())

    def _parse_completion(self, request):
        body = self._read_json(request)
        completion_request = seed.parse_completion_request(
            body, self._router.models, self._max_prompt_chars, request.request_id
        )
        request.request_id = completion_request.request_id
        request.log_fields.update(provider=completion_request.entry.provider,
                                  model=completion_request.model)
        return completion_request

    def _queue_headers(self, request, provider: str) -> None:
        queue = self._router.queue_for(provider)
        request.setHeader(b"x-queue-depth", str(queue.pending).encode())
        request.setHeader(b"x-queue-active", str(queue.active).encode())

    # -- errors

    @app.handle_errors(ShellmError)
    def shellm_error(self, request, failure):
        error = failure.value
        if error.retry_after is not None:
            request.setHeader(b"retry-after", str(error.retry_after).encode())
        if "provider" in request.log_fields:
            self._queue_headers(request, request.log_fields["provider"])
        return self._respond(request, error.status, {**error.to_json(), "request_id": request.request_id})

    @app.handle_errors(WerkzeugNotFound)
    def not_found(self, request, failure):
        error = NotFound(f"no such endpoint: {request.path.decode('ascii', 'replace')[:200]}")
        return self._respond(request, error.status, {**error.to_json(), "request_id": request.request_id})

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def method_not_allowed(self, request, failure):
        allowed = failure.value.valid_methods or []
        request.setHeader(b"allow", ", ".join(allowed).encode())
        error = MethodNotAllowed(
            f"{request.method.decode('ascii', 'replace')} is not allowed here; use {' or '.join(allowed)}"
        )
        return self._respond(request, error.status, {**error.to_json(), "request_id": request.request_id})

    @app.handle_errors(Exception)
    def unexpected(self, request, failure):
        if failure.check(CancelledError):
            return None  # the client left; nothing to answer
        self.log.failure("unhandled error", failure, request_id=request.request_id)
        error = InternalError("internal error")
        return self._respond(request, error.status, {**error.to_json(), "request_id": request.request_id})

    # -- routes

    @app.route("/completions", methods=["POST"])
    async def completions(self, request):
        completion_request = self._parse_completion(request)
        # The router gathers the text itself: non-streaming is the same run
        # with nobody listening to the deltas.
        completion = await self._router.complete(completion_request, lambda event: None)
        request.log_fields.update(provider=completion.provider, queued_ms=completion.queued_ms)
        self._queue_headers(request, completion.provider)
        return self._respond(request, 200, seed.completion_json(completion))

    @app.route("/completions/stream", methods=["POST"])
    async def completions_stream(self, request):
        completion_request = self._parse_completion(request)
        request.setHeader(b"x-request-id", request.request_id.encode("ascii"))
        self._queue_headers(request, completion_request.entry.provider)
        stream = EventStream(request, self._clock, self._heartbeat)

        def relay(event: TextDelta) -> None:
            stream.send(seed.delta_event(event.text))

        try:
            completion = await self._router.complete(completion_request, relay)
        except ShellmError as error:
            stream.send(seed.error_event(error, request.request_id))
        except CancelledError:
            raise
        except Exception:
            self.log.failure("stream failed", request_id=request.request_id)
            stream.send(seed.error_event(InternalError("internal error"), request.request_id))
        else:
            request.log_fields.update(provider=completion.provider, queued_ms=completion.queued_ms)
            stream.send(seed.final_event(completion))
        finally:
            stream.close()

    @app.route("/providers", methods=["GET"])
    async def providers(self, request):
        healths = await self._router.health.current()
        listing = []
        for name, provider in self._router.providers.items():
            health = healths.get(name)
            listing.append({
                "name": name,
                "kind": provider.kind,
                "models": self._router.models.aliases_of(name),
                "installed": health.installed if health else None,
                "authenticated": health.authenticated if health else None,
                "supports": provider.capabilities.to_json(),
                "circuit": self._router.circuits[name].to_json(),
            })
        return self._respond(request, 200, {
            "providers": listing,
            "models": [
                {"id": e.alias, "provider": e.provider, "upstream_model": e.upstream}
                for e in self._router.models
            ],
        })

    @app.route("/health", methods=["GET"])
    async def health(self, request):
        healths = await self._router.health.current()
        providers = {}
        for name, health in healths.items():
            providers[name] = {**health.to_json(), "circuit": self._router.circuits[name].to_json()}
        return self._respond(request, 200, {
            "status": overall_status(healths),
            "providers": providers,
            "queue": {**self._router.queues["cli"].to_json(),
                      "http": self._router.queues["http"].to_json()},
            "uptime_seconds": round(self._clock.seconds() - self._started),
            "version": __version__,
        })
