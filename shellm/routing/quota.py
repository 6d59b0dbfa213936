"""
Subscription windows: what each provider's CLI last said about its 5-hour,
weekly or daily quota, and whether the router should skip the provider
until a window resets.

This is not the circuit breaker: a spent window is not a failure.  Every
state ends at its window's C{resets_at}, by the clock; the next real
request then finds out again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from attrs import evolve, frozen
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from shellm.completion import DEFAULT_MODEL, QuotaWindow

#: The default share of a window at which a provider counts as exhausted.
DEFAULT_THRESHOLD = 0.95

#: States a provider's quota can be in, as C{/health} and C{/usage/quota} show them.
OK, WARNING, EXHAUSTED = "ok", "warning", "exhausted"


@frozen
class QuotaState:
    """
    One provider's standing: its state, and for an exhausted provider the
    window that rules (the one that resets last) and when it resets.
    """

    state: str
    resets_at: float | None
    windows: tuple[QuotaWindow, ...]
    ruling: QuotaWindow | None = None

    def to_json(self) -> dict:
        return {
            "state": self.state,
            "resets_at": self.resets_at,
            "windows": [w.to_json() for w in self.windows],
        }


class QuotaTracker:
    """
    The known windows of every provider, updated from what runs, probes and
    errors report, and read by the router before it calls a provider.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, threshold: float = DEFAULT_THRESHOLD):
        """
        @param threshold: a window whose used share is at or above this is
            treated as spent until it resets.
        """
        self._clock = clock
        self.threshold = threshold
        self._windows: dict[str, dict[tuple[str, str | None], QuotaWindow]] = {}
        self._states: dict[str, str] = {}
        self._timers: dict[str, IDelayedCall] = {}

    def observe(self, provider: str, windows: Iterable[QuotaWindow]) -> None:
        """
        Record what C{provider} reported; a window replaces the last one of
        its kind (and model).  Logs when the provider's state changes.
        """
        now = self._clock.seconds()
        known = self._windows.setdefault(provider, {})
        changed = False
        for window in windows:
            if window.resets_at is not None and window.resets_at <= now:
                continue  # already over: it says nothing about the future
            known[(window.kind, window.model)] = evolve(window, observed_at=now)
            changed = True
        if changed:
            self._settle(provider)

    def state(self, provider: str, model: str | None = None) -> QuotaState:
        """
        C{provider}'s standing now (windows whose reset has passed are
        gone): for requests for C{model} (the model string passed on, none
        for the CLI's default) when given, else for the provider as a whole,
        where a spent per-model window is only a warning.
        """
        now = self._clock.seconds()
        known = self._windows.get(provider, {})
        for key, window in list(known.items()):
            if window.resets_at is not None and window.resets_at <= now:
                del known[key]
        windows = tuple(sorted(known.values(), key=lambda w: (w.kind, w.model or "")))
        wanted = None if model is None else model or DEFAULT_MODEL
        spent = [w for w in windows if self._spends(w) and w.model in (None, wanted)]
        if spent:
            ruling = max(spent, key=lambda w: w.resets_at or 0)
            return QuotaState(EXHAUSTED, ruling.resets_at, windows, ruling)
        if any(w.status != "allowed" or self._spends(w) for w in windows):
            return QuotaState(WARNING, None, windows)
        return QuotaState(OK, None, windows)

    def exhausted(self, provider: str, model: str | None = None) -> QuotaState | None:
        """
        C{provider}'s state if a window that holds back requests for
        C{model} (the model string passed on; none: the CLI's default) is
        spent, else L{None}.
        """
        if not self._windows.get(provider):
            return None  # nothing reported: the common case, asked on every request
        state = self.state(provider, model or DEFAULT_MODEL)
        return state if state.state == EXHAUSTED else None

    def retry_after(self, state: QuotaState) -> int:
        """
        Whole seconds until C{state}'s ruling window resets (at least 1).
        """
        return max(1, math.ceil((state.resets_at or 0) - self._clock.seconds()))

    def providers(self) -> list[str]:
        return sorted(self._windows)

    def _spends(self, window: QuotaWindow) -> bool:
        if window.resets_at is None:
            return False  # no end known: it cannot hold a provider back
        if window.status == "rejected":
            return True
        return window.used is not None and window.used >= self.threshold

    def _settle(self, provider: str) -> None:
        """
        Log a change of state, and wake up when an exhausted provider's
        window resets, so that change is logged (and gauged) on time too.
        """
        state = self.state(provider)
        before = self._states.get(provider, OK)
        self._states[provider] = state.state
        if state.state != before:
            if state.state == EXHAUSTED:
                self.log.warn(
                    "{provider} quota exhausted ({window}) until {resets_at}",
                    provider=provider,
                    window=state.ruling.kind if state.ruling else None,
                    resets_at=state.resets_at,
                    state=state.state,
                )
            else:
                self.log.info(
                    "{provider} quota is now {state}",
                    provider=provider,
                    state=state.state,
                )
        timer = self._timers.pop(provider, None)
        if timer is not None and timer.active():
            timer.cancel()
        ends = [w.resets_at for w in state.windows if w.resets_at is not None]
        if ends:
            delay = max(0.0, min(ends) - self._clock.seconds())
            self._timers[provider] = self._clock.callLater(delay, self._settle, provider)
