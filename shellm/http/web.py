"""
HTTP plumbing under the Klein app: the connection (its limits, the request
deadline, JSON answers to what Twisted's parser refuses), a capped request
body, request ids, and one access-log line per request.
"""

from __future__ import annotations

import io
import json
import os
import re
from urllib.parse import unquote_to_bytes as unquote

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.server import Request, Site

from shellm.errors import HeadersTooLarge, InvalidRequest, RequestTimeout, ShellmError
from shellm.http.connections import ConnectionLimits, check_descriptor_limit, peer_key
from shellm.http.headers import header

access_log = Logger(namespace="shellm.access")
log = Logger()
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def new_request_id() -> str:
    """
    32 random hex digits (what uuid4().hex looks like, at an eighth of its
    cost: one per request).
    """
    return os.urandom(16).hex()


def valid_request_id(value: str) -> bool:
    # fullmatch, not match: "$" also matches before a final newline, which
    # let "abc\n" through (and the id logged then differed from the header).
    return bool(_REQUEST_ID.fullmatch(value))


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
        #: Answered by the channel itself (see L{ShellmChannel.refuse}).
        self.refused = False

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            given = header(self, b"x-request-id") or ""
            self._request_id = given if valid_request_id(given) else new_request_id()
        return self._request_id

    @request_id.setter
    def request_id(self, value: str) -> None:
        self._request_id = value

    def process(self):
        """
        Route the request (closing the connection after it once shutdown has
        begun), unless its Host or path cannot be decoded: that is a JSON
        400 here (Klein would answer with an HTML 400 and log a critical
        traceback).
        """
        if self.channel.site.stopping:
            # Shutting down: answer this request, then close the connection,
            # so a keep-alive client (or load balancer) goes elsewhere.
            self.channel.persistent = False
            self.responseHeaders.setRawHeaders(b"connection", [b"close"])
        problem = _url_problem(self)
        if problem is None:
            return super().process()
        self.site = self.channel.site
        error = InvalidRequest(problem)
        self.setResponseCode(error.status)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"x-request-id", self.request_id.encode("ascii"))
        self.write(json.dumps({**error.to_json(), "request_id": self.request_id}).encode("utf-8"))
        self.finish()

    def connectionLost(self, reason):
        if not self.finished and not self.refused:
            self.channel.site.log_access(self, status=499)
        super().connectionLost(reason)


def _url_problem(request) -> str | None:
    """
    What makes a request's URL unusable for routing (Klein decodes the host
    and the percent-decoded path as UTF-8), or L{None}.
    """
    for raw, problem in (
        (request.getHeader(b"host") or b"", "the Host header is not valid UTF-8"),
        (unquote(request.path), "the path is not valid UTF-8 once percent-decoded"),
    ):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return problem
    return None


