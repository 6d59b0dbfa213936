"""
HTTP plumbing under the Klein app: a capped request body, request ids, and
one access-log line per request.
"""

from __future__ import annotations

import io
import re
import uuid

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

access_log = Logger(namespace="shellm.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def valid_request_id(value: str) -> bool:
    return bool(_REQUEST_ID.match(value))


class CappedBody(io.BytesIO):
    """
    A request body that stops storing past its cap, and remembers that it
    overflowed, so an oversized upload costs no memory and gets a 413.
    """

    def __init__(self, cap: int):
        super().__init__()
        self.cap = cap
        self.overflowed = False

    def write(self, data: bytes) -> int:
        if self.overflowed or self.tell() + len(data) > self.cap:
            self.overflowed = True
            return len(data)
        return super().write(data)


class ShellmRequest(Request):
    """
    Knows its request id and when it arrived; the handlers note the provider,
    model and queue time on it for the access log.
    """

    def __init__(self, channel, *args, **kwargs):
        super().__init__(channel, *args, **kwargs)
        self.received_at = channel.site.clock.seconds()
        self.log_fields: dict = {}
        self._request_id = None
        #: The dialect module of the route that answers (set by the route),
        #: which shapes its errors too; L{None} before a route took it.
        self.dialect = None

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            given = (self.getHeader("x-request-id") or "").strip()
            self._request_id = given if valid_request_id(given) else uuid.uuid4().hex
        return self._request_id

    @request_id.setter
    def request_id(self, value: str) -> None:
        self._request_id = value

    def process(self):
        if self.channel.site.stopping:
            # Shutting down: answer this request, then close the connection,
            # so a keep-alive client (or load balancer) goes elsewhere.
            self.channel.persistent = False
            self.responseHeaders.setRawHeaders(b"connection", [b"close"])
        super().process()

    def connectionLost(self, reason):
        if not self.finished:
            self.channel.site.log_access(self, status=499)
        super().connectionLost(reason)


class ShellmChannel(HTTPChannel):
    """
    An HTTP connection the site keeps track of, so shutdown can close each
    one once its response is out.
    """

    def connectionMade(self):
        super().connectionMade()
        self.site.connection_opened(self)

    def connectionLost(self, reason):
        self.site.connection_closed(self)
        super().connectionLost(reason)


class ShellmSite(Site):
    requestFactory = ShellmRequest
    protocol = ShellmChannel
    noisy = False
    #: Set when shutdown begins: every response then closes its connection.
    stopping = False

    def __init__(self, resource, clock, max_body_bytes: int):
        super().__init__(resource, reactor=clock)
        self.clock = clock
        self._connections: set[ShellmChannel] = set()
        self._all_closed: list[Deferred] = []
        self.max_body_bytes = max_body_bytes
        self.displayTracebacks = False
        # Bodies are JSON: never let twisted.web parse a form (a malformed
        # multipart body would get its own HTML 400 before our handlers).
        self._parsePOSTFormSubmission = False

    def connection_opened(self, channel: ShellmChannel) -> None:
        self._connections.add(channel)

    def connection_closed(self, channel: ShellmChannel) -> None:
        self._connections.discard(channel)
        if not self._connections:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)

    def close_connections(self) -> Deferred:
        """
        Close every connection once its response is out: an idle keep-alive
        connection at once, one with a request under way after its answer
        (the reactor discards unsent bytes at exit, so shutdown waits for
        this).  Fires when all are closed; cancelling it stops waiting.
        """
        for channel in list(self._connections):
            channel.persistent = False
            if not channel.requests:
                channel.loseConnection()
        if not self._connections:
            return succeed(None)
        waiter: Deferred = Deferred(lambda d: self._all_closed.remove(d))
        self._all_closed.append(waiter)
        return waiter

    def getContentFile(self, length):
        return CappedBody(self.max_body_bytes)

    def log(self, request) -> None:
        self.log_access(request, status=request.code)

    def log_access(self, request, status: int) -> None:
        fields = getattr(request, "log_fields", {})
        duration_ms = round((self.clock.seconds() - getattr(request, "received_at", 0)) * 1000)
        path = request.path.decode("ascii", "replace")[:200]
        emit = access_log.debug if path == "/health" else access_log.info
        emit(
            "{method} {path} {status} in {duration_ms} ms",
            method=request.method.decode("ascii", "replace"),
            path=path,
            status=status,
            duration_ms=duration_ms,
            request_id=getattr(request, "request_id", None),
            provider=fields.get("provider"),
            model=fields.get("model"),
            queued_ms=fields.get("queued_ms"),
        )
