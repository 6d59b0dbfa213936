"""
Requests per minute counted in the shared store, so that several nodes on
one PostgreSQL database enforce one global and one per-client budget.

Each scope (C{global}, C{client:NAME}) has a counter row per minute.  A
request is admitted when the sliding estimate -- the previous minute's
count weighted by the part of it still inside the last 60 seconds, plus
this minute's count -- stays within the limit.  The check and the
increment are one transaction: the upsert locks the row, so two nodes
cannot both take the last place, and a refused request is rolled back
(it costs neither budget).

If the store is down or slow, this node falls back to its own in-memory
limiter (L{shellm.routing.limits.RateLimiter}) and says so once.
"""

from __future__ import annotations

import math

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from shellm.errors import RateLimited
from shellm.routing.auth import Client
from shellm.routing.limits import WINDOW, Limiter, RateLimiter
from shellm.state.store import Cursor, Store

#: Seconds the database gets to answer before this request is judged by the
#: node's own counters instead.
ANSWER_WITHIN = 1.0

# Every scope in one statement, rows locked in the order given (the
# client's, then the global one) on every node, so two nodes cannot
# deadlock; then the previous minute's counts.  Both engines accept this
# SQL; only PostgreSQL stores use it.
_TAKE = (
    "INSERT INTO rate_counts (scope, minute, count) VALUES {rows}"
    " ON CONFLICT (scope, minute) DO UPDATE SET count = rate_counts.count + 1"
    " RETURNING scope, count"
)
_PREVIOUS = "SELECT scope, count FROM rate_counts WHERE minute = ? AND scope IN ({marks})"


class _Refused(Exception):
    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def _retry_after(now: float, limit: int, previous: int, current: int) -> int:
    """
    Whole seconds until the sliding estimate leaves room for one more.
    """
    minute_start = math.floor(now / WINDOW) * WINDOW
    if current >= limit:
        # Full this minute: wait into the next, until this minute's share fades enough.
        fade = 1 - (limit - 1) / current if current else 0
        return max(1, math.ceil(minute_start + WINDOW + fade * WINDOW - now))
    # Room in this minute once enough of the previous one has slid out.
    needed = 1 - (limit - 1 - current) / previous if previous else 0
    return max(1, math.ceil(minute_start + needed * WINDOW - now))


def _take(cursor: Cursor, now: float, checks: list[tuple[str, int, str]]) -> None:
    """
    Count one request in every scope of C{checks}, or raise L{_Refused}
    (the transaction is then rolled back).  Runs in a pool thread.
    """
    minute = math.floor(now / WINDOW)
    weight = 1 - (now - minute * WINDOW) / WINDOW
    scopes = [scope for scope, _, _ in checks]
    taken = cursor.execute(
        _TAKE.format(rows=", ".join(["(?, ?, 1)"] * len(scopes))),
        [value for scope in scopes for value in (scope, minute)],
    ).fetchall()
    current: dict[str, int] = dict(taken)
    previous: dict[str, int] = dict(
        cursor.execute(_PREVIOUS.format(marks=", ".join(["?"] * len(scopes))), [minute - 1, *scopes]).fetchall()
    )
    for scope, limit, message in checks:
        before = previous.get(scope, 0)
        if before * weight + current[scope] > limit:
            raise _Refused(message, _retry_after(now, limit, before, current[scope] - 1))


def _forget(cursor: Cursor, before: int) -> None:
    cursor.execute("DELETE FROM rate_counts WHERE minute < ?", (before,))


class SharedRateLimiter:
    """
    The global budget and one per client, shared through the store.  The
    same interface as L{RateLimiter}: C{admit(client)} returns a Deferred.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, store: Store, global_rpm: int, fallback: RateLimiter | None = None):
        self._clock = clock
        self._store = store
        self.global_rpm = global_rpm
        self.fallback = fallback or RateLimiter(clock, global_rpm)
        self._alone = False
        self._swept_minute: int | None = None

    def admit(self, client: Client) -> Deferred[None]:
        """
        Count one request of C{client}, or refuse it.

        @raise RateLimited: (as a failure) with C{retry_after} in whole seconds.
        """
        if not self._store.up:
            return self._alone_admit(client, "the state store is down")
        now = self._clock.seconds()
        checks: list[tuple[str, int, str]] = []
        if client.rpm > 0:
            checks.append(
                (
                    f"client:{client.scope}",
                    client.rpm,
                    f"client {client.name} is over its limit of {client.rpm} requests per minute",
                )
            )
        checks.append(
            ("global", self.global_rpm, f"the gateway is over its limit of {self.global_rpm} requests per minute")
        )
        answer: Deferred[None] = Deferred()
        running = self._store.interact(_take, now, checks, durable=False)
        timer = self._clock.callLater(ANSWER_WITHIN, self._too_slow, answer, client)

        def settled(result: None | Failure) -> None:
            if timer.active():
                timer.cancel()
            if answer.called:
                return None  # judged by the fallback already
            if not isinstance(result, Failure):
                self._shared_again()
                answer.callback(None)
            elif isinstance(result.value, _Refused):
                self._shared_again()
                answer.errback(RateLimited(result.value.message, retry_after=result.value.retry_after))
            else:
                why = "the state store is down" if self._store.is_transient(result) else result.getErrorMessage()
                self._alone_admit(client, why).chainDeferred(answer)
            return None

        running.addBoth(settled)
        self._sweep(now)
        return answer

    def _too_slow(self, answer: Deferred[None], client: Client) -> None:
        if not answer.called:
            self._alone_admit(client, f"the state store took over {ANSWER_WITHIN} s").chainDeferred(answer)

    def _alone_admit(self, client: Client, why: str) -> Deferred[None]:
        if not self._alone:
            self._alone = True
            self.log.warn("rate limits counted per node until the state store answers again: {why}", why=why)
        return self.fallback.admit(client)

    def _shared_again(self) -> None:
        if self._alone:
            self._alone = False
            self.log.info("rate limits shared across nodes again")

    def _sweep(self, now: float) -> None:
        """
        Once a minute, drop counters too old to matter.
        """
        minute = math.floor(now / WINDOW)
        if self._swept_minute == minute:
            return
        self._swept_minute = minute
        self._store.interact(_forget, minute - 1, durable=False).addErrback(lambda _: None)


def rate_limiter(clock: IReactorTime, store: Store, global_rpm: int) -> Limiter:
    """
    The limiter for C{store}: shared across nodes on PostgreSQL, in memory
    on SQLite (one box).
    """
    if store.shared:
        return SharedRateLimiter(clock, store, global_rpm)
    return RateLimiter(clock, global_rpm)
