"""
The treq client SheLLM talks to HTTP providers with.
"""

from __future__ import annotations

from http.cookiejar import CookieJar

import treq.client
from hyperlink import EncodedURL
from twisted.internet.defer import succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
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


class ReadyURL(EncodedURL):
    """
    A URL already in URI form, its text computed once.  treq turns every
    URL it is given into a URI again on every request (IDNA-encoding the
    host, percent-encoding each part, then printing it): for a provider's
    fixed endpoint that was the larger half of treq's time per request.
    """

    @classmethod
    def ready(cls, text: str) -> ReadyURL:
        uri = EncodedURL.from_text(text).to_uri()
        made = cls(
            scheme=uri.scheme,
            host=uri.host,
            path=uri.path,
            query=uri.query,
            fragment=uri.fragment,
            port=uri.port,
            rooted=uri.rooted,
            userinfo=uri.userinfo,
            uses_netloc=uri.uses_netloc,
        )
        made._text = uri.to_text()
        return made

    def to_uri(self) -> EncodedURL:
        if getattr(self, "_text", None) is None:  # a copy made by replace()
            return super().to_uri()
        return self

    def to_text(self, with_password: bool = False) -> str:
        text: str | None = getattr(self, "_text", None)
        if text is None or with_password:
            return str(super().to_text(with_password))
        return text


@implementer(IBodyProducer)
class BytesBody:
    """
    A request body already in memory, written at once: with treq's default
    producer the body would follow the headers one reactor turn later, as
    a second packet.
    """

    def __init__(self, data: bytes):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IAgentEndpointFactory)
class ReusedEndpoints:
    """
    One endpoint per scheme, host and port, built once.  A plain L{Agent}
    builds a new one (IDNA-encoding the host name again) for every request,
    even when its pool already holds a connection to reuse.  The hosts are
    the configured providers' only: redirects are never followed.
    """

    def __init__(self, reactor):
        self._reactor = reactor
        self._tls_policy = BrowserLikePolicyForHTTPS()
        self._endpoints: dict = {}

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
            elif uri.scheme != b"http":
                raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
            self._endpoints[key] = endpoint
        return endpoint


def upstream_client(
    reactor, persistent: bool = True, max_per_host: int = 2
) -> tuple[treq.client.HTTPClient, HTTPConnectionPool]:
    """
    A treq client over its own connection pool, without a cookie jar.
    """
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = max_per_host
    agent = Agent.usingEndpointFactory(reactor, ReusedEndpoints(reactor), pool=pool)
    return treq.client.HTTPClient(agent, cookiejar=NoCookies()), pool
