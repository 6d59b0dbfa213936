"""
Bounded admission: a L{DeferredSemaphore} caps how many calls run at once,
and the waiting line has a length limit of its own.
"""

from __future__ import annotations

import math

from twisted.internet.defer import Deferred, DeferredSemaphore

from shellm.errors import QueueFull


class RequestQueue:
    """
    @ivar name: C{"cli"} or C{"http"}, for headers and health.
    """

    def __init__(self, name: str, max_concurrent: int, max_waiting: int, expected_hold: float = 1.0):
        """
        @param expected_hold: seconds a call is expected to hold a slot
            before any has been measured (a CLI run takes seconds, an HTTP
            call less), so the first C{Retry-After} is not a guess of 1 s
            that invites a storm of retries.
        """
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self._semaphore = DeferredSemaphore(max_concurrent)
        # A moving average of how long a slot is held, for Retry-After.
        self._average_hold = expected_hold

    @property
    def active(self) -> int:
        return self.max_concurrent - self._semaphore.tokens

    @property
    def pending(self) -> int:
        return len(self._semaphore.waiting)

    def acquire(self) -> Deferred:
        """
        Wait for a slot.  Cancelling the returned Deferred leaves the line.

        @raise QueueFull: when no slot is free and the line is full.
        """
        if self._semaphore.tokens == 0 and self.pending >= self.max_waiting:
            raise QueueFull(
                f"the {self.name} queue is full ({self.pending} waiting), try again later",
                retry_after=self.retry_after(),
            )
        return self._semaphore.acquire()

    def release(self, held_seconds: float) -> None:
        self._average_hold = 0.8 * self._average_hold + 0.2 * max(held_seconds, 0.0)
        self._semaphore.release()

    def give_back(self) -> None:
        """
        Release a slot that ran nothing (the call was refused after all):
        it says nothing about how long calls take.
        """
        self._semaphore.release()

    def retry_after(self) -> int:
        """
        Whole seconds until the line has probably moved by one.
        """
        waves = (self.pending + 1) / self.max_concurrent
        return max(1, math.ceil(self._average_hold * waves))

    def to_json(self) -> dict:
        return {
            "active": self.active,
            "pending": self.pending,
            "max_concurrent": self.max_concurrent,
            "max_queue_depth": self.max_waiting,
        }