class ShellmChannel(HTTPChannel):
    """
    Twisted's L{HTTPChannel}, changed where it meets a client that is slow,
    malformed or one too many:

      - A deadline for receiving each request (line, headers and body),
        started by its first byte (or the connection) and not reset by
        later ones, unlike Twisted's idle timeout; past it, a JSON 408.
      - What Twisted's parser refuses is answered with a JSON error and the
        connection closed at once: Twisted writes a bare
        C{400 Bad Request} (C{_respondToBadRequestAndDisconnect}, private),
        and drops a line longer than C{MAX_LENGTH} without an answer
        (C{lineLengthExceeded}).  Headers over C{totalHeadersSize} bytes or
        C{maxHeaders} in number are 431, caught here just before Twisted's
        own checks would make them a 400.
      - It counts itself against the site's connection limits until it is
        lost, and is known to the site, so shutdown can close it once its
        response is out.
    """

    #: Seconds a refused client gets to read its answer before the
    #: connection is aborted (Twisted's own C{abortTimeout} is 15).
    abort_after = 5.0
    _deadline = None
    _abort = None
    _answered = False
    peer: str | None = None

    def connectionMade(self):
        super().connectionMade()
        self.site.connection_opened(self)
        self._start_deadline()

    def dataReceived(self, data):
        # Also how requestDone replays pipelined bytes (setLineMode): the
        # next request's deadline starts with its first byte, wherever that
        # byte comes from.
        if self._deadline is None and not self._handlingRequest and not self._answered:
            self._start_deadline()
        super().dataReceived(data)

    def lineReceived(self, line):
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(HeadersTooLarge(f"the request line and headers are larger than {self.totalHeadersSize} bytes"))
            return
        super().lineReceived(line)

    def headerReceived(self, line):
        if self._receivedHeaderCount >= self.maxHeaders:
            self.refuse(HeadersTooLarge(f"the request has more than {self.maxHeaders} headers"))
            return False
        return super().headerReceived(line)

    def lineLengthExceeded(self, line):
        self.refuse(HeadersTooLarge(f"a request line or header is longer than {self.MAX_LENGTH} bytes"))

    def _respondToBadRequestAndDisconnect(self):
        self.refuse(InvalidRequest("the request is not valid HTTP/1.1"))

    def allContentReceived(self):
        self._cancel_deadline()
        super().allContentReceived()

    def _start_deadline(self) -> None:
        seconds = self.site.request_deadline
        if seconds:
            self._deadline = self.callLater(seconds, self._deadline_passed, seconds)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self, seconds: float) -> None:
        self._deadline = None
        self.refuse(RequestTimeout(f"the request was not received in full within {seconds:g} seconds"))

    def refuse(self, error: ShellmError) -> None:
        """
        Answer C{error} as JSON (the seed dialect's shape: the path may not
        even be known) with C{Connection: close}, and close.  Only for a
        request still being received: its response has not begun.
        """
        if self._answered or self.transport is None or self.transport.disconnecting:
            return
        self._answered = True
        self._cancel_deadline()
        # Nothing more is read from this client.
        self.dataReceived = self.lineReceived = lambda *args: None
        request_id = new_request_id()
        body = json.dumps({**error.to_json(), "request_id": request_id}).encode("utf-8")
        head = (
            f"HTTP/1.1 {error.status} {_reason(error.status)}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Request-Id: {request_id}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        self.transport.write(head + body)
        request = self.requests[-1] if self.requests and not self._handlingRequest else None
        if request is not None:
            request.refused = True
            request.request_id = request_id
            self.site.log_access(request, status=error.status)
        self.loseConnection()
        self._abort = self.callLater(self.abort_after, self._abort_now)

    def _abort_now(self) -> None:
        self._abort = None
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._cancel_deadline()
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        try:
            super().connectionLost(reason)
        finally:
            self.site.connections.release(self.peer)
            self.site.connection_closed(self)


class ShellmSite(Site):
    """
    The Klein resource served over L{ShellmChannel}s, with the connection
    limits, the request deadline, the body cap and the access log.
    """

    requestFactory = ShellmRequest
    # The channel itself, not Twisted's wrapper that would pick HTTP/2 when
    # TLS negotiates it: SheLLM speaks HTTP/1.1 (TLS, if any, ends at a proxy).
    protocol = ShellmChannel
    noisy = False
    #: Set when shutdown begins: every response then closes its connection.
    stopping = False

    def __init__(
        self,
        resource,
        clock,
        max_body_bytes: int,
        request_deadline: float = 30.0,
        max_connections: int = 1024,
        max_connections_per_ip: int = 256,
    ):
        """
        @param request_deadline: seconds a client has to send a whole
            request, from its first byte; 0 means no deadline.
        """
        super().__init__(resource, reactor=clock)
        self.clock = clock
        self._channels: set[ShellmChannel] = set()
        self._all_closed: list[Deferred] = []
        self.max_body_bytes = max_body_bytes
        self.request_deadline = request_deadline
        self.connections = ConnectionLimits(clock, max_connections, max_connections_per_ip)
        self.displayTracebacks = False
        # Bodies are JSON: never let twisted.web parse a form (a malformed
        # multipart body would get its own HTML 400 before our handlers).
        self._parsePOSTFormSubmission = False

    def connection_opened(self, channel: ShellmChannel) -> None:
        self._channels.add(channel)

    def connection_closed(self, channel: ShellmChannel) -> None:
        self._channels.discard(channel)
        if not self._channels:
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
        for channel in list(self._channels):
            channel.persistent = False
            if not channel.requests:
                channel.loseConnection()
        if not self._channels:
            return succeed(None)
        waiter: Deferred = Deferred(lambda d: self._all_closed.remove(d))
        self._all_closed.append(waiter)
        return waiter

    def startFactory(self):
        super().startFactory()
        check_descriptor_limit(self.connections.total)

    def buildProtocol(self, addr):
        peer = peer_key(addr)
        if not self.connections.admit(peer):
            return None  # the port closes the socket at once, nothing read
        channel = super().buildProtocol(addr)
        channel.peer = peer
        return channel

    def getContentFile(self, length):
        return CappedBody(self.max_body_bytes)

    def log(self, request) -> None:
        self.log_access(request, status=request.code)

    def log_access(self, request, status: int) -> None:
        """
        One line per request.  Never raises: it runs inside Twisted's
        C{finish()}, where an exception would leave the connection open.
        """
        try:
            fields = getattr(request, "log_fields", {})
            duration_ms = round((self.clock.seconds() - getattr(request, "received_at", 0)) * 1000)
            path = _text(request.path)[:200]
            emit = access_log.debug if path == "/health" else access_log.info
            emit(
                "{method} {path} {status} in {duration_ms} ms",
                method=_text(request.method)[:20],
                path=path,
                status=status,
                duration_ms=duration_ms,
                request_id=getattr(request, "request_id", None),
                provider=fields.get("provider"),
                model=fields.get("model"),
                queued_ms=fields.get("queued_ms"),
                cache=fields.get("cache"),
            )
        except Exception:
            log.failure("the access log line could not be written")


def _reason(status: int) -> str:
    # Twisted's table lacks 431 (RFC 6585).
    return RESPONSES.get(status, b"Request Header Fields Too Large" if status == 431 else b"Error").decode("ascii")


def _text(value) -> str:
    """
    Bytes from the request line, for the log; C{-} when there are none
    (the request was refused before its line was read).
    """
    return value.decode("ascii", "replace") if isinstance(value, bytes) else "-"
