"""
The HTTP API, through C{treq.testing.StubTreq} against the real Klein
resource served by the real L{ShellmSite}, with fake providers driven by hand
and time on a L{Clock}.
"""

from __future__ import annotations

import json

import attrs
import pytest
import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from shellm import __version__
from shellm.completion import ProviderHealth, ProviderResult, Usage
from shellm.errors import ProviderFailed, ProviderUnavailable, RateLimited, Timeout
from shellm.http.api import ShellmAPI
from shellm.http.sse import HEAD_WAIT
from shellm.http.web import ShellmSite
from shellm.routing.router import Router
from tests.daemon import eventually
from tests.fake_providers import fake_providers, make_router

URL = "http://shellm.test"
JSON = {"content-type": "application/json"}
MAX_PROMPT = 1000
MAX_BODY = 4096
HEARTBEAT = 15.0


def stub_treq(site: ShellmSite) -> StubTreq:
    """
    A L{StubTreq} whose in-memory server is C{site} itself.

    StubTreq serves its resource through a plain C{twisted.web.server.Site}
    of its own making, whose requests lack what L{ShellmSite} gives the API
    (L{shellm.http.web.ShellmRequest}: C{request_id}, C{log_fields}, the capped
    body from C{getContentFile}, the access log).  treq offers no public way
    to pass a Site, so the Site the agent builds server protocols from (one
    private attribute) is replaced here, and only here.  Everything else is
    StubTreq as shipped: real HTTP parsing on both sides over iosim pumps.
    """
    stub = StubTreq(site.resource)
    stub._agent._serverFactory = site
    return stub


@attrs.define
class Gateway:
    clock: Clock
    providers: dict
    router: Router
    site: ShellmSite
    stub: StubTreq
    api: ShellmAPI

    def post(
        self, path: str, body=None, *, raw: bytes | None = None, headers: dict | None = None, **kwargs
    ) -> Deferred:
        data = raw if raw is not None else json.dumps(body).encode("utf-8")
        return self.stub.post(URL + path, data=data, headers=JSON if headers is None else headers, **kwargs)

    def get(self, path: str, **kwargs) -> Deferred:
        return self.stub.get(URL + path, **kwargs)

    def answered(self, d: Deferred) -> Deferred:
        """
        Deliver what the server wrote; the response must be there then, so
        awaiting it can never hang.
        """
        self.stub.flush()
        assert has_result(d), "the server has not answered (yet)"
        return d

    def opened(self, d: Deferred) -> Deferred:
        """
        L{answered}, for a stream with no event yet: its head goes out once
        it has waited L{HEAD_WAIT} for one.
        """
        self.clock.advance(HEAD_WAIT)
        return self.answered(d)


def has_result(d: Deferred) -> bool:
    """
    Whether C{d} holds its result (a Deferred waiting on another one is
    C{called} but has nothing yet).
    """
    return d.called and not d.paused and not isinstance(d.result, Deferred)


def circuit_state(shown) -> str:
    """
    The state from a circuit as C{/health} shows it: the state itself, or
    an object with a C{state}.
    """
    return shown if isinstance(shown, str) else shown["state"]


def make_gateway(providers=None, api_options: dict | None = None, **router_settings) -> Gateway:
    clock = Clock()
    clock.advance(1000)  # an arbitrary, non-zero start
    providers = fake_providers() if providers is None else providers
    router = make_router(clock, providers, **router_settings)
    api = ShellmAPI(clock, router, max_prompt_chars=MAX_PROMPT, heartbeat=HEARTBEAT, **(api_options or {}))
    site = ShellmSite(api.resource(), clock, MAX_BODY)
    return Gateway(clock, providers, router, site, stub_treq(site), api)


@pytest.fixture
def gw() -> Gateway:
    return make_gateway()


def failures(events: list[dict]) -> list[dict]:
    return [e for e in events if "log_failure" in e]


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return values[0].decode("ascii") if values else None


def body_of(prompt: str = "Explain quicksort", model: str = "claude", **fields) -> dict:
    return {"model": model, "prompt": prompt, **fields}


async def error_response(gw: Gateway, d: Deferred, status: int, code: str) -> dict:
    """
    Await the response, check it is the JSON error C{code} with C{status},
    and return its body.
    """
    response = await gw.answered(d)
    assert response.code == status
    assert header(response, "content-type") == "application/json"
    body = await response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == header(response, "x-request-id")
    return body


# -- POST /completions


@pytest_twisted.ensureDeferred
async def test_completion_body_fields_and_headers(gw):
    """
    A successful completion answers 200 with exactly the documented fields:
    the text the provider produced, the provider and model, timings measured
    on the clock, the request id, exact usage and cost.
    """
    d = gw.post("/completions", body_of(model="claude-opus", system="Be brief", max_tokens=50))
    run = gw.providers["claude"].last
    assert run.upstream_model == "opus"
    assert run.request.system == "Be brief" and run.request.max_tokens == 50
    gw.clock.advance(1.5)
    run.emit("Quick", "sort").succeed(ProviderResult(usage=Usage(12, 34), cost_usd=0.0042, model="claude-opus-4-1"))
    response = await gw.answered(d)
    assert response.code == 200
    assert header(response, "content-type") == "application/json"
    body = await response.json()
    request_id = header(response, "x-request-id")
    expected = {
        "content": "Quicksort",
        "provider": "claude",
        "model": "claude-opus-4-1",
        "duration_ms": 1500,
        "queued_ms": 0,
        "request_id": request_id,
        "usage": {"input_tokens": 12, "output_tokens": 34},
        "cost_usd": 0.0042,
    }
    assert {k: body.get(k) for k in expected} == expected
    assert not {"fallback", "original_provider", "original_error"} & set(body)
    assert len(request_id) >= 16


