"""
Provider health: cached checks that never spend tokens and never make a
caller wait longer than the first check.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger

from shellm.completion import ProviderHealth


class HealthMonitor:
    """
    Runs every provider's check at most once per TTL.  While a stale answer
    exists it is served at once and a refresh runs behind it; only the very
    first request waits for the checks.
    """

    log = Logger()

    def __init__(self, clock, providers: Mapping[str, object], ttl: float):
        self._clock = clock
        self._providers = providers
        self._ttl = ttl
        self._cache: dict[str, ProviderHealth] = {}
        self._checked_at: float | None = None
        # When each entry was last learnt, by a check or by a failed run.
        self._entry_time: dict[str, float] = {}
        self._waiters: list[Deferred] = []
        self._refreshing = False

    def cached(self, name: str) -> ProviderHealth | None:
        """
        The last known health of C{name}, or L{None} if never checked.
        """
        return self._cache.get(name)

    def known_unusable(self, name: str) -> ProviderHealth | None:
        """
        The health of C{name} if a fresh check found it unusable.  A stale
        verdict refuses nothing (the user may have logged in since); it only
        starts a new check.
        """
        checked = self._entry_time.get(name)
        if checked is None or self._clock.seconds() - checked >= self._ttl:
            self.refresh()
            return None
        health = self._cache.get(name)
        return health if health is not None and not health.usable else None

    def mark_not_logged_in(self, name: str, message: str) -> None:
        """
        A run just proved the login is gone: say so until the next check.
        """
        old = self._cache.get(name)
        if old is None or old.authenticated:
            self.log.warn("{provider} is not logged in", provider=name)
        self._cache[name] = ProviderHealth(True, False, message, old.version if old else None)
        self._entry_time[name] = self._clock.seconds()

    def _fresh(self) -> bool:
        return self._checked_at is not None and self._clock.seconds() - self._checked_at < self._ttl

    def current(self) -> Deferred:
        """
        Fires with C{{name: ProviderHealth}}.
        """
        if self._fresh() or (self._cache and self._checked_at is not None):
            if not self._fresh():
                self.refresh()
            return succeed(dict(self._cache))
        waiter = Deferred()
        self._waiters.append(waiter)
        self.refresh()
        return waiter

    def refresh(self) -> None:
        """
        Re-check every provider, unless a check is already running.
        """
        if self._refreshing:
            return
        self._refreshing = True
        names = list(self._providers)

        def safe(name):
            d = maybeDeferred(self._providers[name].check_health)
            d.addErrback(self._check_failed, name)
            return d

        d = gatherResults([safe(name) for name in names])
        d.addCallback(lambda results: self._store(dict(zip(names, results))))

    def _check_failed(self, failure, name):
        self.log.failure("health check of {provider} failed", failure, provider=name)
        return ProviderHealth(False, False, "health check failed")

    def _store(self, results: dict) -> None:
        for name, health in results.items():
            old = self._cache.get(name)
            if old is not None and old.usable != health.usable:
                self.log.info(
                    "{provider} is now {state}",
                    provider=name,
                    state="usable" if health.usable else "unusable",
                )
        self._cache = results
        self._checked_at = self._clock.seconds()
        self._entry_time = dict.fromkeys(results, self._checked_at)
        self._refreshing = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(dict(results))


def overall_status(healths: Mapping[str, ProviderHealth]) -> str:
    usable = sum(1 for h in healths.values() if h.usable)
    if usable == len(healths) and usable:
        return "ok"
    return "degraded" if usable else "down"
