"""
The response cache (L{shellm.routing.cache}) through the real Klein
resource: keys, opt-outs, expiry on a Clock, the byte bound, coalescing,
streamed replay in every dialect, fallback answers, the ledger, the admin
routes and the metrics.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

from shellm.completion import CacheControl, CompletionRequest, ProviderResult, Usage
from shellm.errors import InvalidField, ProviderFailed
from shellm.http.admin_api import AdminAPI
from shellm.http.api import ShellmAPI
from shellm.http.web import ShellmSite
from shellm.models import ModelEntry
from shellm.routing.auth import Authenticator, Client
from shellm.routing.cache import ResponseCache, cache_key, read_control
from shellm.routing.limits import RateLimiter
from shellm.structured import OutputSpec
from tests.test_api import (
    HEARTBEAT,
    JSON,
    MAX_BODY,
    MAX_PROMPT,
    Gateway,
    body_of,
    error_response,
    frames,
    has_result,
    header,
    make_gateway,
    stub_treq,
)

KEY_A = "key-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "key-bbbbbbbbbbbbbbbbbbbb"
ADMIN_KEY = "admin-cccccccccccccccccccc"
AUTH_A = {**JSON, "authorization": f"Bearer {KEY_A}"}
AUTH_B = {**JSON, "authorization": f"Bearer {KEY_B}"}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
RESULT = ProviderResult(usage=Usage(12, 34), cost_usd=0.5, model="claude-x")


class RecordingLedger:
    """
    A ledger that keeps its rows in a list.
    """

    def __init__(self) -> None:
        self.rows: list = []

    def record(self, row) -> None:
        self.rows.append(row)


def cached_gateway(
    ttl: float = 60,
    max_bytes: int = 1 << 20,
    shared: bool = False,
    rpm: int = 1000,
    max_wait: float = 120.0,
    ledger=None,
    **router_settings,
) -> Gateway:
    """
    The API tests' gateway with a response cache on its clock, two client
    keys (A and B) and an admin key.
    """
    base = make_gateway(**router_settings)
    clock, router = base.clock, base.router
    cache = ResponseCache(clock, ttl, max_bytes, shared=shared, max_wait=max_wait)
    authenticator = Authenticator([Client("a", KEY_A, rpm=rpm), Client("b", KEY_B, rpm=rpm)], admin_key=ADMIN_KEY)
    api = ShellmAPI(
        clock,
        router,
        max_prompt_chars=MAX_PROMPT,
        heartbeat=HEARTBEAT,
        authenticator=authenticator,
        limiter=RateLimiter(clock, global_rpm=100000),
        ledger=ledger,
        admin=AdminAPI(clock, authenticator, None, router.models, cache=cache),
        cache=cache,
    )
    site = ShellmSite(api.resource(), clock, MAX_BODY)
    return Gateway(clock, base.providers, router, site, stub_treq(site), api)


async def ask(gw: Gateway, path="/completions", body=None, headers=AUTH_A, answer=("Quick", "sort"), provider="claude"):
    """
    Post C{body}; if it starts a run, answer it with C{answer}.  Returns the
    response and its JSON body.
    """
    runs = len(gw.providers[provider].runs)
    d = gw.post(path, body or body_of(), headers=headers)
    if len(gw.providers[provider].runs) > runs:
        gw.providers[provider].last.emit(*answer).succeed(RESULT)
    response = await gw.answered(d)
    return response, await response.json()


def runs(gw: Gateway, provider: str = "claude") -> int:
    return len(gw.providers[provider].runs)


# -- the key and the controls


def request(**fields) -> CompletionRequest:
    entry = ModelEntry("claude", "claude", None)
    return CompletionRequest(**{"model": "claude", "entry": entry, "prompt": "hi", **fields})


def test_key_covers_what_changes_the_answer():
    """
    Every field that changes the answer changes the key; the request id,
    the fallback flag and the cache controls do not.
    """
    base = cache_key("k1", request())
    for changed in (
        cache_key("k2", request()),
        cache_key(None, request()),
        cache_key("k1", request(prompt="ho")),
        cache_key("k1", request(system="be brief")),
        cache_key("k1", request(max_tokens=5)),
        cache_key("k1", request(temperature=0.5)),
        cache_key("k1", request(top_p=0.5)),
        cache_key("k1", request(stop=("x",))),
        cache_key("k1", request(output=OutputSpec("json_object", "{}"))),
        cache_key("k1", request(entry=ModelEntry("claude-opus", "claude", "opus"))),
    ):
        assert changed != base
    assert cache_key("k1", request(request_id="r-2", fallback=False, cache=CacheControl(ttl=5))) == base


@pytest.mark.parametrize(
    "field, param",
    [
        ("yes", "cache"),
        ({"ttl": -1}, "cache.ttl"),
        ({"ttl": "60"}, "cache.ttl"),
        ({"ttl": True}, "cache.ttl"),
        ({"ttl": 1.5}, "cache.ttl"),
        ({"no_cache": "true"}, "cache.no_cache"),
        ({"no_store": 1}, "cache.no_store"),
        ({"no_store": None}, "cache.no_store"),
        ({"ttl": None}, "cache.ttl"),
        ({"max_age": 5}, "cache.max_age"),
    ],
)
def test_bad_controls_name_the_field(field, param):
    with pytest.raises(InvalidField) as raised:
        read_control({"cache": field}, None)
    assert raised.value.param == param


def test_controls_from_body_and_header():
    assert read_control({}, None) == CacheControl()
    assert read_control({"cache": {"ttl": 5, "no_store": True}}, None) == CacheControl(ttl=5, no_store=True)
    assert read_control({}, "No-Cache, max-age=0") == CacheControl(no_cache=True)
    assert read_control({}, "no-store") == CacheControl(no_store=True)
    assert read_control({"cache": {"no_cache": False}}, "private") == CacheControl()
    assert read_control({"cache": {"ttl": 60.0}}, None) == CacheControl(ttl=60)  # an integer to JSON


# -- hits and misses


@pytest_twisted.ensureDeferred
async def test_second_identical_request_is_a_hit():
    """
    The same question asked again by the same key is answered from the
    cache: the same text and original usage, no second run, a fresh request
    id, X-SheLLM-Cache hit and an Age in seconds.
    """
    gw = cached_gateway()
    first, body = await ask(gw)
    assert header(first, "x-shellm-cache") == "miss"
    assert header(first, "age") is None
    gw.clock.advance(7)
    again, cached = await ask(gw)
    assert runs(gw) == 1
    assert header(again, "x-shellm-cache") == "hit"
    assert header(again, "age") == "7"
    assert cached["content"] == body["content"] == "Quicksort"
    assert cached["usage"] == {"input_tokens": 12, "output_tokens": 34}
    assert cached["request_id"] == header(again, "x-request-id") != body["request_id"]


@pytest_twisted.ensureDeferred
async def test_without_a_ttl_nothing_is_cached_and_no_header():
    gw = cached_gateway(ttl=0)
    for _ in range(2):
        response, _ = await ask(gw)
        assert header(response, "x-shellm-cache") is None
    assert runs(gw) == 2


@pytest_twisted.ensureDeferred
async def test_a_different_question_is_a_miss():
    gw = cached_gateway()
    await ask(gw)
    response, _ = await ask(gw, body=body_of(max_tokens=10))
    assert header(response, "x-shellm-cache") == "miss"
    assert runs(gw) == 2


@pytest_twisted.ensureDeferred
async def test_a_stop_sequence_with_no_utf_8_form_is_cached_too():
    """
    JSON lets a client send a lone surrogate, which has no UTF-8 form; the
    key is built from ASCII escapes, so such a request is answered (it was
    a 500 with the cache on) and cached like any other.
    """
    gw = cached_gateway()
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], "stop": "\ud800"}
    response, _ = await ask(gw, "/v1/chat/completions", body)
    assert response.code == 200
    response, _ = await ask(gw, "/v1/chat/completions", body)
    assert header(response, "x-shellm-cache") == "hit"
    assert runs(gw) == 1


@pytest_twisted.ensureDeferred
async def test_keys_never_share_answers():
    """
    Key B asking what key A asked runs its own request: answers never cross
    keys.
    """
    gw = cached_gateway()
    await ask(gw, headers=AUTH_A)
    response, _ = await ask(gw, headers=AUTH_B)
    assert header(response, "x-shellm-cache") == "miss"
    assert runs(gw) == 2


@pytest_twisted.ensureDeferred
async def test_shared_cache_serves_every_key():
    gw = cached_gateway(shared=True)
    await ask(gw, headers=AUTH_A)
    response, _ = await ask(gw, headers=AUTH_B)
    assert header(response, "x-shellm-cache") == "hit"
    assert runs(gw) == 1


@pytest_twisted.ensureDeferred
async def test_one_answer_serves_every_dialect():
    """
    The key is the normalised request, not the body: a /completions answer
    serves the same question asked in the OpenAI and Anthropic dialects.
    """
    gw = cached_gateway()
    await ask(gw, body=body_of("Say hi"))
    chat = {"model": "claude", "messages": [{"role": "user", "content": "Say hi"}]}
    response, body = await ask(gw, "/v1/chat/completions", chat)
    assert header(response, "x-shellm-cache") == "hit"
    assert body["choices"][0]["message"]["content"] == "Quicksort"
    message = {"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "Say hi"}]}
    response, body = await ask(gw, "/v1/messages", message)
    assert header(response, "x-shellm-cache") == "miss"  # max_tokens is part of the question
    assert runs(gw) == 2


# -- opting out


@pytest.mark.parametrize(
    "fields, headers",
    [({"cache": {"no_cache": True}}, {}), ({}, {"cache-control": "no-cache"})],
    ids=["body", "header"],
)
@pytest_twisted.ensureDeferred
async def test_no_cache_answers_afresh_and_stores_it(fields, headers):
    gw = cached_gateway()
    await ask(gw)
    response, body = await ask(gw, body=body_of(**fields), headers={**AUTH_A, **headers}, answer=("fresh",))
    assert header(response, "x-shellm-cache") == "bypass"
    assert body["content"] == "fresh"
    response, body = await ask(gw)
    assert header(response, "x-shellm-cache") == "hit"
    assert body["content"] == "fresh"
    assert runs(gw) == 2


@pytest.mark.parametrize(
    "fields, headers",
    [({"cache": {"no_store": True}}, {}), ({}, {"cache-control": "no-store"}), ({"cache": {"ttl": 0}}, {})],
    ids=["body", "header", "ttl-0"],
)
@pytest_twisted.ensureDeferred
async def test_no_store_keeps_nothing(fields, headers):
    gw = cached_gateway()
    response, _ = await ask(gw, body=body_of(**fields), headers={**AUTH_A, **headers})
    assert header(response, "x-shellm-cache") == "miss"
    response, _ = await ask(gw)
    assert header(response, "x-shellm-cache") == "miss"
    assert runs(gw) == 2


@pytest.mark.parametrize(
    "path, body",
    [
        ("/completions", body_of()),
        ("/completions/stream", body_of()),
        ("/v1/chat/completions", {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/messages", {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/responses", {"model": "claude", "input": "hi"}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_dialect_refuses_bad_controls(path, body):
    """
    A bad C{cache} field is a 400 naming it, in every dialect, whether or
    not caching is on.
    """
    for gw in (cached_gateway(), cached_gateway(ttl=0)):
        response = await gw.answered(gw.post(path, {**body, "cache": {"ttl": "soon"}}, headers=AUTH_A))
        assert response.code == 400
        text = json.dumps(await response.json())
        assert "cache.ttl" in text
        assert runs(gw) == 0


@pytest.mark.parametrize(
    "path, body",
    [
        ("/completions", body_of("Say hi")),
        ("/v1/chat/completions", {"model": "claude", "messages": [{"role": "user", "content": "Say hi"}]}),
        ("/v1/messages", {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "Say hi"}]}),
        ("/v1/responses", {"model": "claude", "input": "Say hi"}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_dialect_takes_the_controls(path, body):
    """
    Every dialect accepts the cache field and honours it: no_cache runs
    the provider again although the answer is stored.
    """
    gw = cached_gateway()
    response, _ = await ask(gw, path, body)
    assert header(response, "x-shellm-cache") == "miss"
    response, _ = await ask(gw, path, {**body, "cache": {"no_cache": True, "ttl": 30}})
    assert response.code == 200 and header(response, "x-shellm-cache") == "bypass"
    response, _ = await ask(gw, path, {**body, "cache": {}})
    assert header(response, "x-shellm-cache") == "hit"
    assert runs(gw) == 2


# -- expiry and size


@pytest_twisted.ensureDeferred
async def test_entries_expire_after_the_ttl():
    gw = cached_gateway(ttl=60)
    await ask(gw)
    gw.clock.advance(59)
    response, _ = await ask(gw)
    assert header(response, "x-shellm-cache") == "hit"
    gw.clock.advance(1)
    response, _ = await ask(gw)
    assert header(response, "x-shellm-cache") == "miss"
    assert runs(gw) == 2


@pytest_twisted.ensureDeferred
async def test_a_request_may_keep_its_answer_for_less_but_not_more():
    gw = cached_gateway(ttl=60)
    await ask(gw, body=body_of(cache={"ttl": 10}))
    gw.clock.advance(10)
    response, _ = await ask(gw, body=body_of(cache={"ttl": 3600}))
    assert header(response, "x-shellm-cache") == "miss"
    gw.clock.advance(60)  # capped at the operator's 60 s
    response, _ = await ask(gw)
    assert header(response, "x-shellm-cache") == "miss"
    assert runs(gw) == 3


@pytest_twisted.ensureDeferred
async def test_the_byte_bound_evicts_the_least_recently_used():
    """
    With room for about two answers, a third evicts the one least recently
    read, and the bytes held never pass the bound.
    """
    gw = cached_gateway(max_bytes=2 * 1400)
    text = "x" * 400  # stored twice (the text and its deltas) plus overhead: ~1300 bytes
    for prompt in ("one", "two"):
        await ask(gw, body=body_of(prompt), answer=(text,))
    await ask(gw, body=body_of("one"))  # "one" is now the most recently used
    await ask(gw, body=body_of("three"), answer=(text,))
    stats = gw.api.cache.stats()
    assert stats["entries"] == 2 and stats["bytes"] <= 2 * 1400
    response, _ = await ask(gw, body=body_of("one"), answer=(text,))
    assert header(response, "x-shellm-cache") == "hit"
    response, _ = await ask(gw, body=body_of("two"), answer=(text,))
    assert header(response, "x-shellm-cache") == "miss"


@pytest_twisted.ensureDeferred
async def test_an_answer_larger_than_the_cache_is_not_kept():
    gw = cached_gateway(max_bytes=1000)
    await ask(gw, answer=("y" * 2000,))
    response, _ = await ask(gw, answer=("y" * 2000,))
    assert header(response, "x-shellm-cache") == "miss"
    assert gw.api.cache.stats()["entries"] == 0


# -- what is stored


@pytest_twisted.ensureDeferred
async def test_fallback_answers_are_not_stored():
    gw = cached_gateway()
    d = gw.post("/completions", body_of(), headers=AUTH_A)
    gw.providers["claude"].last.fail(ProviderFailed("claude failed (exit code 1)"))
    gw.providers["gemini"].last.emit("from gemini").succeed()
    body = await (await gw.answered(d)).json()
    assert body["fallback"] is True
    response, _ = await ask(gw)
    assert header(response, "x-shellm-cache") == "miss"
    assert runs(gw) == 2


@pytest_twisted.ensureDeferred
async def test_failed_and_truncated_answers_are_not_stored():
    gw = cached_gateway()
    d = gw.post("/completions", body_of(fallback=False), headers=AUTH_A)
    gw.providers["claude"].last.fail(ProviderFailed("claude failed (exit code 1)"))
    assert (await gw.answered(d)).code == 502
    d = gw.post("/completions", body_of(fallback=False), headers=AUTH_A)
    gw.providers["claude"].last.emit("cut").succeed(ProviderResult(finish_reason="length"))
    assert (await gw.answered(d)).code == 200
    response, _ = await ask(gw, body=body_of(fallback=False))
    assert header(response, "x-shellm-cache") == "miss"
    assert runs(gw) == 3


# -- coalescing


@pytest_twisted.ensureDeferred
async def test_identical_concurrent_requests_cost_one_run():
    """
    Five identical requests at once: one provider run; the first is a miss,
    the four that waited for it are hits with its text.
    """
    gw = cached_gateway()
    pending = [gw.post("/completions", body_of(), headers=AUTH_A) for _ in range(5)]
    assert runs(gw) == 1
    assert not any(has_result(d) for d in pending)
    gw.providers["claude"].last.emit("Quick", "sort").succeed(RESULT)
    responses = [await gw.answered(d) for d in pending]
    assert sorted(header(r, "x-shellm-cache") for r in responses) == ["hit"] * 4 + ["miss"]
    assert {(await r.json())["content"] for r in responses} == {"Quicksort"}
    assert runs(gw) == 1


@pytest_twisted.ensureDeferred
async def test_waiters_hold_no_queue_place():
    """
    Waiting requests take no place in the provider's queue: a queue with
    room for one run and no line still coalesces a burst.
    """
    gw = cached_gateway(max_concurrent=1, max_queue_depth=0)
    pending = [gw.post("/completions", body_of(), headers=AUTH_A) for _ in range(3)]
    gw.providers["claude"].last.emit("ok").succeed(RESULT)
    assert [(await gw.answered(d)).code for d in pending] == [200, 200, 200]


@pytest_twisted.ensureDeferred
async def test_a_waiter_that_leaves_does_not_stop_the_run():
    gw = cached_gateway()
    leader = gw.post("/completions", body_of(), headers=AUTH_A)
    leaving = gw.post("/completions", body_of(), headers=AUTH_A)
    staying = gw.post("/completions", body_of(), headers=AUTH_A)
    leaving.cancel()
    leaving.addErrback(lambda f: None)
    run = gw.providers["claude"].last
    assert not run.done
    run.emit("still here").succeed(RESULT)
    assert (await (await gw.answered(leader)).json())["content"] == "still here"
    assert (await (await gw.answered(staying)).json())["content"] == "still here"
    assert runs(gw) == 1


@pytest_twisted.ensureDeferred
async def test_when_the_leader_fails_the_next_waiter_leads():
    """
    A leader that fails gets its error; the requests that waited for it do
    not inherit it: one of them runs, the others wait for that run.
    """
    gw = cached_gateway()
    pending = [gw.post("/completions", body_of(fallback=False), headers=AUTH_A) for _ in range(3)]
    gw.providers["claude"].last.fail(ProviderFailed("claude failed (exit code 1)"))
    assert runs(gw) == 2
    gw.providers["claude"].last.emit("second try").succeed(RESULT)
    responses = [await gw.answered(d) for d in pending]
    assert [r.code for r in responses] == [502, 200, 200]
    assert [header(r, "x-shellm-cache") for r in responses[1:]] == ["miss", "hit"]
    assert runs(gw) == 2


@pytest_twisted.ensureDeferred
async def test_waiting_is_bounded():
    """
    A request waits for an identical one under way at most max_wait
    seconds, then runs on its own.
    """
    gw = cached_gateway(max_wait=30)
    leader = gw.post("/completions", body_of(), headers=AUTH_A)
    waiter = gw.post("/completions", body_of(), headers=AUTH_A)
    gw.clock.advance(30)
    assert runs(gw) == 2
    gw.providers["claude"].last.emit("own").succeed(RESULT)
    response = await gw.answered(waiter)
    assert header(response, "x-shellm-cache") == "miss"
    gw.providers["claude"].runs[0].emit("lead").succeed(RESULT)
    assert (await gw.answered(leader)).code == 200


# -- streamed hits, in every dialect


STREAMS = [
    ("/completions/stream", body_of("Say hi")),
    ("/v1/chat/completions", {"model": "claude", "stream": True, "messages": [{"role": "user", "content": "Say hi"}]}),
    (
        "/v1/messages",
        {"model": "claude", "stream": True, "max_tokens": 50, "messages": [{"role": "user", "content": "Say hi"}]},
    ),
    ("/v1/responses", {"model": "claude", "stream": True, "input": "Say hi"}),
]


def _shape(chunks: list[bytes]) -> list:
    """
    The events of a stream, without what differs between two answers (ids,
    times, durations).
    """
    volatile = {"id", "created", "created_at", "request_id", "duration_ms", "queued_ms", "response_id", "item_id"}

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in volatile}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    shape = []
    for f in frames(chunks):
        for line in f.split("\n"):
            if line.startswith("event: "):
                shape.append(line)
            elif line.startswith("data: "):
                data = line[len("data: ") :]
                shape.append(strip(json.loads(data)) if data.startswith("{") else data)
    return shape


async def _stream(gw: Gateway, path: str, body: dict, answer=None) -> tuple:
    started = runs(gw)
    d = gw.post(path, body, headers=AUTH_A, unbuffered=True)
    if answer is not None:
        gw.providers["claude"].last.emit(*answer).succeed(RESULT)
    else:
        assert runs(gw) == started, "not a hit: the provider was started"
    response = await gw.answered(d)
    chunks: list[bytes] = []
    ended = treq.collect(response, chunks.append)
    gw.stub.flush()
    await ended
    return response, chunks


@pytest.mark.parametrize("path, body", STREAMS, ids=[p for p, _ in STREAMS])
@pytest_twisted.ensureDeferred
async def test_a_streamed_hit_is_replayed_in_the_same_events(path, body):
    """
    A streamed hit is written at once, event for event as the live stream
    was (each delta, the final usage, the end), with no provider run.
    """
    gw = cached_gateway()
    live, live_chunks = await _stream(gw, path, body, answer=("Hel", "lo", "!"))
    assert header(live, "x-shellm-cache") == "miss"
    hit, hit_chunks = await _stream(gw, path, body)
    assert header(hit, "x-shellm-cache") == "hit"
    assert runs(gw) == 1
    assert _shape(hit_chunks) == _shape(live_chunks)


@pytest.mark.parametrize("path, body", STREAMS, ids=[p for p, _ in STREAMS])
@pytest_twisted.ensureDeferred
async def test_a_json_answer_serves_a_stream(path, body):
    """
    An answer stored from a non-streamed request is replayed as a stream
    with the whole text.
    """
    gw = cached_gateway()
    whole = "/completions" if path == "/completions/stream" else path
    await ask(gw, whole, {**body, "stream": False} if whole != "/completions" else body, answer=("Hello", " there"))
    hit, chunks = await _stream(gw, path, body)
    assert header(hit, "x-shellm-cache") == "hit"
    text = b"".join(chunks).decode()
    assert '"Hello"' in text and '" there"' in text
    assert runs(gw) == 1


# -- accounting, limits, admin, metrics


@pytest_twisted.ensureDeferred
async def test_hits_are_in_the_ledger_with_no_provider_tokens():
    """
    A hit has its ledger row: status 200 under the provider "cache", with
    zero tokens and zero cost, while the miss keeps its real usage.
    """
    ledger = RecordingLedger()
    gw = cached_gateway(ledger=ledger)
    await ask(gw)
    await ask(gw)
    miss, hit = ledger.rows
    assert (miss.provider, miss.input_tokens, miss.output_tokens, miss.cost_usd) == ("claude", 12, 34, 0.5)
    assert (hit.provider, hit.status, hit.input_tokens, hit.output_tokens, hit.cost_usd) == ("cache", 200, 0, 0, 0)
    assert hit.model == "claude-x" and hit.key_id == miss.key_id and hit.client == "a"


@pytest_twisted.ensureDeferred
async def test_a_hit_counts_against_the_rate_limit():
    gw = cached_gateway(rpm=2)
    await ask(gw)
    response, _ = await ask(gw)
    assert header(response, "x-shellm-cache") == "hit"
    await error_response(gw, gw.post("/completions", body_of(), headers=AUTH_A), 429, "rate_limited")


@pytest_twisted.ensureDeferred
async def test_a_hit_needs_no_provider_slot_or_circuit():
    """
    A hit is answered while the provider's only slot is taken, its line is
    full, and even while its circuit is open.
    """
    gw = cached_gateway(max_concurrent=1, max_queue_depth=0, circuit_threshold=1)
    await ask(gw)
    busy = gw.post("/completions", body_of("another question", fallback=False), headers=AUTH_A)
    response, _ = await ask(gw)
    assert header(response, "x-shellm-cache") == "hit"
    gw.providers["claude"].last.fail(ProviderFailed("claude failed (exit code 1)"))
    assert (await gw.answered(busy)).code == 502
    assert gw.router.circuits["claude"].state == "open"
    response, _ = await ask(gw)
    assert header(response, "x-shellm-cache") == "hit"


@pytest_twisted.ensureDeferred
async def test_admin_sees_and_clears_the_cache():
    gw = cached_gateway()
    await ask(gw)
    await ask(gw)
    stats = await (await gw.answered(gw.get("/admin/cache", headers=ADMIN))).json()
    assert {k: stats[k] for k in ("entries", "hits", "misses", "hit_ratio")} == {
        "entries": 1,
        "hits": 1,
        "misses": 1,
        "hit_ratio": 0.5,
    }
    assert stats["bytes"] > 0
    response = await gw.answered(gw.stub.delete("http://shellm.test/admin/cache", headers=ADMIN))
    assert response.code == 200
    cleared = await response.json()
    assert cleared["cleared"] == 1 and cleared["entries"] == 0 and cleared["bytes"] == 0
    response, _ = await ask(gw)
    assert header(response, "x-shellm-cache") == "miss"


@pytest_twisted.ensureDeferred
async def test_admin_cache_needs_an_admin_key():
    gw = cached_gateway()
    response = await gw.answered(gw.stub.delete("http://shellm.test/admin/cache", headers=AUTH_A))
    assert response.code == 403
    assert gw.api.cache.stats()["entries"] == 0


@pytest_twisted.ensureDeferred
async def test_metrics_show_the_cache():
    gw = cached_gateway()
    await ask(gw)
    await ask(gw)
    await ask(gw, body=body_of(cache={"no_cache": True}))
    text = (await (await gw.answered(gw.get("/metrics", headers=AUTH_A))).text()).splitlines()
    for line in (
        'shellm_cache_requests_total{result="hit"} 1.0',
        'shellm_cache_requests_total{result="miss"} 1.0',
        'shellm_cache_requests_total{result="bypass"} 1.0',
        "shellm_cache_entries 1.0",
    ):
        assert line in text
    assert any(line.startswith("shellm_cache_bytes ") and float(line.split()[1]) > 0 for line in text)
