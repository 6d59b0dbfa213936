"""
The framework floor: the least a Klein app on Twisted can do to relay one
request to the fast fake upstream with treq, with none of SheLLM's work
(no queue, router, accounting, logs or metrics)::

    SHELLM_LISTEN=tcp:8001:interface=127.0.0.1 UPSTREAM=http://127.0.0.1:9000/v1 \\
        python -m bench.floor

``POST /completions`` sends the upstream the request SheLLM would send,
reads its event stream to the end and answers a small JSON object;
``POST /completions/stream`` relays the upstream's event stream to the
client as it arrives, untouched; ``GET /health`` answers 200.  The bench measures it like the daemon, so the
difference between the two is what SheLLM itself costs.
"""

from __future__ import annotations

import json
import os

from klein import Klein
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from shellm.providers.http_client import BytesBody, ReadyURL, upstream_client

app = Klein()
http, _pool = upstream_client(reactor, max_per_host=256)
# Fed to treq as SheLLM feeds it: a URL encoded once, not on every request.
URL = ReadyURL.ready(os.environ.get("UPSTREAM", "http://127.0.0.1:1/v1") + "/chat/completions")
HEADERS = Headers(
    {b"Authorization": [b"Bearer bench-key"], b"Accept": [b"text/event-stream"], b"Content-Type": [b"application/json"]}
)


class _Body(Protocol):
    def __init__(self):
        self.chunks: list[bytes] = []
        self.done = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason) -> None:
        self.done.callback(b"".join(self.chunks))


class _Relay(Protocol):
    """
    Writes each piece of the upstream's body to the client as it arrives.
    """

    def __init__(self, request):
        self.request = request
        self.done = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.request.write(data)

    def connectionLost(self, reason) -> None:
        self.done.callback(None)


@app.route("/health", methods=["GET"])
def health(request):
    return b'{"status":"ok"}'


def _ask(request):
    prompt = json.loads(request.content.read())["prompt"]
    body = {
        "model": "gpt-oss-120b",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return http.post(
        URL, data=BytesBody(json.dumps(body).encode()), headers=HEADERS, unbuffered=True, allow_redirects=False
    )


@app.route("/completions/stream", methods=["POST"])
async def stream(request):
    response = await _ask(request)
    request.setHeader(b"content-type", b"text/event-stream")
    relay = _Relay(request)
    response.deliverBody(relay)
    await relay.done


@app.route("/completions", methods=["POST"])
async def completions(request):
    response = await _ask(request)
    reader = _Body()
    response.deliverBody(reader)
    events = (await reader.done).count(b"\ndata:") + 1
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"content": "relayed", "events": events, "provider": "cerebras"}).encode()


def main() -> None:
    site = Site(app.resource())
    site.log = lambda request: None  # no access log: the floor does nothing it need not
    endpoints.serverFromString(reactor, os.environ["SHELLM_LISTEN"]).listen(site)
    reactor.run()


if __name__ == "__main__":
    main()
