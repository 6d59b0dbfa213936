"""
Requests per minute, globally and per client, over sliding 60-second
windows, in this node's memory (the limits on one box; with a shared store,
L{shellm.routing.shared_limits} counts across nodes and falls back to this).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

from twisted.internet.defer import Deferred, maybeDeferred

from shellm.errors import RateLimited
from shellm.routing.auth import Client

WINDOW = 60.0


class Limiter(Protocol):
    """
    What admission asks of a rate limiter: L{RateLimiter}, or the shared
    one of L{shellm.routing.shared_limits}.
    """

    def admit(self, client: Client) -> Deferred[None]:
        """
        Count one request of C{client}, or refuse it.

        @raise RateLimited: (as a failure) with C{retry_after} in whole seconds.
        """


class SlidingWindow:
    """
    At most C{limit} events in any C{WINDOW} seconds.
    """

    def __init__(self, clock, limit: int):
        self._clock = clock
        self.limit = limit
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._times and self._times[0] <= now - WINDOW:
            self._times.popleft()

    def wait(self) -> int | None:
        """
        Whole seconds until one more event fits, or L{None} if it fits now.
        Nothing is counted.
        """
        now = self._clock.seconds()
        self._expire(now)
        if len(self._times) < self.limit:
            return None
        return max(1, math.ceil(self._times[0] + WINDOW - now))

    def take(self) -> None:
        self._times.append(self._clock.seconds())

    def __len__(self) -> int:
        self._expire(self._clock.seconds())
        return len(self._times)


class RateLimiter:
    """
    The global budget and one window per client.  A request is counted in
    both only when both have room: one refused by its client's limit costs
    the global budget nothing.
    """

    def __init__(self, clock, global_rpm: int):
        self._clock = clock
        self.global_window = SlidingWindow(clock, global_rpm)
        self._client_windows: dict[str, SlidingWindow] = {}

    def window_for(self, client: Client) -> SlidingWindow | None:
        if client.rpm <= 0:
            return None  # anonymous: only the global limit applies
        window = self._client_windows.get(client.scope)
        if window is None or window.limit != client.rpm:
            window = self._client_windows[client.scope] = SlidingWindow(self._clock, client.rpm)
        return window

    def admit(self, client: Client) -> Deferred:
        """
        Count one request of C{client}, or refuse it.  The same interface as
        the shared limiter, which has to ask the database.

        @raise RateLimited: (as a failure) with C{retry_after} in whole seconds.
        """
        return maybeDeferred(self.admit_now, client)

    def admit_now(self, client: Client) -> None:
        """
        L{admit}, at once.

        @raise RateLimited: with C{retry_after} in whole seconds.
        """
        own = self.window_for(client)
        if own is not None:
            wait = own.wait()
            if wait is not None:
                raise RateLimited(
                    f"client {client.name} is over its limit of {own.limit} requests per minute",
                    retry_after=wait,
                )
        wait = self.global_window.wait()
        if wait is not None:
            raise RateLimited(
                f"the gateway is over its limit of {self.global_window.limit} requests per minute",
                retry_after=wait,
            )
        if own is not None:
            own.take()
        self.global_window.take()
