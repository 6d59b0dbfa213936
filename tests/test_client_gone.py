"""
A client that goes away stops everything its request started, and nothing
else: no fallback run for nobody, no failure counted against the provider,
and a 499 in the usage accounting, whatever error the stopped call reported
on its way out (an HTTP client reports a cancelled request as a connection
failure).
"""

from __future__ import annotations

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool, ResponseNeverReceived

from shellm.errors import ProviderUnavailable
from shellm.http.api import ShellmAPI
from shellm.http.web import ShellmSite
from shellm.providers.cerebras import CerebrasProvider
from shellm.providers.http_client import upstream_client
from tests.daemon import eventually
from tests.fake_providers import FakeRun, fake_providers, make_router
from tests.fakes.fake_openai_server import start_fake_openai
from tests.test_api import HEARTBEAT, JSON, MAX_BODY, MAX_PROMPT, _hang_up, _HangUp, make_gateway

#: The body of one request per dialect, streaming or not.
BODIES = {
    "/completions": {"prompt": "hi"},
    "/completions/stream": {"prompt": "hi"},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages": {"max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]},
}


def requests_counted(api: ShellmAPI, status: str) -> dict[str, float]:
    """
    C{shellm_requests} by provider, for one status.
    """
    counted: dict[str, float] = {}
    for metric in api.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "shellm_requests_total" and sample.labels["status"] == status:
                provider = sample.labels["provider"]
                counted[provider] = counted.get(provider, 0) + sample.value
    return counted


def report_failure_when_cancelled(run: FakeRun) -> None:
    """
    Make C{run} answer a cancellation the way treq does: with a failure of
    its own rather than L{CancelledError}.
    """
    original = run._cancel

    def cancel(result: Deferred) -> None:
        original(result)
        result.errback(ProviderUnavailable("cerebras could not be reached"))

    run._cancel = cancel
    run.result = Deferred(cancel)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("path", ["/completions", "/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("provider", ["claude", "cerebras"])
@pytest_twisted.ensureDeferred
async def test_client_gone_starts_no_fallback_and_blames_nobody(provider, path, stream):
    """
    For a CLI and an HTTP provider, in every dialect, streaming or not: the
    client leaves while the call runs, the call reports a provider failure
    as it is stopped, and still no fallback starts, the circuit counts no
    failure, and the request is counted as 499 (never a 200 from a fallback).
    """
    gw = make_gateway()
    api = gw.api
    target = gw.providers[provider]
    target.on_start = report_failure_when_cancelled
    if path == "/completions" and stream:
        path = "/completions/stream"
    body = {"model": provider, **BODIES[path]}
    if stream and path != "/completions/stream":
        body["stream"] = True
    d = gw.post(path, body, **({"unbuffered": True} if stream else {}))
    gw.stub.flush()
    run = target.last
    if stream:
        response = await gw.opened(d)
        treq.collect(response, _hang_up).addErrback(lambda f: f.trap(_HangUp))
        run.emit("partial")
    else:
        d.cancel()
        d.addErrback(lambda f: None)  # the client's own view of giving up
    gw.stub.flush()
    assert run.cancelled
    run.reap()
    started = {name: len(p.runs) for name, p in gw.providers.items()}
    assert started == {name: int(name == provider) for name in gw.providers}
    assert gw.router.circuits[provider].failures == 0
    assert requests_counted(api, "499") == {provider: 1}
    assert requests_counted(api, "200") == {}
    assert requests_counted(api, "503") == {}


@pytest_twisted.ensureDeferred
async def test_three_impatient_clients_leave_the_http_provider_closed():
    """
    The reported case, end to end on the real reactor: three clients give up
    after 0.3 s on a slow upstream (the real Cerebras provider over treq).
    Its circuit stays closed with no failure counted, no fallback ran, and
    a fourth request still goes to it.
    """
    from twisted.internet import reactor

    fake, port = start_fake_openai(reactor)
    fake.delay = 30.0  # no headers until long after the clients left
    http, pool = upstream_client(reactor)
    providers = fake_providers()
    providers["cerebras"] = CerebrasProvider(reactor, http, "csk-test", fake.base_url, 60.0)
    router = make_router(reactor, providers, circuit_threshold=3)
    api = ShellmAPI(reactor, router, max_prompt_chars=MAX_PROMPT, heartbeat=HEARTBEAT)
    site = ShellmSite(api.resource(), reactor, MAX_BODY)
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    url = f"http://127.0.0.1:{listening.getHost().port}"
    client_pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        for _ in range(3):
            attempt = treq.post(
                url + "/completions",
                json={"model": "cerebras", "prompt": "hi"},
                headers=JSON,
                timeout=0.3,
                pool=client_pool,
            )
            with pytest.raises(ResponseNeverReceived):  # treq's timeout cancelled the request
                await attempt
        # The server notices each disconnect within a few turns.
        assert await eventually(lambda: requests_counted(api, "499") == {"cerebras": 3})
        assert router.circuits["cerebras"].state == "closed"
        assert router.circuits["cerebras"].failures == 0
        assert all(not p.runs for name, p in providers.items() if name != "cerebras")
        fake.delay = 0.0
        response = await treq.post(
            url + "/completions", json={"model": "cerebras", "prompt": "hi"}, headers=JSON, pool=client_pool
        )
        answer = await response.json()
        assert response.code == 200 and answer["provider"] == "cerebras" and not answer.get("fallback")
    finally:
        await listening.stopListening()
        await client_pool.closeCachedConnections()
        await pool.closeCachedConnections()
        fake.abort_all()
        await port.stopListening()