@pytest_twisted.ensureDeferred
async def test_unknown_usage_and_cost_are_null(gw):
    """
    When the provider reports neither usage nor cost, both are null rather
    than invented; the model falls back to the entry's upstream model.
    """
    d = gw.post("/completions", body_of(model="cerebras-8b"))
    gw.providers["cerebras"].last.emit("hi").succeed(ProviderResult())
    body = await (await gw.answered(d)).json()
    assert body["usage"] is None and body["cost_usd"] is None
    assert body["model"] == "llama3.1-8b"
    assert body["provider"] == "cerebras"


@pytest_twisted.ensureDeferred
async def test_queue_headers_report_the_queue_at_answer_time():
    """
    X-Queue-Depth and X-Queue-Active tell how many wait and run in the
    provider's queue; queued_ms is how long the request waited for its slot.
    """
    gw = make_gateway(max_concurrent=1)
    first = gw.post("/completions", body_of())
    second = gw.post("/completions", body_of())
    third = gw.post("/completions", body_of())
    claude = gw.providers["claude"]
    assert len(claude.runs) == 1
    claude.runs[0].emit("one").succeed(reap=False)
    response = await gw.answered(first)
    assert header(response, "x-queue-depth") == "2"
    assert header(response, "x-queue-active") == "1"
    assert (await response.json())["queued_ms"] == 0

    gw.clock.advance(2.5)
    claude.runs[0].reap()  # the slot goes to the second request
    assert len(claude.runs) == 2
    claude.runs[1].emit("two").succeed(reap=False)
    response = await gw.answered(second)
    assert header(response, "x-queue-depth") == "1"
    assert header(response, "x-queue-active") == "1"
    assert (await response.json())["queued_ms"] == 2500
    claude.runs[1].reap()
    claude.runs[2].succeed()
    assert (await gw.answered(third)).code == 200


@pytest_twisted.ensureDeferred
async def test_valid_request_id_header_is_kept(gw):
    """
    A valid X-Request-Id (up to 128 characters) is used as the request id,
    echoed in the header and the body, and given to the provider.
    """
    given = "a" * 120 + "-._:9AZ9"
    assert len(given) == 128
    d = gw.post("/completions", body_of(), headers={**JSON, "x-request-id": given})
    gw.providers["claude"].last.succeed()
    response = await gw.answered(d)
    assert header(response, "x-request-id") == given
    assert (await response.json())["request_id"] == given
    assert gw.providers["claude"].last.request.request_id == given


@pytest.mark.parametrize("given", ["a" * 129, "has space", "semi;colon", "ünï", "new\tline"])
@pytest_twisted.ensureDeferred
async def test_invalid_request_id_header_is_replaced(gw, given):
    """
    An X-Request-Id that is too long or has characters outside letters,
    digits and . _ : - is not echoed; a generated one replaces it.
    """
    d = gw.post("/completions", body_of(), headers={**JSON, "x-request-id": given.encode("utf-8")})
    gw.providers["claude"].last.succeed()
    response = await gw.answered(d)
    assert response.code == 200
    echoed = header(response, "x-request-id")
    assert echoed and echoed != given and len(echoed) <= 128
    assert (await response.json())["request_id"] == echoed


@pytest_twisted.ensureDeferred
async def test_request_id_in_body_wins(gw):
    """
    A C{request_id} field in the body becomes the request id, in the header
    and the body.
    """
    d = gw.post("/completions", body_of(request_id="job-42"), headers={**JSON, "x-request-id": "header-id"})
    gw.providers["claude"].last.succeed()
    response = await gw.answered(d)
    assert header(response, "x-request-id") == "job-42"
    assert (await response.json())["request_id"] == "job-42"


@pytest_twisted.ensureDeferred
async def test_error_echoes_given_request_id(gw):
    """
    Errors, too, carry the client's X-Request-Id in header and body.
    """
    d = gw.post("/completions", {"prompt": "x"}, headers={**JSON, "x-request-id": "trace-1"})
    body = await error_response(gw, d, 400, "invalid_request")
    assert body["request_id"] == "trace-1"


