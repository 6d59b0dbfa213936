"""
How many client connections the daemon holds: a cap in all and one per
peer address, checked when a connection is accepted, before a byte of it is
read.  A connection over a cap is closed at once; refusals are logged as one
summary line at most every L{LOG_EVERY} seconds, so a flood cannot flood the
log too.
"""

from __future__ import annotations

import ipaddress
import resource
from collections.abc import Callable

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger

#: Seconds between two log lines about refused connections.
LOG_EVERY = 10.0
#: Descriptors the daemon needs besides client connections: the listener,
#: the CLIs' pipes, upstream connections, the ledger, the log.
OTHER_DESCRIPTORS = 256

log = Logger()


def check_descriptor_limit(total: int, getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit) -> bool:
    """
    Warn when the process may open too few files for C{total} connections
    and the rest, so that a flood would meet EMFILE before the cap; say
    whether the limit is enough.
    """
    soft, _ = getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= total + OTHER_DESCRIPTORS:
        return True
    log.warn(
        "the process may open {soft} files, too few for SHELLM_MAX_CONNECTIONS={total} and"
        " {other} more: raise LimitNOFILE (or ulimit -n), or lower SHELLM_MAX_CONNECTIONS",
        soft=soft,
        total=total,
        other=OTHER_DESCRIPTORS,
    )
    return False


def peer_key(address: IAddress | None) -> str | None:
    """
    The address a per-peer cap counts by: the IP of a TCP peer.  L{None}
    (no per-peer cap) for UNIX sockets, unknown peers and loopback: a peer
    on this machine is the operator's own reverse proxy or tools, and
    behind a local proxy every client arrives from 127.0.0.1, so a per-peer
    cap there would only be a second, smaller total cap.
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return None
    try:
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return None
    except ValueError:
        return None
    return host


class ConnectionLimits:
    """
    Counts open connections, in all and per peer, against two caps.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, total: int, per_peer: int):
        self._clock = clock
        self.total = total
        self.per_peer = per_peer
        self.open = 0
        self._by_peer: dict[str, int] = {}
        self._refused = 0
        self._last_logged: float | None = None

    def admit(self, peer: str | None) -> bool:
        """
        Count a new connection from C{peer} (see L{peer_key}) if both caps
        allow it; L{False} means it must be closed at once.
        """
        if self.open >= self.total:
            self._refuse("in all", self.total)
            return False
        if peer is not None and self._by_peer.get(peer, 0) >= self.per_peer:
            self._refuse("from one address", self.per_peer)
            return False
        self.open += 1
        if peer is not None:
            self._by_peer[peer] = self._by_peer.get(peer, 0) + 1
        return True

    def release(self, peer: str | None) -> None:
        """
        A connection L{admit}ted for C{peer} has closed.
        """
        self.open -= 1
        if peer is not None:
            left = self._by_peer[peer] - 1
            if left:
                self._by_peer[peer] = left
            else:
                del self._by_peer[peer]

    def from_peer(self, peer: str) -> int:
        return self._by_peer.get(peer, 0)

    def _refuse(self, scope: str, cap: int) -> None:
        self._refused += 1
        now = self._clock.seconds()
        if self._last_logged is not None and now - self._last_logged < LOG_EVERY:
            return
        self.log.warn(
            "connection limit reached ({cap} {scope}): {refused} connections refused since the last report,"
            " {open} open",
            cap=cap,
            scope=scope,
            refused=self._refused,
            open=self.open,
        )
        self._refused = 0
        self._last_logged = now
