"""
A fast fake OpenAI-compatible upstream, run in its own process so the
daemon's CPU is measured alone::

    python -m bench.upstream [--port 0]     # prints "PORT <n>", then serves

Plain asyncio protocols and pre-built replies: a request costs this process
a few tens of microseconds.  ``POST /v1/chat/completions`` streams
``chat.completion.chunk`` events; the user prompt picks the behaviour:

``bench:fast`` (or anything else)
    Three deltas, a finish chunk, a usage chunk and ``[DONE]``, in one write
    with a Content-Length.
``bench:ts:<events>:<gap_ms>``
    Chunked; each delta is written ``gap_ms`` apart and its text is
    ``@<CLOCK_MONOTONIC ns>;`` taken just before the write, so a client can
    measure how long each event took to reach it.
``bench:hold``
    Chunked; the first delta at once, the rest when ``POST /bench/release``
    is called (or after ``HOLD_LIMIT`` seconds, so nothing waits forever).

``GET /v1/models`` answers the daemon's health check; ``GET /bench/stats``
says how many requests were served and how many are held.  A request with
``"stream": false`` gets one JSON completion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time

#: A held stream is finished after this many seconds even if nobody releases it.
HOLD_LIMIT = 120.0
_MODE = re.compile(rb"bench:(fast|ts|hold)(?::(\d+):(\d+))?")


def _chunk(delta: str | None = None, finish: str | None = None, usage: bool = False) -> bytes:
    body: dict = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench-model",
        "choices": [],
    }
    if delta is not None or finish is not None:
        body["choices"] = [{"index": 0, "delta": {"content": delta} if delta else {}, "finish_reason": finish}]
    if usage:
        body["usage"] = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


_TAIL = _chunk(finish="stop") + _chunk(usage=True) + b"data: [DONE]\n\n"
_FAST_BODY = _chunk("Hi! ") + _chunk("I am a ") + _chunk("fast fake.") + _TAIL
_FAST = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
    + str(len(_FAST_BODY)).encode()
    + b"\r\n\r\n"
    + _FAST_BODY
)
_JSON_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi! I am a fast fake."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
).encode()
_JSON = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_JSON_BODY)).encode()
    + b"\r\n\r\n"
    + _JSON_BODY
)
_CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _reply(status: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


_MODELS = _reply("200 OK", b'{"object":"list","data":[{"id":"bench-model","object":"model"}]}')
_NOT_FOUND = _reply("404 Not Found", b'{"error":{"message":"not found"}}')


def _as_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream:
    """
    What the connections share: counters and the held streams.
    """

    def __init__(self, loop):
        self.loop = loop
        self.served = 0
        self.held: set = set()

    def release(self) -> int:
        held, self.held = self.held, set()
        for finish in held:
            finish()
        return len(held)


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, upstream: Upstream):
        self.upstream = upstream
        self.buffer = b""
        self.transport = None
        self.busy = False  # a chunked reply is being written: later requests wait
        self.timers: list = []

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop >= 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.handle(head, body)

    def handle(self, head: bytes, body: bytes) -> None:
        upstream = self.upstream
        line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
        method, _, rest = line.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        write = self.transport.write
        if method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
            upstream.served += 1
            if b'"stream": false' in body or b'"stream":false' in body:
                write(_JSON)
                return
            mode = _MODE.search(body)
            kind = mode.group(1) if mode else b"fast"
            if kind == b"ts":
                self.timestamped(int(mode.group(2) or 10), int(mode.group(3) or 5) / 1000)
            elif kind == b"hold":
                self.hold()
            else:
                write(_FAST)
        elif method == b"GET" and path in (b"/v1/models", b"/models"):
            write(_MODELS)
        elif path == b"/bench/release":
            write(_reply("200 OK", json.dumps({"released": upstream.release()}).encode()))
        elif path == b"/bench/stats":
            write(_reply("200 OK", json.dumps({"served": upstream.served, "held": len(upstream.held)}).encode()))
        else:
            write(_NOT_FOUND)

    def _end_chunked(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        if self.transport.is_closing():
            return
        self.transport.write(_as_chunk(_TAIL) + b"0\r\n\r\n")
        self.busy = False
        if self.buffer:
            self.data_received(b"")

    def timestamped(self, events: int, gap: float) -> None:
        self.busy = True
        self.transport.write(_CHUNKED_HEAD)
        loop = self.upstream.loop

        def send(left: int) -> None:
            if self.transport.is_closing():
                return
            self.transport.write(_as_chunk(_chunk(f"@{time.monotonic_ns()};")))
            if left > 1:
                self.timers = [loop.call_later(gap, send, left - 1)]
            else:
                self._end_chunked()

        send(events)

    def hold(self) -> None:
        self.busy = True
        self.transport.write(_CHUNKED_HEAD + _as_chunk(_chunk("held ")))
        upstream = self.upstream

        def finish() -> None:
            upstream.held.discard(finish)
            if self.transport.is_closing():
                return
            self.transport.write(_as_chunk(_chunk("released.")))
            self._end_chunked()

        upstream.held.add(finish)
        self.timers = [upstream.loop.call_later(HOLD_LIMIT, finish)]


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    upstream = Upstream(loop)
    server = await loop.create_server(lambda: UpstreamProtocol(upstream), "127.0.0.1", port, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The bench owns this process; if the bench dies, so does this.
    parent = os.getppid()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            if os.getppid() != parent:
                break
    server.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