INVALID_BODIES = {
    "missing model": {"prompt": "hi"},
    "model not a string": {"model": 3, "prompt": "hi"},
    "model null": {"model": None, "prompt": "hi"},
    "missing prompt": {"model": "claude"},
    "prompt not a string": {"model": "claude", "prompt": ["hi"]},
    "empty prompt": {"model": "claude", "prompt": ""},
    "blank prompt": {"model": "claude", "prompt": "  \n\t "},
    "prompt over the cap": {"model": "claude", "prompt": "x" * (MAX_PROMPT + 1)},
    "system not a string": {"model": "claude", "prompt": "hi", "system": {"role": "x"}},
    "max_tokens 0": {"model": "claude", "prompt": "hi", "max_tokens": 0},
    "max_tokens negative": {"model": "claude", "prompt": "hi", "max_tokens": -5},
    "max_tokens 128001": {"model": "claude", "prompt": "hi", "max_tokens": 128001},
    "max_tokens 3.5": {"model": "claude", "prompt": "hi", "max_tokens": 3.5},
    "max_tokens string": {"model": "claude", "prompt": "hi", "max_tokens": "ten"},
    "max_tokens true": {"model": "claude", "prompt": "hi", "max_tokens": True},
    "unknown model": {"model": "gpt-17", "prompt": "hi"},
    "unknown field": {"model": "claude", "prompt": "hi", "temperature": 0.2},
    "request_id with space": {"model": "claude", "prompt": "hi", "request_id": "a b"},
    "request_id too long": {"model": "claude", "prompt": "hi", "request_id": "r" * 129},
    "request_id not a string": {"model": "claude", "prompt": "hi", "request_id": 7},
    "request_id empty": {"model": "claude", "prompt": "hi", "request_id": ""},
    "fallback a string": {"model": "claude", "prompt": "hi", "fallback": "no"},
    "fallback a number": {"model": "claude", "prompt": "hi", "fallback": 0},
}


@pytest.mark.parametrize("path", ["/completions", "/completions/stream"])
@pytest.mark.parametrize("case", sorted(INVALID_BODIES))
@pytest_twisted.ensureDeferred
async def test_invalid_body_is_400_json(gw, case, path):
    """
    Each invalid seed body is a 400 invalid_request JSON error (on the
    stream endpoint too: nothing is streamed), and no provider starts.
    """
    d = gw.post(path, INVALID_BODIES[case])
    await error_response(gw, d, 400, "invalid_request")
    assert all(not p.runs for p in gw.providers.values())


@pytest_twisted.ensureDeferred
async def test_validation_message_names_the_field(gw):
    """
    The 400 message says which field is wrong.
    """
    cases = {
        "max_tokens": body_of(max_tokens=0),
        "prompt": body_of(prompt=""),
        "model": {"prompt": "x"},
        "temperature": body_of(temperature=1),
        "fallback": body_of(fallback="yes"),
    }
    for field, body in cases.items():
        response = await gw.answered(gw.post("/completions", body))
        assert field in (await response.json())["message"], field


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": "x" * MAX_PROMPT},
        {"max_tokens": 1},
        {"max_tokens": 128000},
        {"system": None},
        {"fallback": False},
        {"request_id": "r" * 128},
    ],
)
@pytest_twisted.ensureDeferred
async def test_boundary_values_are_accepted(gw, fields):
    """
    The limits are inclusive: a prompt of exactly the cap, max_tokens 1 and
    128000, a 128-character request_id, and explicit nulls/booleans pass.
    """
    d = gw.post("/completions", {**body_of(), **fields})
    run = gw.providers["claude"].last
    if "max_tokens" in fields:
        assert run.request.max_tokens == fields["max_tokens"]
    run.succeed()
    assert (await gw.answered(d)).code == 200


@pytest.mark.parametrize("raw", [b"{", b"{'model': 'claude'}", b"", b"\xff\xfe{}", b'{"model": "claude",}'])
@pytest_twisted.ensureDeferred
async def test_malformed_json_is_400(gw, raw):
    """
    A body that is not JSON (or not UTF-8) is a 400 invalid_request error.
    """
    await error_response(gw, gw.post("/completions", raw=raw), 400, "invalid_request")


@pytest.mark.parametrize("raw", [b"[]", b'"prompt"', b"42", b"null", b'[{"model": "claude"}]'])
@pytest_twisted.ensureDeferred
async def test_non_object_json_is_400(gw, raw):
    """
    JSON that is not an object is a 400 invalid_request error.
    """
    await error_response(gw, gw.post("/completions", raw=raw), 400, "invalid_request")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonp", None])
@pytest.mark.parametrize("path", ["/completions", "/completions/stream"])
@pytest_twisted.ensureDeferred
async def test_wrong_content_type_is_415(gw, content_type, path):
    """
    A body that is not declared application/json is refused with 415.
    """
    headers = {"content-type": content_type} if content_type else {}
    d = gw.post(path, body_of(), headers=headers)
    await error_response(gw, d, 415, "unsupported_media_type")
    assert not gw.providers["claude"].runs


@pytest_twisted.ensureDeferred
async def test_json_content_type_with_parameters_is_accepted(gw):
    """
    C{application/json; charset=utf-8} (any case) is JSON.
    """
    d = gw.post("/completions", body_of(), headers={"content-type": "Application/JSON; charset=utf-8"})
    gw.providers["claude"].last.succeed()
    assert (await gw.answered(d)).code == 200


@pytest_twisted.ensureDeferred
async def test_body_over_the_cap_is_413(gw):
    """
    A body larger than the cap is refused with 413 before any parsing, and
    no provider starts; a body of exactly the cap is read normally.
    """
    prefix = b'{"model": "claude", "prompt": "'
    suffix = b'"}'
    over = prefix + b"x" * (MAX_BODY + 1 - len(prefix) - len(suffix)) + suffix
    assert len(over) == MAX_BODY + 1
    await error_response(gw, gw.post("/completions", raw=over), 413, "request_too_large")
    await error_response(gw, gw.post("/completions/stream", raw=over), 413, "request_too_large")
    assert not gw.providers["claude"].runs

    # Exactly the cap: parsed (and refused only for the prompt length).
    exact = over[: len(prefix)] + over[len(prefix) + 1 :]
    assert len(exact) == MAX_BODY
    body = await error_response(gw, gw.post("/completions", raw=exact), 400, "invalid_request")
    assert "prompt" in body["message"]


