"""
Webhook callbacks: signed in the Standard Webhooks format, sent with treq
over an agent whose endpoint checks every address a host resolves to at
connect time (so DNS rebinding does not help), and never following
redirects.

Refused unless C{SHELLM_WEBHOOK_ALLOW} names the host or a network holding
the address: every address that is not globally routable (loopback,
private, link-local, CGNAT, multicast, reserved...), including IPv4
addresses embedded in IPv6 (IPv4-mapped, NAT64, 6to4, Teredo), since
Python calls C{64:ff9b::7f00:1} global.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen
from treq.client import HTTPClient
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IAddress, IHostResolution, IProtocolFactory, IResolutionReceiver
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
#: Seconds a receiver has to answer.
TIMEOUT = 10.0


class WebhookRefused(Exception):
    """
    The callback's address may not be called; the message says why.
    """


@frozen
class AllowList:
    """
    C{SHELLM_WEBHOOK_ALLOW}: host names and networks a callback may reach
    even though they are not public.
    """

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """
        @raise ValueError: an entry is neither a host name nor a network.
        """
        hosts, networks = set(), []
        for item in text.replace(",", " ").split():
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                if "/" in item or not item.replace("-", "").replace(".", "").isalnum():
                    raise ValueError(f"{item!r} is neither a host name nor an address or CIDR network")
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """
    The IPv4 address an IPv6 one carries, if any.
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress, allow: AllowList) -> str | None:
    """
    Why a callback may not connect to C{address}, or L{None}.
    """
    if allow.allows(address):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            reason = refusal(inner, allow)
            return None if reason is None else f"{address} embeds {inner}: {reason}"
    if address.is_multicast or address.is_reserved or address.is_unspecified or not address.is_global:
        return f"{address} is not a public address (loopback, private, link-local, CGNAT, multicast or reserved)"
    return None


def check_url(url: Any) -> str:
    """
    A callback URL as given at submission: C{http} or C{https}, a host, no
    credentials.

    @raise ValueError: with the reason.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("callback_url must be a URL string")
    if len(url) > 2048:
        raise ValueError("callback_url is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing it raises for a bad port
    except ValueError as e:
        raise ValueError(f"callback_url is not a valid URL ({e})")
    if parts.scheme not in ("http", "https"):
        raise ValueError("callback_url must be an http or https URL")
    if not parts.hostname:
        raise ValueError("callback_url names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("callback_url must not carry credentials")
    return url


Resolve = Callable[[str, int], Deferred[list[str]]]


@implementer(IResolutionReceiver)
class _Addresses:
    def __init__(self) -> None:
        self.found: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)):
            self.found.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


def system_resolver(reactor: Any) -> Resolve:
    def resolve(host: str, port: int) -> Deferred[list[str]]:
        receiver = _Addresses()
        reactor.nameResolver.resolveHostName(receiver, host, portNumber=port)
        return receiver.done

    return resolve


class _GuardedEndpoint:
    """
    Resolve, refuse if any address is refused, then connect to an address
    that was checked (not to the name again).
    """

    def __init__(self, reactor: Any, host: str, port: int, tls: bool, allow: AllowList, resolve: Resolve):
        self._reactor, self._host, self._port, self._tls = reactor, host, port, tls
        self._allow, self._resolve = allow, resolve

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        return ensureDeferred(self._connect(factory))

    async def _connect(self, factory: IProtocolFactory) -> Any:
        host = self._host.strip("[]")
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            names = await self._resolve(host, self._port)
            addresses = [ipaddress.ip_address(name.split("%")[0]) for name in names]
        if not addresses:
            raise WebhookRefused(f"{host} does not resolve")
        if not self._allow.allows_host(host):
            for address in addresses:
                reason = refusal(address, self._allow)
                if reason is not None:
                    raise WebhookRefused(f"callback to {host} refused: {reason}")
        endpoint: Any = HostnameEndpoint(self._reactor, str(addresses[0]), self._port, timeout=TIMEOUT)
        if self._tls:
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        return await endpoint.connect(factory)


@implementer(IAgentEndpointFactory)
class GuardedEndpointFactory:
    def __init__(self, reactor: Any, allow: AllowList, resolve: Resolve):
        self._reactor, self._allow, self._resolve = reactor, allow, resolve

    def endpointForURI(self, uri: Any) -> _GuardedEndpoint:
        scheme = uri.scheme.decode("ascii")
        if scheme not in ("http", "https"):
            raise WebhookRefused(f"{scheme} callbacks are not allowed")
        return _GuardedEndpoint(
            self._reactor, uri.host.decode("idna"), uri.port, scheme == "https", self._allow, self._resolve
        )


@frozen
class Outcome:
    """
    What one attempt got: the receiver's status, or why there was none.
    """

    status_code: int | None
    error: str | None
    #: The address was refused (SSRF): retrying will not help.
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


class WebhookSender:
    """
    POSTs signed events; one attempt per L{send}.
    """

    def __init__(
        self,
        reactor: Any,
        secret: str,
        allow: AllowList,
        resolve: Resolve | None = None,
        timeout: float = TIMEOUT,
    ):
        self._reactor = reactor
        # Imported here: only a daemon with webhooks configured needs it.
        from standardwebhooks.webhooks import Webhook

        self._signer = Webhook(secret)
        self._timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        factory = GuardedEndpointFactory(reactor, allow, resolve or system_resolver(reactor))
        self._http = HTTPClient(Agent.usingEndpointFactory(reactor, factory, pool=self.pool))

    def headers(self, message_id: str, payload: bytes) -> dict[bytes | str, bytes | str]:
        when = datetime.fromtimestamp(self._reactor.seconds(), tz=UTC)
        return {
            "content-type": "application/json",
            "user-agent": "SheLLM-Webhooks",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": self._signer.sign(message_id, when, payload.decode("utf-8")),
        }

    async def send(self, url: str, message_id: str, payload: bytes) -> Outcome:
        try:
            response = await self._http.post(
                url,
                data=payload,
                headers=self.headers(message_id, payload),
                allow_redirects=False,
                timeout=self._timeout,
                unbuffered=True,
            )
        except WebhookRefused as e:
            return Outcome(None, str(e), refused=True)
        except Exception as e:
            refused = _refused_within(e)
            if refused is not None:
                return Outcome(None, refused, refused=True)
            return Outcome(None, f"{type(e).__name__}: {str(e)[:200] or 'no answer'}")
        # Consumed (so the connection ends cleanly) but bounded in time: a
        # receiver that never finishes its body does not hold a delivery.
        reading = response.content()
        reading.addTimeout(self._timeout, self._reactor)
        try:
            await reading
        except Exception:  # the status is what counts
            pass
        return Outcome(response.code, None)


def _refused_within(error: BaseException) -> str | None:
    """
    The refusal inside treq's wrapped connection failures, if that is what
    stopped the attempt.
    """
    reasons: Iterable[Any] = getattr(error, "reasons", ()) or ()
    for reason in reasons:
        value = getattr(reason, "value", None)
        if isinstance(value, WebhookRefused):
            return str(value)
    return None
