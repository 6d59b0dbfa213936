"""
What the open endpoints tell a caller without a key when auth is on
(C{/health}, C{/metrics}), and the request id under the header name each
dialect's SDKs read; through C{StubTreq} against the real Klein resource.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from shellm import __version__
from shellm.completion import ProviderHealth
from shellm.routing.auth import Authenticator, Client
from tests.test_api import JSON, body_of, header, make_gateway

KEY = "sk-exposure-test-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}


def gateway_with_keys(**api_options):
    return make_gateway(api_options={"authenticator": Authenticator([Client("app", KEY)]), **api_options})


@pytest.fixture
def gw():
    return make_gateway()


@pytest.fixture
def locked():
    """
    A gateway with one client key; gemini is not logged in.
    """
    gw = gateway_with_keys()
    gw.providers["gemini"].health = ProviderHealth(True, False, "not logged in: run gemini", "gemini 0.9.1")
    return gw


@pytest_twisted.ensureDeferred
async def test_health_without_a_key_is_what_a_load_balancer_needs(locked):
    """
    With auth on and no key, /health still answers 200, with the overall
    status, each provider's usable yes/no and the queue activity, and
    nothing else: no versions, no login hints, no limits, no uptime.
    """
    response = await locked.answered(locked.get("/health"))
    assert response.code == 200
    body = await response.json()
    assert body == {
        "status": "degraded",
        "providers": {
            "claude": {"usable": True},
            "gemini": {"usable": False},
            "codex": {"usable": True},
            "cerebras": {"usable": True},
        },
        "queue": {"active": 0, "pending": 0, "http": {"active": 0, "pending": 0}},
    }
    assert "gemini 0.9.1" not in json.dumps(body) and __version__ not in json.dumps(body)


@pytest_twisted.ensureDeferred
async def test_health_with_a_wrong_key_is_the_short_form_too(locked):
    """
    A wrong key is not an error on /health (a load balancer must always get
    its answer), and it learns no more than no key.
    """
    response = await locked.answered(locked.get("/health", headers={"x-api-key": "sk-wrong-key-0123456789"}))
    assert response.code == 200
    assert set(await response.json()) == {"status", "providers", "queue"}


@pytest_twisted.ensureDeferred
async def test_health_with_a_valid_key_has_every_detail(locked):
    response = await locked.answered(locked.get("/health", headers=AUTH))
    body = await response.json()
    assert body["version"] == __version__ and "uptime_seconds" in body
    gemini = body["providers"]["gemini"]
    assert gemini["version"] == "gemini 0.9.1" and gemini["error"] == "not logged in: run gemini"
    assert body["queue"]["max_concurrent"] == 2


@pytest_twisted.ensureDeferred
async def test_health_without_auth_has_every_detail():
    """
    Without client keys nothing changes: the full /health for everyone.
    """
    gw = make_gateway()
    body = await (await gw.answered(gw.get("/health"))).json()
    assert body["version"] == __version__ and "installed" in body["providers"]["claude"]


async def _metrics(gw, headers=None):
    response = await gw.answered(gw.get("/metrics", headers=headers))
    return response, (await response.content()).decode("utf-8")


@pytest_twisted.ensureDeferred
async def test_metrics_need_a_key_when_auth_is_on(locked):
    """
    /metrics names clients and counts their tokens: with auth on it is a
    401 JSON error without a valid key, and served with one.
    """
    d = locked.post("/completions", body_of(), headers={**JSON, **AUTH})
    locked.providers["claude"].last.succeed()
    assert (await locked.answered(d)).code == 200
    for headers in (None, {"x-api-key": "sk-wrong-key-0123456789"}):
        response, text = await _metrics(locked, headers)
        assert response.code == 401
        assert json.loads(text)["error"] == "auth_required"
        assert 'client="app"' not in text
    response, text = await _metrics(locked, AUTH)
    assert response.code == 200
    assert 'client="app"' in text


@pytest_twisted.ensureDeferred
async def test_metrics_public_serves_them_without_a_key():
    gw = gateway_with_keys(metrics_public=True)
    response, text = await _metrics(gw)
    assert response.code == 200 and "shellm_in_flight" in text


@pytest_twisted.ensureDeferred
async def test_metrics_are_open_without_auth():
    response, text = await _metrics(make_gateway())
    assert response.code == 200 and "shellm_in_flight" in text


def message(**fields):
    return {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}], **fields}


@pytest_twisted.ensureDeferred
async def test_anthropic_answers_carry_request_id(gw):
    """
    Every /v1/messages answer (success, error, stream) carries the id in
    request-id, where both Anthropic SDKs read it, equal to X-Request-Id.
    """
    d = gw.post("/v1/messages", message(), headers={**JSON, "x-request-id": "rid-ok"})
    gw.providers["claude"].last.emit("Hello").succeed()
    response = await gw.answered(d)
    assert response.code == 200
    assert header(response, "request-id") == header(response, "x-request-id") == "rid-ok"

    response = await gw.answered(gw.post("/v1/messages", message(max_tokens=0)))
    assert response.code == 400
    assert header(response, "request-id") == header(response, "x-request-id")
    assert header(response, "request-id") == (await response.json())["request_id"]

    response = await gw.answered(gw.get("/v1/messages"))
    assert response.code == 405
    assert header(response, "request-id") == header(response, "x-request-id")

    d = gw.post("/v1/messages", message(stream=True))
    gw.stub.flush()
    gw.providers["claude"].last.emit("Hello").succeed()
    response = await gw.answered(d)
    assert header(response, "content-type").startswith("text/event-stream")
    assert header(response, "request-id") and header(response, "request-id") == header(response, "x-request-id")


@pytest_twisted.ensureDeferred
async def test_openai_answers_keep_x_request_id_only(gw):
    """
    The OpenAI SDK reads x-request-id; request-id stays an Anthropic header.
    """
    d = gw.post("/v1/chat/completions", {"model": "claude", "messages": [{"role": "user", "content": "Hi"}]})
    gw.providers["claude"].last.emit("Hello").succeed()
    response = await gw.answered(d)
    assert response.code == 200 and header(response, "x-request-id")
    assert header(response, "request-id") is None
