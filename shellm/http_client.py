"""
The treq client SheLLM talks to HTTP providers with.
"""

from __future__ import annotations

from http.cookiejar import CookieJar

import treq.client
from twisted.internet.defer import succeed
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer


class NoCookies(CookieJar):
    """
    Keeps no cookies: an upstream's cookie set for one client's request must
    not travel with every other client's requests (and parsing them for
    nothing costs time on every call).
    """

    def add_cookie_header(self, request) -> None:
        pass

    def extract_cookies(self, response, request) -> None:
        pass


@implementer(IBodyProducer)
class BytesBody:
    """
    A request body already in memory, written at once: with treq's default
    producer the body would follow the headers one reactor turn later, as
    a second packet.
    """

    def __init__(self, data: bytes):
        self._data = data
        self.length = len(data) if data is not None else UNKNOWN_LENGTH

    def startProducing(self, consumer):
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def upstream_client(reactor, persistent: bool = True,
                    max_per_host: int = 2) -> tuple[treq.client.HTTPClient, HTTPConnectionPool]:
    """
    A treq client over its own connection pool, without a cookie jar.
    """
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = max_per_host
    return treq.client.HTTPClient(Agent(reactor, pool=pool), cookiejar=NoCookies()), pool
