"""
The HTTP edge: what reaches the daemon before a handler does.  Header bytes
that are not UTF-8, credential headers sent twice, request ids, JSON that
Python's parser chokes on, what Twisted's HTTP parser refuses, clients too
slow to finish a request, and too many connections.

Handlers are reached through StubTreq (see L{tests.test_api}); the
connection itself through the real L{ShellmSite} channel on a
C{StringTransport}, with time on a L{Clock}.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from shellm.http.api import ShellmAPI
from shellm.http.connections import LOG_EVERY, OTHER_DESCRIPTORS, ConnectionLimits, check_descriptor_limit, peer_key
from shellm.http.web import ShellmSite, valid_request_id
from shellm.routing.auth import Authenticator, Client
from tests.daemon import parse_response as parse
from tests.fake_providers import fake_providers, make_router
from tests.test_api import HEARTBEAT, JSON, MAX_BODY, MAX_PROMPT, Gateway, body_of, error_response, header, stub_treq

KEY = "edge-test-key-0123456789"


def make_site(authenticator=None, max_body_bytes: int = MAX_BODY, **site_settings) -> Gateway:
    """
    A gateway like L{tests.test_api.make_gateway}, with client keys and the
    site's connection settings as given.
    """
    clock = Clock()
    clock.advance(1000)
    providers = fake_providers()
    router = make_router(clock, providers)
    api = ShellmAPI(clock, router, max_prompt_chars=MAX_PROMPT, heartbeat=HEARTBEAT, authenticator=authenticator)
    site = ShellmSite(api.resource(), clock, max_body_bytes, **site_settings)
    return Gateway(clock, providers, router, site, stub_treq(site), api)


@pytest.fixture
def gw() -> Gateway:
    return make_site()


@pytest.fixture
def keyed() -> Gateway:
    return make_site(Authenticator([Client("app", KEY)]))


def failures(events: list[dict]) -> list[dict]:
    return [e for e in events if "log_failure" in e or e.get("log_level") == LogLevel.critical]


def access_lines(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("log_namespace") == "shellm.access"]


# -- request bodies Python's JSON parser refuses in its own way


@pytest.mark.parametrize(
    "raw, said",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"model": "claude", "prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}", "number too long"),
    ],
    ids=["nested 100,000 deep", "5,000-digit integer"],
)
@pytest.mark.parametrize("path", ["/completions", "/v1/chat/completions", "/v1/messages"])
@pytest_twisted.ensureDeferred
async def test_json_the_parser_cannot_take_is_400(raw, said, path, log_events):
    """
    JSON nested deeper than Python recurses (RecursionError) and an integer
    longer than Python converts (a plain ValueError) are a 400 naming the
    problem, on every endpoint that reads JSON; nothing is logged as a bug.
    """
    gw = make_site(max_body_bytes=len(raw) + 1)
    response = await gw.answered(gw.post(path, raw=raw))
    assert response.code == 400
    assert header(response, "content-type") == "application/json"
    assert said in json.dumps(await response.json())
    assert failures(log_events) == []


# -- request ids


@pytest.mark.parametrize("given", ["abc\n", "abc\r\n", "\nabc", "abc\x0b"])
def test_request_id_with_a_line_break_or_control_is_invalid(given):
    """
    An id is letters, digits and . _ : - only, to its very end: C{$} no
    longer lets a final newline through.
    """
    assert not valid_request_id(given)
    assert valid_request_id(given.strip())


@pytest.mark.parametrize("path", ["/completions", "/completions/stream"])
@pytest_twisted.ensureDeferred
async def test_request_id_field_ending_in_a_newline_is_400(gw, path):
    """
    A body C{request_id} ending in a newline is refused (it used to be
    accepted, and the id in the header then differed from the logged one).
    """
    d = gw.post(path, body_of(request_id="job-42\n"))
    body = await error_response(gw, d, 400, "invalid_request")
    assert "request_id" in body["message"]
    assert not gw.providers["claude"].runs


@pytest_twisted.ensureDeferred
async def test_request_id_header_with_a_trailing_control_character_is_replaced(gw):
    """
    An X-Request-Id is used as sent or not at all: one ending in a control
    character is replaced, not trimmed into a different id.
    """
    response = await gw.answered(gw.get("/health", headers={b"x-request-id": b"trace-7\x0b"}))
    assert response.code == 200
    assert header(response, "x-request-id") != "trace-7"
    assert await response.json()  # the body is JSON


# -- header bytes that are not UTF-8


@pytest.mark.parametrize("path", ["/health", "/openapi.json", "/metrics", "/v1/models", "/providers"])
@pytest_twisted.ensureDeferred
async def test_undecodable_request_id_is_replaced(gw, path, log_events):
    """
    C{X-Request-Id: \\xff} on any endpoint is answered normally under a
    generated id, and logged as such; nothing is logged as a failure.
    """
    response = await gw.answered(gw.get(path, headers={b"x-request-id": b"\xff\xfe"}))
    assert response.code == 200
    request_id = header(response, "x-request-id")
    assert valid_request_id(request_id) and len(request_id) == 32
    await response.content()
    assert failures(log_events) == []
    assert [line["request_id"] for line in access_lines(log_events)] == [request_id]


@pytest.mark.parametrize("name", [b"authorization", b"x-api-key"])
@pytest.mark.parametrize("path", ["/v1/models", "/providers", "/usage", "/completions"])
@pytest_twisted.ensureDeferred
async def test_undecodable_key_is_401(keyed, name, path, log_events):
    """
    A key header that is not UTF-8 is a 401 JSON error, not a 500.
    """
    value = b"Bearer \xff" + KEY.encode() if name == b"authorization" else b"\xff" + KEY.encode()
    headers = {**{k.encode(): v.encode() for k, v in JSON.items()}, name: value}
    d = keyed.post(path, body_of(), headers=headers) if path == "/completions" else keyed.get(path, headers=headers)
    response = await keyed.answered(d)
    assert response.code == 401
    assert header(response, "www-authenticate")
    assert "UTF-8" in json.dumps(await response.json())
    assert failures(log_events) == []


@pytest_twisted.ensureDeferred
async def test_undecodable_content_type_is_415(gw, log_events):
    """
    A Content-Type that is not UTF-8 is simply not application/json: 415.
    """
    d = gw.post("/completions", body_of(), headers={b"content-type": b"application/\xffjson"})
    await error_response(gw, d, 415, "unsupported_media_type")
    assert failures(log_events) == []


@pytest_twisted.ensureDeferred
async def test_undecodable_anthropic_version_still_answers(gw, log_events):
    """
    An C{anthropic-version} header that is not UTF-8 still picks the
    Anthropic model list (only its presence matters); no failure is logged.
    """
    response = await gw.answered(gw.get("/v1/models", headers={b"anthropic-version": b"\xff"}))
    assert response.code == 200
    assert "has_more" in await response.json()
    assert failures(log_events) == []


# -- credential headers sent twice


@pytest.mark.parametrize(
    "headers",
    [
        {b"authorization": [b"Bearer " + KEY.encode(), b"Bearer someone-elses-key-000"]},
        {b"authorization": [b"Bearer someone-elses-key-000", b"Bearer " + KEY.encode()]},
        {b"x-api-key": [KEY.encode(), KEY.encode()]},
    ],
    ids=["authorization, good first", "authorization, good last", "x-api-key twice"],
)
@pytest.mark.parametrize("path", ["/v1/models", "/completions"])
@pytest_twisted.ensureDeferred
async def test_a_key_header_sent_twice_is_400(keyed, headers, path):
    """
    Two Authorization (or two x-api-key) headers are refused with 400
    whichever of them holds a valid key: the last one no longer wins.
    """
    sent = Headers({b"content-type": [b"application/json"], **headers})
    if path == "/completions":
        d = keyed.stub.post("http://shellm.test" + path, data=json.dumps(body_of()).encode(), headers=sent)
    else:
        d = keyed.stub.get("http://shellm.test" + path, headers=sent)
    response = await keyed.answered(d)
    assert response.code == 400
    assert "one" in json.dumps(await response.json())
    assert not keyed.providers["claude"].runs


@pytest_twisted.ensureDeferred
async def test_one_of_each_key_header_is_still_fine(keyed):
    """
    One Authorization and one x-api-key are not duplicates: the bearer key
    is used.
    """
    headers = {b"authorization": b"Bearer " + KEY.encode(), b"x-api-key": b"some-other-value"}
    response = await keyed.answered(keyed.get("/v1/models", headers=headers))
    assert response.code == 200


# -- the connection, below the handlers

PEER = IPv4Address("TCP", "10.0.0.7", 40000)


def connect(site: ShellmSite, peer=PEER):
    """
    A channel of C{site} for a client at C{peer}, on a StringTransport.
    """
    channel = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 6100))
    channel.makeConnection(transport)
    return channel, transport


def hang_up(channel) -> None:
    channel.connectionLost(Failure(ConnectionDone()))


def assert_json_error(raw: bytes, status: int, code: str) -> dict:
    got, headers, body = parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = json.loads(body)
    assert error["error"] == code and error["message"]
    assert error["request_id"] == headers["x-request-id"]
    return error


@pytest_twisted.ensureDeferred
async def test_undecodable_request_id_answers_and_closes(gw, log_events):
    """
    The bug behind the descriptor leak: C{X-Request-Id: \\xff} with
    C{Connection: close} is answered (JSON, 200) and the connection closed,
    with one access line; it used to be an HTML 500 left open for good.
    """
    channel, transport = connect(gw.site)
    channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: \xff\r\nConnection: close\r\n\r\n")
    status, headers, body = parse(transport.value())
    assert status == 200
    assert json.loads(body)["status"]
    assert transport.disconnecting
    assert failures(log_events) == []
    assert [line["status"] for line in access_lines(log_events)] == [200]
    hang_up(channel)


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"GET /health HTTP/1.1\r\nHost: \xff\r\n\r\n", "Host"),
        (b"GET /he%FFalth HTTP/1.1\r\nHost: x\r\n\r\n", "path"),
    ],
)
def test_url_that_is_not_utf8_is_400_json(gw, raw, why, log_events):
    """
    A Host header or a percent-decoded path that is not UTF-8 (which Klein
    answers with an HTML 400 and a critical log line) is a JSON 400.
    """
    channel, transport = connect(gw.site)
    channel.dataReceived(raw)
    status, headers, body = parse(transport.value())
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert why in json.loads(body)["message"]
    assert failures(log_events) == []
    hang_up(channel)


PARSER_REFUSALS = {
    "not a request line": (b"GARBAGE\r\n\r\n", 400, "invalid_request"),
    "no version": (b"GET /health\r\n\r\n", 400, "invalid_request"),
    "header without a colon": (b"GET /health HTTP/1.1\r\nHost: x\r\nno-colon\r\n\r\n", 400, "invalid_request"),
    "NUL in a header": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400, "invalid_request"),
    "Content-Length not a number": (b"POST /completions HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, "invalid_request"),
    "two Content-Lengths": (
        b"POST /completions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        400,
        "invalid_request",
    ),
    "bad chunk": (
        b"POST /completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
        "invalid_request",
    ),
    "one header line over 16 KiB": (
        b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
    "a line over 16 KiB, no newline yet": (b"GET /" + b"a" * 20000, 431, "headers_too_large"),
    "headers over 16 KiB in all": (
        b"GET /health HTTP/1.1\r\n" + b"X-Big: aaaaaaaaaa\r\n" * 1000 + b"\r\n",
        431,
        "headers_too_large",
    ),
    "over 500 headers": (b"GET /health HTTP/1.1\r\n" + b"a:b\r\n" * 600 + b"\r\n", 431, "headers_too_large"),
}


@pytest.mark.parametrize("case", sorted(PARSER_REFUSALS))
def test_what_the_http_parser_refuses_is_json_and_closed_at_once(gw, case, log_events):
    """
    What Twisted's parser refuses (a bare C{400 Bad Request}, or a dropped
    connection for an overlong line) is a JSON error, 400 or 431 for
    headers too large, with C{Connection: close}; the connection is closed
    at once, with no timer left waiting.
    """
    raw, status, code = PARSER_REFUSALS[case]
    channel, transport = connect(gw.site)
    channel.dataReceived(raw)
    assert_json_error(transport.value(), status, code)
    assert transport.disconnecting
    channel.dataReceived(b"GET /health HTTP/1.1\r\n\r\n")  # nothing more is read
    assert parse(transport.value())[0] == status
    hang_up(channel)
    assert gw.clock.getDelayedCalls() == []
    assert failures(log_events) == []
    assert all(line["status"] == status for line in access_lines(log_events))


def test_a_refused_client_that_does_not_read_is_aborted(gw):
    """
    After a refusal the client gets a few seconds to read the answer; a
    connection still open then is aborted, not left to the idle timeout.
    """
    channel, transport = connect(gw.site)
    channel.dataReceived(b"GARBAGE\r\n\r\n")
    assert transport.disconnecting
    assert not transport.disconnected
    gw.clock.advance(channel.abort_after)
    assert transport.disconnected  # StringTransport's abortConnection
    hang_up(channel)
    assert gw.clock.getDelayedCalls() == []


# -- the request deadline

HEAD = b"POST /completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def trickle(gw: Gateway, channel, transport, seconds: float, every: float = 4.0) -> None:
    """
    Send one header byte every C{every} seconds for C{seconds}.
    """
    waited = 0.0
    while waited + every <= seconds and not transport.disconnecting:
        gw.clock.advance(every)
        waited += every
        channel.dataReceived(b"X")


def test_a_trickling_client_is_cut_at_the_deadline(log_events):
    """
    A byte every 4 s resets the idle timer but not the deadline: at 30 s
    from the first byte the client gets a JSON 408 and the connection
    closes; not a moment before.
    """
    gw = make_site(request_deadline=30)
    channel, transport = connect(gw.site)
    channel.dataReceived(HEAD + b"X-Slow: ")
    trickle(gw, channel, transport, 28)
    assert not transport.disconnecting and transport.value() == b""
    gw.clock.advance(2)
    assert_json_error(transport.value(), 408, "request_timeout")
    assert transport.disconnecting
    hang_up(channel)
    assert gw.clock.getDelayedCalls() == []
    assert [line["status"] for line in access_lines(log_events)] == [408]
    assert not gw.providers["claude"].runs


def test_a_slow_body_is_cut_at_the_deadline():
    """
    The deadline covers the body as well: a declared body that is not all
    there at 30 s is a 408.
    """
    gw = make_site(request_deadline=30)
    channel, transport = connect(gw.site)
    channel.dataReceived(HEAD + b"Content-Length: 1000\r\n\r\n{")
    trickle(gw, channel, transport, 32)
    assert_json_error(transport.value(), 408, "request_timeout")
    hang_up(channel)


def test_a_silent_connection_is_cut_at_the_deadline():
    """
    A connection that sends nothing is cut at the deadline, well before
    Twisted's 60 s idle timeout.
    """
    gw = make_site(request_deadline=30)
    channel, transport = connect(gw.site)
    gw.clock.advance(29.9)
    assert not transport.disconnecting
    gw.clock.advance(0.1)
    assert_json_error(transport.value(), 408, "request_timeout")
    hang_up(channel)
    assert gw.clock.getDelayedCalls() == []


def test_the_deadline_ends_when_the_request_is_in_and_restarts_with_the_next():
    """
    A request received in time is answered, however long the answer takes;
    on a kept-alive connection, the next request's deadline starts with its
    first byte, not when the connection opened.
    """
    gw = make_site(request_deadline=30)
    channel, transport = connect(gw.site)
    channel.dataReceived(
        HEAD + b"Content-Length: %d\r\n\r\n" % len(json.dumps(body_of())) + json.dumps(body_of()).encode()
    )
    gw.clock.advance(100)  # the provider takes its time
    assert not transport.disconnecting
    gw.providers["claude"].last.succeed()
    assert parse(transport.value())[0] == 200
    transport.clear()
    gw.clock.advance(50)  # idle, under the idle timeout
    channel.dataReceived(b"GET /health HTTP/1.1\r\n")
    gw.clock.advance(29)
    assert not transport.disconnecting
    gw.clock.advance(1)
    assert_json_error(transport.value(), 408, "request_timeout")
    hang_up(channel)
    assert gw.clock.getDelayedCalls() == []


def test_a_deadline_of_zero_is_no_deadline():
    """
    C{SHELLM_REQUEST_DEADLINE=0} turns the deadline off (the idle timeout
    still applies).
    """
    gw = make_site(request_deadline=0)
    channel, transport = connect(gw.site)
    channel.dataReceived(HEAD)
    trickle(gw, channel, transport, 100)
    assert not transport.disconnecting
    hang_up(channel)
    assert gw.clock.getDelayedCalls() == []


# -- connection limits


def test_peer_key_counts_by_remote_address_but_not_loopback():
    """
    Per-peer counting is by IP; loopback (a local proxy or tool) and UNIX
    sockets share only the total cap.
    """
    assert peer_key(IPv4Address("TCP", "203.0.113.9", 1)) == "203.0.113.9"
    assert peer_key(IPv6Address("TCP", "2001:db8::1", 1)) == "2001:db8::1"
    assert peer_key(IPv4Address("TCP", "127.0.0.1", 1)) is None
    assert peer_key(IPv4Address("TCP", "127.0.0.2", 1)) is None
    assert peer_key(IPv6Address("TCP", "::1", 1)) is None
    assert peer_key(UNIXAddress(None)) is None
    assert peer_key(None) is None


def test_limits_count_in_all_and_per_peer():
    """
    A connection past either cap is refused; one closing frees its place.
    """
    limits = ConnectionLimits(Clock(), total=4, per_peer=2)
    assert limits.admit("a") and limits.admit("a")
    assert not limits.admit("a")
    assert limits.admit("b") and limits.admit(None)
    assert limits.open == 4
    assert not limits.admit("c") and not limits.admit(None)
    limits.release("a")
    assert limits.from_peer("a") == 1
    assert limits.admit("a")
    for peer in ("a", "a", "b", None):
        limits.release(peer)
    assert limits.open == 0 and limits.from_peer("a") == 0


def test_refusals_are_logged_once_per_interval(log_events):
    """
    A flood of refused connections is one warning per L{LOG_EVERY}
    seconds, counting what was refused since the last one.
    """
    clock = Clock()
    limits = ConnectionLimits(clock, total=1, per_peer=1)
    limits.admit(None)
    for _ in range(100):
        assert not limits.admit(None)
    clock.advance(LOG_EVERY)
    assert not limits.admit(None)
    lines = [e for e in log_events if e.get("log_namespace", "").endswith("ConnectionLimits")]
    assert [line["refused"] for line in lines] == [1, 100]


@pytest.mark.parametrize(
    "soft, enough",
    [(1024, False), (1024 + OTHER_DESCRIPTORS - 1, False), (1024 + OTHER_DESCRIPTORS, True), (-1, True)],
)
def test_a_descriptor_limit_below_the_connection_cap_is_a_warning(soft, enough, log_events):
    """
    At start-up, a file limit that the connection cap and the daemon's
    other descriptors would exceed is a warning naming both settings
    (C{-1}: unlimited).
    """
    import resource

    limit = resource.RLIM_INFINITY if soft == -1 else soft
    assert check_descriptor_limit(1024, lambda which: (limit, limit)) is enough
    warnings = [e for e in log_events if "LimitNOFILE" in e.get("log_format", "")]
    assert len(warnings) == (0 if enough else 1)


def test_site_closes_connections_past_the_caps_at_once():
    """
    Past a cap the site builds no protocol (the listening port then closes
    the socket before reading a byte); a closed connection frees its place.
    """
    gw = make_site(max_connections=3, max_connections_per_ip=2)
    first, _ = connect(gw.site)
    second, _ = connect(gw.site)
    assert gw.site.buildProtocol(PEER) is None  # same address
    third, _ = connect(gw.site, IPv4Address("TCP", "127.0.0.1", 5))
    assert gw.site.buildProtocol(IPv4Address("TCP", "10.9.9.9", 5)) is None  # in all
    hang_up(first)
    assert gw.site.buildProtocol(PEER) is not None
    for channel in (second, third):
        hang_up(channel)


def test_openapi_documents_the_connection_level_answers():
    """
    /openapi.json lists, for every operation, what the connection itself
    may answer before any route: 400, 408 and 431.
    """
    from shellm.http import openapi

    document = openapi.document(["claude"], MAX_PROMPT)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert {"400", "408", "431"} <= set(operation["responses"]), (path, method)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("path", ["/admin", "/jobs/"])
async def test_a_path_werkzeug_would_redirect_is_a_json_404(gw, path, log_events):
    """
    A mounted app's prefix without its slash (or a route with one too many)
    is answered as an endpoint that does not exist: a JSON 404, never a 500
    with a traceback in the log.
    """
    body = await error_response(gw, gw.get(path), 404, "not_found")
    assert path in body["message"]
    assert not [e for e in log_events if "log_failure" in e]
