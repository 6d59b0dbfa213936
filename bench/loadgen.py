"""
The load generator: HTTP/1.1 keep-alive connections on raw asyncio
protocols, one pre-built request per scenario, responses parsed just enough
(status, Content-Length or chunked body, server-sent event frames) to time
them.  Every run is bounded by a deadline and a request count.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from attrs import define, field

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC: the same clock in every process


def build_request(port: int, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> bytes:
    """
    One complete request, ready to be written as many times as wanted.
    """
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload


@define
class Response:
    keep_frames: bool
    sent_ns: int = 0
    status: int = 0
    body: bytearray = field(factory=bytearray)
    #: When the first C{data:} frame arrived.
    first_event_ns: int | None = None
    #: (arrival, frame) for every complete SSE frame, if asked for.
    frames: list = field(factory=list)
    done_ns: int = 0
    _scanned: int = 0

    def feed(self, data: bytes, at: int) -> None:
        self.body += data
        if self.first_event_ns is not None and not self.keep_frames:
            return
        body = self.body
        while True:
            end = body.find(b"\n\n", self._scanned)
            if end < 0:
                return
            frame = bytes(body[self._scanned : end])
            self._scanned = end + 2
            if frame.startswith(b"data:"):
                if self.first_event_ns is None:
                    self.first_event_ns = at
                    if not self.keep_frames:
                        return
            if self.keep_frames:
                self.frames.append((at, frame))

    @property
    def latency_ns(self) -> int:
        return self.done_ns - self.sent_ns


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _IDLE = range(8)


class HttpConnection(asyncio.Protocol):
    """
    One keep-alive connection: one request at a time.
    """

    def __init__(self):
        self.transport = None
        self._buffer = bytearray()
        self._state = _IDLE
        self._left = 0
        self._response: Response | None = None
        self._waiter: asyncio.Future | None = None
        self.closed = False
        self._close_after = False

    @property
    def response(self) -> Response | None:
        """
        The response being read (or the last one read).
        """
        return self._response

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._state == _UNTIL_CLOSE:
                self._finish(now_ns())
            else:
                self._waiter.set_exception(ConnectionError("connection closed mid-response"))

    def request(self, raw: bytes, keep_frames: bool = False) -> asyncio.Future:
        self._response = Response(keep_frames)
        self._waiter = asyncio.get_running_loop().create_future()
        self._state = _HEAD
        self._buffer.clear()
        self._response.sent_ns = now_ns()
        self.transport.write(raw)
        return self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _finish(self, at: int) -> None:
        self._state = _IDLE
        self._response.done_ns = at
        if not self._waiter.done():
            self._waiter.set_result(self._response)
        if self._close_after:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        at = now_ns()
        buffer = self._buffer
        buffer += data
        response = self._response
        while buffer:
            state = self._state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buffer[:end]).lower()
                del buffer[: end + 4]
                response.status = int(head[9:12])
                self._close_after = b"\r\nconnection: close" in head
                if b"\r\ntransfer-encoding: chunked" in head:
                    self._state = _CHUNK_SIZE
                else:
                    at_length = head.find(b"\r\ncontent-length:")
                    if at_length >= 0:
                        stop = head.find(b"\r\n", at_length + 2)
                        self._left = int(head[at_length + 17 : stop if stop >= 0 else None])
                        self._state = _LENGTH
                        if self._left == 0:
                            self._finish(at)
                            return
                    else:
                        self._state = _UNTIL_CLOSE
            elif state == _LENGTH:
                piece = bytes(buffer[: self._left])
                del buffer[: len(piece)]
                self._left -= len(piece)
                response.feed(piece, at)
                if self._left == 0:
                    self._finish(at)
                    return
            elif state == _CHUNK_SIZE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buffer[:end]).split(b";")[0], 16)
                del buffer[: end + 2]
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._left = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                piece = bytes(buffer[: self._left])
                del buffer[: len(piece)]
                self._left -= len(piece)
                response.feed(piece, at)
                if self._left == 0:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buffer) < 2:
                    return
                del buffer[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                del buffer[: end + 2]
                if end == 0:
                    self._finish(at)
                    return
            elif state == _UNTIL_CLOSE:
                response.feed(bytes(buffer), at)
                buffer.clear()
            else:
                return  # bytes nobody asked for


async def connect(port: int, timeout: float = 10.0) -> HttpConnection:
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(loop.create_connection(HttpConnection, "127.0.0.1", port), timeout)
    return protocol


def percentile(values: list, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@define
class LoadResult:
    concurrency: int
    completed: int = 0  # counted: finished inside the measuring window
    errors: int = 0
    window_s: float = 0.0
    latencies_ms: list = field(factory=list)
    first_event_ms: list = field(factory=list)
    relay_ms: list = field(factory=list)
    #: Seconds of CPU used by a watched process inside the window, by name.
    cpu_s: dict = field(factory=dict)
    client_cpu_s: float = 0.0
    failures: list = field(factory=list)  # a few examples, for the log

    @property
    def rate(self) -> float:
        return self.completed / self.window_s if self.window_s else 0.0

    def p(self, q: float, values: list | None = None) -> float:
        return percentile(self.latencies_ms if values is None else values, q)

    def cpu_ms_per_request(self, name: str) -> float:
        if name not in self.cpu_s or not self.completed:
            return float("nan")
        return self.cpu_s[name] * 1000 / self.completed


def relay_delays_ms(response: Response) -> list:
    """
    For each frame that carries an upstream timestamp C{@<ns>;}, how long it
    took from that write to its arrival here.
    """
    delays = []
    for at, frame in response.frames:
        start = frame.find(b"@")
        while start >= 0:
            stop = frame.find(b";", start)
            digits = frame[start + 1 : stop]
            if stop > start and digits.isdigit():
                delays.append((at - int(digits)) / 1e6)
            start = frame.find(b"@", stop + 1 if stop > start else start + 1)
    return delays


async def run_load(
    port: int,
    request: Callable[[int], bytes] | bytes,
    concurrency: int,
    check: Callable[[Response], bool],
    *,
    measure_s: float,
    warmup_s: float = 0.0,
    max_requests: int = 10**9,
    keep_frames: bool = False,
    request_timeout: float = 30.0,
    cpu_probes: dict | None = None,
) -> LoadResult:
    """
    C{concurrency} connections, each sending one request after another
    until the window closes or C{max_requests} have been sent.  Requests
    that finish inside the window are counted; C{cpu_probes} (name ->
    function returning CPU seconds) are read at the window's edges.

    @param request: the raw request, or a function of the worker's number
        returning it (so workers can differ).
    """
    loop = asyncio.get_running_loop()
    result = LoadResult(concurrency)
    probes = cpu_probes or {}
    started = now_ns()
    window_start = started + int(warmup_s * 1e9)
    window_end = window_start + int(measure_s * 1e9)
    hard_stop = loop.time() + warmup_s + measure_s + request_timeout + 5
    marks: dict = {}
    sent = 0

    def mark(name: str) -> None:
        marks[name] = ({k: f() for k, f in probes.items()}, time.process_time(), now_ns())

    timers = [loop.call_later(warmup_s + measure_s, mark, "end")]
    if warmup_s > 0:
        timers.append(loop.call_later(warmup_s, mark, "start"))
    else:
        mark("start")

    async def worker(number: int) -> None:
        nonlocal sent
        raw = request(number) if callable(request) else request
        connection = None
        try:
            while now_ns() < window_end and sent < max_requests and loop.time() < hard_stop:
                sent += 1
                if connection is None or connection.closed:
                    try:
                        connection = await connect(port)
                    except (TimeoutError, OSError) as e:
                        result.errors += 1
                        if len(result.failures) < 5:
                            result.failures.append(f"connect: {e!r}")
                        await asyncio.sleep(0.05)
                        continue
                try:
                    response = await asyncio.wait_for(connection.request(raw, keep_frames), request_timeout)
                except (TimeoutError, ConnectionError) as e:
                    connection.close()
                    connection = None
                    if now_ns() >= window_start:
                        result.errors += 1
                        if len(result.failures) < 5:
                            result.failures.append(repr(e))
                    continue
                if response.sent_ns < window_start:
                    continue  # warm-up
                if response.done_ns > window_end:
                    continue
                if response.status != 200 or not check(response):
                    result.errors += 1
                    if len(result.failures) < 5:
                        result.failures.append(f"{response.status}: {bytes(response.body[-300:])!r}")
                    continue
                result.completed += 1
                result.latencies_ms.append(response.latency_ns / 1e6)
                if response.first_event_ns is not None:
                    result.first_event_ms.append((response.first_event_ns - response.sent_ns) / 1e6)
                if keep_frames:
                    result.relay_ms.extend(relay_delays_ms(response))
        finally:
            if connection is not None:
                connection.close()

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        for timer in timers:
            timer.cancel()
    if "end" not in marks:
        mark("end")
    begin, end = marks.get("start") or marks["end"], marks["end"]
    result.window_s = (end[2] - begin[2]) / 1e9
    result.cpu_s = {k: end[0][k] - begin[0][k] for k in end[0]}
    result.client_cpu_s = end[1] - begin[1]
    return result
