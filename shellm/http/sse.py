"""
Server-sent events: framing, the response headers, and keepalive comments
during silences.
"""

from __future__ import annotations

import json
from collections.abc import Iterable


def frame(data, event: str | None = None) -> bytes:
    """
    One SSE frame.  C{data} is JSON-encoded unless it is already a string;
    JSON never contains a raw newline, so it always fits in one C{data:} line.
    """
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


class EventStream:
    """
    An open SSE response.  Headers and an opening comment go out at once; a
    C{: keepalive} comment follows every C{heartbeat} seconds of silence;
    nothing is written once the client is gone.
    """

    def __init__(self, request, clock, heartbeat: float):
        self._request = request
        self._clock = clock
        self._heartbeat = heartbeat
        self.closed = False
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        request.notifyFinish().addBoth(self._gone)
        request.write(comment("stream open"))
        self._timer = clock.callLater(heartbeat, self._keepalive)

    def _keepalive(self) -> None:
        self._timer = None
        self._write(comment("keepalive"))

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        self._request.write(data)
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._heartbeat)
        else:
            self._timer = self._clock.callLater(self._heartbeat, self._keepalive)

    def write(self, frames: Iterable[bytes]) -> None:
        """
        Write frames already framed by a dialect's stream writer.
        """
        for data in frames:
            self._write(data)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _gone(self, _) -> None:
        self.closed = True
        self._stop_timer()

    def close(self) -> None:
        """
        End the response (if the client is still there).
        """
        self._stop_timer()
        if not self.closed:
            self.closed = True
            self._request.finish()
