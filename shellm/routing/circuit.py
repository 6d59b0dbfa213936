"""
Circuit breakers: stop sending work to a provider that keeps failing, and
try it again, once, after a cool-down.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from twisted.internet.interfaces import IReactorTime


class Circuit:
    """
    C{closed} → (N consecutive provider-side failures) → C{open} →
    (cool-down elapsed) → C{half_open}, where exactly one probe may run →
    C{closed} on its success, C{open} again on its failure.

    Only provider-side failures count; client errors, queue rejections and
    cancelled requests neither open nor close it.
    """

    def __init__(self, clock: IReactorTime, threshold: int, cooldown: float):
        self._clock = clock
        self.threshold = threshold
        self.cooldown = cooldown
        self._state = "closed"
        self.failures = 0
        self._opened_at = 0.0  # when it last opened; read only while open
        self._probing = False
        self.changed_at: float | None = None

    @property
    def state(self) -> str:
        if self._state == "open" and self._cooled_down():
            return "half_open"
        return self._state

    def _cooled_down(self) -> bool:
        return self._clock.seconds() - self._opened_at >= self.cooldown

    def _become(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.changed_at = self._clock.seconds()

    def allows(self) -> bool:
        """
        Would a request be let through now?  (No side effect.)
        """
        state = self.state
        return state == "closed" or (state == "half_open" and not self._probing)

    def begin(self) -> bool:
        """
        Take permission for one request; in C{half_open} only the first caller
        gets it, and it must be followed by L{succeeded}, L{failed} or
        L{abandoned}.
        """
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._become("half_open")
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.failures = 0
        self._probing = False
        self._become("closed")

    def failed(self) -> None:
        self.failures += 1
        probing, self._probing = self._probing, False
        if probing or self.failures >= self.threshold:
            self._opened_at = self._clock.seconds()
            self._become("open")

    def retry_after(self) -> int | None:
        """
        Whole seconds until an open circuit lets a probe through, or
        L{None} when it is not open.
        """
        if self._state != "open" or self._cooled_down():
            return None
        return max(1, math.ceil(self._opened_at + self.cooldown - self._clock.seconds()))

    def abandoned(self) -> None:
        """
        The request ended without telling anything about the provider.
        """
        self._probing = False

    def to_json(self) -> dict:
        return {
            "state": self.state,
            "consecutive_failures": self.failures,
            "changed_at": None
            if self.changed_at is None
            else datetime.fromtimestamp(self.changed_at, UTC).isoformat(timespec="seconds"),
        }
