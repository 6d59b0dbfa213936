"""
What a refused or failed request tells its client, and what it costs it: a
request refused at once (a full queue, an unusable provider) uses none of
its client's rate-limit quota; C{Retry-After} says how long the wait
really is; C{x-should-retry} tells the official SDKs (which retry every 5xx
twice by default) whether another try can help.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from shellm.errors import NotLoggedIn, ProviderFailed, ProviderUnavailable, Timeout
from shellm.http.api import ShellmAPI
from shellm.http.web import ShellmSite
from shellm.routing.auth import Authenticator, Client
from shellm.routing.limits import RateLimiter
from shellm.routing.queue import RequestQueue
from tests.test_api import (
    HEARTBEAT,
    JSON,
    MAX_BODY,
    MAX_PROMPT,
    Gateway,
    body_of,
    error_response,
    header,
    make_gateway,
    stub_treq,
)

KEY = "key-0123456789abcdef0123"
AUTH = {**JSON, "authorization": f"Bearer {KEY}"}


def gateway_with_client(rpm: int, **router_settings) -> Gateway:
    """
    The API gateway of the API tests, with one client of C{rpm} requests a
    minute and the global limit out of the way.
    """
    gw = make_gateway(**router_settings)
    providers, router, clock = gw.providers, gw.router, gw.clock
    api = ShellmAPI(
        clock,
        router,
        max_prompt_chars=MAX_PROMPT,
        heartbeat=HEARTBEAT,
        authenticator=Authenticator([Client("app", KEY, rpm=rpm)]),
        limiter=RateLimiter(clock, global_rpm=1000),
    )
    site = ShellmSite(api.resource(), clock, MAX_BODY)
    return Gateway(clock, providers, router, site, stub_treq(site), api)


@pytest_twisted.ensureDeferred
async def test_queue_full_refusals_cost_no_quota():
    """
    A client with rpm 3 whose requests meet a full queue three times still
    has its whole minute's quota once the queue frees: refusals are free.
    """
    gw = gateway_with_client(rpm=3, max_concurrent=1, max_queue_depth=0)
    running = gw.post("/completions", body_of(model="gemini"), headers=AUTH)
    for _ in range(3):
        await error_response(gw, gw.post("/completions", body_of(), headers=AUTH), 429, "queue_full")
    gw.providers["gemini"].last.succeed()
    assert (await gw.answered(running)).code == 200
    for _ in range(2):  # the 2nd and 3rd of the minute
        d = gw.post("/completions", body_of(), headers=AUTH)
        gw.providers["claude"].last.succeed()
        assert (await gw.answered(d)).code == 200
    await error_response(gw, gw.post("/completions", body_of(), headers=AUTH), 429, "rate_limited")


@pytest_twisted.ensureDeferred
async def test_unusable_provider_refusals_cost_no_quota():
    """
    Fail-fast 503s (the provider is known not to be logged in, no fallback
    allowed) are not charged either.
    """
    gw = gateway_with_client(rpm=1)
    gw.router.health.mark_not_logged_in("claude", "not logged in: run claude")
    for _ in range(3):
        d = gw.post("/completions", body_of(fallback=False), headers=AUTH)
        await error_response(gw, d, 503, "provider_unavailable")
    d = gw.post("/completions", body_of(model="gemini"), headers=AUTH)
    gw.providers["gemini"].last.succeed()
    assert (await gw.answered(d)).code == 200


@pytest_twisted.ensureDeferred
async def test_rate_limited_request_gives_its_queue_place_back():
    """
    A request refused by its rate limit after its admission leaves no slot
    taken and no provider started.
    """
    gw = gateway_with_client(rpm=1, max_concurrent=1)
    first = gw.post("/completions", body_of(), headers=AUTH)
    gw.providers["claude"].last.succeed()
    assert (await gw.answered(first)).code == 200
    await error_response(gw, gw.post("/completions", body_of(), headers=AUTH), 429, "rate_limited")
    queue = gw.router.queues["cli"]
    assert (queue.active, queue.pending) == (0, 0)
    assert len(gw.providers["claude"].runs) == 1


def test_queue_full_retry_after_reflects_the_expected_wait():
    """
    Before any call has been timed, Retry-After comes from how long a call
    of that kind is expected to take, times the waves ahead; once calls
    have been timed, from them.
    """
    queue = RequestQueue("cli", max_concurrent=2, max_waiting=4, expected_hold=10.0)
    for _ in range(6):
        queue.acquire()
    assert queue.retry_after() == 25  # 5 waiting (4 + this one) over 2 slots, 10 s each
    for _ in range(30):
        queue.release(2.0)
        queue.acquire()
    assert 5 <= queue.retry_after() <= 6  # 2 s a call now, rounded up


@pytest.mark.parametrize(
    "error, status, should_retry, retry_after",
    [
        (Timeout("claude did not finish in time and was stopped"), 504, "false", None),
        (NotLoggedIn("claude is not logged in"), 503, "false", None),
        (ProviderFailed("claude failed (exit code 1)"), 502, "false", None),
    ],
    ids=["timeout", "not_logged_in", "failed"],
)
@pytest_twisted.ensureDeferred
async def test_failures_no_retry_can_help_say_so(error, status, should_retry, retry_after):
    """
    A timeout, a missing login, a failure after SheLLM's own fallback: each
    answer says x-should-retry: false, so an SDK does not multiply it.
    """
    gw = make_gateway()
    d = gw.post("/completions", body_of())
    gw.providers["claude"].last.fail(error)
    if error.provider_side:  # SheLLM falls back; the fallback fails the same way
        gw.providers["gemini"].last.fail(type(error)(error.message))
    response = await gw.answered(d)
    assert response.code == status
    assert header(response, "x-should-retry") == should_retry
    assert header(response, "retry-after") == retry_after


@pytest_twisted.ensureDeferred
async def test_open_circuit_says_when_to_come_back():
    """
    A provider whose circuit is open answers 503 at once with
    x-should-retry: true and a Retry-After that ends with the cool-down.
    """
    gw = make_gateway(circuit_threshold=1, circuit_cooldown=60.0)
    d = gw.post("/completions", body_of(fallback=False))
    gw.providers["claude"].last.fail(ProviderFailed("claude failed (exit code 1)"))
    await gw.answered(d)
    gw.clock.advance(15)
    response = await gw.answered(gw.post("/completions", body_of(fallback=False)))
    assert response.code == 503
    assert header(response, "x-should-retry") == "true"
    assert header(response, "retry-after") == "45"


@pytest_twisted.ensureDeferred
async def test_queue_full_says_retry():
    """
    A full queue answers 429 with x-should-retry: true and its Retry-After.
    """
    gw = make_gateway(max_concurrent=1, max_queue_depth=0)
    gw.post("/completions", body_of())
    response = await gw.answered(gw.post("/completions", body_of()))
    assert response.code == 429
    assert header(response, "x-should-retry") == "true"
    assert int(header(response, "retry-after")) >= 1


@pytest.mark.parametrize("error", [ProviderUnavailable("x", retry_after=3)])
def test_a_failure_after_fallback_is_never_worth_a_retry(error):
    """
    Even an error that carries a Retry-After says no once SheLLM's own
    fallback has run.
    """
    assert error.should_retry is True
    error.retry_would_help = False
    assert error.should_retry is False
