"""
Server-sent events: framing, the response headers, and keepalive comments
during silences.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

#: json.dumps with options builds a new encoder on every call; a stream
#: frames every token.
_encode = json.JSONEncoder(ensure_ascii=False).encode


def frame(data, event: str | None = None) -> bytes:
    """
    One SSE frame.  C{data} is JSON-encoded unless it is already a string;
    JSON never contains a raw newline, so it always fits in one C{data:} line.
    """
    text = data if isinstance(data, str) else _encode(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


#: How long a stream's head (its headers and opening frames) waits for the
#: first answer event.  A quick answer (a cache hit, a fast API) then leaves
#: with its head in one write instead of two; a slower one (queued, or a
#: model that takes its time) still tells its client at once, in human terms,
#: that the stream started.
HEAD_WAIT = 0.05


class EventStream:
    """
    An open SSE response.  Its head (headers, an opening comment and the
    dialect's opening frames) goes out with the first event, or after
    L{HEAD_WAIT} seconds without one; a C{: keepalive} comment follows every
    C{heartbeat} seconds of silence; nothing is written once the client is
    gone.
    """

    def __init__(self, request, clock, heartbeat: float, opening: Iterable[bytes] = ()):
        """
        @param opening: the dialect's opening frames (its writer's C{start()}).
        """
        self._request = request
        self._clock = clock
        self._heartbeat = heartbeat
        self.closed = False
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        request.notifyFinish().addBoth(self._gone)
        self._head: list[bytes] | None = [comment("stream open"), *opening]
        self._written_at = clock.seconds()
        # One timer, first for the head, then for keepalives.  Writes do not
        # reset it (a reset per event would cost more than the event): when
        # it fires, it looks at how long the stream has really been silent.
        self._timer = clock.callLater(HEAD_WAIT, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        silent = self._clock.seconds() - self._written_at
        if self._head is not None:
            self.write(())
        elif silent >= self._heartbeat:
            self.write((comment("keepalive"),))
        else:
            self._timer = self._clock.callLater(self._heartbeat - silent, self._tick)
            return
        self._timer = self._clock.callLater(self._heartbeat, self._tick)

    def write(self, frames: Iterable[bytes]) -> None:
        """
        Write frames already framed by a dialect's stream writer (the head
        first, if it is still held), as one chunk.
        """
        if self.closed:
            return
        data = b"".join(frames)
        if self._head is not None:
            data = b"".join(self._head) + data
            self._head = None
        if data:
            self._request.write(data)
            self._written_at = self._clock.seconds()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _gone(self, _) -> None:
        self.closed = True
        self._stop_timer()

    def close(self) -> None:
        """
        End the response (if the client is still there), its head first if
        nothing was written yet.
        """
        self._stop_timer()
        if not self.closed:
            self.write(())
            self.closed = True
            self._request.finish()