@pytest_twisted.ensureDeferred
async def test_unknown_path_is_404_json(gw):
    """
    An unknown path answers 404 with the JSON error body, not HTML.
    """
    for d in (gw.get("/nope"), gw.post("/v2/completions", body_of()), gw.get("/completions/x")):
        await error_response(gw, d, 404, "not_found")


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("GET", "/completions", "POST"),
        ("PUT", "/completions", "POST"),
        ("GET", "/completions/stream", "POST"),
        ("POST", "/health", "GET"),
        ("DELETE", "/providers", "GET"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405_json_with_allow(gw, method, path, allowed):
    """
    A known path with the wrong method answers 405 JSON with an Allow header
    naming the method that works.
    """
    d = gw.stub.request(method, URL + path, data=b"{}", headers=JSON)
    response = await gw.answered(d)
    body = await error_response(gw, d, 405, "method_not_allowed")
    allow = [m.strip() for m in header(response, "allow").split(",")]
    assert allowed in allow
    assert method not in allow
    assert body["request_id"]


# -- provider errors


@pytest.mark.parametrize(
    "error, status, code",
    [
        (ProviderFailed("claude failed (exit code 1)"), 502, "cli_failed"),
        (ProviderUnavailable("claude is not log_events in"), 503, "provider_unavailable"),
        (Timeout("claude did not finish in time"), 504, "timeout"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_provider_errors_map_to_status(gw, error, status, code):
    """
    Classified provider failures become their status and code, with the
    provider's safe message, when no fallback is allowed.
    """
    d = gw.post("/completions", body_of(fallback=False))
    gw.providers["claude"].last.fail(error)
    body = await error_response(gw, d, status, code)
    assert body["message"] == error.message
    assert not gw.providers["gemini"].runs


@pytest_twisted.ensureDeferred
async def test_rate_limited_is_429_with_retry_after(gw):
    """
    An upstream rate limit is 429 rate_limited with Retry-After, and is
    never a reason to fall back.
    """
    d = gw.post("/completions", body_of())
    gw.providers["claude"].last.fail(RateLimited("claude: the upstream rate limit was reached", retry_after=60))
    response = await gw.answered(d)
    await error_response(gw, d, 429, "rate_limited")
    assert header(response, "retry-after") == "60"
    assert not gw.providers["gemini"].runs and not gw.providers["cerebras"].runs


@pytest_twisted.ensureDeferred
async def test_provider_that_cannot_start_is_its_error(gw):
    """
    A provider whose start raises a classified error answers with that
    error; the slot it took is given back.
    """
    gw.providers["claude"].start_error = ProviderFailed("claude could not be started")
    await error_response(gw, gw.post("/completions", body_of(fallback=False)), 502, "cli_failed")
    assert gw.router.queues["cli"].active == 0


@pytest_twisted.ensureDeferred
async def test_unexpected_exception_is_500_json(gw, log_events):
    """
    A bug (an exception that is not a classified error) is a 500
    internal_error JSON body that reveals nothing of the exception.
    """
    d = gw.post("/completions", body_of(fallback=False))
    gw.providers["claude"].last.result.errback(ZeroDivisionError("secret detail"))
    body = await error_response(gw, d, 500, "internal_error")
    assert "secret" not in json.dumps(body)


@pytest_twisted.ensureDeferred
async def test_fallback_is_reported_in_the_body(gw):
    """
    When the first provider fails on its side, the answer comes from the
    next one in the chain and says so: fallback, original_provider and the
    original error.
    """
    d = gw.post("/completions", body_of(model="claude-sonnet"))
    gw.providers["claude"].last.fail(Timeout("claude did not finish in time"))
    gemini = gw.providers["gemini"].last
    assert gemini.upstream_model is None  # gemini's own default, not "sonnet"
    gemini.emit("from gemini").succeed()
    response = await gw.answered(d)
    assert response.code == 200
    body = await response.json()
    assert body["content"] == "from gemini"
    assert body["provider"] == "gemini"
    assert body["fallback"] is True
    assert body["original_provider"] == "claude"
    assert body["original_error"] == {"error": "timeout", "message": "claude did not finish in time"}


@pytest_twisted.ensureDeferred
async def test_no_fallback_fields_without_fallback(gw):
    """
    A first-try answer carries no fallback fields at all.
    """
    d = gw.post("/completions", body_of())
    gw.providers["claude"].last.succeed()
    body = await (await gw.answered(d)).json()
    assert not {"fallback", "original_provider", "original_error"} & set(body)


@pytest_twisted.ensureDeferred
async def test_non_streaming_falls_back_even_after_partial_text(gw):
    """
    Issue 3 limits "no fallback once text was sent" to streaming: a
    non-streaming client has seen nothing, so a provider that wrote some
    text and then failed on its side still falls back, and the answer holds
    only the alternate's text (no half answer glued in front).
    """
    d = gw.post("/completions", body_of())
    gw.providers["claude"].last.emit("half an ans").fail(Timeout("claude did not finish in time"))
    assert gw.providers["gemini"].runs, "no fallback after partial output"
    gw.providers["gemini"].last.emit("whole answer").succeed()
    response = await gw.answered(d)
    assert response.code == 200
    body = await response.json()
    assert body["content"] == "whole answer"
    assert body["provider"] == "gemini" and body["fallback"] is True


# -- the queue


@pytest_twisted.ensureDeferred
async def test_queue_full_is_429_and_never_starts():
    """
    With every slot busy and the waiting line full, a request is refused at
    once with 429 queue_full and Retry-After, and its provider never starts.
    """
    gw = make_gateway(max_concurrent=1, max_queue_depth=1)
    running = gw.post("/completions", body_of())
    waiting = gw.post("/completions", body_of())
    refused = gw.post("/completions", body_of())
    response = await gw.answered(refused)
    await error_response(gw, refused, 429, "queue_full")
    assert int(header(response, "retry-after")) >= 1
    assert header(response, "x-queue-depth") == "1"
    assert header(response, "x-queue-active") == "1"
    claude = gw.providers["claude"]
    assert len(claude.runs) == 1
    assert not gw.providers["gemini"].runs  # a full queue is no reason to fall back

    claude.runs[0].succeed()
    claude.runs[1].succeed()
    assert (await gw.answered(running)).code == 200
    assert (await gw.answered(waiting)).code == 200
    assert len(claude.runs) == 2


@pytest_twisted.ensureDeferred
async def test_http_providers_have_their_own_queue():
    """
    A full CLI queue does not hold back a request for an HTTP provider.
    """
    gw = make_gateway(max_concurrent=1, max_queue_depth=0)
    gw.post("/completions", body_of())
    await error_response(gw, gw.post("/completions", body_of(model="gemini")), 429, "queue_full")
    d = gw.post("/completions", body_of(model="cerebras"))
    gw.providers["cerebras"].last.succeed()
    assert (await gw.answered(d)).code == 200


@pytest.mark.parametrize("path", ["/completions", "/completions/stream"])
@pytest_twisted.ensureDeferred
async def test_disconnect_while_queued_leaves_the_queue(path, log_events):
    """
    A client that goes away while waiting for a slot leaves the line at
    once, and its provider is never started when the slot frees up.
    """
    gw = make_gateway(max_concurrent=1)
    running = gw.post("/completions", body_of())
    queued = gw.post(path, body_of(), **({"unbuffered": True} if "stream" in path else {}))
    gw.stub.flush()
    queue = gw.router.queues["cli"]
    assert (queue.active, queue.pending) == (1, 1)
    if "stream" in path:
        # The stream's headers are out; the client drops the connection.
        response = await gw.opened(queued)
        treq.collect(response, _hang_up).addErrback(lambda f: f.trap(_HangUp))
    else:
        queued.cancel()
        queued.addErrback(lambda f: None)  # the client's own view of giving up
    gw.stub.flush()
    assert queue.pending == 0

    claude = gw.providers["claude"]
    claude.runs[0].succeed()
    assert (await gw.answered(running)).code == 200
    assert len(claude.runs) == 1
    assert (queue.active, queue.pending) == (0, 0)
    assert not failures(log_events)


class _HangUp(Exception):
    pass


def _hang_up(data: bytes) -> None:
    """
    A treq collector that closes the connection when data arrives (treq
    closes the transport when a collector raises).
    """
    raise _HangUp()


@pytest_twisted.ensureDeferred
async def test_disconnect_while_running_cancels_the_run(gw, log_events):
    """
    A client that goes away while its provider runs cancels the run; the
    slot stays taken until the process is reaped, then is free.
    """
    d = gw.post("/completions", body_of())
    run = gw.providers["claude"].last
    d.cancel()
    d.addErrback(lambda f: None)  # the client's own view of giving up
    gw.stub.flush()
    assert run.cancelled
    queue = gw.router.queues["cli"]
    assert queue.active == 1
    run.reap()
    assert queue.active == 0
    assert gw.router.circuits["claude"].failures == 0
    assert not failures(log_events)


# -- GET /providers


@pytest_twisted.ensureDeferred
async def test_providers_lists_each_provider(gw):
    """
    /providers lists every provider with its kind, its model names, what the
    health check found, what it supports, and its circuit.
    """
    gw.providers["codex"].health = ProviderHealth(False, False, "codex executable not found")
    response = await gw.answered(gw.get("/providers"))
    assert response.code == 200
    body = await response.json()
    listing = {p["name"]: p for p in body["providers"]}
    assert set(listing) == {"claude", "gemini", "codex", "cerebras"}
    claude = listing["claude"]
    assert claude["kind"] == "cli"
    assert set(claude["models"]) == {"claude", "claude-sonnet", "claude-haiku", "claude-opus"}
    assert claude["installed"] is True and claude["authenticated"] is True
    supports = claude["supports"]
    assert (supports["system_prompt"], supports["max_tokens"], supports["streaming"]) == (True, False, "token")
    assert claude["circuit"]["state"] == "closed"
    assert listing["cerebras"]["kind"] == "http"
    assert "cerebras-qwen" in listing["cerebras"]["models"]
    assert listing["codex"]["supports"]["streaming"] == "message"
    assert listing["codex"]["installed"] is False and listing["codex"]["authenticated"] is False
    models = {m["id"]: m for m in body["models"]}
    assert models["claude-haiku"] == {"id": "claude-haiku", "provider": "claude", "upstream_model": "haiku"}
    assert models["claude"]["upstream_model"] is None


@pytest_twisted.ensureDeferred
async def test_providers_shows_an_open_circuit(gw):
    """
    A provider whose circuit opened shows it in /providers.
    """
    for _ in range(3):
        d = gw.post("/completions", body_of(model="gemini", fallback=False))
        gw.providers["gemini"].last.fail(ProviderFailed("gemini failed (exit code 1)"))
        await gw.answered(d)
    body = await (await gw.answered(gw.get("/providers"))).json()
    gemini = next(p for p in body["providers"] if p["name"] == "gemini")
    assert gemini["circuit"]["state"] == "open"
    assert gemini["circuit"]["consecutive_failures"] == 3


# -- GET /health


@pytest_twisted.ensureDeferred
async def test_health_shape(gw):
    """
    /health has the documented shape: overall status, each provider's
    installed/authenticated (and error when there is one), the queue, the
    uptime on the clock, and the version.
    """
    gw.providers["codex"].health = ProviderHealth(True, False, "not log_events in: run codex login")
    gw.clock.advance(42)
    response = await gw.answered(gw.get("/health"))
    assert response.code == 200
    assert header(response, "x-request-id")
    body = await response.json()
    assert body["status"] == "degraded"
    assert set(body["providers"]) == {"claude", "gemini", "codex", "cerebras"}
    claude = body["providers"]["claude"]
    assert claude["installed"] is True and claude["authenticated"] is True
    assert "error" not in claude
    codex = body["providers"]["codex"]
    assert codex["authenticated"] is False
    assert codex["error"] == "not log_events in: run codex login"
    queue = body["queue"]
    assert queue["pending"] == 0 and queue["active"] == 0
    assert queue["max_concurrent"] == 2
    assert body["uptime_seconds"] == 42
    assert body["version"] == __version__


@pytest.mark.parametrize(
    "usable, status",
    [
        ({"claude", "gemini", "codex", "cerebras"}, "ok"),
        ({"cerebras"}, "degraded"),
        (set(), "down"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_health_status(gw, usable, status):
    """
    ok when every provider is usable, degraded when some are, down when none.
    """
    for name, provider in gw.providers.items():
        if name not in usable:
            provider.health = ProviderHealth(False, False, f"{name} executable not found")
    body = await (await gw.answered(gw.get("/health"))).json()
    assert body["status"] == status


@pytest_twisted.ensureDeferred
async def test_health_checks_are_cached_for_the_ttl(gw):
    """
    The provider part of /health is checked at most once per TTL (30 s);
    after that a stale answer is served at once while one refresh runs.
    """
    claude = gw.providers["claude"]
    await gw.answered(gw.get("/health"))
    assert claude.health_checks == 1
    gw.clock.advance(29)
    await gw.answered(gw.get("/health"))
    await gw.answered(gw.get("/providers"))
    assert claude.health_checks == 1

    claude.health = ProviderHealth(True, False, "not log_events in")
    gw.clock.advance(1)
    claude.hold_health = True
    body = await (await gw.answered(gw.get("/health"))).json()
    assert claude.health_checks == 2
    assert body["providers"]["claude"]["authenticated"] is True  # stale, served at once
    await gw.answered(gw.get("/health"))
    assert claude.health_checks == 2  # one refresh at a time
    claude.answer_health()
    body = await (await gw.answered(gw.get("/health"))).json()
    assert body["providers"]["claude"]["authenticated"] is False
    assert claude.health_checks == 2


@pytest_twisted.ensureDeferred
async def test_health_queue_and_uptime_are_fresh(gw):
    """
    While the provider part comes from the cache, the queue counts and the
    uptime are measured for every request.
    """
    await gw.answered(gw.get("/health"))
    gw.post("/completions", body_of())
    gw.post("/completions", body_of())
    gw.post("/completions", body_of())
    gw.post("/completions", body_of(model="cerebras"))
    gw.clock.advance(5)
    body = await (await gw.answered(gw.get("/health"))).json()
    assert gw.providers["claude"].health_checks == 1
    assert body["queue"]["active"] == 2
    assert body["queue"]["pending"] == 1
    assert body["queue"]["http"]["active"] == 1
    assert body["uptime_seconds"] == 5


@pytest_twisted.ensureDeferred
async def test_first_health_request_waits_for_the_checks(gw):
    """
    Before any check has finished, /health waits for the first one instead
    of answering with nothing.
    """
    for provider in gw.providers.values():
        provider.hold_health = True
    d = gw.get("/health")
    gw.stub.flush()
    assert not has_result(d)
    for provider in gw.providers.values():
        provider.answer_health()
    body = await (await gw.answered(d)).json()
    assert body["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_health_shows_circuit_state(gw):
    """
    /health shows each provider's circuit state.
    """
    for _ in range(3):
        d = gw.post("/completions", body_of(fallback=False))
        gw.providers["claude"].last.fail(ProviderFailed("claude failed"))
        await gw.answered(d)
    body = await (await gw.answered(gw.get("/health"))).json()
    assert circuit_state(body["providers"]["claude"]["circuit"]) == "open"
    assert circuit_state(body["providers"]["gemini"]["circuit"]) == "closed"


# -- access log


@pytest_twisted.ensureDeferred
async def test_one_access_line_per_request_without_the_prompt(gw, log_events):
    """
    Each request logs one access line with request id, provider, model,
    status and timings, and nothing log_events anywhere holds the prompt or the
    completion.
    """
    prompt = "my very private prompt 7f3a"
    d = gw.post("/completions", body_of(prompt=prompt, model="claude-haiku"), headers={**JSON, "x-request-id": "acc-1"})
    gw.clock.advance(0.25)
    gw.providers["claude"].last.emit("secret completion 9c1d").succeed()
    await gw.answered(d)
    lines = [e for e in log_events if e.get("log_namespace") == "shellm.access" and e.get("request_id") == "acc-1"]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == "acc-1"
    assert line["status"] == 200
    assert line["provider"] == "claude"
    assert line["model"] == "claude-haiku"
    assert line["queued_ms"] == 0
    assert line["duration_ms"] == 250
    everything = repr(log_events)
    assert prompt not in everything
    assert "secret completion" not in everything


# -- POST /completions/stream


async def open_stream(gw: Gateway, body: dict, headers=None):
    """
    Start a stream; return the response and the list its chunks go to.
    """
    d = gw.post("/completions/stream", body, headers=headers, unbuffered=True)
    response = await gw.opened(d)
    chunks: list[bytes] = []
    ended = treq.collect(response, chunks.append)
    return response, chunks, ended


def frames(chunks: list[bytes]) -> list[str]:
    """
    The SSE frames received so far (complete ones only).
    """
    text = b"".join(chunks).decode("utf-8")
    *whole, _rest = text.split("\n\n")
    return whole


def events(chunks: list[bytes]) -> list[dict]:
    return [json.loads(f[len("data: ") :]) for f in frames(chunks) if f.startswith("data: ")]


@pytest_twisted.ensureDeferred
async def test_stream_headers_and_opening_comment(gw):
    """
    The stream answers before the provider says anything (once its head has
    waited L{HEAD_WAIT} for an event): 200, text/event-stream, no-cache,
    X-Accel-Buffering: no, the request id, and an opening comment frame.
    """
    response, chunks, ended = await open_stream(gw, body_of(), headers={**JSON, "x-request-id": "s-1"})
    assert response.code == 200
    assert header(response, "content-type").startswith("text/event-stream")
    assert header(response, "cache-control") == "no-cache"
    assert header(response, "x-accel-buffering") == "no"
    assert header(response, "x-request-id") == "s-1"
    assert header(response, "x-queue-active") is not None
    gw.stub.flush()
    assert frames(chunks) and frames(chunks)[0].startswith(":")
    assert not ended.called


@pytest_twisted.ensureDeferred
async def test_stream_head_leaves_with_a_quick_first_event(gw):
    """
    A stream's head waits a moment for the first event: nothing is written
    before, then both leave together.
    """
    d = gw.post("/completions/stream", body_of(), unbuffered=True)
    gw.stub.flush()
    gw.clock.advance(HEAD_WAIT * 0.9)
    gw.stub.flush()
    assert not has_result(d)
    gw.providers["claude"].last.emit("Hi")
    response = await gw.answered(d)
    chunks: list[bytes] = []
    treq.collect(response, chunks.append)
    gw.stub.flush()
    assert frames(chunks) == [": stream open", 'data: {"content": "Hi", "done": false}']


@pytest_twisted.ensureDeferred
async def test_stream_delivers_each_delta_as_it_is_emitted(gw):
    """
    Every delta is one data event, readable by the client as soon as the
    provider emitted it (before the provider finished), in order; then one
    final done event with provider, model, usage and the request id.
    """
    response, chunks, ended = await open_stream(
        gw, body_of(model="claude-haiku"), headers={**JSON, "x-request-id": "s-2"}
    )
    run = gw.providers["claude"].last
    run.emit("Hel")
    gw.stub.flush()
    assert events(chunks) == [{"content": "Hel", "done": False}]
    assert not run.done
    run.emit("lo, ")
    gw.stub.flush()
    run.emit("world")
    gw.stub.flush()
    assert events(chunks)[1:] == [{"content": "lo, ", "done": False}, {"content": "world", "done": False}]
    gw.clock.advance(2 - HEAD_WAIT)  # two seconds since the request came
    run.succeed(ProviderResult(usage=Usage(5, 3), cost_usd=0.01, model="claude-haiku-4-5"))
    gw.stub.flush()
    assert ended.called
    final = events(chunks)[-1]
    assert final == {
        "content": "",
        "done": True,
        "provider": "claude",
        "model": "claude-haiku-4-5",
        "duration_ms": 2000,
        "queued_ms": 0,
        "usage": {"input_tokens": 5, "output_tokens": 3},
        "cost_usd": 0.01,
        "request_id": "s-2",
    }
    assert len(events(chunks)) == 4


@pytest_twisted.ensureDeferred
async def test_stream_keepalive_after_silence(gw):
    """
    After the heartbeat interval of silence a ': keepalive' comment goes
    out; any event restarts the interval.
    """
    _, chunks, _ = await open_stream(gw, body_of())
    run = gw.providers["claude"].last

    def keepalives():
        gw.stub.flush()
        return sum(1 for f in frames(chunks) if f == ": keepalive")

    gw.clock.advance(HEARTBEAT - 1)
    assert keepalives() == 0
    run.emit("a")
    gw.clock.advance(HEARTBEAT - 1)
    assert keepalives() == 0
    gw.clock.advance(1)
    assert keepalives() == 1
    gw.clock.advance(HEARTBEAT)
    assert keepalives() == 2
    run.succeed()
    gw.clock.advance(HEARTBEAT * 3)
    assert keepalives() == 2  # nothing after the end
    assert not gw.clock.getDelayedCalls()


@pytest.mark.parametrize(
    "error, code",
    [
        (Timeout("claude did not finish in time"), "timeout"),
        (ProviderFailed("claude failed (exit code 1)"), "cli_failed"),
        (ProviderUnavailable("claude is not log_events in"), "provider_unavailable"),
        (RateLimited("claude: rate limit", retry_after=60), "rate_limited"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_stream_failure_after_a_delta_is_an_error_event(gw, error, code):
    """
    A provider failure after text was sent ends the stream with an error
    event (done: true), never a clean done event, and without falling back.
    """
    _, chunks, ended = await open_stream(gw, body_of(), headers={**JSON, "x-request-id": "s-3"})
    run = gw.providers["claude"].last
    run.emit("partial")
    gw.stub.flush()
    run.fail(error)
    gw.stub.flush()
    assert ended.called
    received = events(chunks)
    assert received[0] == {"content": "partial", "done": False}
    last = received[-1]
    assert last["error"] == code and last["done"] is True
    assert last["message"] == error.message and last["request_id"] == "s-3"
    assert not [e for e in received if e.get("done") and "error" not in e]
    assert len(received) == 2
    assert not gw.providers["gemini"].runs


@pytest_twisted.ensureDeferred
async def test_stream_falls_back_before_the_first_delta(gw):
    """
    A provider-side failure before any text was sent falls back; the client
    sees only the alternate's deltas, and the done event reports the
    fallback.
    """
    _, chunks, ended = await open_stream(gw, body_of())
    gw.providers["claude"].last.fail(ProviderUnavailable("claude is not log_events in"))
    gemini = gw.providers["gemini"].last
    gemini.emit("gem")
    gw.stub.flush()
    assert events(chunks) == [{"content": "gem", "done": False}]
    gemini.succeed()
    gw.stub.flush()
    final = events(chunks)[-1]
    assert final["done"] is True and "error" not in final
    assert final["provider"] == "gemini" and final["fallback"] is True
    assert final["original_provider"] == "claude"
    assert final["original_error"]["error"] == "provider_unavailable"


@pytest_twisted.ensureDeferred
async def test_stream_disconnect_cancels_the_run(gw, log_events):
    """
    A client that leaves mid-stream cancels the provider run; nothing is
    written afterwards, nothing raises, the heartbeat stops, and the slot is
    freed when the process is reaped.
    """
    d = gw.post("/completions/stream", body_of(), headers={**JSON, "x-request-id": "gone-1"}, unbuffered=True)
    response = await gw.opened(d)
    seen: list[bytes] = []

    def collector(data: bytes) -> None:
        seen.append(data)
        if b"first" in data:
            raise _HangUp()

    treq.collect(response, collector).addErrback(lambda f: f.trap(_HangUp))
    run = gw.providers["claude"].last
    run.emit("first")
    gw.stub.flush()
    assert run.cancelled
    gw.clock.advance(HEARTBEAT * 2)
    gw.stub.flush()
    assert not gw.clock.getDelayedCalls()
    queue = gw.router.queues["cli"]
    assert queue.active == 1
    run.reap()
    assert queue.active == 0
    assert not failures(log_events)
    statuses = [
        e["status"] for e in log_events if e.get("log_namespace") == "shellm.access" and e.get("request_id") == "gone-1"
    ]
    assert statuses == [499]


@pytest_twisted.ensureDeferred
async def test_stream_queue_full_is_an_error_event_or_429(gw):
    """
    A stream refused by a full queue never starts its provider and tells
    the client queue_full, either as a 429 or as an error event.
    """
    gw = make_gateway(max_concurrent=1, max_queue_depth=0)
    gw.post("/completions", body_of())
    d = gw.post("/completions/stream", body_of(), unbuffered=True)
    response = await gw.answered(d)
    if response.code == 429:
        assert (await response.json())["error"] == "queue_full"
    else:
        chunks: list[bytes] = []
        treq.collect(response, chunks.append)
        gw.stub.flush()
        assert events(chunks)[-1]["error"] == "queue_full"
        assert events(chunks)[-1]["done"] is True
    assert len(gw.providers["claude"].runs) == 1


async def admin_call(gw: Gateway, method: str, path: str, body=None, key: str | None = None):
    """
    One request through the real resource, waiting (on the real reactor,
    as the store answers from its threads) for the answer: its status,
    JSON body and the response.
    """
    headers = dict(JSON)
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    d = gw.stub.request(method, URL + path, data=data, headers=headers)

    def answered():
        gw.stub.flush()
        return has_result(d)

    assert await eventually(answered, timeout=10)
    response = await d
    return response.code, await response.json(), response
